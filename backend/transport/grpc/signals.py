"""Shared shutdown trigger for the long-running servers (search server, encoder worker)."""

from __future__ import annotations

import asyncio
import signal


async def until_signalled() -> None:
    """Return once SIGINT or SIGTERM arrives (the caller then stops gracefully)."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
