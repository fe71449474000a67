"""Embedded vector store on qdrant-edge: Qdrant's engine in-process, no server.

Layout under `root`:

    .lock                 exclusive fcntl lock, holds the owner's pid
    aliases.json          {alias: collection}, replaced atomically
    <collection>.json     the CollectionSpec; written last, so it marks a complete collection
    <collection>          symlink to the collection's current shard directory, replaced
                          atomically when a rebuilt shard takes over (a shard written before
                          this layout, a plain directory, is moved into it when first opened)
    .shard-<collection>-<id>/   one EdgeShard (segments, payload indexes, write-ahead log)

One process owns a root: the shard's write-ahead log cannot be shared, so a second process
is refused up front with StoreBusy instead of failing later inside the engine.

qdrant-edge applies updates synchronously (a write is searchable when `update` returns) and
its shard is safe to use from several threads at once, so searches and writes run
concurrently. A per-collection shared/exclusive lock only keeps a shard from being closed
(drop, close, the switch to a rebuilt shard) while a call is still using it; a second one,
taken before it, lets the index build pause writes (and only writes).

`build_index` builds outside this process: qdrant-edge's `optimize` holds Python's GIL for
the whole build, which in-process stops every thread (bench/live_index.py). The shard is
flushed, then with writes paused its directory is copied to a new shard directory (with no
update running, the files are what a killed process would leave, which the engine recovers
from); a child process (`backend.stores.vectors.edge_build`, lowest CPU priority) optimises
the copy while this process keeps serving reads and writes on the live shard and records
every update applied to it (up to `build_journal_max_bytes`: past that the build is given
up, IndexBuildAborted); then the built copy is read ahead into the page cache and opened,
the recorded updates are applied to it (the last few with writes paused again), and the
collection's symlink is replaced, its shard handle swapped (reads wait only for the swap),
and the old shard closed and deleted. qdrant-edge's flush, load and close hold the GIL
(searches wait for them); `BuildTimes.phases` says how long each part took. The live shard
is not touched until the symlink is replaced, so a crash at any point leaves one consistent
shard; shard directories no symlink points to are removed when the store opens. A failed or
timed-out build (`build_timeout_s`) leaves the live shard serving and raises
IndexBuildError.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from backend.domain.types import Filters
from backend.errors import BuildAborted, ConfigError, InvalidInput, NotReady, StoreBusy
from backend.stores.durable import fsync_dir
from backend.stores.vectors.base import (
    BOOST,
    RRF_K,
    CollectionSpec,
    FacetCounts,
    FacetQuery,
    FusedSearch,
    IndexState,
    PayloadPatch,
    PointPayload,
    Prefetch,
    ScoredPoint,
    SparseVector,
    VectorPoint,
    check_facet_query,
    check_fusion,
    check_page,
    check_prefetches,
    patch_values,
    price_band_label,
    scored_points,
    sparse_values,
    vector_values,
)
from backend.stores.vectors.filters import (
    PAYLOAD_INDEXES,
    FilterSpec,
    IndexKind,
    Range,
    edge_filter,
    edge_tree,
    facet_spec,
    filter_spec,
    products_spec,
    to_edge,
    with_any_of,
)

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ALIASES = "aliases.json"
_LOCK = ".lock"
_TOMBSTONE = ".dropped-"
_SHARD = ".shard-"
# The build applies the updates made during it while writes go on, until at most this many
# are left to apply with writes paused.
_REPLAY_PAUSED = 32
_LINK = ".link-"
# What recording an update other than an upsert is taken to cost, and each upserted point
# beyond its vectors (its payload), in bytes.
_OP_BYTES = 1024
# Points per update call: bounds the size of one write-ahead-log record.
_WRITE_BATCH = 256
_SCROLL_PAGE = 1000
# Below this many KB of vectors a segment is searched exactly; Qdrant's own default.
_FULL_SCAN_THRESHOLD_KB = 10_000


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name) or name.endswith(".json") or name == _ALIASES.removesuffix(".json"):
        raise ConfigError(
            f"invalid {what} name {name!r}: use 1-128 letters, digits, '_', '-' or '.', "
            f"starting with a letter or digit (and not 'aliases')"
        )


class IndexBuildError(RuntimeError):
    """The index build (the child process) failed or timed out; the live shard is unchanged."""


class IndexBuildAborted(IndexBuildError, BuildAborted):
    """The updates made during the build outgrew `build_journal_max_bytes`; the build was
    given up (the live shard is unchanged) and can be retried once writes slow down."""


def _copy_sparse(src: str, dst: str) -> None:
    """Copy a file without filling its holes: the write-ahead log's segments are 32 MB
    files that are mostly holes, and copying those as zeros is most of a shard copy."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole from here
                    break
                raise
            end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
            offset = start
            while offset < end:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), end - offset, offset, offset)
                if n == 0:
                    break
                offset += n
            pos = end
        fout.truncate(size)


def _copy_file(src: str, dst: str) -> None:
    try:
        _copy_sparse(src, dst)
    except (OSError, AttributeError):
        # No SEEK_DATA or copy_file_range here (another OS or filesystem).
        shutil.copyfile(src, dst)


