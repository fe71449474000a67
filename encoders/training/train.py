"""The training loop: fusion model (+ heads, + the LSTM when it is the text model) on cached
backbone features, with contrastive losses.

Per step, for a batch of catalog items:
    f  = fused(catalog image, product text)        what the index stores
    p  = image-only(a photo view)                  shelf-style rendering: whole or isolated
    t  = text-only(product text)
    ci = image-only(catalog image)                 (when image_weight > 0)
    loss = 2 * nce(p, f)                           photo -> indexed product (restock case)
         + nce(t, f)                               text -> indexed product
         + image_weight * (nce(ci, f) + nce(p, ci))
         + category_weight * supcon(f, category)   same category as extra positives
Each image-only / fused pass over 49 image tokens is most of a step's cost on a CPU, hence
one photo view per item per step (a different one every epoch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from encoders.checkpoints import CHECKPOINT_FORMAT, state_hash
from encoders.fusion import FusionConfig, FusionModel
from encoders.training.cache import FeatureCache, build_cache
from encoders.training.data import Item
from encoders.training.losses import info_nce, multi_positive_nce

__all__ = [
    "TrainSettings",
    "TrainState",
    "export_checkpoint",
    "load_text_features",
    "save_checkpoint",
    "train",
    "train_on_cache",
]

log = logging.getLogger(__name__)

TEXT_DIMS = {"multilingual": 512, "minilm": 384}


@dataclass
class TrainSettings:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.05
    seed: int = 0
    text_model: str = "multilingual"
    category_weight: float = 0.1
    image_weight: float = 0.0
    d_model: int = 128
    layers: int = 2
    out_dim: int = 1280
    photos_per_item: int = 2
    threads: int = 0


@dataclass
class TrainState:
    model: FusionModel
    optimizer: torch.optim.Optimizer
    logit_scale: torch.nn.Parameter
    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


# -- text features --------------------------------------------------------------------


def load_text_features(cache: FeatureCache, text_model: str, progress: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T, D) float16 token features (LSTM: (N, T) int64 ids) and (N, T) bool mask for
    the cache's item texts, computed once and stored next to the image features."""
    path = cache.path / f"text_{text_model}.npz"
    texts = [it.text for it in cache.items]
    if path.exists():
        with np.load(path) as z:
            return torch.from_numpy(z["tokens"]), torch.from_numpy(z["mask"])
    if text_model == "lstm":
        from encoders.lstm import tokenize

        ids, mask = tokenize(texts)
        tokens_np, mask_np = ids.numpy(), mask.numpy()
    else:
        from encoders.text import make_text_encoder

        encoder = make_text_encoder(text_model, device="cpu")
        rows: list[torch.Tensor] = []
        for start in tqdm(range(0, len(texts), 64), desc=f"text features ({text_model})",
                          disable=not progress):
            rows.extend(encoder.encode_with_tokens(texts[start : start + 64])[1])
        longest = min(32, max(r.shape[0] for r in rows))
        tokens_np = np.zeros((len(rows), longest, rows[0].shape[1]), dtype=np.float16)
        mask_np = np.zeros((len(rows), longest), dtype=bool)
        for i, r in enumerate(rows):
            k = min(longest, r.shape[0])
            tokens_np[i, :k] = r[:k].numpy()
            mask_np[i, :k] = True
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, tokens=tokens_np, mask=mask_np)
    tmp.replace(path)
    return torch.from_numpy(tokens_np), torch.from_numpy(mask_np)


# -- checkpoints ------------------------------------------------------------------------


def _config_for(settings: TrainSettings) -> FusionConfig:
    lstm: dict[str, int] = {}
    text_dim = TEXT_DIMS.get(settings.text_model, 0)
    if settings.text_model == "lstm":
        from encoders.lstm import default_lstm_settings

        lstm = default_lstm_settings()
        text_dim = 2 * lstm["hidden"]
    if not text_dim:
        raise ValueError(f"unknown text model {settings.text_model!r}")
    return FusionConfig(text_model=settings.text_model, text_dim=text_dim,
                        d_model=settings.d_model, layers=settings.layers,
                        ff_dim=2 * settings.d_model, out_dim=settings.out_dim, lstm=lstm)


