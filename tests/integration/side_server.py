"""A second gRPC server over the session's app (same SQL, vectors and warm encoder) with other
settings (auth on, TLS): no second model load. It neither stops the shared encoder nor runs a
second outbox drainer or self-check."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from backend.app import App
from backend.domain.indexing import DrainStats
from backend.transport.grpc.server import BackgroundServer


class _SharedEncoder:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def stop(self) -> None:  # the session's server owns the encoder
        return None


class _NoIndexer:
    def drain_once(self, batch: int = 64) -> DrainStats:
        return DrainStats()


def side_app(app: App, **updates: Any) -> App:
    settings = app.settings.model_copy(update=updates)
    return dataclasses.replace(app, settings=settings, encoder=_SharedEncoder(app.encoder),
                               indexer=_NoIndexer(), self_check=None)  # type: ignore[arg-type]


@contextmanager
def side_server(app: App, **updates: Any) -> Iterator[str]:
    """`with side_server(app, auth=AuthSettings(cache_ttl_s=0)) as addr:`"""
    server = BackgroundServer(side_app(app, **updates))
    addr = server.start()
    try:
        yield addr
    finally:
        server.stop()
