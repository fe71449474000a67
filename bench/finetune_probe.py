"""Probe: does fine-tuning the CNN's last block buy shelf recall? (`prodsearch train` keeps the
backbone frozen; this measures the lever before building it into training and serving.)

Training pairs: N openclipart train-split items, each as its catalog image and a loose crop
around the item in one shelf-style photo (`photos.SHELF`, other train items as clutter).
Evaluation: the shelf task's own photos (`tasks.render_query`, seed 0) of 200 evaluation items
against a 1,500-item gallery; queries are the item's true box (localisation solved) and, on
the first 40, the multi-scale crops search uses. The backbone runs once up to the last block
(activations cached in memory); only the tail (last MBConv block + head conv + BN) trains,
with a symmetric InfoNCE loss, BatchNorm statistics frozen.

    .venv/bin/python -m bench.finetune_probe [--items 2000] [--epochs 9] [--split 15]

About 6 minutes on 2 CPU cores, almost all of it the frozen front of the network.
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from encoders.evaluation import tasks
from encoders.evaluation.datasets import openclipart_items, split_of
from encoders.evaluation.photos import SHELF, render_scene
from encoders.image import EfficientNetLite0Encoder, crop_boxes
from encoders.preprocess import image_tensor

GALLERY, QUERIES, CROP_QUERIES = 1500, 200, 40


class Tail(torch.nn.Module):
    """A trainable copy of the network after block `split`: blocks, head conv, BN, pool."""

    def __init__(self, model: Any, split: int) -> None:
        super().__init__()
        self.blocks = copy.deepcopy(model._blocks[split:])
        self.head = copy.deepcopy(model._conv_head)
        self.bn = copy.deepcopy(model._bn1)
        self.act = model._swish
        self.requires_grad_(True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h)
        return F.normalize(self.act(self.bn(self.head(h))).mean(dim=(2, 3)), dim=1)


def front(model: Any, split: int, images: Sequence[Image.Image],
          batch: int = 32) -> torch.Tensor:
    """Activations before block `split`, fp16, for the frozen part of the network."""
    parts = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            h = model._swish(model._bn0(model._conv_stem(image_tensor(images[i:i + batch], 224))))
            for block in model._blocks[:split]:
                h = block(h)
            parts.append(h.half())
    return torch.cat(parts).clone()


def loose_crop(photo: Image.Image, box: tuple[int, int, int, int], rng: random.Random
               ) -> Image.Image:
    left, top, right, bottom = box
    side = max(right - left, bottom - top) * rng.uniform(1.0, 1.4)
    cx = (left + right) / 2 + rng.uniform(-0.1, 0.1) * side
    cy = (top + bottom) / 2 + rng.uniform(-0.1, 0.1) * side
    return photo.crop((round(cx - side / 2), round(cy - side / 2),
                       round(cx + side / 2), round(cy + side / 2)))


def training_pairs(n: int) -> tuple[list[Image.Image], list[Image.Image]]:
    items = [it for it in openclipart_items() if split_of(it.item_id) != "eval"]
    rnd = random.Random(3)
    chosen = rnd.sample(range(len(items)), n)
    clutter = [tasks._item_rgba(str(items[j].path)) for j in rnd.sample(range(len(items)), 200)]
    catalog, photos = [], []
    for i in chosen:
        item = items[i]
        rng = random.Random(f"ft:{item.item_id}")
        scene = render_scene(tasks._item_rgba(str(item.path)), rng, SHELF, distractors=clutter)
        catalog.append(tasks._catalog_image(item))
        photos.append(loose_crop(scene.photo, scene.box, rng))
    return catalog, photos


def embed(tail: Tail, acts: torch.Tensor, batch: int = 256) -> np.ndarray:
    tail.eval()
    with torch.no_grad():
        return torch.cat([tail(acts[i:i + batch].float())
                          for i in range(0, len(acts), batch)]).numpy()


def recall(scores: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    ranks = np.array([(row > row[t]).sum() for row, t in zip(scores, targets, strict=True)])
    return float((ranks < 1).mean()), float((ranks < 10).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2000, help="training items")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--split", type=int, default=15,
                        help="first trainable block (15 = the last of EfficientNet-Lite0's 16)")
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()
    encoder = EfficientNetLite0Encoder(device="cpu")
    encoder.load()
    model = encoder._model
    assert model is not None
    model.eval()

    catalog, crops = training_pairs(args.items)
    train_catalog = front(model, args.split, catalog)
    train_photos = front(model, args.split, crops)
    gallery = tasks._openclipart_gallery(GALLERY, 0)
    query_index = tasks._eval_queries(gallery, QUERIES, 0)
    scenes = [tasks.render_query(gallery, i, 0) for i in query_index]
    gallery_acts = front(model, args.split, [tasks._catalog_image(it) for it in gallery])
    box_acts = front(model, args.split, [s.photo.crop(s.box) for s in scenes])
    crop_acts = [front(model, args.split, [s.photo, *(s.photo.crop(b)
                                                      for b in crop_boxes(*s.photo.size)[1:])])
                 for s in scenes[:CROP_QUERIES]]
    targets = np.array(query_index)
    print(f"features ready in {time.perf_counter() - started:.0f} s: {args.items} training "
          f"pairs, gallery {GALLERY}, {QUERIES} queries ({CROP_QUERIES} with crops)", flush=True)

    def report(tail: Tail, name: str) -> None:
        g = embed(tail, gallery_acts)
        box_r1, box_r10 = recall(embed(tail, box_acts) @ g.T, targets)
        crop_scores = np.stack([(embed(tail, acts) @ g.T).max(axis=0) for acts in crop_acts])
        crop_r1, crop_r10 = recall(crop_scores, targets[:CROP_QUERIES])
        in_photo = np.mean([int(np.argmax(row)) in s.in_photo
                            for row, s in zip(crop_scores, scenes, strict=False)])
        print(f"{name:18s} true box R@1 {box_r1:.3f} R@10 {box_r10:.3f} | crops R@1 "
              f"{crop_r1:.3f} R@10 {crop_r10:.3f} in_photo@1 {in_photo:.3f}", flush=True)

    tail = Tail(model, args.split)
    report(tail, "pretrained")
    optimizer = torch.optim.AdamW(tail.parameters(), lr=args.lr, weight_decay=1e-4)
    batch = 128
    for epoch in range(args.epochs):
        tail.train()
        for module in tail.modules():  # small batches: keep ImageNet's BN statistics
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        order = torch.randperm(len(train_catalog))
        losses = []
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i:i + batch]
            logits = tail(train_photos[idx].float()) @ tail(train_catalog[idx].float()).T / 0.05
            labels = torch.arange(len(idx))
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        print(f"epoch {epoch + 1}: loss {np.mean(losses):.3f}", flush=True)
        if (epoch + 1) % 3 == 0:
            report(tail, f"fine-tuned, {epoch + 1} ep")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
