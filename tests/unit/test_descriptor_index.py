"""The descriptor index (photo search's candidate vote) and its upkeep beside the feature
files: add / remove / filters / snapshot round trip, and PhotoIndex keeping it consistent
with the files across restarts, other processes and repairs. Synthetic images only."""

from __future__ import annotations

import functools
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("faiss", reason="faiss-cpu is a dependency")

from encoders.descriptor_index import DescriptorIndex, train_index
from encoders.local_features import (
    LocalFeatureExtractor,
    LocalFeatures,
    root_sift,
    verify_matches,
)
from tests.unit.test_local_features import _textured


def _photo_of(item: Image.Image, seed: int) -> Image.Image:
    """The item rotated a little and scaled down onto a bigger grey frame."""
    rng = np.random.default_rng(seed)
    frame = Image.new("RGB", (640, 480), (120, 120, 120))
    small = item.rotate(float(rng.uniform(-15, 15)), expand=True, fillcolor="white")
    small = small.resize((int(small.width * 0.8), int(small.height * 0.8)))
    frame.paste(small, (150, 60))
    return frame


@functools.lru_cache(maxsize=1)
def _extractor() -> LocalFeatureExtractor:
    return LocalFeatureExtractor()


@functools.lru_cache(maxsize=16)
def _features(seed: int) -> LocalFeatures:
    return _extractor().extract(_textured(seed))


@functools.lru_cache(maxsize=1)
def _trained_bytes() -> bytes:
    import faiss

    x = np.concatenate([_features(s).descriptors for s in range(100, 106)])
    return faiss.serialize_index(train_index(x, 16)).tobytes()


def _empty() -> DescriptorIndex:
    import faiss

    index = faiss.deserialize_index(np.frombuffer(_trained_bytes(), dtype=np.uint8))
    return DescriptorIndex(index, {"version": "test-ivf16"}, nprobe=16)


def _query(seed: int, photo_seed: int = 0) -> LocalFeatures:
    return _extractor().extract(_photo_of(_textured(seed), photo_seed), query=True)


def _vote(index: DescriptorIndex, query: LocalFeatures, **kw: object):
    return index.vote(root_sift(query.descriptors), query.keypoints, **kw)  # type: ignore[arg-type]


def test_vote_ranks_the_photographed_image_first_and_its_votes_verify() -> None:
    index = _empty()
    for s in range(6):
        index.add(f"k{s}", f"p{s}", _features(s))
    query = _query(3)
    votes = _vote(index, query)
    ranked = votes.ranked()
    assert ranked[0][0] == "k3"
    assert ranked[0][1] >= 3 * (ranked[1][1] if len(ranked) > 1 else 1)
    assert votes.groups["k3"] == "p3" and votes.sizes["k3"] == (320, 320)
    assert 0 < votes.counts["k3"] <= votes.passed
    rows, points = votes.matches["k3"]
    assert len(rows) == len(set(rows.tolist())) == votes.counts["k3"]
    ver = verify_matches(query.keypoints[rows], query.size, points, votes.sizes["k3"])
    assert ver.verified and ver.inliers >= 20
    x0, y0, x1, y1 = ver.box  # type: ignore[misc]
    assert 120 <= x0 <= 190 and 30 <= y0 <= 100 and 400 <= x1 <= 560 and 300 <= y1 <= 460


def test_a_products_second_image_does_not_cancel_its_votes() -> None:
    """Ratio test against another PRODUCT: two images of one product both keep votes; the
    same image under two products cancels (no descriptor is distinctive)."""
    same = _empty()
    same.add("a0", "p", _features(3))
    same.add("a1", "p", _features(3))
    same.add("b", "q", _features(4))
    votes = _vote(same, _query(3))
    assert sum(votes.counts.get(k, 0) for k in ("a0", "a1")) >= 30
    twins = _empty()
    twins.add("a", "p", _features(3))
    twins.add("b", "q", _features(3))
    assert sum(_vote(twins, _query(3)).counts.values()) < 5


def test_remove_replace_and_filters() -> None:
    index = _empty()
    for s in range(4):
        index.add(f"k{s}", f"p{s}", _features(s))
    query = _query(2)
    assert _vote(index, query).ranked()[0][0] == "k2"
    # A filter leaves out the photographed item: it gets no vote at all.
    filtered = _vote(index, query, allowed=["k0", "k1", "k3"])
    assert "k2" not in filtered.counts
    assert _vote(index, query, allowed=["k2"]).ranked()[0][0] == "k2"
    assert _vote(index, query, allowed=["unknown"]).counts == {}
    # Replacing a key's features (an image changed) drops the old descriptors: the vote is
    # the one of an index built with the new image from the start.
    before = _vote(index, query).counts["k2"]
    index.add("k2", "p2", _features(9))
    fresh = _empty()
    for s, key in ((0, "k0"), (1, "k1"), (3, "k3"), (9, "k2")):
        fresh.add(key, f"p{key[1]}", _features(s))
    assert _vote(index, query).counts == _vote(fresh, query).counts
    assert _vote(index, query).counts["k2"] < before / 3
    assert index.remove_groups(["p2"]) == 1
    assert "k2" not in index.stamps() and len(index) == 3
    assert index.remove(["k0", "nope"]) == 1
    assert set(index.stamps()) == {"k1", "k3"}
    total = sum(len(_features(s)) for s in (1, 3))
    assert index.descriptors == total


