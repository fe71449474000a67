"""`prodsearch train --task photo-cnn`: fine-tune EfficientNet-Lite0's last blocks so that a
photo of a catalog item lands on its catalog image, and a crop of anything else does not.

Data (openclipart train split only; a seeded share of it is held out for validation and
picks the epoch, evaluation items are never read):
    anchor     the catalog image (alpha on white, what the index encodes)
    positives  photo-like renderings of the same image (`encoders.evaluation.photos`):
               a shelf photo among non-catalog clutter (SHELF_HARD: perspective, rotation,
               coloured light, glare, occlusion, blur, noise, JPEG) seen as the whole
               photo, as the isolated item (`localise.isolate_item`, what search adds) and
               as a loose crop around the item; and a product photo filling the frame
               (PRODUCT_HARD)
    negatives  crops of the same shelf photo away from the item: background and clutter
Clutter comes from Debian's Adwaita icon theme, not from the Oxygen icons the evaluation's
"non-catalog clutter" photos use, and not from catalog items (a crop of a catalog item is
not a negative for that item).

Loss: InfoNCE with in-batch negatives, both ways: photo -> catalog (the photo's item among
the batch's catalog images) and catalog -> photos (the item's photo among the batch's
photos and all the batch's background/clutter crops), temperature 0.05. BatchNorm
statistics stay ImageNet's (small batches).

CPU cost: the network up to block `split` is frozen, so its activations are computed once
(ONNX Runtime on a CPU, `--device cuda` runs the same code on a GPU) and cached on disk;
only the tail trains. `--split 1` trains nearly all of the network (meant for a GPU).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import multiprocessing
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from encoders.checkpoints import state_hash
from encoders.photo_cnn import (
    DEFAULT_SPLIT,
    PHOTO_CNN_CHECKPOINT,
    PHOTO_CNN_FORMAT,
    CnnTail,
    _Front,
    front_activations,
)
from encoders.preprocess import image_tensor, letterbox, to_rgb
from encoders.training.data import Item

__all__ = [
    "CLUTTER_DIRS",
    "VIEW_KINDS",
    "PhotoCnnSettings",
    "clutter_icon_paths",
    "render_example",
    "train_photo_cnn",
    "train_tail",
]

CLUTTER_DIRS = (Path("/usr/share/icons/Adwaita"),)
VIEW_KINDS = ("shelf-whole", "shelf-isolated", "shelf-crop", "product")
NEGATIVES = 2
INPUT = 224


@dataclass
class PhotoCnnSettings:
    limit: int | None = 2400          # training items (seeded sample of the train split)
    val_items: int = 200              # held-out train-split items: pick the epoch
    epochs: int = 4
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-4
    temperature: float = 0.05
    split: int = DEFAULT_SPLIT
    seed: int = 0
    device: str = "cpu"
    workers: int = 2                  # rendering processes
    threads: int = 0


# ----------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=1)
def clutter_icon_paths() -> tuple[str, ...]:
    """Icons that are neither catalog items nor the evaluation's clutter (Adwaita, 96 px and
    up; symbolic ones are grey line drawings)."""
    paths: list[str] = []
    for root in CLUTTER_DIRS:
        for size in ("96x96", "256x256", "512x512"):
            paths += sorted(str(p) for p in (root / size).rglob("*.png"))
    if not paths:
        raise FileNotFoundError("no clutter icons under /usr/share/icons/Adwaita (Debian "
                                "package adwaita-icon-theme)")
    return tuple(paths)


@functools.lru_cache(maxsize=1024)
def _icon(path: str) -> Image.Image:
    from encoders.evaluation.datasets import load_item_image

    return load_item_image(path)


def _loose_crop(photo: Image.Image, box: tuple[int, int, int, int], rng: random.Random
                ) -> Image.Image:
    left, top, right, bottom = box
    side = max(right - left, bottom - top) * rng.uniform(1.0, 1.5)
    cx = (left + right) / 2 + rng.uniform(-0.15, 0.15) * side
    cy = (top + bottom) / 2 + rng.uniform(-0.15, 0.15) * side
    return photo.crop((round(cx - side / 2), round(cy - side / 2),
                       round(cx + side / 2), round(cy + side / 2)))


def _away_crop(photo: Image.Image, box: tuple[int, int, int, int], rng: random.Random
               ) -> Image.Image:
    """A square crop that holds at most a sliver of the item (background, clutter)."""
    w, h = photo.size
    best: tuple[float, tuple[int, int, int, int]] | None = None
    for _ in range(20):
        side = int(min(w, h) * rng.uniform(0.25, 0.55))
        x, y = rng.randrange(0, w - side + 1), rng.randrange(0, h - side + 1)
        ix = max(0, min(x + side, box[2]) - max(x, box[0]))
        iy = max(0, min(y + side, box[3]) - max(y, box[1]))
        share = ix * iy / (side * side)
        if best is None or share < best[0]:
            best = (share, (x, y, x + side, y + side))
        if share < 0.1:
            break
    assert best is not None
    return photo.crop(best[1])


def render_example(image_path: str, seed_key: str) -> tuple[Image.Image, list[Image.Image],
                                                            list[Image.Image]]:
    """(anchor, positives in VIEW_KINDS order, NEGATIVES negatives) for one catalog image;
    deterministic for `seed_key`."""
    from encoders.evaluation.datasets import load_item_image
    from encoders.evaluation.photos import PRODUCT_HARD, SHELF_HARD, render_scene
    from encoders.localise import isolate_item

    rng = random.Random(seed_key)
    item = load_item_image(image_path)
    icons = clutter_icon_paths()
    clutter = [_icon(icons[k]) for k in rng.sample(range(len(icons)), 8)]
    shelf = render_scene(item, rng, SHELF_HARD, distractors=clutter)
    isolated = isolate_item(shelf.photo) or _loose_crop(shelf.photo, shelf.box, rng)
    product = render_scene(item, rng, PRODUCT_HARD).photo
    views = [shelf.photo, isolated, _loose_crop(shelf.photo, shelf.box, rng), product]
    negatives = [_away_crop(shelf.photo, shelf.box, rng) for _ in range(NEGATIVES)]
    return to_rgb(item), views, negatives


def _render_job(job: tuple[str, str]) -> np.ndarray:
    """(7, 224, 224, 3) uint8: anchor, views, negatives, letterboxed like the encoder does."""
    anchor, views, negatives = render_example(*job)
    return np.stack([np.asarray(letterbox(im, INPUT), dtype=np.uint8)
                     for im in (anchor, *views, *negatives)])


class FrontRunner:
    """The frozen front of the network: pixels -> activations before block `split`.
    ONNX Runtime on a CPU (exported once), the torch module on a GPU."""

    def __init__(self, model: torch.nn.Module, split: int, device: str) -> None:
        self.model, self.split, self.device = model, split, torch.device(device)
        self.session: Any = None
        if self.device.type == "cpu":
            from encoders.optimized import (
                _cache_dir,
                _export,
                _fingerprint,
                _session,
                onnx_available,
            )

            if onnx_available():
                key = _fingerprint("effl0-front", split, torch.__version__,
                                   state_hash({k: v for k, v in model.state_dict().items()
                                               if k.startswith(("_conv_stem", "_bn0"))}))
                path = _cache_dir() / f"efficientnet_lite0-front{split}-{key}.onnx"
                if not path.exists():
                    _export(_Front(model, split), (torch.zeros(2, 3, INPUT, INPUT),), path,
                            input_names=["pixels"], output_names=["front"],
                            dynamic_axes={"pixels": {0: "n"}, "front": {0: "n"}})
                self.session = _session(path, 0)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.session is not None:
            out = self.session.run(None, {"pixels": np.ascontiguousarray(pixels.numpy())})[0]
            return torch.from_numpy(out)
        with torch.inference_mode():
            return front_activations(self.model, self.split,
                                     pixels.to(self.device)).float().cpu().clone()


def _normalised(batch: np.ndarray) -> torch.Tensor:
    """uint8 (N, 224, 224, 3) -> the encoder's normalised (N, 3, 224, 224) input."""
    return image_tensor([Image.fromarray(a) for a in batch], INPUT)


