"""Local features: serialisation, visual words, geometric verification, the photo scorer
and the shipped vocabulary / scorer files. Synthetic images only (fast, no data sets)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image, ImageDraw

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is a dependency")

from encoders.local_features import (  # noqa: E402
    LocalFeatureExtractor,
    LocalFeatures,
    PhotoScorer,
    VisualVocabulary,
    fit_logistic,
    train_vocabulary,
    verify,
)


def _textured(seed: int, size: int = 320) -> Image.Image:
    """A picture with many distinct corners and blobs (what SIFT finds keypoints on)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(60):
        x, y = rng.integers(0, size, 2)
        w, h = rng.integers(8, 50, 2)
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        if rng.random() < 0.5:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
        else:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
    return image


@pytest.fixture(scope="module")
def extractor() -> LocalFeatureExtractor:
    return LocalFeatureExtractor()


def test_round_trip_keeps_every_value(extractor: LocalFeatureExtractor) -> None:
    feats = extractor.extract(_textured(1))
    assert len(feats) > 50
    assert feats.descriptors.dtype == np.uint8 and feats.descriptors.shape[1] == 128
    back = LocalFeatures.from_bytes(feats.to_bytes())
    np.testing.assert_array_equal(back.keypoints, feats.keypoints)
    np.testing.assert_array_equal(back.descriptors, feats.descriptors)
    assert back.size == feats.size == (320, 320)
    assert len(feats.to_bytes()) < feats.keypoints.nbytes + feats.descriptors.nbytes


def test_empty_image_round_trips(extractor: LocalFeatureExtractor) -> None:
    feats = extractor.extract(Image.new("RGB", (64, 40), "white"))
    assert len(feats) == 0 and feats.size == (64, 40)
    assert len(LocalFeatures.from_bytes(feats.to_bytes())) == 0


@pytest.mark.parametrize("mangle", [lambda b: b[:10], lambda b: b"XXXX" + b[4:],
                                    lambda b: b[:-7]])
def test_corrupt_blob_is_refused(extractor: LocalFeatureExtractor, mangle) -> None:
    blob = extractor.extract(_textured(2)).to_bytes()
    with pytest.raises(ValueError, match="local features"):
        LocalFeatures.from_bytes(mangle(blob))


def test_keypoints_are_in_the_pixels_of_the_given_image(
        extractor: LocalFeatureExtractor) -> None:
    small = _textured(3, size=160)  # upscaled inside, reported in its own pixels
    feats = extractor.extract(small)
    assert feats.size == (160, 160)
    assert feats.keypoints.min() >= 0 and feats.keypoints.max() <= 160


def _warp(image: Image.Image, h: np.ndarray, size: tuple[int, int]) -> Image.Image:
    out = cv2.warpPerspective(np.asarray(image), h, size, borderValue=(200, 180, 150))
    return Image.fromarray(out)


def test_verify_recovers_a_known_homography(extractor: LocalFeatureExtractor) -> None:
    item = _textured(4)
    h = np.array([[0.7, 0.12, 60.0], [-0.08, 0.65, 40.0], [0.0003, -0.0002, 1.0]])
    photo = _warp(item, h, (480, 400))
    v = verify(extractor.extract(photo, query=True), extractor.extract(item))
    assert v.inliers >= 20 and v.homography is not None and v.box is not None
    corners = np.array([[[0, 0]], [[320, 0]], [[320, 320]], [[0, 320]]], np.float32)
    want = cv2.perspectiveTransform(corners, h).reshape(-1, 2)
    got = cv2.perspectiveTransform(corners, v.homography).reshape(-1, 2)
    assert np.abs(want - got).max() < 6.0
    x0, _y0, _x1, y1 = v.box
    assert abs(x0 - want[:, 0].min()) < 6 and abs(y1 - want[:, 1].max()) < 6


def test_verify_rejects_an_unrelated_image(extractor: LocalFeatureExtractor) -> None:
    v = verify(extractor.extract(_textured(5), query=True), extractor.extract(_textured(6)))
    assert v.inliers == 0 and v.box is None and v.score == 0.0


def test_vocabulary_words_and_save_load(tmp_path, extractor: LocalFeatureExtractor) -> None:
    feats = [extractor.extract(_textured(s)) for s in range(6)]
    vocab = train_vocabulary(np.concatenate([f.descriptors for f in feats]), 64, seed=0)
    ids, values = vocab.words(feats[0])
    assert ids.dtype == np.int64 and values.dtype == np.float32
    assert np.all(np.diff(ids) > 0) and ids.max() < 64
    assert abs(float(np.linalg.norm(values)) - 1.0) < 1e-5
    vocab.save(tmp_path / "v.npz")
    again = VisualVocabulary.load(tmp_path / "v.npz")
    assert again.version == vocab.version and again.size == 64
    ids2, values2 = again.words(feats[0])
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_allclose(values, values2)


