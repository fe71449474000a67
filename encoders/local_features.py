"""Local features for photo search: keypoints + descriptors per image, visual words for
candidate generation, geometric verification of a candidate, and one calibrated score.

    extractor = LocalFeatureExtractor()
    catalog = extractor.extract(catalog_image)            # stored per catalog image
    query = extractor.extract(photo, query=True)          # more keypoints, upscaled
    indices, values = VisualVocabulary.load().words(query)  # sparse vector (IDF: the store)
    v = verify(query, catalog)                            # inliers, box in the photo
    p = PhotoScorer.load().score({"inliers": v.inliers, "inlier_ratio": ..., ...})

Descriptors are OpenCV SIFT, stored as uint8 (SIFT's own 0..255 range, so lossless) and
compared as RootSIFT (Hellinger kernel), which matches better than L2 on raw SIFT. The
settings (image side, keypoint counts, ratio test, RANSAC threshold, homography checks)
were chosen by measurement on training-split photos: see `encoders/checkpoints/README.md`.

Threads: one photo query is small work (a few hundred keypoints, 20-50 candidates), so
callers serving concurrent queries should call `cv2.setNumThreads(1)` once and run BLAS
single-threaded around verification (`threadpoolctl.threadpool_limits(1)`, as
`encoders.photo_match.PhotoMatcher` does): with threads on 2 shared cores, a 1 ms match
took 15 ms in measurement.

PhotoScorer signals (any may be missing; a missing one takes its documented default, 0):
- "votes": query descriptors whose nearest catalog descriptor (ratio test against another
  product) is in the candidate image (`encoders.descriptor_index`)
- "vote_share": votes / every query descriptor that passed the ratio test (0..1)
- "inliers": RANSAC inliers among the votes' correspondences (0 when verification failed)
- "inlier_ratio": inliers / votes (0..1)
- "dense_cos": cosine of the global CNN vectors of photo and catalog image
"""

from __future__ import annotations

import json
import math
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "SCORER_SIGNALS",
    "LocalFeatureExtractor",
    "LocalFeatures",
    "PhotoScorer",
    "Verification",
    "VisualVocabulary",
    "match_descriptors",
    "root_sift",
    "scorer_file",
    "train_vocabulary",
    "verify",
    "verify_matches",
]

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
VOCABULARY_FILE = CHECKPOINTS / "visual-words.npz"
SCORER_FILE = CHECKPOINTS / "photo-scorer.json"
# The scorer weighs the dense cosine of the image model it was fitted with: one file per model.
SCORER_FILES = {"efficientnet_lite0": SCORER_FILE,
                "efficientnet_lite0_photo": CHECKPOINTS / "photo-scorer-photo-cnn.json"}


def scorer_file(image_model: str) -> Path:
    """The shipped PhotoScorer fitted with `image_model`'s dense cosines."""
    try:
        return SCORER_FILES[image_model]
    except KeyError:
        raise ValueError(f"no photo scorer is shipped for image model {image_model!r}; "
                         f"known: {sorted(SCORER_FILES)}") from None

_MAGIC = b"PSLF"
_FORMAT = 1
# magic, format, n, dim, dtype code, width, height
_HEADER = struct.Struct("<4sBIHBII")
_DTYPES: dict[int, np.dtype[Any]] = {1: np.dtype(np.uint8), 2: np.dtype(np.float32)}
_DTYPE_CODES = {v: k for k, v in _DTYPES.items()}


# ------------------------------------------------------------------------------ features


