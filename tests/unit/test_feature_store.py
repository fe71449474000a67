"""The local-feature sidecar files: what indexing, search and reconcile rely on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backend.errors import ConfigError
from backend.stores.features import FeatureStore, StoredFeatures
from backend.stores.vectors.base import point_id


def item(product: str, position: int, version: str = "v1", data: bytes = b"\x01\x02")\
        -> StoredFeatures:
    return StoredFeatures(point_id(product, position, "m"), product, position, version, data)


def test_write_read_back_and_overwrite(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    a, b = item("p1", 0, data=b"abc" * 100), item("p1", 1)
    written = store.put_many("c1", [a, b])
    assert written > len(a.data) + len(b.data)  # each with its header
    assert store.get("c1", "p1", a.point_id) == a
    assert store.get("c1", "p1", b.point_id) == b
    assert store.get("c2", "p1", a.point_id) is None  # per collection
    newer = StoredFeatures(a.point_id, "p1", 0, "v2", b"new")
    store.put_many("c1", [newer])
    assert store.get("c1", "p1", a.point_id) == newer
    assert store.size_bytes("c1") > 0


def test_product_ids_of_any_text_are_safe(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    odd = item("../../etc/passwd ü/", 0)
    store.put_many("c1", [odd])
    assert store.get("c1", odd.product_id, odd.point_id) == odd
    assert all(p.resolve().is_relative_to(tmp_path.resolve()) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError):
        store.get("c1", "p1", "../not-a-point-id")
    with pytest.raises(ConfigError):
        store.put_many("../escape", [odd])


def test_prune_and_delete_products(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    keep, gone, other = item("p1", 0), item("p1", 1), item("p2", 0)
    store.put_many("c1", [keep, gone, other])
    assert store.prune("c1", "p1", {keep.point_id}) == 1
    assert store.get("c1", "p1", gone.point_id) is None
    assert store.get("c1", "p1", keep.point_id) == keep
    store.delete_products("c1", ["p1", "never-there"])
    assert store.get("c1", "p1", keep.point_id) is None
    assert store.get("c1", "p2", other.point_id) == other


def test_scan_reports_headers_sweeps_temporaries_and_flags_damage(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    good, damaged = item("p1", 0), item("p2", 3)
    store.put_many("c1", [good, damaged])
    folder = next(p.parent for p in tmp_path.rglob(f"{damaged.point_id}.lf"))
    (folder / f"{damaged.point_id}.lf").write_bytes(b"PS")  # truncated by a disk fault
    leftover = folder / ".tmp-crashed-write"  # a write interrupted before its rename
    leftover.write_bytes(b"partial")
    found = {f.point_id: f for f in store.scan("c1")}
    assert found[good.point_id] == StoredFeatures(good.point_id, "p1", 0, "v1")  # no data
    assert found[damaged.point_id].version == ""  # unreadable: stale, re-indexed
    assert not leftover.exists()
    store.delete_paths("c1", [found[damaged.point_id]])
    assert {f.point_id for f in store.scan("c1")} == {good.point_id}


def test_drop_removes_a_collection_only(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    store.put_many("old", [item("p1", 0)])
    store.put_many("new", [item("p1", 0)])
    store.drop("old")
    store.drop("old")  # no-op when missing
    assert list(store.scan("old")) == []
    assert len(list(store.scan("new"))) == 1
    assert sorted(os.listdir(tmp_path)) == ["new"]


def test_stamps_change_when_a_file_is_rewritten_and_read_by_path(tmp_path: Path) -> None:
    """What the descriptor index compares itself with: one stamp per file, new on rewrite."""
    store = FeatureStore(tmp_path)
    a, b = item("p1", 0, data=b"a" * 10), item("p2", 0)
    store.put_many("c1", [a, b])
    stamps = store.stamps("c1")
    assert set(stamps) == {a.point_id, b.point_id}
    assert stamps[a.point_id][1] == store.stamp("c1", "p1", a.point_id)
    assert store.read(stamps[a.point_id][0]) == a
    store.put_many("c1", [StoredFeatures(a.point_id, "p1", 0, "v1", b"a" * 11)])
    assert store.stamps("c1")[a.point_id][1] != stamps[a.point_id][1]
    store.delete_products("c1", ["p2"])
    assert set(store.stamps("c1")) == {a.point_id}
    assert store.stamp("c1", "p2", b.point_id) is None
    assert store.read(stamps[b.point_id][0]) is None
    assert store.stamps("nothing-here") == {}