def cache_activations(items: Sequence[Item], front: FrontRunner, seed: int, cache: Path,
                      workers: int = 2, progress: bool = True) -> torch.Tensor:
    """(N, 7, C, H, W) fp16 activations of each item's anchor, views and negatives, cached
    in `cache` (keyed by items, seed, split and this module's rendering code)."""
    import inspect

    source = inspect.getsource(render_example) + inspect.getsource(_away_crop)
    key = hashlib.sha1("\n".join([*(it.key for it in items), str(seed), str(front.split),
                                  source]).encode()).hexdigest()[:12]
    path = cache / f"photo-cnn-{len(items)}-s{seed}-b{front.split}-{key}.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path))
    jobs = [(it.image, f"photo-cnn:{seed}:{it.key}") for it in items]
    parts: list[np.ndarray] = []
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(max(1, workers)) as pool, tqdm(total=len(jobs), desc="render + front",
                                                  unit="item", disable=not progress) as bar:
        pending: list[np.ndarray] = []
        for rendered in pool.imap(_render_job, jobs, chunksize=4):
            pending.append(rendered)
            if len(pending) == 8:
                parts.append(_front_batch(front, pending))
                bar.update(len(pending))
                pending = []
        if pending:
            parts.append(_front_batch(front, pending))
            bar.update(len(pending))
    acts = np.concatenate(parts)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, acts)
    tmp.replace(path)
    return torch.from_numpy(acts)


