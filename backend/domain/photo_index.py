"""Local features of catalog images, kept beside the vectors: extracted at index time, stored
as sidecar files (the durable source), as visual words (a sparse vector in the vector store)
and in the descriptor index (every catalog descriptor, for candidate generation by vote;
`encoders.descriptor_index`).

The indexer writes the files before it upserts the points and deletes them after it deletes
the points, so a crash at any point leaves at worst files without points (swept by
reconcile), never points whose features are missing; the outbox row stays pending until
both are written, so the next drain redoes the whole step.

The descriptor index is derived from the files, like the vectors from the catalog. Each
process holds one per collection in memory: updated in-process as this process writes or
deletes features, loaded from a snapshot (`<features>/<collection>/.descriptors/`, a
manifest naming the snapshot's files) and brought in line with the files by `sync`, which
compares every file's stamp (inode, mtime, size) with what the index holds.
Every writer replaces a generation token (`<features>/<collection>/GENERATION`) after its
files are durable; another process (a second search replica, the server while a CLI
ingests) reads the token at most once per `GENERATION_CHECK_S` and syncs when it changed.
A vote's candidates are checked against the vector store (payload and filters) before
they are ranked, so an entry whose point is gone or filtered out is never returned.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from PIL.Image import Image

from backend.domain.ports import FeatureFiles, StoredFeatures
from backend.domain.vectors import SparseVector

if TYPE_CHECKING:
    from encoders.descriptor_index import DescriptorIndex
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
GENERATION_FILE = "GENERATION"
SNAPSHOT_DIR = ".descriptors"
MANIFEST = "manifest.json"
# How often a process looks for other processes' feature writes (one small file read).
GENERATION_CHECK_S = 1.0
# A dirty index is snapshotted when it has taken this many changes since the last snapshot
# (and always on close): a restart then reads one file instead of every feature file.
SNAPSHOT_EVERY = 2000


@dataclass
class SyncReport:
    """What bringing a descriptor index in line with the feature files changed."""

    added: int = 0  # files the index lacked (or held at another stamp)
    removed: int = 0  # entries without a current file
    stale_files: int = 0  # files of another features version (reconcile re-indexes them)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


@dataclass
class _Held:
    index: DescriptorIndex
    token: str  # generation token the index was last synced at
    checked: float  # monotonic time of the last token check
    changes: int = 0  # since the last snapshot
    lock: threading.Lock = field(default_factory=threading.Lock)


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
                 vocabulary: VisualVocabulary, scorer: PhotoScorer, workers: int = 2,
                 descriptor_index: Callable[[], DescriptorIndex] | None = None) -> None:
        self.store = store
        self.extractor = extractor
        self.vocabulary = vocabulary
        self.scorer = scorer
        if descriptor_index is None:
            from encoders.descriptor_index import DescriptorIndex

            descriptor_index = DescriptorIndex.empty
        self._new_index = descriptor_index
        self._held: dict[str, _Held] = {}
        self._held_lock = threading.Lock()
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
        # The same for FAISS's OpenMP threads in the descriptor vote.
        import faiss

        faiss.omp_set_num_threads(1)

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
        """Store (point id, product id, position, described) durably, then add them to this
        process's descriptor index and tell other processes; returns bytes written."""
        items = [StoredFeatures(pid, product_id, position, self.version, d.data)
                 for pid, product_id, position, d in entries]
        written = self.store.put_many(collection, items)
        held = self._held.get(collection)
        if held is not None:
            with held.lock:
                held.index.add_many(
                    (pid, product_id, d.features, self._stamp(collection, product_id, pid))
                    for pid, product_id, _, d in entries)
                self._changed(collection, held, len(entries))
        else:
            self._bump(collection)
        return written

    def delete_products(self, collection: str, product_ids: list[str]) -> None:
        """Remove these products' feature files and their descriptor-index entries."""
        self.store.delete_products(collection, product_ids)
        held = self._held.get(collection)
        if held is not None:
            with held.lock:
                self._changed(collection, held, held.index.remove_groups(product_ids))
        else:
            self._bump(collection)

    def prune(self, collection: str, product_id: str, keep: set[str]) -> int:
        """Remove a product's files (and entries) of images it no longer has."""
        removed = self.store.prune(collection, product_id, keep)
        held = self._held.get(collection)
        if held is not None:
            with held.lock:
                gone = [k for k in held.index.keys_of(product_id) if k not in keep]
                self._changed(collection, held, held.index.remove(gone))
        elif removed:
            self._bump(collection)
        return removed

    def drop(self, collection: str) -> None:
        """Remove a collection's features, its descriptor index and snapshot."""
        with self._held_lock:
            self._held.pop(collection, None)
        self.store.drop(collection)

    # --- the descriptor index -------------------------------------------------------------

    def descriptors(self, collection: str) -> DescriptorIndex:
        """This process's descriptor index of a collection: loaded on first use (snapshot,
        then synced with the files), re-synced when another process changed the files."""
        held = self._held.get(collection)
        if held is None:
            with self._held_lock:
                held = self._held.get(collection)
                if held is None:
                    held, _ = self._load(collection)
                    self._held[collection] = held
        now = time.monotonic()
        if now - held.checked >= GENERATION_CHECK_S:
            held.checked = now
            if self._token(collection) != held.token:
                with held.lock:
                    self._sync_held(collection, held)
                    if held.changes >= SNAPSHOT_EVERY:
                        self._snapshot(collection, held)
        return held.index

    def sync(self, collection: str) -> SyncReport:
        """Bring the collection's descriptor index in line with the feature files now (load
        it first if needed) and snapshot it when it changed: what reconcile repairs."""
        with self._held_lock:
            if collection not in self._held:
                held, report = self._load(collection)
                self._held[collection] = held
                return report
        held = self._held[collection]
        with held.lock:
            report = self._sync_held(collection, held)
            if report.changed:
                self._snapshot(collection, held)
        return report

    def index_drift(self, collection: str) -> SyncReport:
        """What `sync` would change in the collection's descriptor index (this process's, or
        else the snapshot other processes load), without changing it: `added` counts files
        the index lacks or holds at another stamp, `removed` entries without a file. No
        snapshot yet is no drift: the first process to search builds it from the files."""
        held = self._held.get(collection)
        index = held.index if held is not None else self._read_snapshot(collection)
        if index is None:
            return SyncReport()
        present = index.stamps()
        files = self.store.stamps(collection)
        return SyncReport(added=sum(present.get(k) != stamp for k, (_, stamp) in files.items()),
                          removed=sum(k not in files for k in present))

    def snapshot(self, collection: str) -> None:
        held = self._held.get(collection)
        if held is not None:
            with held.lock:
                self._snapshot(collection, held)

    def _load(self, collection: str) -> tuple[_Held, SyncReport]:
        index = self._read_snapshot(collection)
        held = _Held(index if index is not None else self._new_index(), "", time.monotonic())
        with held.lock:
            report = self._sync_held(collection, held)
            if report.changed:
                self._snapshot(collection, held)
        log.info("descriptor index of %s: %d images, %d descriptors (snapshot %s, synced "
                 "+%d -%d)", collection, len(held.index), held.index.descriptors,
                 "read" if index is not None else "none", report.added, report.removed)
        return held, report

    def _sync_held(self, collection: str, held: _Held) -> SyncReport:
        """Caller holds held.lock. The token is read before the files are listed, so a
        write that lands during the listing changes the token again and is caught next."""
        from encoders.local_features import LocalFeatures

        token = self._token(collection)
        report = SyncReport()
        present = held.index.stamps()
        files = self.store.stamps(collection)
        adds: list[tuple[str, str, LocalFeatures, str]] = []
        gone = [k for k in present if k not in files]
        for point_id, (path, stamp) in files.items():
            if present.get(point_id) == stamp:
                continue
            stored = self.store.read(path)
            features = None
            if stored is not None and stored.version == self.version:
                try:
                    features = LocalFeatures.from_bytes(stored.data)
                except (ValueError, EOFError):
                    features = None
            if features is None:  # another version or unreadable: reconcile's to repair
                report.stale_files += int(stored is not None or path.exists())
                if point_id in present:
                    gone.append(point_id)
                continue
            assert stored is not None
            adds.append((point_id, stored.product_id, features, stamp))
            if len(adds) >= 256:
                held.index.add_many(adds)
                report.added += len(adds)
                adds = []
        held.index.add_many(adds)
        report.added += len(adds)
        report.removed = held.index.remove(gone)
        held.token = token
        held.changes += report.added + report.removed
        return report

    def _stamp(self, collection: str, product_id: str, point_id: str) -> str:
        return self.store.stamp(collection, product_id, point_id) or ""

    def _changed(self, collection: str, held: _Held, n: int) -> None:
        """Caller holds held.lock: announce the change, snapshot now and then."""
        if not n:
            return
        # Another process may have written since this index last synced: its token must not
        # be overwritten unseen, so catch up with the files first.
        foreign = self._token(collection) != held.token
        held.token = self._bump(collection)
        if foreign:
            self._sync_held(collection, held)
        held.changes += n
        if held.changes >= SNAPSHOT_EVERY:
            self._snapshot(collection, held)

    def _token(self, collection: str) -> str:
        try:
            return (self.store.root / collection / GENERATION_FILE).read_text()
        except (FileNotFoundError, NotADirectoryError):
            return ""

    def _bump(self, collection: str) -> str:
        folder = self.store.root / collection
        folder.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        tmp = folder / f".{GENERATION_FILE}-{token}"
        tmp.write_text(token)
        os.replace(tmp, folder / GENERATION_FILE)
        return token

    def _read_snapshot(self, collection: str) -> DescriptorIndex | None:
        from encoders.descriptor_index import DescriptorIndex

        folder = self.store.root / collection / SNAPSHOT_DIR
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            if (manifest.get("features_version") != self.version
                    or manifest.get("index_version") != self._new_index().version):
                log.info("descriptor index snapshot of %s is of another version: rebuilt",
                         collection)
                return None
            index = DescriptorIndex.from_bytes((folder / manifest["index"]).read_bytes(),
                                               (folder / manifest["tables"]).read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, OSError) as exc:
            log.warning("descriptor index snapshot of %s unreadable (%s): rebuilt from the "
                        "feature files", collection, exc)
            return None
        if len(index) != manifest.get("images"):
            log.warning("descriptor index snapshot of %s does not match its manifest: rebuilt",
                        collection)
            return None
        return index

    def _snapshot(self, collection: str, held: _Held) -> None:
        """Caller holds held.lock. Files first (fsynced), then the manifest replaced
        atomically, then the previous snapshot's files removed."""
        folder = self.store.root / collection / SNAPSHOT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        index_bytes, tables = held.index.to_bytes()
        name = uuid.uuid4().hex
        for suffix, blob in ((".faiss", index_bytes), (".npz", tables)):
            with open(folder / f"{name}{suffix}", "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
        manifest = {"index": f"{name}.faiss", "tables": f"{name}.npz",
                    "images": len(held.index), "descriptors": held.index.descriptors,
                    "features_version": self.version, "index_version": held.index.version,
                    "token": held.token}
        tmp = folder / f".{MANIFEST}-{name}"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, folder / MANIFEST)
        for path in folder.iterdir():
            if path.name != MANIFEST and not path.name.startswith(name):
                path.unlink(missing_ok=True)
        held.changes = 0

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
        """Snapshot every index that changed since its last snapshot, stop the threads."""
        for collection, held in list(self._held.items()):
            if held.changes:
                try:
                    self.snapshot(collection)
                except OSError as exc:  # the files stay the source: the next load syncs
                    log.warning("descriptor index snapshot of %s failed: %s", collection, exc)
        self._pool.shutdown(wait=False, cancel_futures=True)
