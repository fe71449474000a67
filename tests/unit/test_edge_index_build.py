"""The embedded store builds its vector index in a child process on a copy of the shard:
searches are answered all through the build, writes made during it (upserts and deletes)
are in the built shard, a failed build leaves the live shard serving, and a shard kept as a
plain directory (the layout before) is moved under the collection's link when opened."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import qdrant_edge as qe

from backend.domain.types import Filters
from backend.stores.vectors.base import CollectionSpec, PointPayload, VectorPoint, point_id
from backend.stores.vectors.edge import EdgeVectorStore, IndexBuildAborted, IndexBuildError

DIM = 32
N = 3000
NAME = "c"


def make_points(start: int, n: int, seed: int = 0) -> list[VectorPoint]:
    rng = np.random.default_rng(seed + start)
    out = []
    for i in range(start, start + n):
        v = rng.standard_normal(DIM).astype(np.float32)
        pid = f"p{i:05d}"
        payload = PointPayload(product_id=pid, position=0, model_version="m", catalog_version=1,
                               merchant="m", category=["a"], size="", material="", colour="",
                               brand="", price=float(i % 100), in_stock=True, listed=True)
        out.append(VectorPoint(point_id(pid, 0, "m"), {"image": v / np.linalg.norm(v)}, payload))
    return out


def populated_store(root: Path, n: int = N, **kw: Any) -> EdgeVectorStore:
    """A store whose collection `c` holds n unindexed points and indexes above 50 KB of
    vectors (qdrant's default, 10 MB, would need far more points than a unit test wants)."""
    with EdgeVectorStore(root) as store:
        store.ensure_collection(CollectionSpec(NAME, {"image": DIM}, hnsw_m=8,
                                               hnsw_ef_construct=32))
    config = qe.EdgeConfig(vectors={"image": qe.EdgeVectorParams(size=DIM,
                                                                 distance=qe.Distance.Cosine)},
                           optimizers=qe.EdgeOptimizersConfig(indexing_threshold=50))
    qe.EdgeShard.load(os.path.realpath(root / NAME), config).close()
    store = EdgeVectorStore(root, **kw)
    for start in range(0, n, 1000):
        store.upsert(NAME, make_points(start, min(1000, n - start)))
    return store


def shard_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob(".shard-*"))


def test_build_serves_searches_and_keeps_the_writes_made_meanwhile(tmp_path: Path) -> None:
    root = tmp_path / "vectors"
    store = populated_store(root)
    try:
        assert store.index_state(NAME).indexed_vectors == 0
        query = make_points(0, 1)[0].vectors["image"]
        building = threading.Event()
        done = threading.Event()
        errors: list[BaseException] = []
        answered = 0
        longest_gap = 0.0

        def search() -> None:
            nonlocal answered, longest_gap
            building.wait()
            last = time.perf_counter()
            try:
                while not done.is_set():
                    assert store.search(NAME, "image", query, Filters(), 5)
                    now = time.perf_counter()
                    answered, longest_gap = answered + 1, max(longest_gap, now - last)
                    last = now
                    time.sleep(0.002)  # a busy server, not a busy loop starving the build
            except BaseException as exc:
                errors.append(exc)

        added: list[VectorPoint] = []
        deleted: list[str] = []

        def write() -> None:
            building.wait()
            i = 0
            try:
                while not done.is_set():
                    points = make_points(N + 10 * i, 10, seed=1)
                    store.upsert(NAME, points)
                    added.extend(points)
                    victim = make_points(i, 1)[0]
                    store.delete_points(NAME, [victim.id])
                    deleted.append(victim.id)
                    i += 1
                    time.sleep(0.01)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=search), threading.Thread(target=write)]
        for t in threads:
            t.start()
        building.set()
        try:
            store.build_index(NAME)
        finally:
            done.set()
            for t in threads:
                t.join()
        assert not errors
        assert store.last_build is not None
        # Writes went on while the child built: some landed after the copy and were replayed.
        assert store.last_build.replayed > 0
        assert answered >= 5, answered
        assert longest_gap < 2.0, longest_gap
        state = store.index_state(NAME)
        assert state.points == N + len(added) - len(deleted)
        assert state.indexed_vectors > 0
        ids = {pid for pid, _ in store.product_payloads(
            NAME, [p.payload.product_id for p in added])}
        assert ids == {p.id for p in added}
        assert store.product_payloads(NAME, [f"p{i:05d}" for i in range(len(deleted))]) == []
        # The old shard was deleted; the collection points at the built one.
        assert len(shard_dirs(root)) == 1
        assert os.path.realpath(root / NAME) == str(root / shard_dirs(root)[0])
    finally:
        store.close()
    with EdgeVectorStore(root) as reopened:
        assert reopened.count(NAME) == N + len(added) - len(deleted)
        assert reopened.index_state(NAME).indexed_vectors > 0


def test_a_failed_build_leaves_the_live_shard_serving(tmp_path: Path) -> None:
    root = tmp_path / "vectors"
    store = populated_store(root, n=1000, build_timeout_s=0.01)
    try:
        before = shard_dirs(root)
        with pytest.raises(IndexBuildError, match="timed out"):
            store.build_index(NAME)
        assert shard_dirs(root) == before
        store.upsert(NAME, make_points(1000, 5))
        assert store.count(NAME) == 1005
        assert store.index_state(NAME).indexed_vectors == 0
    finally:
        store.close()


def test_a_build_is_given_up_when_the_writes_during_it_outgrow_the_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "vectors"
    # 32-d points are recorded as about 1.1 KB each: 60 of them pass 50 KB.
    store = populated_store(root, n=1000, build_journal_max_bytes=50_000)
    run_builder = store._run_builder
    started: list[bool] = []

    def write_then_build(*args: Any) -> None:
        store.upsert(NAME, make_points(1000, 30))  # recorded
        store.upsert(NAME, make_points(1030, 30))  # past the limit: the record is dropped
        coll = store._collections[NAME]
        assert coll.journal is not None and coll.journal.overflowed and not coll.journal.ops
        started.append(True)
        run_builder(*args)

    try:
        before = shard_dirs(root)
        monkeypatch.setattr(store, "_run_builder", write_then_build)
        with pytest.raises(IndexBuildAborted, match="given up"):
            store.build_index(NAME)
        assert started
        # Nothing lost, nothing left over, nothing recorded any more.
        assert shard_dirs(root) == before
        assert store._collections[NAME].journal is None
        assert store.count(NAME) == 1060
        assert store.index_state(NAME).indexed_vectors == 0
        # Once writes have slowed down the build goes through.
        monkeypatch.setattr(store, "_run_builder", run_builder)
        store.build_index(NAME)
        assert store.count(NAME) == 1060
        assert store.index_state(NAME).indexed_vectors > 0
    finally:
        store.close()


def test_a_plain_shard_directory_is_moved_under_a_link(tmp_path: Path) -> None:
    root = tmp_path / "vectors"
    with EdgeVectorStore(root) as store:
        store.ensure_collection(CollectionSpec(NAME, {"image": DIM}))
        store.upsert(NAME, make_points(0, 20))
    target = Path(os.path.realpath(root / NAME))
    (root / NAME).unlink()
    os.rename(target, root / NAME)  # as a store written before the link layout
    with EdgeVectorStore(root) as store:
        assert store.count(NAME) == 20
        assert (root / NAME).is_symlink()
        store.drop_collection(NAME)
        assert sorted(p.name for p in root.iterdir()) == [".lock"]
