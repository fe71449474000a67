"""An in-memory photo matcher over a catalog's local features: visual-word candidates
(IDF-weighted sparse dot product, as Qdrant's IDF modifier computes it) -> geometric
verification of the top candidates -> PhotoScorer. Evaluation and scorer training use it;
the server does the same steps with the vector store holding the words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from encoders.local_features import (
    LocalFeatures,
    PhotoScorer,
    Verification,
    VisualVocabulary,
    root_sift,
    verify,
)

__all__ = ["Candidate", "PhotoMatcher", "qdrant_idf"]


def qdrant_idf(n_docs: int, doc_freq: np.ndarray) -> np.ndarray:
    """Qdrant's IDF modifier: ln(1 + (N - n + 0.5) / (n + 0.5))."""
    n = doc_freq.astype(np.float64)
    return np.log1p((n_docs - n + 0.5) / (n + 0.5)).astype(np.float32)


@dataclass(frozen=True)
class Candidate:
    index: int  # catalog row
    sparse_score: float
    sparse_rank: int
    verification: Verification
    dense_cos: float | None = None
    probability: float = 0.0

    def signals(self) -> dict[str, float]:
        v = self.verification
        out = {"inliers": float(v.inliers), "inlier_ratio": float(v.inlier_ratio),
               "sparse_rank": float(self.sparse_rank)}
        if self.dense_cos is not None:
            out["dense_cos"] = float(self.dense_cos)
        return out


class PhotoMatcher:
    """Catalog local features, their visual words and an inverted index (a dense
    item x word matrix: fine for tens of thousands of items in tests and evaluation)."""

    def __init__(self, features: Sequence[LocalFeatures], vocabulary: VisualVocabulary,
                 scorer: PhotoScorer | None = None) -> None:
        self.features = list(features)
        self.vocabulary = vocabulary
        self.scorer = scorer
        self.roots = [root_sift(f.descriptors) for f in self.features]
        tf = np.zeros((len(self.features), vocabulary.size), dtype=np.float32)
        for row, f in enumerate(self.features):
            ids, values = vocabulary.words(f)
            tf[row, ids] = values
        self.idf = qdrant_idf(len(self.features), (tf > 0).sum(axis=0))
        self.tf = tf

    def sparse_scores(self, query: LocalFeatures) -> np.ndarray:
        ids, values = self.vocabulary.words(query)
        if len(ids) == 0:
            return np.zeros(len(self.features), dtype=np.float32)
        return self.tf[:, ids] @ (values * self.idf[ids])

    def candidates(self, query: LocalFeatures, top: int = 30,
                   extra: Sequence[int] = (), dense: np.ndarray | None = None
                   ) -> list[Candidate]:
        """The `top` visual-word candidates (plus `extra` rows, e.g. the dense vector's
        best), each verified and, with a scorer, scored; best first."""
        scores = self.sparse_scores(query)
        order = np.argsort(-scores, kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        rows = list(dict.fromkeys([*map(int, order[:top]), *map(int, extra)]))
        q_root = root_sift(query.descriptors)
        out: list[Candidate] = []
        with threadpool_limits(1):  # tiny matrices: BLAS threads only add overhead
            for row in rows:
                v = verify(query, self.features[row], query_root=q_root,
                           candidate_root=self.roots[row])
                cand = Candidate(row, float(scores[row]), int(rank[row]), v,
                                 None if dense is None else float(dense[row]))
                if self.scorer is not None:
                    cand = Candidate(cand.index, cand.sparse_score, cand.sparse_rank, v,
                                     cand.dense_cos, self.scorer.score(cand.signals()))
                out.append(cand)
        out.sort(key=lambda c: (-c.probability, -c.verification.inliers, c.sparse_rank))
        return out

    def ranking(self, query: LocalFeatures, top: int = 30, extra: Sequence[int] = (),
                dense: np.ndarray | None = None) -> tuple[np.ndarray, list[Candidate]]:
        """A score per catalog row for Recall@K: verified candidates first (by scorer, then
        inliers), the rest by their visual-word score."""
        cands = self.candidates(query, top, extra, dense)
        sparse = self.sparse_scores(query)
        scale = float(sparse.max()) if len(sparse) and sparse.max() > 0 else 1.0
        final = (sparse / scale).astype(np.float32)  # 0..1
        for c in cands:
            bonus = (c.probability if self.scorer is not None
                     else 1 - math.exp(-c.verification.inliers / 10))
            final[c.index] = 2.0 + bonus if c.verification.verified else final[c.index]
        return final, cands
