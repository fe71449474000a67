"""Is a listing the same product as a catalog item? Features of a (listing, item) pair and a
calibrated three-way classifier (SAME / VARIANT / DIFFERENT) over them.

The classifier is a multinomial logistic regression: few features, so it needs few labelled
pairs, and its probabilities are well calibrated by construction (it minimises log loss).
A calibration belongs to one model version: vectors of another version mean other scales."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

VERDICTS = ("SAME", "VARIANT", "DIFFERENT")
ATTRIBUTES = ("size", "material", "colour", "brand")
FEATURES = (
    "image_sim", "text_sim", "has_image", "size_diff", "material_diff", "colour_diff",
    "brand_diff", "n_diff", "image_sim*any_diff", "image_sim*n_diff", "image_sim^2",
    "image_margin", "verified", "log_inliers", "photo_probability",
    "photo_margin", "vote_share", "log_votes",
)
# Where the photo's geometric verification against the candidate's stored local features
# stands: no check (no local features, or a listing without a photo) reads as not verified.
NO_VERIFICATION = {"verified": 0.0, "inliers": 0.0, "probability": 0.0, "votes": 0.0,
                   "vote_share": 0.0}
# Everything that comes from the listing's photo being matched locally: zero for a pair
# without a photo to verify (dedup), whose model is fitted with these columns blanked.
VERIFICATION_COLUMNS = [FEATURES.index(n) for n in (
    "verified", "log_inliers", "photo_probability", "photo_margin", "vote_share", "log_votes")]


@dataclass(frozen=True)
class AttributeDiff:
    field: str
    listing_value: str
    catalog_value: str


def attribute_diffs(listing: dict[str, str], catalog: dict[str, str]) -> list[AttributeDiff]:
    """Attributes known on both sides that differ (case and spacing ignored)."""
    diffs = []
    for name in ATTRIBUTES:
        a, b = listing.get(name, "").strip(), catalog.get(name, "").strip()
        if a and b and a.lower() != b.lower():
            diffs.append(AttributeDiff(name, a, b))
    return diffs


def pair_features(image_sim: float | None, text_sim: float, diffs: list[AttributeDiff],
                  best_other_image_sim: float | None = None,
                  verification: dict[str, float] | None = None,
                  best_other_probability: float | None = None) -> np.ndarray:
    """`best_other_image_sim`: how well the listing's photo matches the best OTHER catalog
    candidate; a photo matching another item better is rarely this one. `verification`:
    `verified` (0/1: a homography with enough inliers), `inliers`, the photo scorer's
    `probability`, the descriptor `votes` and `vote_share` (`backend.domain.photo_search`);
    a recoloured or re-photographed item still verifies on its shapes where the CNN's
    cosine is fooled by clutter. `best_other_probability`: the photo scorer's probability
    of the best OTHER candidate (on hard photos few items verify, but the one pictured
    still scores above the others). No title word overlap: the labelled SAME listings are
    re-worded titles, so it would learn the pair generator's wording and count against a
    real listing under other words."""
    names = {d.field for d in diffs}
    ver = verification or NO_VERIFICATION
    image = image_sim if image_sim is not None else 0.0
    # The interactions let a linear model say "VARIANT = the same look AND an attribute
    # differs": attribute differences alone must not outvote a photo that does not match.
    return np.array(
        [
            image,
            text_sim,
            0.0 if image_sim is None else 1.0,
            *(1.0 if a in names else 0.0 for a in ATTRIBUTES),
            float(len(diffs)),
            image * (1.0 if diffs else 0.0),
            image * len(diffs),
            image * image,
            image - best_other_image_sim if best_other_image_sim is not None else 0.0,
            ver["verified"],
            float(np.log1p(ver["inliers"])),
            ver["probability"],
            ver["probability"] - best_other_probability
            if best_other_probability is not None else 0.0,
            ver.get("vote_share", 0.0),
            float(np.log1p(ver.get("votes", 0.0))),
        ],
        dtype=np.float32,
    )


def best_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Max cosine between any row of a and any row of b (rows are L2-normalised)."""
    return float((np.atleast_2d(a) @ np.atleast_2d(b).T).max())


@dataclass
class MatchCalibration:
    model_version: str
    weights: np.ndarray  # (len(FEATURES) + 1, 3): last row is the bias
    mean: np.ndarray
    scale: np.ndarray
    # The catalog version the pairs were drawn from: a later catalog makes it stale.
    catalog_version: int = 0
    items: int = 0
    # The same pairs fitted without the verification features, for pairs no photo was
    # verified for (dedup compares two catalog items' vectors): there, "not verified" must
    # not read as evidence against SAME.
    without_verification: MatchCalibration | None = None

    def blind(self) -> MatchCalibration:
        return self.without_verification or self

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        x = (np.atleast_2d(features) - self.mean) / self.scale
        logits = np.hstack([x, np.ones((len(x), 1))]) @ self.weights
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return np.asarray(p / p.sum(axis=1, keepdims=True))

    @classmethod
    def fit_both(cls, features: np.ndarray, labels: np.ndarray, model_version: str
                 ) -> MatchCalibration:
        """`fit`, with `without_verification` fitted on the same pairs."""
        calibration = cls.fit(features, labels, model_version)
        blind = features.copy()
        blind[:, VERIFICATION_COLUMNS] = 0.0
        calibration.without_verification = cls.fit(blind, labels, model_version)
        return calibration

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, model_version: str,
            l2: float = 1e-3) -> MatchCalibration:
        # l2 1e-3 (was 1e-2), chosen on held-out folds of a dev sample: a lighter penalty
        # lets the photo signals count on hard photos and lowers the calibration error.
        mean = features.mean(axis=0)
        scale = features.std(axis=0) + 1e-6
        x = torch.tensor((features - mean) / scale, dtype=torch.float64)
        x = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
        y = torch.tensor(labels, dtype=torch.long)
        w = torch.zeros(x.shape[1], len(VERDICTS), dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ w, y) + l2 * (w[:-1] ** 2).sum()
            loss.backward()
            return loss

        optimiser.step(closure)
        return cls(model_version, w.detach().numpy().copy(), mean, scale)

    def save(self, path: Path) -> None:
        """Written to a temporary file, flushed and renamed over the old one: a reader sees
        the previous calibration or this one, never a part."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        text = json.dumps({
            "model_version": self.model_version,
            "catalog_version": self.catalog_version,
            "items": self.items,
            "features": list(FEATURES),
            "verdicts": list(VERDICTS),
            "weights": self.weights.tolist(),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            **({"without_verification": {
                "weights": self.without_verification.weights.tolist(),
                "mean": self.without_verification.mean.tolist(),
                "scale": self.without_verification.scale.tolist(),
            }} if self.without_verification is not None else {}),
        }, indent=1)
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> MatchCalibration:
        data = json.loads(path.read_text())
        if tuple(data["features"]) != FEATURES or tuple(data["verdicts"]) != VERDICTS:
            raise ValueError(f"{path} was made for other match features; recalibrate")
        blind = data.get("without_verification")
        return cls(data["model_version"], np.array(data["weights"]), np.array(data["mean"]),
                   np.array(data["scale"]), int(data.get("catalog_version", 0)),
                   int(data.get("items", 0)),
                   cls(data["model_version"], np.array(blind["weights"]),
                       np.array(blind["mean"]), np.array(blind["scale"]))
                   if blind else None)


def calibration_path(data_dir: Path, model_version: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_version)
    return data_dir / "calibration" / f"match-{safe}.json"