def test_tree_assignment_matches_a_flat_scan() -> None:
    rng = np.random.default_rng(0)
    centroids = rng.random((1024, 128), dtype=np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    vocab = VisualVocabulary(centroids)
    x = centroids[rng.integers(0, 1024, 300)] + rng.normal(0, 0.01, (300, 128)).astype(
        np.float32)
    flat = ((x[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(axis=1)
    assert np.mean(vocab.assign(x) == flat) > 0.95


def test_scorer_is_monotonic_in_inliers_and_round_trips(tmp_path) -> None:
    scorer = PhotoScorer(np.array([0.5, 1.0, 2.0, 1.0, 0.0]), -6.0, threshold=0.7)
    probs = [scorer.score({"votes": 30, "inliers": n, "inlier_ratio": 0.3})
             for n in (0, 5, 10, 20, 40, 80)]
    assert all(b > a for a, b in itertools.pairwise(probs))
    assert 0.0 < probs[0] < probs[-1] < 1.0
    assert scorer.score({}) == scorer.score({"votes": 0, "vote_share": 0, "inliers": 0,
                                             "inlier_ratio": 0, "dense_cos": 0})
    scorer.save(tmp_path / "s.json")
    again = PhotoScorer.load(tmp_path / "s.json")
    assert again.score({"inliers": 12}) == pytest.approx(scorer.score({"inliers": 12}))
    assert again.threshold == 0.7


def test_fit_logistic_separates_by_inliers() -> None:
    rng = np.random.default_rng(0)
    pos = np.c_[np.log1p(rng.integers(15, 60, 200)), rng.uniform(0.3, 0.9, 200)]
    neg = np.c_[np.log1p(rng.integers(0, 12, 200)), rng.uniform(0.0, 0.5, 200)]
    w, _b = fit_logistic(np.r_[pos, neg], np.r_[np.ones(200), np.zeros(200)])
    assert w[0] > 0


def test_shipped_files_load_and_work(extractor: LocalFeatureExtractor) -> None:
    vocab = VisualVocabulary.load()
    assert vocab.size >= 256 and vocab.info.get("extractor")
    ids, _ = vocab.words(extractor.extract(_textured(7)))
    assert len(ids) > 10 and ids.max() < vocab.size
    scorer = PhotoScorer.load()
    assert 0.0 < scorer.threshold < 1.0
    assert scorer.score({"votes": 80, "vote_share": 0.3, "inliers": 60, "inlier_ratio": 0.75,
                         "dense_cos": 0.6}) > \
        scorer.score({"votes": 3, "vote_share": 0.01, "inliers": 0, "dense_cos": 0.3})
    assert scorer.restock_min_inliers >= 8


def test_vote_matcher_finds_the_warped_item_and_its_box(extractor: LocalFeatureExtractor
                                                        ) -> None:
    import faiss

    from encoders.descriptor_index import DescriptorIndex, train_index
    from encoders.photo_match import VoteMatcher

    catalog = [_textured(20 + s) for s in range(6)]
    feats = [extractor.extract(img) for img in catalog]
    trained = train_index(np.concatenate([f.descriptors for f in feats]), 16)
    assert isinstance(trained, faiss.Index)
    scorer = PhotoScorer(np.array([0.5, 2.0, 2.0, 1.0, 0.0]), -6.0, threshold=0.5)
    matcher = VoteMatcher(feats, scorer, DescriptorIndex(trained, nprobe=16))
    h = np.array([[0.6, 0.1, 90.0], [-0.05, 0.6, 50.0], [0.0002, 0.0, 1.0]])
    photo = extractor.extract(_warp(catalog[3], h, (500, 420)), query=True)
    final, cands = matcher.ranking(photo)
    assert int(final.argmax()) == 3
    best = cands[0]
    assert best.index == 3 and best.verification is not None
    x0, y0, x1, y1 = best.verification.box  # the catalog image's corners, projected
    assert abs(x0 - 90) < 25 and abs(y0 - 50) < 25 and x1 > 250 and y1 > 230
    assert best.probability >= scorer.threshold
    assert all(c.probability < scorer.threshold for c in cands[1:])