@dataclass(frozen=True)
class LocalFeatures:
    keypoints: np.ndarray  # (N, 2) float32 x, y in pixels of the image they came from
    descriptors: np.ndarray  # (N, D) uint8 SIFT
    size: tuple[int, int]  # (width, height) of that image

    def __post_init__(self) -> None:
        if self.keypoints.ndim != 2 or self.keypoints.shape[1] != 2:
            raise ValueError(f"keypoints must be (N, 2), got {self.keypoints.shape}")
        if self.descriptors.ndim != 2 or len(self.descriptors) != len(self.keypoints):
            raise ValueError(f"descriptors must be (N, D) with N = {len(self.keypoints)}, "
                             f"got {self.descriptors.shape}")

    def __len__(self) -> int:
        return len(self.keypoints)

    def to_bytes(self) -> bytes:
        """Header + zlib(keypoints float32, descriptors): about 60 % of the raw size."""
        dtype = np.dtype(self.descriptors.dtype)
        if dtype not in _DTYPE_CODES:
            raise ValueError(f"unsupported descriptor dtype {dtype}")
        n, dim = self.descriptors.shape if len(self) else (0, self.descriptors.shape[1])
        head = _HEADER.pack(_MAGIC, _FORMAT, n, dim, _DTYPE_CODES[dtype], *self.size)
        body = (np.ascontiguousarray(self.keypoints, dtype="<f4").tobytes()
                + np.ascontiguousarray(self.descriptors, dtype=dtype.newbyteorder("<"))
                .tobytes())
        return head + zlib.compress(body, 6)

    @classmethod
    def from_bytes(cls, data: bytes) -> LocalFeatures:
        if len(data) < _HEADER.size:
            raise ValueError("local features: truncated header")
        magic, fmt, n, dim, code, width, height = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError("local features: not a local-feature blob (bad magic)")
        if fmt != _FORMAT:
            raise ValueError(f"local features: unknown format {fmt} (this code reads "
                             f"{_FORMAT})")
        if code not in _DTYPES:
            raise ValueError(f"local features: unknown descriptor dtype code {code}")
        dtype = _DTYPES[code]
        try:
            body = zlib.decompress(data[_HEADER.size:])
        except zlib.error as exc:
            raise ValueError(f"local features: corrupt body ({exc})") from exc
        kp_bytes = n * 2 * 4
        if len(body) != kp_bytes + n * dim * dtype.itemsize:
            raise ValueError("local features: body size does not match the header")
        keypoints = np.frombuffer(body, dtype="<f4", count=n * 2).reshape(n, 2)
        descriptors = np.frombuffer(body, dtype=dtype.newbyteorder("<"), offset=kp_bytes
                                    ).reshape(n, dim)
        return cls(keypoints.astype(np.float32), descriptors.astype(dtype),
                   (int(width), int(height)))


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT (Arandjelović & Zisserman 2012): L1-normalise, square root; rows then have
    unit L2 norm, so a dot product is the Hellinger kernel."""
    d = descriptors.astype(np.float32)
    d /= np.maximum(d.sum(axis=1, keepdims=True), 1e-6)
    return np.sqrt(d, out=d)


@dataclass(frozen=True)
class ExtractorSettings:
    """Images are resized so that the longest side lies in [min_side, max_side]."""

    # Catalog images at 480 px with a low contrast threshold: more keypoints for the vote
    # (measured on train-split photos, bench/photo_vote_dev.py; 640 px costs twice the
    # extraction time at ingest).
    catalog_min_side: int = 480  # small catalog images are upscaled
    catalog_max_side: int = 480
    catalog_keypoints: int = 500
    query_min_side: int = 384
    query_max_side: int = 960  # phone photos are downscaled: time grows with pixels
    query_keypoints: int = 1500
    contrast_threshold: float = 0.03  # SIFT default 0.04; lower keeps keypoints under blur
    # Catalog images are clean: a lower threshold gives flat clip art the keypoints a vote
    # needs (0 = contrast_threshold).
    catalog_contrast_threshold: float = 0.01
    # Catalog images are also described at these fractions of catalog_max_side (each with
    # its own keypoint budget), so that a product small in a photo meets descriptors made
    # at its own scale; the keypoints of every scale are in the same image pixels.
    catalog_extra_scales: tuple[float, ...] = ()


class LocalFeatureExtractor:
    """SIFT keypoints and descriptors. Thread-safe: OpenCV's detect is re-entrant per
    detector object, so each thread gets its own detector."""

    def __init__(self, settings: ExtractorSettings | None = None) -> None:
        self.settings = settings or ExtractorSettings()
        s = self.settings
        catalog_t = (f"-ct{s.catalog_contrast_threshold:g}" if s.catalog_contrast_threshold
                     else "")
        scales = "".join(f"-x{x:g}" for x in s.catalog_extra_scales)
        self.version = (f"sift-c{s.catalog_min_side}-{s.catalog_max_side}k{s.catalog_keypoints}"
                        f"-q{s.query_min_side}-{s.query_max_side}k{s.query_keypoints}"
                        f"-t{s.contrast_threshold:g}{catalog_t}{scales}-f{_FORMAT}")
        self._local = threading.local()

    def _detector(self, keypoints: int, contrast: float) -> Any:
        cache = getattr(self._local, "detectors", None)
        if cache is None:
            cache = self._local.detectors = {}
        if (keypoints, contrast) not in cache:
            cache[keypoints, contrast] = cv2.SIFT_create(  # type: ignore[attr-defined]
                nfeatures=keypoints, contrastThreshold=contrast)
        return cache[keypoints, contrast]

    def extract(self, image: Image.Image, *, query: bool = False) -> LocalFeatures:
        """Features of a catalog image, or with `query=True` of a photo to search with.
        Keypoints are in the pixels of `image` whatever the internal resizing."""
        s = self.settings
        low, high, count = ((s.query_min_side, s.query_max_side, s.query_keypoints) if query
                            else (s.catalog_min_side, s.catalog_max_side, s.catalog_keypoints))
        grey = np.asarray(_grey(image))
        height, width = grey.shape
        longest = max(width, height)
        scale = min(max(longest, low), high) / longest
        if abs(scale - 1.0) > 1e-3:
            grey = cv2.resize(grey, (max(1, round(width * scale)), max(1, round(height * scale))),
                              interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        contrast = (s.contrast_threshold if query or not s.catalog_contrast_threshold
                    else s.catalog_contrast_threshold)
        detector = self._detector(count, contrast)
        points, descriptors = _detect(detector, grey, scale)
        if not query:
            for extra in s.catalog_extra_scales:
                small = cv2.resize(grey, (max(1, round(grey.shape[1] * extra)),
                                          max(1, round(grey.shape[0] * extra))),
                                   interpolation=cv2.INTER_AREA)
                more_points, more = _detect(detector, small, scale * extra)
                points = np.concatenate([points, more_points])
                descriptors = np.concatenate([descriptors, more])
        return LocalFeatures(points, descriptors, (width, height))


def _detect(detector: Any, grey: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (in the pixels of the image `grey` was resized from by `scale`) and uint8
    descriptors; empty arrays when nothing is found."""
    kps, desc = detector.detectAndCompute(grey, None)
    if desc is None or not kps:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8)
    points = np.array([kp.pt for kp in kps], dtype=np.float32) / np.float32(scale)
    return points, np.clip(np.rint(desc), 0, 255).astype(np.uint8)


