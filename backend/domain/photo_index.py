"""Local features of catalog images, kept beside the vectors: extracted at index time, stored
as sidecar files (for geometric verification) and as visual words (a sparse vector in the
vector store, for candidate generation).

The indexer writes the files before it upserts the points and deletes them after it deletes
the points, so a crash at any point leaves at worst files without points (swept by
reconcile), never points whose features are missing; the outbox row stays pending until
both are written, so the next drain redoes the whole step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from PIL.Image import Image

from backend.domain.ports import FeatureFiles, StoredFeatures
from backend.domain.vectors import SparseVector

if TYPE_CHECKING:
    from encoders.local_features import (
        LocalFeatureExtractor,
        LocalFeatures,
        PhotoScorer,
        VisualVocabulary,
    )

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# The sparse vector of visual words in every collection.
WORDS = "words"


@dataclass(frozen=True)
class Described:
    """One image's local features, serialised, and its visual words."""

    features: LocalFeatures
    data: bytes
    words: SparseVector | None  # None when the image has no keypoints


class PhotoIndex:
    """Extraction, visual words and the feature files, shared by indexing, search, restock,
    reconcile and reindex. Thread-safe."""

    def __init__(self, store: FeatureFiles, extractor: LocalFeatureExtractor,
                 vocabulary: VisualVocabulary, scorer: PhotoScorer, workers: int = 2) -> None:
        self.store = store
        self.extractor = extractor
        self.vocabulary = vocabulary
        self.scorer = scorer
        # OpenCV releases the GIL while it detects and describes, so threads use the cores.
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers),
                                        thread_name_prefix="local-features")

    @classmethod
    def open(cls, store: FeatureFiles, vocabulary_path: str = "", scorer_path: str = "",
             workers: int = 2) -> PhotoIndex:
        """The shipped vocabulary and scorer unless paths are given."""
        from threadpoolctl import threadpool_limits

        from encoders.local_features import LocalFeatureExtractor, PhotoScorer, VisualVocabulary

        # Verification multiplies small descriptor matrices on several threads at once;
        # OpenBLAS's own threads would only fight them for the cores (measured 10x slower
        # per product under load). Process-wide, and harmless for the rest of the server.
        threadpool_limits(limits=1, user_api="blas")

        return cls(store, LocalFeatureExtractor(),
                   VisualVocabulary.load(vocabulary_path or None),
                   PhotoScorer.load(scorer_path or None), workers)

    @property
    def version(self) -> str:
        """Changes whenever stored features or words would change: files of another version
        are stale (reconcile re-indexes their products)."""
        return f"{self.extractor.version}+{self.vocabulary.version}"

    def words(self, features: LocalFeatures) -> SparseVector | None:
        indices, values = self.vocabulary.words(features)
        if len(indices) == 0:
            return None
        return SparseVector(np.asarray(indices, dtype=np.int64),
                            np.asarray(values, dtype=np.float32))

    def describe_one(self, image: Image) -> Described:
        features = self.extractor.extract(image)
        return Described(features, features.to_bytes(), self.words(features))

    def describe(self, images: Sequence[Image | None]) -> list[Described | None]:
        """Every image's features and words, in parallel; None where there is no image."""
        jobs = [self._pool.submit(self.describe_one, im) if im is not None else None
                for im in images]
        return [job.result() if job is not None else None for job in jobs]

    def write(self, collection: str, entries: list[tuple[str, str, int, Described]]) -> int:
        """Store (point id, product id, position, described) durably; returns bytes written."""
        items = [StoredFeatures(pid, product_id, position, self.version, d.data)
                 for pid, product_id, position, d in entries]
        return self.store.put_many(collection, items)

    def load(self, collection: str, product_id: str, point_id: str) -> LocalFeatures | None:
        """A catalog image's features, or None when missing or of another version (search
        then ranks that image without verification; reconcile repairs it)."""
        from encoders.local_features import LocalFeatures

        stored = self.store.get(collection, product_id, point_id)
        if stored is None or stored.version != self.version:
            return None
        try:
            return LocalFeatures.from_bytes(stored.data)
        except (ValueError, EOFError) as exc:
            log.warning("local features of point %s unreadable: %s", point_id, exc)
            return None

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """Run `fn` over `items` on the feature threads (verification of candidates)."""
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
