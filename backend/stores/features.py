"""Per-image local features (keypoints + descriptors) as compact sidecar files.

The vector store holds the dense vectors (and the visual words as a sparse vector); these
files hold every catalog image's keypoints and descriptors, the durable source of the
descriptor index photo search votes over (`backend.domain.photo_index`). They are derived
data like the vectors, kept per collection so that a reindex builds its own and a dropped
collection takes its features with it:

    <root>/<collection>/<sha1(product_id)[:2]>/<sha1(product_id)>/<point id>.lf

One directory per product, so deleting a product needs no list of its point ids. Each file is
a small header (magic, format, features version, product id, position) and the serialised
features. Files are written to a temporary name, fsynced and renamed, so a reader or a crash
sees the old file or the new one, never half of one; leftover temporary files are ignored
and swept by `scan`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from backend.domain.ports import StoredFeatures
from backend.errors import ConfigError
from backend.stores.durable import fsync_dir

_MAGIC = b"PSLF"
_FORMAT = 1
_HEADER = struct.Struct("<4sBHHi")  # magic, format, len(version), len(product id), position
_SUFFIX = ".lf"
_TMP = ".tmp-"
_COLLECTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _product_dir(product_id: str) -> str:
    digest = hashlib.sha1(product_id.encode("utf-8")).hexdigest()
    return f"{digest[:2]}/{digest}"


def _encode(item: StoredFeatures) -> bytes:
    version = item.version.encode("utf-8")
    product = item.product_id.encode("utf-8")
    header = _HEADER.pack(_MAGIC, _FORMAT, len(version), len(product), item.position)
    return header + version + product + item.data


def _decode(point_id: str, blob: bytes, with_data: bool = True) -> StoredFeatures | None:
    """None for a file that is not one of ours (truncated by a disk fault, foreign)."""
    if len(blob) < _HEADER.size:
        return None
    magic, fmt, n_version, n_product, position = _HEADER.unpack_from(blob)
    end = _HEADER.size + n_version + n_product
    if magic != _MAGIC or fmt != _FORMAT or len(blob) < end:
        return None
    version = blob[_HEADER.size:_HEADER.size + n_version].decode("utf-8", "replace")
    product = blob[_HEADER.size + n_version:end].decode("utf-8", "replace")
    return StoredFeatures(point_id, product, position, version, blob[end:] if with_data else b"")


def _stamp(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


class FeatureStore:
    """Sidecar files of local features under one root (the domain's `FeatureFiles` port);
    thread-safe (files are replaced atomically, and each write uses its own temporary name)."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        self._root.mkdir(parents=True, exist_ok=True)

    @property
    def root(self) -> Path:
        return self._root

    def _collection_dir(self, collection: str) -> Path:
        if not _COLLECTION.match(collection):
            raise ConfigError(f"invalid collection name {collection!r} for local features")
        return self._root / collection

    def _path(self, collection: str, product_id: str, point_id: str) -> Path:
        uuid.UUID(point_id)  # a point id is a UUID: never a path of its own
        return self._collection_dir(collection) / _product_dir(product_id) / f"{point_id}{_SUFFIX}"

    def put_many(self, collection: str, items: list[StoredFeatures]) -> int:
        """Write every item durably (file and directory fsynced) before returning; returns the
        bytes written."""
        written = 0
        dirs: set[Path] = set()
        for item in items:
            path = self._path(collection, item.product_id, item.point_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{_TMP}{path.name}-{os.getpid()}-{threading.get_ident()}")
            blob = _encode(item)
            with open(tmp, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            dirs.add(path.parent)
            written += len(blob)
        for d in dirs:
            fsync_dir(d)
        return written

    def get(self, collection: str, product_id: str, point_id: str) -> StoredFeatures | None:
        try:
            blob = self._path(collection, product_id, point_id).read_bytes()
        except FileNotFoundError:
            return None
        return _decode(point_id, blob)

    def stamp(self, collection: str, product_id: str, point_id: str) -> str | None:
        """Identifies this version of the file (inode, mtime and size: every write renames a
        new file into place, so a rewrite changes it), or None when it is missing."""
        try:
            st = self._path(collection, product_id, point_id).stat()
        except FileNotFoundError:
            return None
        return _stamp(st)

    def stamps(self, collection: str) -> dict[str, tuple[Path, str]]:
        """point id -> (path, stamp) of every stored file: one directory walk and a stat per
        file, no reads (what a derived index compares itself with)."""
        base = self._collection_dir(collection)
        out: dict[str, tuple[Path, str]] = {}
        if not base.is_dir():
            return out
        for path in base.glob(f"*/*/*{_SUFFIX}"):
            if path.name.startswith(_TMP):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:  # deleted while listing
                continue
            out[path.name[: -len(_SUFFIX)]] = (path, _stamp(st))
        return out

    def read(self, path: Path) -> StoredFeatures | None:
        """A file found by `stamps`; None when it is gone or not one of ours."""
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        return _decode(path.name[: -len(_SUFFIX)], blob)

    def delete_products(self, collection: str, product_ids: list[str]) -> None:
        base = self._collection_dir(collection)
        for product_id in product_ids:
            shutil.rmtree(base / _product_dir(product_id), ignore_errors=True)

    def delete(self, collection: str, entries: list[tuple[str, str]]) -> None:
        """Remove the files of these (product id, point id) pairs; missing ones are fine."""
        for product_id, point_id in entries:
            self._path(collection, product_id, point_id).unlink(missing_ok=True)

    def prune(self, collection: str, product_id: str, keep: set[str]) -> int:
        """Remove a product's files whose point id is not in `keep` (images it no longer
        has); returns how many."""
        folder = self._collection_dir(collection) / _product_dir(product_id)
        removed = 0
        if folder.is_dir():
            for path in folder.iterdir():
                if path.name.endswith(_SUFFIX) and path.name[: -len(_SUFFIX)] not in keep:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed

    def scan(self, collection: str) -> Iterator[StoredFeatures]:
        """Every stored file's header (no data), for reconciliation. Unreadable files come
        back with version '' (so they count as stale); stray temporary files are removed."""
        base = self._collection_dir(collection)
        if not base.is_dir():
            return
        for path in base.glob("*/*/*"):
            if path.name.startswith(_TMP):
                path.unlink(missing_ok=True)
                continue
            if not path.name.endswith(_SUFFIX):
                continue
            point_id = path.name[: -len(_SUFFIX)]
            with open(path, "rb") as f:
                head = f.read(_HEADER.size + 4096)
            found = _decode(point_id, head, with_data=False)
            yield found or StoredFeatures(point_id, "", -1, "")

    def delete_paths(self, collection: str, stored: list[StoredFeatures]) -> None:
        """Remove files found by `scan`, including unreadable ones (no product id)."""
        base = self._collection_dir(collection)
        for item in stored:
            for path in base.glob(f"*/*/{item.point_id}{_SUFFIX}"):
                path.unlink(missing_ok=True)

    def size_bytes(self, collection: str) -> int:
        base = self._collection_dir(collection)
        return sum(p.stat().st_size for p in base.glob(f"*/*/*{_SUFFIX}")) if base.is_dir() \
            else 0

    def drop(self, collection: str) -> None:
        """Remove a collection's features (moved aside first, so a crash never leaves a
        half-deleted directory under the live name)."""
        base = self._collection_dir(collection)
        if not base.exists():
            return
        tomb = self._root / f".dropped-{collection}-{uuid.uuid4().hex}"
        os.replace(base, tomb)
        shutil.rmtree(tomb, ignore_errors=True)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self._root)!r})"


__all__ = ["FeatureStore", "StoredFeatures"]
