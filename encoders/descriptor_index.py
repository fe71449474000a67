"""Candidate generation for photo search by nearest-descriptor vote: every RootSIFT
descriptor of every catalog image in one FAISS IVF index (8-bit scalar-quantised codes),
each query descriptor votes for the catalog image of its nearest catalog descriptor when it
passes Lowe's ratio test, and the votes' own correspondences are what geometric
verification checks (no second matching pass).

    index = DescriptorIndex.empty()                      # the shipped trained quantiser
    index.add(point_id, product_id, features)            # replaces the point's entries
    votes = index.vote(root_sift(query.descriptors), query.keypoints)
    votes.ranked()[:20]                                  # (point id, votes), most first
    index.remove_groups([product_id])

Measured (bench/photo_candidates.py, README "Photo search on local features"): a plain vote
puts the photographed item among the top 30 far more often than visual words do, because a
word throws away what a descriptor's nearest neighbour keeps.

Design points:
- The ratio test compares the nearest descriptor with the nearest one of a DIFFERENT
  product (`group`): a product's several images, or repeated keypoints of one image, do
  not cancel each other's votes.
- One vote per query descriptor, and at most one per catalog keypoint (its best query
  match), so a repeated pattern cannot vote many times.
- Entry ids are global row numbers; each point (`key`) owns a contiguous row range, so a
  filter is a bitmap over rows (FAISS IDSelectorBitmap) and a removal a range selector.
- The coarse quantiser and the scalar quantiser's ranges are trained offline on the TRAIN
  split (`prodsearch train --task descriptor-index`) and shipped in
  `encoders/checkpoints/descriptor-ivf.faiss`, so every replica and every rebuild assigns
  descriptors to the same lists.
"""

from __future__ import annotations

import io
import itertools
import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from encoders.local_features import LocalFeatures, root_sift

__all__ = ["INDEX_FILE", "DescriptorIndex", "Votes", "train_index"]

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
INDEX_FILE = CHECKPOINTS / "descriptor-ivf.faiss"
DIM = 128


def train_index(descriptors: np.ndarray, lists: int, seed: int = 0, iterations: int = 10,
                points_per_list: int = 64) -> faiss.Index:
    """An empty IVF-SQ8 index whose coarse quantiser (`lists` k-means centroids, at most
    `points_per_list` sampled descriptors per list, `iterations` rounds) and 8-bit
    per-dimension ranges are trained on raw SIFT uint8 descriptors (RootSIFT applied)."""
    x = np.ascontiguousarray(root_sift(descriptors), dtype=np.float32)
    quantizer = faiss.IndexFlatL2(DIM)
    index = faiss.IndexIVFScalarQuantizer(quantizer, DIM, lists, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_L2)
    index.cp.seed = seed
    index.cp.niter = iterations
    index.cp.max_points_per_centroid = points_per_list
    index.train(x)
    return index


@dataclass
class Votes:
    """The vote of one query: per catalog point, its vote count and its correspondences
    (query keypoint rows, catalog keypoints in catalog-image pixels)."""

    counts: dict[str, int]
    matches: dict[str, tuple[np.ndarray, np.ndarray]]  # key -> (query rows, catalog xy)
    sizes: dict[str, tuple[int, int]]  # key -> catalog image (width, height)
    groups: dict[str, str]  # key -> product id
    passed: int  # query descriptors that passed the ratio test (the share's denominator)

    def ranked(self) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))