def test_snapshot_round_trip_keeps_votes_and_stamps() -> None:
    index = _empty()
    for s in range(5):
        index.add(f"k{s}", f"p{s}", _features(s), stamp=f"st{s}")
    index.remove(["k1"])
    again = DescriptorIndex.from_bytes(*index.to_bytes(), nprobe=16)
    assert again.stamps() == index.stamps() and again.descriptors == index.descriptors
    query = _query(4)
    a, b = _vote(index, query), _vote(again, query)
    assert a.counts == b.counts and a.passed == b.passed
    again.add("k5", "p5", _features(5))  # keeps working after a load
    assert _vote(again, _query(5)).ranked()[0][0] == "k5"


def test_shipped_index_loads_empty_and_trained() -> None:
    index = DescriptorIndex.empty()
    assert len(index) == 0 and index.version.startswith("ivf")
    assert index.info.get("data", "").startswith("openclipart train split")
    index.add("k", "p", _features(1))
    assert _vote(index, _query(1)).ranked()[0][0] == "k"


# ------------------------------------------------------------- PhotoIndex upkeep


def _photo_index(root: Path):
    from backend.domain.photo_index import PhotoIndex
    from backend.stores.features import FeatureStore
    from encoders.local_features import PhotoScorer, VisualVocabulary

    return PhotoIndex(FeatureStore(root), _extractor(), VisualVocabulary.load(),
                      PhotoScorer(np.ones(5), -5.0), workers=1, descriptor_index=_empty)


def _pid(product: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, product))


def _write(photo, collection: str, seeds: list[int]) -> None:
    described = photo.describe([_textured(s) for s in seeds])
    photo.write(collection, [(_pid(f"p{s}"), f"p{s}", 0, d)
                             for s, d in zip(seeds, described, strict=True)])


def test_index_follows_writes_and_deletes_in_process(tmp_path: Path) -> None:
    photo = _photo_index(tmp_path)
    index = photo.descriptors("c")
    assert len(index) == 0
    _write(photo, "c", [0, 1, 2])
    assert set(index.stamps()) == {_pid("p0"), _pid("p1"), _pid("p2")}
    photo.delete_products("c", ["p1"])
    assert _pid("p1") not in index.stamps()
    photo.prune("c", "p2", keep=set())
    assert set(index.stamps()) == {_pid("p0")}
    assert photo.index_drift("c").changed is False


def test_restart_loads_the_snapshot_and_catches_up_with_the_files(tmp_path: Path) -> None:
    photo = _photo_index(tmp_path)
    photo.descriptors("c")
    _write(photo, "c", [0, 1])
    photo.close()  # snapshots what changed
    assert (tmp_path / "c" / ".descriptors" / "manifest.json").is_file()
    # Another process (no index loaded) writes and deletes while this one is down.
    writer = _photo_index(tmp_path)
    _write(writer, "c", [2])
    writer.delete_products("c", ["p0"])
    restarted = _photo_index(tmp_path)
    index = restarted.descriptors("c")
    assert set(index.stamps()) == {_pid("p1"), _pid("p2")}
    assert _vote(index, _query(2)).ranked()[0][0] == _pid("p2")


def test_a_second_replica_sees_new_features(tmp_path: Path, monkeypatch) -> None:
    import backend.domain.photo_index as photo_index

    monkeypatch.setattr(photo_index, "GENERATION_CHECK_S", 0.0)
    indexer, replica = _photo_index(tmp_path), _photo_index(tmp_path)
    assert len(replica.descriptors("c")) == 0
    _write(indexer, "c", [3])
    assert set(replica.descriptors("c").stamps()) == {_pid("p3")}
    indexer.delete_products("c", ["p3"])
    assert len(replica.descriptors("c")) == 0


def test_reconcile_style_repair_of_a_stale_snapshot(tmp_path: Path) -> None:
    photo = _photo_index(tmp_path)
    photo.descriptors("c")
    _write(photo, "c", [0, 1])
    photo.close()
    # A feature file rewritten behind the snapshot's back, one deleted by hand.
    other = _photo_index(tmp_path)
    _write(other, "c", [5])
    for path in (tmp_path / "c").glob(f"*/*/{_pid('p0')}.lf"):
        path.unlink()
    checker = _photo_index(tmp_path)
    drift = checker.index_drift("c")  # read-only: what the snapshot lacks / holds extra
    assert (drift.added, drift.removed) == (1, 1)
    report = checker.sync("c")
    assert (report.added, report.removed) == (1, 1)
    assert not _photo_index(tmp_path).index_drift("c").changed  # the new snapshot is right
