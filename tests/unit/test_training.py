"""Training: losses, the loop lowers the loss on a tiny catalog, checkpoints resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.checkpoints import load_checkpoint
from encoders.fusion import FusionEncoder, FusionInput
from encoders.training.cache import VIEWS, FeatureCache
from encoders.training.data import Item, split_of
from encoders.training.losses import info_nce, multi_positive_nce
from encoders.training.train import TrainSettings, export_checkpoint, train_on_cache

N_ITEMS = 20


def _fake_cache(root: Path, n: int = N_ITEMS, seed: int = 0) -> FeatureCache:
    """Random 'backbone tokens' with the structure training relies on: each photo view is its
    catalog image's tokens plus noise and clutter."""
    rng = np.random.default_rng(seed)
    catalog = rng.standard_normal((n, 49, 1280)).astype(np.float16)
    photos = np.empty((n, 2, len(VIEWS), 49, 1280), dtype=np.float16)
    for p in range(2):
        for v in range(len(VIEWS)):
            photos[:, p, v] = catalog + rng.standard_normal(catalog.shape).astype(np.float16)
    root.mkdir(parents=True)
    np.save(root / "catalog.npy", catalog)
    np.save(root / "photos.npy", photos)
    items = [Item(key=f"k{i}", image=f"/nope/{i}.png", text=f"item {i}",
                  category=f"c{i % 4}") for i in range(n)]
    meta = {"format": 1, "items": [vars(it) for it in items], "photos_per_item": 2,
            "views": list(VIEWS), "seed": seed, "style": "shelf", "backbone": "fake"}
    (root / "meta.json").write_text(json.dumps(meta))
    text = rng.standard_normal((n, 1, 512)).astype(np.float16)
    np.savez(root / "text_multilingual.npz", tokens=text, mask=np.ones((n, 1), dtype=bool))
    return FeatureCache(root)


SETTINGS = TrainSettings(epochs=6, batch_size=10, lr=2e-3, d_model=32, threads=1)


def test_info_nce_prefers_matching_pairs() -> None:
    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    good = info_nce(a, a, 10.0)
    bad = info_nce(a, a.roll(1, dims=0), 10.0)
    assert float(good) < float(bad)
    labels = torch.tensor([0, 0, 1, 1, -1, 2, 3, 3])
    assert float(multi_positive_nce(a, labels, 10.0)) > 0
    assert float(multi_positive_nce(a, torch.arange(8), 10.0)) == 0.0


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    cache = _fake_cache(tmp_path / "cache")
    state = train_on_cache(cache, SETTINGS, tmp_path / "ckpt.pt", progress=False)
    losses = [h["loss"] for h in state.history]
    assert len(losses) == SETTINGS.epochs
    assert losses[-1] < 0.7 * losses[0]
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["epoch"] == SETTINGS.epochs and ckpt["seed"] == SETTINGS.seed
    assert ckpt["data"]["n_items"] == N_ITEMS and "items" not in ckpt["data"]
    assert ckpt["model_version"].startswith("fusion-")
    assert "optimizer" in ckpt and ckpt["settings"]["d_model"] == 32


def test_resume_continues_exactly(tmp_path: Path) -> None:
    """3 epochs, stop, resume to 6 == 6 epochs in one go (same seed, same data)."""
    cache = _fake_cache(tmp_path / "cache")
    train_on_cache(cache, SETTINGS, tmp_path / "once.pt", progress=False)
    first = train_on_cache(cache, SETTINGS, tmp_path / "twice.pt", progress=False,
                           stop_after_epochs=3)
    assert first.epoch == 3
    resumed = train_on_cache(cache, SETTINGS, tmp_path / "twice.pt", resume=True,
                             progress=False)
    assert resumed.epoch == SETTINGS.epochs
    once = load_checkpoint(tmp_path / "once.pt")
    twice = load_checkpoint(tmp_path / "twice.pt")
    for name, value in once["model"].items():
        assert torch.allclose(value, twice["model"][name], atol=1e-5), name
    other = _fake_cache(tmp_path / "other", n=N_ITEMS + 2)
    with pytest.raises(ValueError):
        train_on_cache(other, SETTINGS, tmp_path / "twice.pt", resume=True, progress=False)


def test_exported_checkpoint_serves(tmp_path: Path) -> None:
    cache = _fake_cache(tmp_path / "cache")
    train_on_cache(cache, TrainSettings(**{**vars(SETTINGS), "epochs": 1}),
                   tmp_path / "ckpt.pt", progress=False)
    version = export_checkpoint(tmp_path / "ckpt.pt", tmp_path / "ship.pt")
    assert (tmp_path / "ship.pt").stat().st_size < (tmp_path / "ckpt.pt").stat().st_size
    enc = FusionEncoder(tmp_path / "ship.pt", device="cpu")
    assert enc.version == version
    out = enc.encode([FusionInput(torch.zeros(49, 1280)),
                      FusionInput(None, torch.zeros(1, 512))])
    assert out.shape == (2, 1280)


def test_split_is_stable_and_about_one_in_five() -> None:
    keys = [f"animals/thing_{i}.png" for i in range(2000)]
    share = sum(split_of(k) == "eval" for k in keys) / len(keys)
    assert 0.15 < share < 0.25
    assert [split_of(k) for k in keys] == [split_of(k) for k in keys]