def _grey(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in
                                               image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat.alpha_composite(rgba)
        return flat.convert("L")
    return image.convert("L")


# ---------------------------------------------------------------------------- vocabulary


class VisualVocabulary:
    """k-means centroids over RootSIFT descriptors of catalog images. `words` assigns each
    descriptor to its nearest centroid through a two-level tree (nearest coarse groups
    first, then exact among their members), which costs a few per cent of a flat scan."""

    def __init__(self, centroids: np.ndarray, info: dict[str, Any] | None = None,
                 coarse: int = 0, probes: int = 3) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.size = len(self.centroids)
        self.info = dict(info or {})
        digest = zlib.crc32(self.centroids.tobytes()) & 0xFFFFFFFF
        self.version = f"vw{self.size}-{digest:08x}"
        self._norms = (self.centroids ** 2).sum(axis=1)
        self._probes = probes
        self._build_tree(coarse or max(1, round(math.sqrt(self.size))))

    def _build_tree(self, groups: int) -> None:
        if self.size <= 512 or groups <= 1:
            self._tops = None
            return
        top = _kmeans(self.centroids, groups, seed=1, iterations=10)
        owner = _nearest(self.centroids, top)
        self._tops = top
        self._top_norms = (top ** 2).sum(axis=1)
        self._members = [np.flatnonzero(owner == g) for g in range(len(top))]

    @classmethod
    def load(cls, path: str | Path | None = None) -> VisualVocabulary:
        with np.load(Path(path) if path is not None else VOCABULARY_FILE) as data:
            centroids = data["centroids"]
            info = json.loads(str(data["info"])) if "info" in data else {}
        return cls(centroids, info)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            np.savez_compressed(fh, centroids=self.centroids.astype(np.float32),
                                info=np.array(json.dumps(self.info, sort_keys=True)))

    def assign(self, descriptors: np.ndarray) -> np.ndarray:
        """Word id of each RootSIFT descriptor row."""
        if len(descriptors) == 0:
            return np.zeros(0, dtype=np.int64)
        if self._tops is None:
            return _nearest(descriptors, self.centroids, self._norms)
        top_d = self._top_norms[None, :] - 2.0 * descriptors @ self._tops.T
        probes = min(self._probes, len(self._tops))
        near = np.argpartition(top_d, probes - 1, axis=1)[:, :probes]
        out = np.empty(len(descriptors), dtype=np.int64)
        # Group descriptors by their probed set of coarse cells: one matmul per group.
        keys = np.sort(near, axis=1)
        order = np.lexsort(keys.T[::-1])
        keys = keys[order]
        starts = np.flatnonzero(np.r_[True, np.any(keys[1:] != keys[:-1], axis=1)])
        ends = np.r_[starts[1:], len(order)]
        for a, b in zip(starts, ends, strict=True):
            rows = order[a:b]
            cand = np.concatenate([self._members[g] for g in keys[a]])
            d = self._norms[cand][None, :] - 2.0 * descriptors[rows] @ self.centroids[cand].T
            out[rows] = cand[d.argmin(axis=1)]
        return out

    def words(self, features: LocalFeatures) -> tuple[np.ndarray, np.ndarray]:
        """Sparse term-frequency vector: (int64 word ids, sorted; float32 values). Values are
        sqrt(count), L2-normalised: the square root damps bursts of one repeated pattern
        (text, stripes); the store multiplies in IDF."""
        ids = self.assign(root_sift(features.descriptors))
        if len(ids) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        words, counts = np.unique(ids, return_counts=True)
        values = np.sqrt(counts.astype(np.float32))
        values /= np.float32(np.linalg.norm(values))
        return words.astype(np.int64), values.astype(np.float32)


def _nearest(x: np.ndarray, centres: np.ndarray, norms: np.ndarray | None = None
             ) -> np.ndarray:
    norms = (centres ** 2).sum(axis=1) if norms is None else norms
    out = np.empty(len(x), dtype=np.int64)
    for a in range(0, len(x), 4096):
        d = norms[None, :] - 2.0 * x[a:a + 4096] @ centres.T
        out[a:a + 4096] = d.argmin(axis=1)
    return out


def _kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 20,
            batch: int = 0, progress: bool = False) -> np.ndarray:
    """k-means++-seeded k-means in numpy. With `batch`, mini-batch updates (Sculley 2010)
    over `iterations` batches; without, full Lloyd iterations."""
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) <= k:
        return x.copy()
    centres = _kmeanspp(x[rng.choice(len(x), min(len(x), 20 * k), replace=False)], k, rng)
    if batch:
        counts = np.zeros(k, dtype=np.float64)
        from tqdm import tqdm

        for _ in tqdm(range(iterations), desc=f"k-means k={k}", unit="batch",
                      disable=not progress):
            sample = x[rng.choice(len(x), min(batch, len(x)), replace=False)]
            owner = _nearest(sample, centres)
            for c in np.unique(owner):
                members = sample[owner == c]
                counts[c] += len(members)
                rate = len(members) / counts[c]
                centres[c] = (1 - rate) * centres[c] + rate * members.mean(axis=0)
        return centres
    for _ in range(iterations):
        owner = _nearest(x, centres)
        sums = np.zeros_like(centres)
        np.add.at(sums, owner, x)
        counts_ = np.bincount(owner, minlength=k)
        full = counts_ > 0
        centres[full] = sums[full] / counts_[full, None]
        empty = np.flatnonzero(~full)
        if len(empty):
            centres[empty] = x[rng.choice(len(x), len(empty), replace=False)]
    return centres