def _front_batch(front: FrontRunner, rendered: list[np.ndarray]) -> np.ndarray:
    per = rendered[0].shape[0]
    flat = np.concatenate(rendered)
    acts = front(_normalised(flat)).half().numpy()
    return acts.reshape(len(rendered), per, *acts.shape[1:])


# ------------------------------------------------------------------------- training


def _freeze_bn(tail: torch.nn.Module) -> None:
    for module in tail.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()


def photo_cnn_loss(tail: CnnTail, acts: torch.Tensor, views: torch.Tensor,
                   temperature: float, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """acts: (B, 1 + V + K, C, H, W) (anchor, views, negatives); views: (B,) the view used
    per item. Symmetric InfoNCE, the batch's background crops as extra candidates for the
    catalog -> photo direction."""
    b = acts.shape[0]
    rows = torch.arange(b)
    v = len(VIEW_KINDS)
    anchor = tail(acts[:, 0].float())
    photo = tail(acts[rows, 1 + views].float())
    # One of each item's background crops per step: a third of the step's cost.
    pick = torch.randint(acts.shape[1] - 1 - v, (b,), generator=generator)
    negatives = tail(acts[rows, 1 + v + pick].float())
    photo_to_catalog = F.cross_entropy(photo @ anchor.T / temperature, rows)
    catalog_to_photo = F.cross_entropy(anchor @ torch.cat([photo, negatives]).T / temperature,
                                       rows)
    return (photo_to_catalog + catalog_to_photo) / 2


@torch.no_grad()
def validate(tail: CnnTail, acts: torch.Tensor, distractors: torch.Tensor,
             batch: int = 128) -> dict[str, float]:
    """Held-out items: R@1 of each view kind against their catalog images plus
    `distractors` (more catalog images), and the share of items whose background crops all
    score below the item's own photo (a crop of anything else scores low)."""
    tail.eval()

    def embed(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([tail(x[i:i + batch].float()) for i in range(0, len(x), batch)])

    n, v = acts.shape[0], len(VIEW_KINDS)
    gallery = embed(torch.cat([acts[:, 0], distractors]))
    out: dict[str, float] = {}
    for k, kind in enumerate(VIEW_KINDS):
        sims = embed(acts[:, 1 + k]) @ gallery.T
        out[f"R@1 {kind}"] = float((sims.argmax(dim=1) == torch.arange(n)).float().mean())
    out["R@1 mean"] = float(np.mean([out[f"R@1 {k}"] for k in VIEW_KINDS]))
    anchors = gallery[:n]
    crop = (embed(acts[:, 3]) * anchors).sum(dim=1)
    neg = (embed(acts[:, 1 + v:].flatten(0, 1)).view(n, -1, anchors.shape[1])
           * anchors[:, None]).sum(dim=2).max(dim=1).values
    out["crop above background"] = float((crop > neg).float().mean())
    return {k: round(val, 4) for k, val in out.items()}


def train_tail(tail: CnnTail, acts: torch.Tensor, settings: PhotoCnnSettings,
               val: Callable[[CnnTail], dict[str, float]] | None = None,
               progress: bool = True) -> tuple[dict[str, Any], list[float]]:
    """Trains `tail` in place on cached activations; keeps the epoch with the best
    validation "R@1 mean" (the last one without `val`). Returns (history, step losses)."""
    g = torch.Generator().manual_seed(settings.seed)
    device = torch.device(settings.device)
    tail.to(device)
    optimizer = torch.optim.AdamW(tail.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    n = acts.shape[0]
    batch = min(settings.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total = steps_per_epoch * settings.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    losses: list[float] = []
    history: dict[str, Any] = {"epochs": []}
    best: tuple[float, dict[str, torch.Tensor], int] | None = None
    if val is not None:
        history["pretrained"] = val(tail)
    with tqdm(total=total, desc="photo-cnn", unit="step", disable=not progress) as bar:
        for epoch in range(settings.epochs):
            tail.train()
            _freeze_bn(tail)
            order = torch.randperm(n, generator=g)
            for i in range(steps_per_epoch):
                idx = order[i * batch:(i + 1) * batch]
                views = torch.randint(len(VIEW_KINDS), (len(idx),), generator=g)
                loss = photo_cnn_loss(tail, acts[idx].to(device), views.to(device),
                                      settings.temperature, g)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", epoch=epoch + 1)
            record: dict[str, Any] = {"epoch": epoch + 1, "loss": round(float(np.mean(
                losses[-steps_per_epoch:])), 4)}
            if val is not None:
                record.update(val(tail))
            history["epochs"].append(record)
            score = float(record.get("R@1 mean", epoch))  # no validation: the last epoch
            if best is None or score > best[0]:
                best = (score, copy.deepcopy(tail.state_dict()), epoch + 1)
    assert best is not None
    tail.load_state_dict(best[1])
    history["kept_epoch"] = best[2]
    return history, losses


def plot_losses(losses: Sequence[float], history: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(losses) + 1), losses, lw=0.8, label="training loss (step)")
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE loss")
    epochs = history.get("epochs", [])
    if epochs and "R@1 mean" in epochs[0]:
        per = len(losses) // len(epochs)
        ax2 = ax.twinx()
        ax2.plot([per * e["epoch"] for e in epochs], [e["R@1 mean"] for e in epochs], "o-",
                 color="tab:orange", label="validation R@1 (held-out train items)")
        ax2.set_ylabel("validation R@1")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("prodsearch train --task photo-cnn")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_tail(tail: CnnTail, path: Path, provenance: dict[str, Any]) -> str:
    """fp16 tail weights (full-network names) + provenance; returns the version."""
    state = {k: v.detach().cpu() for k, v in tail.full_state().items()}
    version = state_hash({k: v.half().float() for k, v in state.items()})
    ckpt = {"format": PHOTO_CNN_FORMAT, "split": tail.split, "version": version,
            "tail": {k: v.half() if v.is_floating_point() else v for k, v in state.items()},
            "provenance": provenance}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return version


def train_photo_cnn(items: Sequence[Item], settings: PhotoCnnSettings, out: Path | None = None,
                    cache: Path = Path("data/photo-cnn-cache"), progress: bool = True,
                    command: str = "") -> dict[str, Any]:
    """Renders and caches, trains, writes the checkpoint (default: the shipped one) and a
    loss-curve PNG beside it (`<out>.loss.png`). `items` are train-split items: the first
    `val_items` of a seeded shuffle validate, the rest (up to `limit`) train."""
    from encoders.image import EfficientNetLite0Encoder

    started = time.perf_counter()
    random.seed(settings.seed)
    np.random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    order = list(items)
    random.Random(f"photo-cnn:{settings.seed}").shuffle(order)
    val_items = order[:settings.val_items]
    train_items = order[settings.val_items:]
    if settings.limit is not None:
        train_items = train_items[:settings.limit]
    if len(train_items) < 2:
        raise ValueError("need at least 2 training items")
    encoder = EfficientNetLite0Encoder(device="cpu")
    encoder.load()
    model = encoder._model
    assert model is not None
    model.eval()
    front = FrontRunner(model, settings.split, settings.device)
    if front.device.type != "cpu":
        model.to(front.device)
    acts = cache_activations(train_items, front, settings.seed, cache, settings.workers,
                             progress)
    val_fn = None
    if val_items:
        val_acts = cache_activations(val_items, front, settings.seed, cache, settings.workers,
                                     progress)
        distractors = acts[:300, 0]
        val_fn = functools.partial(_validate_on, val_acts=val_acts, distractors=distractors,
                                   device=settings.device)
    cached_s = time.perf_counter() - started
    tail = CnnTail(model.cpu(), settings.split)
    t = time.perf_counter()
    history, losses = train_tail(tail, acts, settings, val_fn, progress)
    train_s = time.perf_counter() - t
    out = out or PHOTO_CNN_CHECKPOINT
    provenance = {
        "command": command,
        "data": "openclipart train split (encoders.evaluation.datasets.split_of); anchors = "
                "catalog images; positives = photos.SHELF_HARD among Adwaita icons (whole, "
                "isolated, loose crop) and photos.PRODUCT_HARD; negatives = crops of the "
                "shelf photo away from the item; seed strings 'photo-cnn:<seed>:<item>'",
        "train_items": len(train_items), "val_items": len(val_items),
        "sample": hashlib.sha1("\n".join(sorted(it.key for it in train_items)).encode()
                               ).hexdigest()[:12],
        "settings": asdict(settings), "steps": len(losses), "history": history,
        "seconds": {"render_and_cache": round(cached_s, 1), "train": round(train_s, 1)},
    }
    version = save_tail(tail.cpu(), out, provenance)
    png = out.with_suffix(".loss.png")
    plot_losses(losses, history, png)
    return {"out": str(out), "version": version, "loss_png": str(png),
            "steps": len(losses), **provenance}


def _validate_on(tail: CnnTail, val_acts: torch.Tensor, distractors: torch.Tensor,
                 device: str) -> dict[str, float]:
    tail_cpu = tail.to("cpu")
    result = validate(tail_cpu, val_acts, distractors)
    tail.to(device)
    return result

