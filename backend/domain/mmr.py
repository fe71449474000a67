"""Maximal marginal relevance (search results that differ from each other), vectorised.

Cost is O(k * n * d) for k picks out of n candidates of dimension d: each step compares the
candidates with the last pick only, keeping every candidate's highest similarity to the picks
so far in one array. The loop checks `stop` between steps, so a cancelled call or a passed
deadline ends the work within one step instead of running to the end in a worker thread.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from backend.domain.vectors import ScoredPoint

LAMBDA = 0.7


class Abandoned(Exception):
    """The caller stopped waiting (deadline passed or call cancelled)."""


def mmr(points: Sequence[ScoredPoint], name: str, k: int, *,
        stop: threading.Event | None = None, lam: float = LAMBDA) -> list[ScoredPoint]:
    """Pick up to `k` of `points` (those that carry the `name` vector), each maximising
    lam * score - (1 - lam) * (highest cosine similarity to the points already picked)."""
    candidates = [p for p in points if name in p.vectors]
    if not candidates or k <= 0:
        return []
    vectors = np.stack([np.asarray(p.vectors[name], dtype=np.float32) for p in candidates])
    relevance = lam * np.asarray([p.score for p in candidates], dtype=np.float32)
    redundancy: np.ndarray | None = None  # nothing picked yet: no redundancy
    taken = np.zeros(len(candidates), dtype=bool)
    chosen: list[int] = []
    for _ in range(min(k, len(candidates))):
        if stop is not None and stop.is_set():
            raise Abandoned("diversify abandoned")
        gain = relevance.copy() if redundancy is None else relevance - (1 - lam) * redundancy
        gain[taken] = -np.inf
        # argmax returns the first maximum: ties go to the better-ranked candidate, as the
        # input is in score order.
        best = int(np.argmax(gain))
        chosen.append(best)
        taken[best] = True
        similarity = vectors @ vectors[best]
        redundancy = similarity if redundancy is None else np.maximum(redundancy, similarity)
    return [candidates[i] for i in chosen]