def _kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centres = np.empty((k, x.shape[1]), dtype=np.float32)
    centres[0] = x[rng.integers(len(x))]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for i in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else None
        centres[i] = x[rng.choice(len(x), p=p)]
        d2 = np.minimum(d2, ((x - centres[i]) ** 2).sum(axis=1))
    return centres


def train_vocabulary(descriptors: np.ndarray, size: int, seed: int = 0,
                     iterations: int = 0, progress: bool = False) -> VisualVocabulary:
    """A vocabulary of `size` words from raw SIFT uint8 descriptors (RootSIFT is applied
    here) by mini-batch k-means. Train it on catalog images only, never on queries."""
    x = root_sift(descriptors)
    batch = min(len(x), max(10 * size, 20000))
    steps = iterations or max(30, int(3 * len(x) / batch))
    centres = _kmeans(x, size, seed=seed, iterations=steps, batch=batch, progress=progress)
    return VisualVocabulary(centres, {"descriptors": len(x), "size": size,
                                      "seed": seed, "batches": steps, "batch": batch})


# -------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class VerifySettings:
    ratio: float = 0.85  # Lowe's ratio test on RootSIFT distances
    ransac_px: float = 6.0  # reprojection threshold, in pixels of the query photo
    min_inliers: int = 8
    max_scale_ratio: float = 8.0  # anisotropy of the homography's linear part
    max_depth_ratio: float = 2.0  # projective depth across the catalog image's corners