def save_checkpoint(path: str | Path, state: TrainState, settings: TrainSettings,
                    data: dict[str, Any], command: str = "") -> str:
    """Atomic write of everything needed to resume or to serve; returns the model version."""
    model_state = {k: v.detach().cpu() for k, v in state.model.state_dict().items()}
    version = f"fusion-{state_hash(model_state)}"
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "model_version": version,
        "config": asdict(state.model.config),
        "model": model_state,
        "optimizer": state.optimizer.state_dict(),
        "logit_scale": state.logit_scale.detach().cpu(),
        "epoch": state.epoch,
        "step": state.step,
        "seed": settings.seed,
        "settings": asdict(settings),
        "data": data,
        "history": state.history,
        "command": command,
        "rng": {"torch": torch.get_rng_state()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return version


def export_checkpoint(src: str | Path, dst: str | Path) -> str:
    """A serving-only copy: weights in fp16, no optimizer state (a few MB)."""
    ckpt = torch.load(str(src), map_location="cpu", weights_only=True)
    model = {k: (v.half() if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    version = f"fusion-{state_hash(model)}"
    keep = {k: ckpt[k] for k in ("format", "config", "epoch", "step", "seed", "settings",
                                 "data", "history", "command") if k in ckpt}
    out = keep | {"model": model, "model_version": version,
                  "trained_as": ckpt.get("model_version")}
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, str(dst))
    return version


def _restore(path: Path, state: TrainState) -> dict[str, Any]:
    ckpt: dict[str, Any] = torch.load(str(path), map_location="cpu", weights_only=True)
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    with torch.no_grad():
        state.logit_scale.copy_(ckpt["logit_scale"])
    state.epoch = int(ckpt["epoch"])
    state.step = int(ckpt["step"])
    state.history = list(ckpt.get("history") or [])
    if "rng" in ckpt:
        torch.set_rng_state(ckpt["rng"]["torch"])
    return ckpt


# -- the loop ---------------------------------------------------------------------------


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def new_state(settings: TrainSettings) -> TrainState:
    _seed_all(settings.seed)
    model = FusionModel(_config_for(settings))
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    groups: list[dict[str, Any]] = [
        {"params": list(model.parameters())},
        {"params": [logit_scale], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups,
        lr=settings.lr, weight_decay=settings.weight_decay)
    return TrainState(model, optimizer, logit_scale)


def train_on_cache(
    cache: FeatureCache,
    settings: TrainSettings,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    command: str = "",
    stop_after_epochs: int | None = None,
) -> TrainState:
    """Train (or resume) on one feature cache, checkpointing to `out` after every epoch.
    `stop_after_epochs`: return after that many epochs of this call (the learning-rate
    schedule still spans `settings.epochs`, so a resumed run equals an uninterrupted one)."""
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    out = Path(out)
    state = new_state(settings)
    data = cache.description()
    if resume and out.exists():
        ckpt = _restore(out, state)
        if ckpt.get("data", {}).get("items_sha1") != data["items_sha1"]:
            raise ValueError(f"{out} was trained on other data; refusing to resume")
        log.info("resumed %s at epoch %d", out, state.epoch)

    n = len(cache)
    catalog = torch.from_numpy(np.array(cache.catalog))
    photos = torch.from_numpy(np.array(cache.photos))
    n_photos, n_views = photos.shape[1], photos.shape[2]
    text, text_mask = load_text_features(cache, settings.text_model, progress)
    categories = sorted({it.category for it in cache.items if it.category})
    cat_ids = torch.tensor([categories.index(it.category) if it.category else -1
                            for it in cache.items])
    batch = min(settings.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total = settings.epochs * steps_per_epoch

    def lr_at(step: int) -> float:  # linear warm-up, then cosine decay to zero
        warm = min(1.0, (step + 1) / 20)
        return settings.lr * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))

    epochs_run = 0
    model = state.model
    model.train()
    bar = tqdm(total=total, initial=state.step, desc="training fusion", disable=not progress,
               unit="step")
    while state.epoch < settings.epochs:
        gen = torch.Generator().manual_seed(settings.seed * 100_003 + state.epoch)
        order = torch.randperm(n, generator=gen)
        sums: dict[str, float] = {}
        for s in range(steps_per_epoch):
            idx = order[s * batch : (s + 1) * batch]
            b = idx.shape[0]
            pick = torch.randint(0, n_photos * n_views, (b,), generator=gen)
            p = photos[idx].flatten(1, 2)[torch.arange(b), pick].float()
            cat = catalog[idx].float()
            txt, msk = text[idx], text_mask[idx]
            txt = model.text_tokens(txt, msk) if model.lstm is not None else txt.float()
            scale = state.logit_scale.exp().clamp(max=100.0)
            f = model(cat, txt, msk)
            v = model(p)
            t = model(None, txt, msk)
            parts = {
                "photo_fused": info_nce(v, f, scale),
                "text_fused": info_nce(t, f, scale),
                "category": multi_positive_nce(f, cat_ids[idx], scale),
            }
            weights = {"photo_fused": 2.0, "text_fused": 1.0,
                       "category": settings.category_weight}
            if settings.image_weight > 0:
                ci = model(cat)
                parts["image_fused"] = info_nce(ci, f, scale)
                parts["photo_image"] = info_nce(v, ci, scale)
                weights["image_fused"] = weights["photo_image"] = settings.image_weight
            loss = sum((weights[k] * v for k, v in parts.items()), torch.zeros(()))
            for group in state.optimizer.param_groups:
                group["lr"] = lr_at(state.step)
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            state.optimizer.step()
            state.step += 1
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", epoch=state.epoch + 1)
        state.epoch += 1
        epochs_run += 1
        state.history.append({k: v / steps_per_epoch for k, v in sums.items()}
                             | {"epoch": float(state.epoch)})
        save_checkpoint(out, state, settings, data, command)
        if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
            break
    bar.close()
    model.eval()
    return state


def train(
    items: Sequence[Item],
    out: str | Path,
    settings: TrainSettings | None = None,
    *,
    cache_root: str | Path = "data/fusion-cache",
    resume: bool = False,
    progress: bool = True,
    command: str = "",
) -> TrainState:
    """Cache backbone features for `items` (once), then train. The cache directory name is
    derived from the items, the photo count and the seed, so a rerun reuses it."""
    settings = settings or TrainSettings()
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    keys = "\n".join(it.key + "\t" + it.image for it in items)
    tag = hashlib.sha1(keys.encode()).hexdigest()[:10]
    cache_dir = (Path(cache_root) /
                 f"{tag}-n{len(items)}-p{settings.photos_per_item}-s{settings.seed}")
    started = time.perf_counter()
    build_cache(items, cache_dir, photos_per_item=settings.photos_per_item,
                seed=settings.seed, progress=progress)
    log.info("feature cache ready in %.0fs: %s", time.perf_counter() - started, cache_dir)
    state = train_on_cache(FeatureCache(cache_dir), settings, out, resume=resume,
                           progress=progress, command=command)
    summary = {"out": str(out), "epochs": state.epoch, "steps": state.step,
               "last": state.history[-1] if state.history else {},
               "seconds": round(time.perf_counter() - started, 1)}
    log.info("trained: %s", json.dumps(summary))
    return state
