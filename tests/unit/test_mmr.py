"""Diversified ranking (MMR): the vectorised version picks what the textbook definition
picks, and stops when told to."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from backend.domain import search
from backend.domain.mmr import LAMBDA, Abandoned, mmr
from backend.stores.vectors.base import PointPayload, ScoredPoint


def _points(n: int, dim: int = 16, seed: int = 0) -> list[ScoredPoint]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # A few near-duplicates, so that diversifying has something to do.
    if n > 1:
        vectors[1] = vectors[0] + 0.01
        vectors[1] /= np.linalg.norm(vectors[1])
    scores = np.sort(rng.uniform(0.2, 0.9, size=n))[::-1]
    return [
        ScoredPoint(id=f"p{i}", score=float(scores[i]), vectors={"image": vectors[i]},
                    payload=PointPayload(f"prod{i}", 0, "m", 1, "shop", [], "", "", "", "",
                                         1.0, True, True))
        for i in range(n)
    ]


def _textbook(points: list[ScoredPoint], name: str, k: int) -> list[ScoredPoint]:
    candidates = list(points)
    chosen: list[ScoredPoint] = []
    while candidates and len(chosen) < k:
        def gain(p: ScoredPoint) -> float:
            redundancy = max((float(np.dot(p.vectors[name], c.vectors[name])) for c in chosen),
                             default=0.0)
            return LAMBDA * p.score - (1 - LAMBDA) * redundancy

        best = max(candidates, key=gain)
        chosen.append(best)
        candidates.remove(best)
    return chosen


@pytest.mark.parametrize("n,k,seed", [(1, 1, 0), (20, 5, 1), (60, 60, 2), (200, 40, 3)])
def test_picks_what_the_definition_picks(n: int, k: int, seed: int) -> None:
    points = _points(n, seed=seed)
    assert [p.id for p in mmr(points, "image", k)] == [p.id for p in _textbook(points, "image", k)]


def test_near_duplicate_is_pushed_down() -> None:
    points = _points(30)
    picked = [p.id for p in mmr(points, "image", 5)]
    assert picked[0] == "p0" and "p1" not in picked  # p1 is almost p0


def test_points_without_the_vector_are_skipped_and_k_zero_is_empty() -> None:
    points = _points(10)
    points[0].vectors = {}
    assert "p0" not in [p.id for p in mmr(points, "image", 10)]
    assert mmr(points, "image", 0) == [] and mmr([], "image", 3) == []


def test_stop_event_abandons_the_work() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(Abandoned):
        mmr(_points(50), "image", 10, stop=stop)


def test_cancelled_call_stops_the_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deadline or a client cancel cancels the handler: the MMR thread must end too,
    instead of running to completion for nobody."""
    running = threading.Event()
    ended = threading.Event()

    def endless(points: object, name: str, k: int, *, stop: threading.Event) -> list[object]:
        running.set()
        while not stop.wait(0.01):
            pass
        ended.set()
        raise Abandoned("stopped")

    monkeypatch.setattr(search, "mmr", endless)

    async def call() -> None:
        await asyncio.wait_for(search._diversify([], "image", 10), timeout=0.2)

    with pytest.raises(TimeoutError):
        asyncio.run(call())
    assert running.is_set()
    deadline = time.monotonic() + 5
    while not ended.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ended.is_set()