@dataclass(frozen=True)
class Verification:
    inliers: int
    score: float  # calibrated-ready raw score: the inlier count (0 when rejected)
    box: tuple[int, int, int, int] | None  # x0, y0, x1, y1 of the product in the query
    homography: np.ndarray | None  # 3x3, catalog image pixels -> query pixels
    matches: int = 0  # ratio-test matches before RANSAC
    inlier_ratio: float = 0.0

    @property
    def verified(self) -> bool:
        return self.inliers > 0


_REJECTED = Verification(0, 0.0, None, None)


def match_descriptors(query: np.ndarray, candidate: np.ndarray, ratio: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(query rows, candidate rows) of RootSIFT matches passing the ratio test, one match
    per candidate keypoint (the best), so a repeated pattern cannot vote many times."""
    if len(query) < 2 or len(candidate) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sim = query @ candidate.T  # unit rows: distance^2 = 2 - 2 sim
    top2 = np.argpartition(-sim, 1, axis=1)[:, :2]
    rows = np.arange(len(query))
    s = sim[rows[:, None], top2]
    swap = s[:, 1] > s[:, 0]
    best = np.where(swap, top2[:, 1], top2[:, 0])
    s_best = np.maximum(s[:, 0], s[:, 1])
    s_second = np.minimum(s[:, 0], s[:, 1])
    d1 = np.sqrt(np.maximum(2 - 2 * s_best, 0))
    d2 = np.sqrt(np.maximum(2 - 2 * s_second, 0))
    keep = d1 < ratio * d2
    q, c, d = rows[keep], best[keep], d1[keep]
    if len(q) == 0:
        return q, c
    order = np.lexsort((d, c))
    q, c = q[order], c[order]
    first = np.r_[True, c[1:] != c[:-1]]
    return q[first], c[first]


def _plausible(h: np.ndarray, size: tuple[int, int], settings: VerifySettings) -> bool:
    """Rejects homographies no photo of a flat product gives: mirrored, collapsed,
    wildly anisotropic, or so projective that the image's corners go behind the camera."""
    if not np.all(np.isfinite(h)) or abs(h[2, 2]) < 1e-9:
        return False
    h = h / h[2, 2]
    w, ht = size
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, ht, 1], [0, ht, 1]], dtype=np.float64)
    depth = corners @ h[2]
    if depth.min() <= 0 or depth.max() / depth.min() > settings.max_depth_ratio:
        return False
    linear = h[:2, :2]
    if float(np.linalg.det(linear)) <= 0:
        return False
    s = np.linalg.svd(linear, compute_uv=False)
    return bool(s[1] > 1e-6 and s[0] / s[1] <= settings.max_scale_ratio)