def _each_file(directory: str | Path, call: Callable[[int], object],
               ignore: tuple[type[Exception], ...]) -> None:
    """`call(fd)` on every file under `directory` (plain system calls: no GIL held while
    they wait); files that vanish meanwhile and the errors in `ignore` are skipped."""
    for dirpath, _, files in os.walk(directory):
        for name in files:
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                call(fd)
            except ignore:
                pass
            finally:
                os.close(fd)


def _prefetch(directory: Path) -> None:
    """Ask the kernel to read every file under `directory` into the page cache. Opening a
    shard holds the GIL while it faults the shard's files in; read ahead here (plain
    system calls, without the GIL) it spends about half as long holding it."""
    _each_file(directory, lambda fd: os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED),
               (OSError, AttributeError))


def _point_bytes(spec: CollectionSpec, point: VectorPoint) -> int:
    """About what an upserted point takes in a recorded update: 4 bytes a dimension, 8 a
    sparse entry, `_OP_BYTES` for the rest."""
    dense = sum(spec.vectors.get(name, 0) for name in point.vectors)
    sparse = sum(len(v.indices) for v in point.sparse.values())
    return 4 * dense + 8 * sparse + _OP_BYTES


def _sync_files(directory: str | Path) -> None:
    """Write every file under `directory` back to disk with plain system calls, which
    release the GIL. qdrant-edge's flush (and close) holds the GIL while the disk catches
    up; with the pages already written it holds it about a quarter as long."""
    _each_file(directory, os.fdatasync, (OSError,))


def _write_atomic(path: Path, data: object) -> None:
    """Replace `path` so that readers and a crash see either the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _index_schema(kind: IndexKind) -> qe.PayloadSchemaType | qe.PayloadSchemaParams:
    if kind is IndexKind.TENANT:
        return qe.KeywordIndexParams(is_tenant=True)
    return {
        IndexKind.KEYWORD: qe.PayloadSchemaType.Keyword,
        IndexKind.FLOAT: qe.PayloadSchemaType.Float,
        IndexKind.INTEGER: qe.PayloadSchemaType.Integer,
        IndexKind.BOOL: qe.PayloadSchemaType.Bool,
    }[kind]


def _edge_config(spec: CollectionSpec) -> qe.EdgeConfig:
    quantization = (
        qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, memory=qe.Memory.Pinned)
        if spec.quantize_int8
        else None
    )
    return qe.EdgeConfig(
        vectors={
            name: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)
            for name, dim in spec.vectors.items()
        },
        sparse_vectors={
            name: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)
            for name in spec.sparse_vectors
        } or None,
        hnsw_config=qe.HnswIndexConfig(
            m=spec.hnsw_m,
            ef_construct=spec.hnsw_ef_construct,
            full_scan_threshold=_FULL_SCAN_THRESHOLD_KB,
        ),
        quantization_config=quantization,
    )


def _spec_from_json(data: dict[str, Any]) -> CollectionSpec:
    fields = {f.name for f in dataclasses.fields(CollectionSpec)}
    return CollectionSpec(**{k: v for k, v in data.items() if k in fields})


class _SharedLock:
    """Any number of shared holders, or one exclusive holder; a waiting exclusive holder
    keeps new shared holders out, so a drop is not starved by a stream of searches."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class _Journal:
    """The updates applied to a collection since a build copied its shard, in order, to be
    applied to the built copy. Bounded: once they would take more than `limit` bytes they
    are dropped and `overflowed` is set, and the build gives up (IndexBuildAborted)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ops: list[qe.UpdateOperation] = []
        self.bytes = 0
        self.overflowed = False

    def record(self, op: qe.UpdateOperation, size: int) -> None:
        if self.overflowed:
            return
        self.bytes += size
        if self.bytes > self.limit:
            self.overflowed = True
            # A new list, not cleared: a replay in progress holds on to what it sliced.
            self.ops = []
            return
        self.ops.append(op)


@dataclasses.dataclass
class _Collection:
    name: str
    spec: CollectionSpec
    shard: qe.EdgeShard
    lock: _SharedLock = dataclasses.field(default_factory=_SharedLock)
    # Taken before `lock`: shared by writes, exclusive while the index build copies the
    # shard and while it switches to the built copy.
    writes: _SharedLock = dataclasses.field(default_factory=_SharedLock)
    # One build at a time (the background builder and a command's explicit build).
    build_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    # The updates applied since a build copied the shard (None when none is running), in
    # the order they were applied: `journal_lock` holds each update and its record together.
    journal: _Journal | None = None
    journal_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    closed: bool = False


@dataclasses.dataclass(frozen=True)
class BuildTimes:
    """The last `build_index`: seconds in all, and how long writes and reads were paused
    for the switch to the built copy (open, replay, switch; reads only for the switch)."""

    total_s: float
    copy_s: float  # writes paused to flush and copy the shard
    writes_paused_s: float
    reads_paused_s: float
    replayed: int
    # (phase, start, end) in time.perf_counter() seconds, in the order they ran.
    phases: tuple[tuple[str, float, float], ...] = ()


class _Phases:
    """Records when each phase of a build ran (bench/live_index.py lines them up with the
    gaps between search answers)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, float, float]] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.spans.append((name, start, time.perf_counter()))


