"""In-memory photo matchers over a catalog's local features, for evaluation and scorer
training:

- VoteMatcher: the server's path (backend.domain.photo_search): nearest-descriptor vote over
  a DescriptorIndex -> verification on the votes' correspondences -> PhotoScorer;
- PhotoMatcher: the earlier path kept for comparison: visual-word candidates (IDF-weighted
  sparse dot product, as Qdrant's IDF modifier computes it) -> verification -> ranking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from encoders.descriptor_index import DescriptorIndex, Votes
from encoders.local_features import (
    LocalFeatures,
    PhotoScorer,
    Verification,
    VerifySettings,
    VisualVocabulary,
    root_sift,
    verify,
    verify_matches,
)

__all__ = ["Candidate", "PhotoMatcher", "VoteCandidate", "VoteMatcher", "qdrant_idf",
           "verify_votes", "vote_signals"]


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


# ------------------------------------------------------------------- descriptor vote

# Voted candidates a query looks at, and how many of them are verified (on their votes'
# correspondences: a RANSAC fit over a few dozen points each, no matching pass).
VOTE_DEPTH = 40
VERIFY_VOTED = 20


def vote_signals(votes: int, passed: int, verification: Verification | None,
                 dense_cos: float | None) -> dict[str, float]:
    """The scorer's signals of one candidate (encoders.local_features documents them)."""
    out = {"votes": float(votes), "vote_share": votes / passed if passed else 0.0}
    if verification is not None:
        out["inliers"] = float(verification.inliers)
        out["inlier_ratio"] = (verification.inliers / votes) if votes else 0.0
    if dense_cos is not None:
        out["dense_cos"] = float(dense_cos)
    return out


def verify_votes(query: LocalFeatures, votes: Votes, key: str,
                 settings: VerifySettings | None = None) -> Verification | None:
    """Geometric verification of one voted candidate on its votes' correspondences; None
    when it has no votes."""
    if key not in votes.matches:
        return None
    rows, points = votes.matches[key]
    return verify_matches(query.keypoints[rows], query.size, points, votes.sizes[key],
                          settings)


@dataclass(frozen=True)
class VoteCandidate:
    index: int  # catalog row
    votes: int
    verification: Verification | None
    dense_cos: float | None
    probability: float
    signals: dict[str, float]


class VoteMatcher:
    """The server's photo path in memory (evaluation, scorer training): the catalog's
    descriptors in a DescriptorIndex, vote -> verification on the votes -> PhotoScorer over
    votes, inliers and dense cosine. Keys are catalog rows."""

    def __init__(self, features: Sequence[LocalFeatures], scorer: PhotoScorer | None = None,
                 index: DescriptorIndex | None = None, groups: Sequence[str] | None = None
                 ) -> None:
        self.features = list(features)
        self.scorer = scorer
        self.index = index if index is not None else DescriptorIndex.empty()
        names = groups if groups is not None else [str(i) for i in range(len(self.features))]
        self.index.add_many((str(i), names[i], f, "") for i, f in enumerate(self.features))

    def candidates(self, query: LocalFeatures, dense: np.ndarray | None = None,
                   extra: Sequence[int] = (), depth: int = VOTE_DEPTH,
                   verify_top: int = VERIFY_VOTED, scorer: PhotoScorer | None = None
                   ) -> list[VoteCandidate]:
        """The `depth` most voted rows (plus `extra`, e.g. the dense vector's best), the
        first `verify_top` by votes verified, each scored (by `scorer`, default the
        matcher's: another CNN's cosines need their own); best first."""
        scorer = scorer or self.scorer
        with threadpool_limits(1):  # tiny matrices: BLAS threads only add overhead
            votes = self.index.vote(root_sift(query.descriptors), query.keypoints)
            voted = [int(k) for k, _ in votes.ranked()[:depth]]
            rows = list(dict.fromkeys([*voted, *map(int, extra)]))
            out = []
            for rank, row in enumerate(rows):
                n = votes.counts.get(str(row), 0)
                ver = verify_votes(query, votes, str(row)) if rank < verify_top and n else None
                cos = None if dense is None else float(dense[row])
                signals = vote_signals(n, votes.passed, ver, cos)
                p = scorer.score(signals) if scorer is not None else 0.0
                out.append(VoteCandidate(row, n, ver, cos, p, signals))
        out.sort(key=lambda c: (-c.probability, -c.votes, c.index))
        return out

    def ranking(self, query: LocalFeatures, dense: np.ndarray | None = None,
                extra: Sequence[int] = (), scorer: PhotoScorer | None = None
                ) -> tuple[np.ndarray, list[VoteCandidate]]:
        """A score per catalog row for Recall@K: the candidates by probability (or votes
        without a scorer) above every other row; the rest by dense cosine when given."""
        scorer = scorer or self.scorer
        cands = self.candidates(query, dense, extra, scorer=scorer)
        base = (np.clip(dense, -1, 1) * 0.5 + 0.5 if dense is not None
                else np.zeros(len(self.features))).astype(np.float32)
        final = base.copy()
        for c in cands:
            final[c.index] = 2.0 + (c.probability if scorer is not None
                                    else 1 - math.exp(-c.votes / 10))
        return final, cands