def verify(query: LocalFeatures, candidate: LocalFeatures,
           settings: VerifySettings | None = None, *,
           query_root: np.ndarray | None = None,
           candidate_root: np.ndarray | None = None) -> Verification:
    """Ratio-test matches, then a RANSAC homography (catalog -> photo). Returns the inlier
    count (0 when fewer than `min_inliers` or an implausible homography) and the
    product's box in the photo. `query_root` / `candidate_root` pass precomputed
    `root_sift` descriptors when one photo is verified against many candidates."""
    s = settings or VerifySettings()
    if len(query) < s.min_inliers or len(candidate) < s.min_inliers:
        return _REJECTED
    qd = root_sift(query.descriptors) if query_root is None else query_root
    cd = root_sift(candidate.descriptors) if candidate_root is None else candidate_root
    qi, ci = match_descriptors(qd, cd, s.ratio)
    return verify_matches(query.keypoints[qi], query.size, candidate.keypoints[ci],
                          candidate.size, s)


def verify_matches(query_points: np.ndarray, query_size: tuple[int, int],
                   candidate_points: np.ndarray, candidate_size: tuple[int, int],
                   settings: VerifySettings | None = None) -> Verification:
    """RANSAC homography over given correspondences (row i of `query_points` matches row i
    of `candidate_points`), e.g. those of a descriptor vote: no second matching pass."""
    s = settings or VerifySettings()
    n = len(query_points)
    if n < s.min_inliers:
        return Verification(0, 0.0, None, None, n, 0.0)
    src = np.asarray(candidate_points, dtype=np.float32).reshape(-1, 1, 2)
    dst = np.asarray(query_points, dtype=np.float32).reshape(-1, 1, 2)
    h, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, s.ransac_px, maxIters=2000,
                                 confidence=0.995)
    if h is None or mask is None:
        return Verification(0, 0.0, None, None, n, 0.0)
    inliers = int(mask.sum())
    if inliers < s.min_inliers or not _plausible(h, candidate_size, s):
        return Verification(0, 0.0, None, None, n, 0.0)
    box = _project_box(h, candidate_size, query_size)
    if box is None:
        return Verification(0, 0.0, None, None, n, 0.0)
    return Verification(inliers, float(inliers), box, h, n, inliers / n)