class EdgeVectorStore(FusedSearch):
    """VectorStore on qdrant-edge shards under one directory owned by this process."""

    def __init__(self, root: Path, hnsw_ef: int = 128, build_timeout_s: float = 3600.0,
                 build_journal_max_bytes: int = 256 << 20) -> None:
        if hnsw_ef < 1:
            raise ConfigError(f"hnsw_ef must be at least 1, got {hnsw_ef}")
        if build_timeout_s <= 0:
            raise ConfigError(f"build_timeout_s must be > 0, got {build_timeout_s}")
        if build_journal_max_bytes < 0:
            raise ConfigError(
                f"build_journal_max_bytes must be >= 0, got {build_journal_max_bytes}")
        self._build_journal_max_bytes = build_journal_max_bytes
        self._root = Path(root)
        self._hnsw_ef = hnsw_ef
        self._build_timeout_s = build_timeout_s
        self._builders: set[subprocess.Popen[bytes]] = set()
        self._builders_lock = threading.Lock()
        self.last_build: BuildTimes | None = None
        self._root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._acquire_root(self._root / _LOCK)
        # Guards the maps below and every change to files directly under root.
        self._meta = threading.Lock()
        self._collections: dict[str, _Collection] = {}
        self._dropping: set[str] = set()
        self._closed = False
        try:
            self._aliases = self._read_aliases()
            self._remove_tombstones()
            self._recover_shards()
        except BaseException:
            self._release_root()
            raise

    # --- process ownership ---------------------------------------------------------------

    @staticmethod
    def _acquire_root(lock_path: Path) -> int:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            if owner == str(os.getpid()):
                raise StoreBusy(
                    f"vector store {lock_path.parent} is already open in this process "
                    f"(pid {owner}); share that instance instead of opening it twice"
                ) from None
            raise StoreBusy(
                f"vector store {lock_path.parent} is used by another process (pid {owner}); "
                f"an embedded store has one owner: stop that process or use another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _release_root(self) -> None:
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _read_aliases(self) -> dict[str, str]:
        path = self._root / _ALIASES
        if not path.exists():
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise ConfigError(f"{path} must map alias names to collection names")
        return dict(data)

    def _remove_tombstones(self) -> None:
        # Left by a drop interrupted after its shard was moved aside.
        for path in self._root.glob(f"{_TOMBSTONE}*"):
            shutil.rmtree(path, ignore_errors=True)

    def _recover_shards(self) -> None:
        """Finish or undo a switch cut short, drop links to nothing, and remove every shard
        directory no collection points to (an interrupted build or drop)."""
        for link in self._root.glob(f"{_LINK}*"):
            path = self._root / link.name.removeprefix(_LINK)
            if not os.path.lexists(path) and link.exists():
                # A plain directory moved into the new layout, cut short before its link
                # took its place: the shard is complete where the link points.
                os.replace(link, path)
            else:
                link.unlink()
        referenced = set()
        for path in self._root.iterdir():
            if path.name.startswith(".") or not path.is_symlink():
                continue
            if path.exists():
                referenced.add(os.path.realpath(path))
            else:
                path.unlink()  # a drop cut short after its shard was moved aside
        for path in self._root.glob(f"{_SHARD}*"):
            if os.path.realpath(path) not in referenced:
                log.info("removing %s, left by an interrupted index build or drop", path)
                shutil.rmtree(path, ignore_errors=True)
        fsync_dir(self._root)

    def _new_shard_dir(self, name: str) -> Path:
        return self._root / f"{_SHARD}{name}-{uuid.uuid4().hex[:12]}"

    def _link(self, name: str, target: Path) -> str | None:
        """Point `name` at `target` atomically; returns the directory it pointed at."""
        path = self._root / name
        previous = os.path.realpath(path) if path.is_symlink() else None
        tmp = self._root / f"{_LINK}{name}"
        if os.path.lexists(tmp):
            tmp.unlink()
        os.symlink(target.name, tmp)
        os.replace(tmp, path)
        try:
            fsync_dir(self._root)
        except OSError:
            # The switch has happened; only its durability against power loss is in doubt.
            log.warning("cannot fsync %s after switching %s", self._root, name, exc_info=True)
        return previous

    def _versioned(self, name: str) -> None:
        """Move a shard kept as a plain directory (the layout before rebuilt shards were
        switched to) under a symlink; call with `_meta` held, before the shard is opened."""
        path = self._root / name
        if path.is_symlink() or not path.is_dir():
            return
        target = self._new_shard_dir(name)
        tmp = self._root / f"{_LINK}{name}"
        if os.path.lexists(tmp):
            tmp.unlink()
        os.symlink(target.name, tmp)
        os.rename(path, target)
        os.replace(tmp, path)
        fsync_dir(self._root)

    def _load(self, name: str, config: qe.EdgeConfig | None = None) -> qe.EdgeShard:
        self._versioned(name)
        # Opened by its real path: the symlink changes when a rebuilt shard takes over.
        return qe.EdgeShard.load(os.path.realpath(self._root / name), config)

    # --- collection handles --------------------------------------------------------------

    def _spec_path(self, name: str) -> Path:
        return self._root / f"{name}.json"

    def _exists(self, name: str) -> bool:
        return self._spec_path(name).is_file() and (self._root / name).is_dir()

    def _stored_spec(self, name: str) -> CollectionSpec:
        return _spec_from_json(json.loads(self._spec_path(name).read_text(encoding="utf-8")))

    def _check_open(self) -> None:
        if self._closed:
            raise NotReady(f"vector store {self._root} is closed")

    def _get(self, alias_or_name: str) -> _Collection:
        with self._meta:
            self._check_open()
            name = self._aliases.get(alias_or_name, alias_or_name)
            coll = self._collections.get(name)
            if coll is not None:
                return coll
            if name in self._dropping or not _NAME.match(name) or not self._exists(name):
                raise NotReady(f"vector collection {name!r} does not exist in {self._root}")
            spec = self._stored_spec(name)
            coll = _Collection(name, spec, self._load(name))
            self._collections[name] = coll
            return coll

    @contextlib.contextmanager
    def _use(self, alias_or_name: str) -> Iterator[_Collection]:
        while True:
            coll = self._get(alias_or_name)
            with coll.lock.shared():
                # Dropped or closed between lookup and lock: look up again (and fail clearly).
                if coll.closed:
                    continue
                yield coll
                return

    @contextlib.contextmanager
    def _writing(self, alias_or_name: str) -> Iterator[_Collection]:
        """Like `_use`, for a call that updates the shard (through `_apply`)."""
        while True:
            coll = self._get(alias_or_name)
            with coll.writes.shared(), coll.lock.shared():
                if coll.closed:
                    continue
                yield coll
                return

    @staticmethod
    def _apply(coll: _Collection, op: qe.UpdateOperation, size: int = _OP_BYTES) -> None:
        """Apply `op` (about `size` bytes) to the shard, and record it while a build runs."""
        # `journal` only changes while writes are paused, so it is read once here.
        journal = coll.journal
        if journal is None:
            coll.shard.update(op)
            return
        with coll.journal_lock:
            coll.shard.update(op)
            journal.record(op, size)

    @staticmethod
    def _ensure_indexes(shard: qe.EdgeShard,
                        apply: Callable[[qe.UpdateOperation], None] | None = None) -> None:
        present = shard.info().payload_schema
        for field, kind in PAYLOAD_INDEXES.items():
            if field not in present:
                op = qe.UpdateOperation.create_field_index(field, _index_schema(kind))
                if apply is None:
                    shard.update(op)
                else:
                    apply(op)

    # --- VectorStore ---------------------------------------------------------------------

    def ensure_collection(self, spec: CollectionSpec) -> None:
        _check_name(spec.name, "collection")
        if not spec.vectors or any(dim < 1 for dim in spec.vectors.values()):
            raise ConfigError(f"collection {spec.name!r} needs named vectors with dimensions > 0")
        with self._meta:
            self._check_open()
            name = spec.name
            if name in self._aliases:
                raise ConfigError(f"{name!r} is an alias (of {self._aliases[name]!r}), not a "
                                  f"collection name")
            if name in self._dropping:
                raise ConfigError(f"collection {name!r} is being dropped; retry when it is gone")
            if self._exists(name):
                stored = self._stored_spec(name)
                if stored.vectors != spec.vectors:
                    raise ConfigError(
                        f"collection {name!r} exists with vectors {stored.vectors}, not "
                        f"{spec.vectors}; index into a new collection and switch the alias"
                    )
                coll = self._collections.get(name)
                if coll is None:
                    coll = _Collection(name, stored, self._load(name))
                    self._collections[name] = coll
                # Through the write gate: an index build running meanwhile replays these.
                with coll.writes.shared(), coll.lock.shared():
                    added = [n for n in spec.sparse_vectors if n not in stored.sparse_vectors]
                    if added:
                        # Sparse vectors are derived data that can be added in place: points
                        # written before simply have none until they are indexed again.
                        for sparse_name in added:
                            self._apply(coll, qe.UpdateOperation.create_sparse_vector(
                                sparse_name, modifier=qe.Modifier.Idf))
                        coll.shard.flush()
                        stored = dataclasses.replace(
                            stored, sparse_vectors=[*stored.sparse_vectors, *added])
                        _write_atomic(self._spec_path(name), dataclasses.asdict(stored))
                        coll.spec = stored
                    if dataclasses.replace(stored, name=name) != spec:
                        log.info("collection %r keeps its stored settings %s", name, stored)
                    self._ensure_indexes(coll.shard, lambda op: self._apply(coll, op))
                return
            path = self._root / name
            try:
                if path.is_dir() and any(path.iterdir()):
                    # A creation interrupted before its spec was written: keep what is there
                    # if it is compatible (the engine checks), then finish the job.
                    shard = self._load(name, _edge_config(spec))
                    target = None
                else:
                    target = self._new_shard_dir(name)
                    shard = qe.EdgeShard.create(str(target), _edge_config(spec))
            except Exception as exc:
                raise ConfigError(f"cannot create vector collection {name!r} at {path}: {exc}") \
                    from exc
            self._ensure_indexes(shard)
            # Durable before the spec marks the collection complete.
            shard.flush()
            if target is not None:
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()  # empty
                empty = self._link(name, target)
                if empty is not None and Path(empty).name.startswith(_SHARD):
                    shutil.rmtree(empty, ignore_errors=True)
            _write_atomic(self._spec_path(name), dataclasses.asdict(spec))
            self._collections[name] = _Collection(name, spec, shard)

    def _points(self, coll: _Collection, points: list[VectorPoint]) -> list[qe.Point]:
        out = []
        for p in points:
            unknown = set(p.vectors) - set(coll.spec.vectors)
            if unknown:
                raise InvalidInput(
                    f"point {p.id}: unknown vectors {sorted(unknown)}; collection {coll.name!r} "
                    f"has {sorted(coll.spec.vectors)}"
                )
            vectors: dict[str, qe.NamedVector] = {
                name: vector_values(vec, name, coll.spec.vectors[name])
                for name, vec in p.vectors.items()
            }
            for name, sparse in p.sparse.items():
                if name not in coll.spec.sparse_vectors:
                    raise InvalidInput(
                        f"point {p.id}: unknown sparse vector {name!r}; collection "
                        f"{coll.name!r} has {sorted(coll.spec.sparse_vectors)}")
                vectors[name] = qe.SparseVector(*sparse_values(sparse, name))
            out.append(qe.Point(p.id, vectors, p.payload.to_dict()))
        return out

    def upsert(self, collection: str, points: list[VectorPoint]) -> None:
        with self._writing(collection) as coll:
            converted = self._points(coll, points)
            for start in range(0, len(converted), _WRITE_BATCH):
                batch = converted[start : start + _WRITE_BATCH]
                size = sum(_point_bytes(coll.spec, p) for p in points[start : start + _WRITE_BATCH])
                self._apply(coll, qe.UpdateOperation.upsert_points(batch), size)

    def delete_products(self, collection: str, product_ids: list[str]) -> None:
        if not product_ids:
            return
        with self._writing(collection) as coll:
            for start in range(0, len(product_ids), _SCROLL_PAGE):
                chunk = product_ids[start : start + _SCROLL_PAGE]
                flt = to_edge(products_spec(chunk))
                assert flt is not None
                self._apply(coll, qe.UpdateOperation.delete_points_by_filter(flt))

    def set_payload(self, collection: str, patches: list[PayloadPatch]) -> None:
        checked = [(p.product_id, patch_values(p)) for p in patches]
        with self._writing(collection) as coll:
            for product_id, values in checked:
                if not values:
                    continue
                flt = to_edge(products_spec([product_id]))
                assert flt is not None
                self._apply(coll, qe.UpdateOperation.set_payload_by_filter(flt, values))

    def _params(self, coll: _Collection) -> qe.SearchParams:
        # Rescoring with the original vectors keeps scores true cosines under int8.
        quantization = (
            qe.QuantizationSearchParams(rescore=True, oversampling=2.0)
            if coll.spec.quantize_int8
            else None
        )
        return qe.SearchParams(hnsw_ef=self._hnsw_ef, quantization=quantization)

    @staticmethod
    def _vector_dim(coll: _Collection, name: str) -> int:
        if name not in coll.spec.vectors:
            raise InvalidInput(
                f"unknown vector {name!r}; collection {coll.name!r} has {sorted(coll.spec.vectors)}"
            )
        return coll.spec.vectors[name]

    def search(
        self,
        collection: str,
        vector_name: str,
        vector: np.ndarray,
        filters: Filters,
        limit: int,
        offset: int = 0,
        with_vectors: bool = False,
    ) -> list[ScoredPoint]:
        check_page(limit, offset)
        flt = edge_filter(filters)
        with self._use(collection) as coll:
            values = vector_values(vector, vector_name, self._vector_dim(coll, vector_name))
            request = qe.QueryRequest(
                limit=limit,
                offset=offset,
                query=qe.Query.Nearest(values, using=vector_name),
                filter=flt,
                params=self._params(coll),
                with_payload=True,
                with_vector=with_vectors,
            )
            return scored_points(coll.shard.query(request), with_vectors)

    def _fused(self, collection: str, prefetches: list[Prefetch], filters: Filters,
               limit: int, offset: int, with_vectors: list[str] | None, fusion: str = "rrf",
               boost: dict[str, tuple[str, ...]] | None = None) -> list[ScoredPoint]:
        """The prefetches fused inside the shard (see VectorStore.search_fused), one query."""
        check_fusion(fusion, prefetches, boost)
        base = filter_spec(filters)
        flt = to_edge(base)
        with self._use(collection) as coll:
            check_prefetches(prefetches, coll.spec.vectors, coll.spec.sparse_vectors)
            for name in with_vectors or []:
                self._vector_dim(coll, name)
            params = self._params(coll)
            stages = []
            for pf in prefetches:
                query: qe.NamedVector
                if isinstance(pf.vector, SparseVector):
                    query = qe.SparseVector(*sparse_values(pf.vector, pf.name))
                else:
                    query = vector_values(pf.vector, pf.name, coll.spec.vectors[pf.name])
                stage_filter = flt if pf.any_of is None else to_edge(with_any_of(base, pf.any_of))
                stages.append(qe.Prefetch(limit=pf.depth, query=qe.Query.Nearest(
                    query, using=pf.name), filter=stage_filter, params=params))
            method: Any = qe.Fusion.Dbsf() if fusion == "dbsf" else qe.Fusion.Rrf(k=RRF_K)
            if fusion == "none":
                only = stages[0]
                method, stages, flt = only.query, [], only.filter
            elif boost is not None:
                # Fuse every candidate (the union is at most the sum of the depths), then
                # add BOOST to those matching the boost keys.
                matches = edge_tree(with_any_of(FilterSpec(), boost))
                stages = [qe.Prefetch(limit=sum(pf.depth for pf in prefetches), query=method,
                                      prefetches=stages, filter=flt)]
                method = qe.Formula(qe.Expression.Sum([
                    qe.Expression.Variable("$score"),
                    qe.Expression.Mult([qe.Expression.Constant(BOOST),
                                        qe.Expression.Condition(matches)])]))
            request = qe.QueryRequest(
                limit=limit,
                offset=offset,
                query=method,
                prefetches=stages or None,
                params=params if fusion == "none" else None,
                filter=flt,
                with_payload=True,
                with_vector=list(with_vectors) if with_vectors else False,
            )
            return scored_points(coll.shard.query(request), bool(with_vectors))

    def facets(self, collection: str, query: FacetQuery) -> FacetCounts:
        check_facet_query(query)
        spec = facet_spec(query.filters, query.all_terms, query.product_ids)
        flt = to_edge(spec)
        out: FacetCounts = {}
        with self._use(collection) as coll:
            for key in query.keys:
                response = coll.shard.facet(qe.FacetRequest(key, limit=query.limit, exact=True,
                                                             filter=flt))
                out[key] = [(str(h.value), int(h.count)) for h in response.hits]
            if query.price_bands:
                out["price"] = []
                for low, high in query.price_bands:
                    band = to_edge(FilterSpec(must=[spec, Range("price", gte=low, lt=high)]))
                    n = int(coll.shard.count(qe.CountRequest(exact=True, filter=band)))
                    out["price"].append((price_band_label(low, high), n))
        return out

    def _scroll(
        self,
        coll: _Collection,
        flt: qe.Filter | None,
        with_payload: qe.WithPayloadType,
        with_vector: qe.WithVectorType,
    ) -> Iterator[qe.Record]:
        offset: qe.PointId | None = None
        while True:
            records, offset = coll.shard.scroll(
                qe.ScrollRequest(
                    offset=offset,
                    limit=_SCROLL_PAGE,
                    filter=flt,
                    with_payload=with_payload,
                    with_vector=with_vector,
                )
            )
            yield from records
            if offset is None:
                return

    def get_vectors(
        self, collection: str, product_id: str, vector_name: str
    ) -> list[tuple[int, np.ndarray]]:
        with self._use(collection) as coll:
            self._vector_dim(coll, vector_name)
            flt = to_edge(products_spec([product_id]))
            out = []
            for rec in self._scroll(coll, flt, ["position"], [vector_name]):
                vec = rec.vector.get(vector_name) if isinstance(rec.vector, dict) else None
                if vec is not None and rec.payload is not None:
                    out.append((int(rec.payload["position"]), np.asarray(vec, dtype=np.float32)))
            return sorted(out, key=lambda item: item[0])

    def count(self, collection: str, filters: Filters | None = None) -> int:
        flt = edge_filter(filters)
        with self._use(collection) as coll:
            return int(coll.shard.count(qe.CountRequest(exact=True, filter=flt)))

    def scroll_payloads(self, collection: str) -> list[tuple[str, PointPayload]]:
        with self._use(collection) as coll:
            return [
                (str(rec.id), PointPayload.from_dict(rec.payload or {}))
                for rec in self._scroll(coll, None, True, False)
            ]

    def product_payloads(self, collection: str, product_ids: list[str],
                         filters: Filters | None = None) -> list[tuple[str, PointPayload]]:
        out: list[tuple[str, PointPayload]] = []
        with self._use(collection) as coll:
            for start in range(0, len(product_ids), _SCROLL_PAGE):
                flt = to_edge(products_spec(product_ids[start : start + _SCROLL_PAGE], filters))
                out += [(str(rec.id), PointPayload.from_dict(rec.payload or {}))
                        for rec in self._scroll(coll, flt, True, False)]
        return out

    def scroll_page(self, collection: str, offset: str | None, limit: int
                    ) -> tuple[list[tuple[str, PointPayload]], str | None]:
        check_page(limit, 0)
        with self._use(collection) as coll:
            records, after = coll.shard.scroll(
                qe.ScrollRequest(offset=offset, limit=limit, with_payload=True,
                                 with_vector=False))
        page = [(str(rec.id), PointPayload.from_dict(rec.payload or {})) for rec in records]
        return page, None if after is None else str(after)

    def flush(self, collection: str) -> None:
        # Updates already survive a killed process (the write-ahead log is in the page
        # cache); a flush also makes them survive losing the machine.
        with self._use(collection) as coll:
            _sync_files(os.path.realpath(self._root / coll.name))
            coll.shard.flush()

    def delete_points(self, collection: str, point_ids: list[str]) -> None:
        if not point_ids:
            return
        ids: list[qe.PointId] = []
        for pid in point_ids:
            try:
                ids.append(str(uuid.UUID(pid)))
            except ValueError:
                raise InvalidInput(f"point id {pid!r} is not a UUID") from None
        with self._writing(collection) as coll:
            for start in range(0, len(ids), _SCROLL_PAGE):
                chunk = ids[start : start + _SCROLL_PAGE]
                self._apply(coll, qe.UpdateOperation.delete_points(chunk))

    def build_index(self, collection: str) -> None:
        """Build the HNSW index in a child process on a copy of the shard and switch to it
        (see the module docstring); searches and writes go on meanwhile."""
        coll = self._get(collection)
        phase = _Phases()
        with coll.build_lock:
            start = time.perf_counter()
            target, copy_s = self._copy_for_build(coll, phase)
            try:
                self._run_builder(coll.name, target, phase,
                                  lambda: coll.journal is not None and coll.journal.overflowed)
                old, writes_s, reads_s, replayed = self._switch(coll, target, phase)
            except BaseException:
                with coll.writes.exclusive():
                    coll.journal = None
                shutil.rmtree(target, ignore_errors=True)
                raise
        if old is not None:
            with phase("delete old"):
                shutil.rmtree(old, ignore_errors=True)
        self.last_build = BuildTimes(time.perf_counter() - start, copy_s, writes_s, reads_s,
                                     replayed, tuple(phase.spans))
        log.info("vector index of %s built in %.1f s: copy %.0f ms, %d updates replayed, "
                 "writes paused %.1f ms, reads %.1f ms for the switch", coll.name,
                 self.last_build.total_s, copy_s * 1e3, replayed, writes_s * 1e3, reads_s * 1e3)

    def _copy_for_build(self, coll: _Collection, phase: _Phases) -> tuple[Path, float]:
        """A copy of the live shard and how long writes were paused to make it."""
        # The flush keeps the write-ahead log the child replays short (and the replaced
        # shard's close, which flushes, quick); it holds the GIL, so searches wait for it.
        # None with writes paused: with no update running the files are what a killed
        # process leaves, which the engine recovers from (the log replayed by the child),
        # and the writes made since this flush are few.
        with coll.lock.shared():
            if not coll.closed:
                with phase("write back"):
                    _sync_files(os.path.realpath(self._root / coll.name))
                with phase("flush"):
                    coll.shard.flush()
        with coll.writes.exclusive(), coll.lock.shared():
            paused = time.perf_counter()
            if coll.closed:
                raise NotReady(f"vector collection {coll.name!r} was closed or dropped")
            target = self._new_shard_dir(coll.name)
            try:
                with phase("copy (writes paused)"):
                    shutil.copytree(os.path.realpath(self._root / coll.name), target,
                                    copy_function=_copy_file)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
            coll.journal = _Journal(self._build_journal_max_bytes)
            return target, time.perf_counter() - paused

    def _aborted(self, name: str) -> IndexBuildAborted:
        return IndexBuildAborted(
            f"index build of {name!r} given up: the updates made during it passed "
            f"{self._build_journal_max_bytes:,} bytes (PRODSEARCH_INDEX_BUILD_MAX_RECORDED_MB); "
            f"the collection serves as before")

    def _run_builder(self, name: str, target: Path, phase: _Phases,
                     give_up: Callable[[], bool]) -> None:
        env = dict(os.environ)
        # The child imports this package even when it is not installed (a checkout).
        package_root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        cmd = [sys.executable, "-m", "backend.stores.vectors.edge_build", str(target),
               "--parent", str(os.getpid())]
        with self._builders_lock:
            if self._closed:
                raise NotReady(f"vector store {self._root} is closed")
            with phase("start child"):
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        env=env)
            self._builders.add(proc)
        try:
            err = self._wait_builder(name, proc, phase, give_up)
        finally:
            with self._builders_lock:
                self._builders.discard(proc)
        if proc.returncode != 0:
            tail = err.decode("utf-8", "replace").strip()[-2000:]
            raise IndexBuildError(f"index build of {name!r} failed (exit {proc.returncode}); "
                                  f"the collection serves as before: {tail}")

    def _wait_builder(self, name: str, proc: subprocess.Popen[bytes], phase: _Phases,
                      give_up: Callable[[], bool]) -> bytes:
        """Wait for the child's exit (its stderr); kill it on timeout or when `give_up`."""
        deadline = time.monotonic() + self._build_timeout_s
        with phase("child builds"):
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    proc.kill()
                    proc.communicate()
                    raise IndexBuildError(
                        f"index build of {name!r} timed out after {self._build_timeout_s:g} "
                        f"s (PRODSEARCH_INDEX_BUILD_TIMEOUT_S); the collection serves as before")
                if give_up():
                    proc.kill()
                    proc.communicate()
                    raise self._aborted(name)
                try:
                    _, err = proc.communicate(timeout=min(left, 0.5))
                except subprocess.TimeoutExpired:
                    continue
                return err

    def _switch(self, coll: _Collection, target: Path,
                phase: _Phases) -> tuple[str | None, float, float, int]:
        """Open the built copy, apply the updates made since it was copied, and make it the
        collection's shard; returns the old shard directory and the pauses."""
        with phase("read ahead built shard"):
            _prefetch(target)
        with phase("open built shard"):
            new = qe.EdgeShard.load(str(target))
        try:
            # Catch up while writes go on, so that little is left to apply with them paused.
            journal = coll.journal
            assert journal is not None
            applied = 0
            with phase("replay"):
                for _ in range(8):
                    pending = journal.ops[applied:]
                    if journal.overflowed:
                        raise self._aborted(coll.name)
                    if len(pending) <= _REPLAY_PAUSED:
                        break
                    for op in pending:
                        new.update(op)
                    applied += len(pending)
            with coll.writes.exclusive():
                paused = time.perf_counter()
                if coll.closed:
                    raise NotReady(f"vector collection {coll.name!r} was closed or dropped")
                if journal.overflowed:
                    raise self._aborted(coll.name)
                with phase("replay (writes paused)"):
                    for op in journal.ops[applied:]:
                        new.update(op)
                with coll.lock.exclusive(), phase("switch (reads paused)"):
                    reads_paused = time.perf_counter()
                    if coll.closed:
                        raise NotReady(f"vector collection {coll.name!r} was closed or dropped")
                    old_shard = coll.shard
                    old = self._link(coll.name, target)
                    coll.shard = new
                    coll.journal = None
                    done = time.perf_counter()
        except BaseException:
            new.close()
            raise
        # Nothing uses the old shard any more; it was opened by its own directory's path,
        # which the switch did not change. The switch is done: a failure here must not
        # reach the caller's clean-up, which would remove the new live shard.
        try:
            if old is not None:
                with phase("write back old"):
                    _sync_files(old)
            with phase("close old"):
                old_shard.close()
        except Exception:
            log.warning("closing the replaced shard of %s failed", coll.name, exc_info=True)
        return old, done - paused, done - reads_paused, len(journal.ops)

    def index_state(self, collection: str) -> IndexState:
        with self._use(collection) as coll:
            info = coll.shard.info()
            return IndexState(int(info.points_count), int(info.indexed_vectors_count))

    def set_alias(self, alias: str, collection: str) -> None:
        _check_name(alias, "alias")
        with self._meta:
            self._check_open()
            if self._exists(alias):
                raise ConfigError(f"alias {alias!r} would hide the collection of that name")
            if collection in self._dropping or not self._exists(collection):
                raise NotReady(f"cannot point alias {alias!r} at {collection!r}: no such "
                               f"collection in {self._root}")
            aliases = {**self._aliases, alias: collection}
            _write_atomic(self._root / _ALIASES, aliases)
            self._aliases = aliases

    def resolve(self, alias_or_name: str) -> str:
        with self._meta:
            return self._aliases.get(alias_or_name, alias_or_name)

    def list_collections(self) -> list[str]:
        with self._meta:
            self._check_open()
            names = (p.stem for p in self._root.glob("*.json") if p.name != _ALIASES)
            return sorted(n for n in names if n not in self._dropping and self._exists(n))

    def drop_collection(self, collection: str) -> None:
        _check_name(collection, "collection")
        with self._meta:
            self._check_open()
            if collection in self._dropping or not (
                self._spec_path(collection).exists() or (self._root / collection).exists()
            ):
                return
            self._dropping.add(collection)
            coll = self._collections.pop(collection, None)
            aliases = {a: c for a, c in self._aliases.items() if c != collection}
            if aliases != self._aliases:
                _write_atomic(self._root / _ALIASES, aliases)
                self._aliases = aliases
        try:
            if coll is not None:
                with coll.lock.exclusive():
                    coll.closed = True
                    coll.shard.close()
            with self._meta:
                # Shard moved aside first: a crash from here on never leaves a half-deleted
                # shard that looks like a live collection.
                tomb = self._root / f"{_TOMBSTONE}{collection}-{uuid.uuid4().hex}"
                path = self._root / collection
                if path.is_symlink():
                    if path.exists():
                        os.replace(os.path.realpath(path), tomb)
                    path.unlink()
                elif path.exists():
                    os.replace(path, tomb)
                self._spec_path(collection).unlink(missing_ok=True)
            if tomb.exists():
                shutil.rmtree(tomb, ignore_errors=True)
        finally:
            with self._meta:
                self._dropping.discard(collection)

    def close(self) -> None:
        with self._meta:
            if self._closed:
                return
            self._closed = True
            collections = list(self._collections.values())
            self._collections.clear()
        with self._builders_lock:
            # A build still running fails, and its copy is removed by the thread running it.
            for proc in self._builders:
                proc.kill()
        try:
            for coll in collections:
                with coll.lock.exclusive():
                    coll.closed = True
                    coll.shard.close()
        finally:
            self._release_root()

    def __enter__(self) -> EdgeVectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EdgeVectorStore({str(self._root)!r})"