class DescriptorIndex:
    """Thread-safe: one lock around writes and searches (FAISS add/remove are not safe
    against a concurrent search; a vote holds it for a few tens of milliseconds)."""

    def __init__(self, index: faiss.Index, info: dict[str, Any] | None = None,
                 nprobe: int = 8) -> None:
        if index.ntotal:
            raise ValueError("DescriptorIndex wants an empty trained index")
        self._index = index
        self.info = dict(info or {})
        self.nprobe = nprobe
        self._lock = threading.RLock()
        self._next_row = 0
        self._row_slot = np.zeros(0, dtype=np.int32)
        self._keys: list[str] = []  # slot -> point id ('' once removed)
        self._groups: list[int] = []  # slot -> product number
        self._points: list[np.ndarray] = []  # slot -> (N, 2) float32 keypoints
        self._sizes: list[tuple[int, int]] = []
        self._rows: list[tuple[int, int]] = []  # slot -> [start, end)
        self._stamps: list[str] = []  # slot -> caller's stamp of the source (file version)
        self._slot_of: dict[str, int] = {}
        self._group_ids: dict[str, int] = {}
        self._group_names: list[str] = []
        self._group_slots: dict[int, set[int]] = {}

    # ------------------------------------------------------------------ construction

    @classmethod
    def empty(cls, path: str | Path | None = None, nprobe: int = 8) -> DescriptorIndex:
        """An empty index over the shipped (or given) trained quantiser."""
        p = Path(path) if path is not None else INDEX_FILE
        index = faiss.read_index(str(p))
        info_path = p.with_suffix(".json")
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        return cls(index, info, nprobe)

    @property
    def version(self) -> str:
        """Which trained quantiser: entries added under another cannot be mixed."""
        return str(self.info.get("version", "ivf-untracked"))

    def __len__(self) -> int:
        return len(self._slot_of)

    @property
    def descriptors(self) -> int:
        return int(self._index.ntotal)

    def stamps(self) -> dict[str, str]:
        """point id -> stamp, for every point held."""
        with self._lock:
            return {k: self._stamps[s] for k, s in self._slot_of.items()}

    def keys_of(self, group: str) -> list[str]:
        """The point ids held for one product."""
        with self._lock:
            gid = self._group_ids.get(group)
            return [] if gid is None else [self._keys[s] for s in self._group_slots[gid]]

    def group_of(self, key: str) -> str | None:
        slot = self._slot_of.get(key)
        return None if slot is None else self._group_names[self._groups[slot]]

    # ------------------------------------------------------------------------ writes

    def add(self, key: str, group: str, features: LocalFeatures, stamp: str = "") -> None:
        """Index a catalog image's descriptors under `key` (its point id), replacing what
        the key held; `stamp` records which version of the source they came from."""
        self.add_many([(key, group, features, stamp)])

    def add_many(self, entries: Iterable[tuple[str, str, LocalFeatures, str]]) -> None:
        entries = list(entries)
        with self._lock:
            self._remove_slots([self._slot_of[k] for k, *_ in entries if k in self._slot_of])
            for key, group, features, stamp in entries:
                n = len(features)
                start = self._next_row
                if n:
                    x = np.ascontiguousarray(root_sift(features.descriptors), dtype=np.float32)
                    self._index.add_with_ids(x, np.arange(start, start + n, dtype=np.int64))
                self._next_row += n
                slot = len(self._keys)
                if self._next_row > len(self._row_slot):  # grow by doubling: amortised O(1)
                    grown = np.full(max(2 * len(self._row_slot), self._next_row, 1024), -1,
                                    dtype=np.int32)
                    grown[:start] = self._row_slot[:start]
                    self._row_slot = grown
                self._row_slot[start:start + n] = slot
                gid = self._group_ids.get(group)
                if gid is None:
                    gid = self._group_ids[group] = len(self._group_names)
                    self._group_names.append(group)
                self._keys.append(key)
                self._groups.append(gid)
                self._points.append(np.asarray(features.keypoints, dtype=np.float32))
                self._sizes.append(features.size)
                self._rows.append((start, start + n))
                self._stamps.append(stamp)
                self._slot_of[key] = slot
                self._group_slots.setdefault(gid, set()).add(slot)

    def remove(self, keys: Iterable[str]) -> int:
        with self._lock:
            slots = [self._slot_of[k] for k in keys if k in self._slot_of]
            self._remove_slots(slots)
            return len(slots)

    def remove_groups(self, groups: Iterable[str]) -> int:
        with self._lock:
            slots = [s for g in groups if g in self._group_ids
                     for s in self._group_slots.get(self._group_ids[g], ())]
            self._remove_slots(slots)
            return len(slots)

    def _remove_slots(self, slots: Sequence[int]) -> None:
        if not slots:
            return
        rows = [np.arange(*self._rows[s], dtype=np.int64) for s in slots]
        ids = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        if len(ids):
            self._index.remove_ids(faiss.IDSelectorBatch(ids))
        for s in slots:
            key = self._keys[s]
            if self._slot_of.get(key) == s:
                del self._slot_of[key]
            self._group_slots.get(self._groups[s], set()).discard(s)
            self._keys[s] = ""
            self._points[s] = np.zeros((0, 2), np.float32)
            self._rows[s] = (0, 0)

    # ------------------------------------------------------------------------- vote

    def vote(self, query_root: np.ndarray, query_points: np.ndarray, *, k: int = 6,
             ratio: float = 0.85, allowed: Iterable[str] | None = None) -> Votes:
        """Each query descriptor (RootSIFT rows) votes for the catalog point of its nearest
        catalog descriptor when that is closer than `ratio` times the nearest descriptor of
        another product among its `k` neighbours (none among them: it passes). `allowed`
        (point ids) restricts the vote to those points, inside the index search."""
        q = np.ascontiguousarray(query_root, dtype=np.float32)
        empty = Votes({}, {}, {}, {}, 0)
        if len(q) == 0:
            return empty
        with self._lock:
            if self._index.ntotal == 0:
                return empty
            params = faiss.SearchParametersIVF()
            params.nprobe = self.nprobe
            if allowed is not None:
                bitmap = self._bitmap(allowed)
                if bitmap is None:
                    return empty
                params.sel = faiss.IDSelectorBitmap(self._next_row, faiss.swig_ptr(bitmap))
            dist, rows = self._index.search(q, k, params=params)
            row_slot = self._row_slot
            groups = np.asarray(self._groups, dtype=np.int64)
            valid = rows >= 0
            slots = np.where(valid, row_slot[np.where(valid, rows, 0)], -1)
            group = np.where(valid, groups[np.where(slots >= 0, slots, 0)], -1)
            keys, points, sizes, names = (self._keys, self._points, self._sizes,
                                          self._group_names)
            starts = np.asarray([r[0] for r in self._rows], dtype=np.int64)
            # The nearest neighbour of another product, per query row (inf when none).
            other = valid & (group != group[:, :1])
            first_other = np.where(other.any(axis=1), other.argmax(axis=1), -1)
            d2 = np.where(first_other >= 0,
                          dist[np.arange(len(q)), np.maximum(first_other, 0)], np.inf)
            # Squared L2 distances: the ratio test on distances is ratio^2 on squares.
            keep = valid[:, 0] & (dist[:, 0] < (ratio ** 2) * d2)
            qrows = np.flatnonzero(keep)
            cat_rows = rows[qrows, 0]
            cat_slots = slots[qrows, 0]
            cat_dist = dist[qrows, 0]
            # One vote per catalog keypoint: its closest query descriptor.
            order = np.lexsort((cat_dist, cat_rows))
            first = np.r_[True, cat_rows[order][1:] != cat_rows[order][:-1]] if len(order) \
                else np.zeros(0, bool)
            chosen = order[first]
            qrows, cat_rows, cat_slots = qrows[chosen], cat_rows[chosen], cat_slots[chosen]
            counts: dict[str, int] = {}
            matches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            out_sizes: dict[str, tuple[int, int]] = {}
            out_groups: dict[str, str] = {}
            by_slot = np.argsort(cat_slots, kind="stable")
            qrows, cat_rows, cat_slots = qrows[by_slot], cat_rows[by_slot], cat_slots[by_slot]
            bounds = np.flatnonzero(np.r_[True, cat_slots[1:] != cat_slots[:-1], True]) \
                if len(cat_slots) else np.zeros(1, np.int64)
            for a, b in itertools.pairwise(bounds):
                slot = int(cat_slots[a])
                key = keys[slot]
                kp = points[slot][cat_rows[a:b] - starts[slot]]
                counts[key] = int(b - a)
                matches[key] = (qrows[a:b], kp)
                out_sizes[key] = sizes[slot]
                out_groups[key] = names[self._groups[slot]]
        del query_points  # correspondences refer to query rows; the caller owns the points
        return Votes(counts, matches, out_sizes, out_groups, int(keep.sum()))

    def _bitmap(self, allowed: Iterable[str]) -> np.ndarray | None:
        slots = [self._slot_of[k] for k in allowed if k in self._slot_of]
        if not slots:
            return None
        mask = np.zeros(self._next_row, dtype=bool)
        for s in slots:
            a, b = self._rows[s]
            mask[a:b] = True
        return np.packbits(mask, bitorder="little")

    # ------------------------------------------------------------------- persistence

    def to_bytes(self) -> tuple[bytes, bytes]:
        """(FAISS index, tables) of the live entries, compacted."""
        with self._lock:
            live = [s for s in range(len(self._keys)) if self._keys[s]
                    and self._slot_of.get(self._keys[s]) == s]
            index_bytes = faiss.serialize_index(self._index).tobytes()
            tables = io.BytesIO()
            np.savez(tables,
                     keys=np.array([self._keys[s] for s in live], dtype=object),
                     groups=np.array([self._group_names[self._groups[s]] for s in live],
                                     dtype=object),
                     stamps=np.array([self._stamps[s] for s in live], dtype=object),
                     rows=np.array([self._rows[s] for s in live], dtype=np.int64
                                   ).reshape(-1, 2),
                     sizes=np.array([self._sizes[s] for s in live], dtype=np.int64
                                    ).reshape(-1, 2),
                     points=np.concatenate([self._points[s] for s in live])
                     if live else np.zeros((0, 2), np.float32),
                     next_row=np.array([self._next_row], dtype=np.int64),
                     info=np.array(json.dumps(self.info)))
            return index_bytes, tables.getvalue()

    @classmethod
    def from_bytes(cls, index_bytes: bytes, tables: bytes, nprobe: int = 8
                   ) -> DescriptorIndex:
        index = faiss.deserialize_index(np.frombuffer(index_bytes, dtype=np.uint8))
        with np.load(io.BytesIO(tables), allow_pickle=True) as t:
            keys, groups, stamps = list(t["keys"]), list(t["groups"]), list(t["stamps"])
            rows, sizes, points = t["rows"], t["sizes"], t["points"]
            next_row = int(t["next_row"][0])
            info = json.loads(str(t["info"]))
        total = int(index.ntotal)
        held = int(sum(int(b - a) for a, b in rows))
        if total != held:
            raise ValueError(f"descriptor index snapshot: {total} entries, tables say {held}")
        out = cls.__new__(cls)
        out._index = index
        out.info = info
        out.nprobe = nprobe
        out._lock = threading.RLock()
        out._next_row = next_row
        out._row_slot = np.full(next_row, -1, dtype=np.int32)
        out._keys, out._groups, out._points, out._sizes = [], [], [], []
        out._rows, out._stamps, out._slot_of = [], [], {}
        out._group_ids, out._group_names, out._group_slots = {}, [], {}
        offset = 0
        for slot, (key, group, stamp) in enumerate(zip(keys, groups, stamps, strict=True)):
            a, b = (int(v) for v in rows[slot])
            out._row_slot[a:b] = slot
            gid = out._group_ids.setdefault(str(group), len(out._group_names))
            if gid == len(out._group_names):
                out._group_names.append(str(group))
            out._keys.append(str(key))
            out._groups.append(gid)
            out._points.append(np.ascontiguousarray(points[offset:offset + b - a],
                                                    dtype=np.float32))
            offset += b - a
            out._sizes.append((int(sizes[slot][0]), int(sizes[slot][1])))
            out._rows.append((a, b))
            out._stamps.append(str(stamp))
            out._slot_of[str(key)] = slot
            out._group_slots.setdefault(gid, set()).add(slot)
        return out
