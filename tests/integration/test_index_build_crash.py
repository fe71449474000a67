"""Crash safety of the embedded store's index build: a process running `build_index` is
SIGKILLed at several moments of the build (copying, building in the child process); the
store must reopen with every point, remove the leftover build directory, leave no build
process behind, and build afterwards.

Run as `python -m tests.integration.test_index_build_crash child ROOT` for the child.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from backend.stores.vectors.edge import EdgeVectorStore
from tests.unit.test_edge_index_build import NAME, N, populated_store, shard_dirs

REPO = Path(__file__).resolve().parents[2]


def builders_of(root: Path) -> list[int]:
    """Pids of build processes working under root."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        if "edge_build" in cmdline and str(root) in cmdline:
            out.append(int(proc.name))
    return out


def test_a_build_killed_at_any_moment_leaves_a_consistent_collection(tmp_path: Path) -> None:
    root = tmp_path / "vectors"
    populated_store(root).close()
    live = shard_dirs(root)
    interrupted = 0
    for delay in (0.0, 0.3, 1.0):
        child = subprocess.Popen([sys.executable, "-m", "tests.integration.test_index_build_crash",
                                  "child", str(root)], cwd=REPO)
        try:
            deadline = time.monotonic() + 20
            while len(shard_dirs(root)) < 2 and child.poll() is None:
                assert time.monotonic() < deadline, "the build never started"
                time.sleep(0.005)
            time.sleep(delay)
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait()
        leftover = len(shard_dirs(root)) > 1
        interrupted += leftover
        # The build process dies with the process that started it.
        deadline = time.monotonic() + 5
        while builders_of(root):
            assert time.monotonic() < deadline, "a build process outlived its parent"
            time.sleep(0.05)
        with EdgeVectorStore(root) as store:
            assert store.count(NAME) == N
            assert store.index_state(NAME).indexed_vectors in (0, N)
            assert len(shard_dirs(root)) == 1
            assert not list(root.glob(".link-*"))
            if leftover:
                assert shard_dirs(root) == live
            live = shard_dirs(root)
    assert interrupted >= 2, "the kills came after the builds had finished"
    with EdgeVectorStore(root) as store:
        store.build_index(NAME)
        assert store.count(NAME) == N
        assert store.index_state(NAME).indexed_vectors == N
        assert len(shard_dirs(root)) == 1


def _child(root: str) -> None:
    store = EdgeVectorStore(Path(root))
    store.build_index(NAME)
    store.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        _child(sys.argv[2])