def _project_box(h: np.ndarray, size: tuple[int, int], frame: tuple[int, int]
                 ) -> tuple[int, int, int, int] | None:
    w, ht = size
    corners = np.array([[[0, 0]], [[w, 0]], [[w, ht]], [[0, ht]]], dtype=np.float32)
    projected = cv2.perspectiveTransform(corners, h).reshape(-1, 2)
    if not np.all(np.isfinite(projected)):
        return None
    # The projected outline must stay convex (no fold) and not be a speck.
    if not cv2.isContourConvex(projected.astype(np.float32).reshape(-1, 1, 2)):
        return None
    area = abs(cv2.contourArea(projected.astype(np.float32)))
    if area < 0.0005 * frame[0] * frame[1]:
        return None
    x0, y0 = projected.min(axis=0)
    x1, y1 = projected.max(axis=0)
    fw, fh = frame
    box = (int(max(0, math.floor(x0))), int(max(0, math.floor(y0))),
           int(min(fw, math.ceil(x1))), int(min(fh, math.ceil(y1))))
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    return box


# -------------------------------------------------------------------------------- scorer

SCORER_SIGNALS = ("votes", "vote_share", "inliers", "inlier_ratio", "dense_cos")
_DEFAULTS = {"votes": 0.0, "vote_share": 0.0, "inliers": 0.0, "inlier_ratio": 0.0,
             "dense_cos": 0.0}
SCORER_TRANSFORM = "log1p(votes), vote_share, log1p(inliers), inlier_ratio, dense_cos"


def scorer_features(signals: dict[str, float], defaults: dict[str, float] | None = None
                    ) -> np.ndarray:
    """The scorer's input row (SCORER_TRANSFORM), each missing signal replaced by its
    default."""
    d = {**_DEFAULTS, **(defaults or {})}
    value = {k: float(signals.get(k, d[k])) for k in SCORER_SIGNALS}
    return np.array([math.log1p(max(0.0, value["votes"])), value["vote_share"],
                     math.log1p(max(0.0, value["inliers"])), value["inlier_ratio"],
                     value["dense_cos"]], dtype=np.float64)


@dataclass
class PhotoScorer:
    """Logistic regression over the signals: P(candidate is the photographed product).
    `threshold` is the probability above which a match counts as verified (restock)."""

    weights: np.ndarray
    bias: float
    threshold: float = 0.5
    defaults: dict[str, float] = field(default_factory=lambda: dict(_DEFAULTS))
    info: dict[str, Any] = field(default_factory=dict)
    # Restock reports a product verified with at least this many inliers (calibrated on
    # training shelf photos for item recall against false SKUs per photo).
    restock_min_inliers: int = 12

    @classmethod
    def load(cls, path: str | Path | None = None) -> PhotoScorer:
        data = json.loads(Path(path if path is not None else SCORER_FILE).read_text())
        if data.get("features") != list(SCORER_SIGNALS):
            raise ValueError(f"photo scorer: features {data.get('features')} != "
                             f"{list(SCORER_SIGNALS)}")
        return cls(np.array(data["weights"], dtype=np.float64), float(data["bias"]),
                   float(data["threshold"]), {**_DEFAULTS, **data.get("defaults", {})},
                   data.get("info", {}), int(data.get("restock_min_inliers", 12)))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "features": list(SCORER_SIGNALS),
            "transform": SCORER_TRANSFORM,
            "weights": [round(float(w), 6) for w in self.weights],
            "bias": round(float(self.bias), 6),
            "threshold": self.threshold,
            "restock_min_inliers": self.restock_min_inliers,
            "defaults": self.defaults,
            "info": self.info,
        }, indent=2) + "\n")

    def score(self, signals: dict[str, float]) -> float:
        z = float(scorer_features(signals, self.defaults) @ self.weights) + self.bias
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def verified(self, signals: dict[str, float]) -> bool:
        return self.score(signals) >= self.threshold


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 100
                 ) -> tuple[np.ndarray, float]:
    """Weights and bias of an L2-regularised logistic regression (Newton's method)."""
    n, d = x.shape
    a = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    reg = np.full(d + 1, l2 * n)
    reg[-1] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ w, -60, 60)))
        grad = a.T @ (p - y) + reg * w
        hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(reg) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1])
