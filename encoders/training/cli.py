"""`prodsearch train`: arguments and the call into the training loop (no backend imports)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

__all__ = ["add_arguments", "run_from_args"]

DEFAULT_OUT = "data/fusion/fusion.pt"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=("fusion", "vocabulary", "descriptor-index",
                                      "photo-scorer", "photo-cnn"),
                   default="fusion", help="fusion: the fusion model; vocabulary: visual "
                   "words for photo search; descriptor-index: the quantisers of photo "
                   "search's descriptor vote; photo-scorer: the calibrated photo match scorer; "
                   "photo-cnn: fine-tune the CNN's last blocks for photos (all on the "
                   "openclipart train split)")
    p.add_argument("--lists", type=int, default=4096, help="coarse lists of the descriptor "
                   "index (--task descriptor-index)")
    p.add_argument("--image-model", default="efficientnet_lite0",
                   choices=("efficientnet_lite0", "efficientnet_lite0_photo"),
                   help="photo-scorer: the CNN whose dense cosine the scorer weighs (each "
                   "ships its own scorer file)")
    p.add_argument("--scorer-catalog", type=int, default=None, help="photo-scorer: catalog "
                   "of this many train items (default: the whole train split)")
    p.add_argument("--features-cache", default="bench/eval_results/cache",
                   help="descriptor-index, photo-scorer: where catalog features are cached "
                   "(shared with `prodsearch eval`)")
    p.add_argument("--words", type=int, default=4096, help="vocabulary size (--task "
                   "vocabulary)")
    p.add_argument("--catalog", help="catalog JSONL (the ingest format); default: the "
                   "openclipart train split (evaluation items are never used)")
    p.add_argument("--limit", type=int, default=None,
                   help="train on a seeded sample of this many items")
    p.add_argument("--epochs", type=int, default=None,
                   help="default: 20 (fusion), 4 (photo-cnn)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None,
                   help="default: 5e-4 (fusion), 1e-4 (photo-cnn)")
    p.add_argument("--split", type=int, default=12,
                   help="photo-cnn: first trained block of EfficientNet-Lite0's 16 (12 = the "
                   "last four; 1 = nearly all, for a GPU)")
    p.add_argument("--val-items", type=int, default=200,
                   help="photo-cnn: held-out train-split items that pick the epoch")
    p.add_argument("--device", default="cpu", help="photo-cnn: cpu or cuda")
    p.add_argument("--workers", type=int, default=2,
                   help="photo-cnn: processes rendering the training photos")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-model", choices=("multilingual", "minilm", "lstm"),
                   default="multilingual", help="text encoder the fusion model reads "
                   "(lstm: trained from scratch with it)")
    p.add_argument("--photos", type=int, default=2,
                   help="shelf-style photo renderings cached per item")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="training checkpoint (written after every epoch); with a photo "
                   "task, the file to write (default: the shipped one)")
    p.add_argument("--export", default="",
                   help="also write a serving copy here (fp16, no optimizer state)")
    p.add_argument("--cache-dir", default="data/fusion-cache",
                   help="where backbone features are cached")
    p.add_argument("--resume", action="store_true", help="continue from --out")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_from_args(args: argparse.Namespace) -> int:
    if args.task != "fusion":
        return _photo_task(args)
    from encoders.training.data import load_catalog, openclipart_items
    from encoders.training.train import TrainSettings, export_checkpoint, train

    if args.catalog:
        items = load_catalog(args.catalog)
        if args.limit is not None:
            items = items[: args.limit]
    else:
        items = openclipart_items("train", limit=args.limit, seed=args.seed)
    if len(items) < 2:
        print("error: need at least 2 catalog items with a readable image", file=sys.stderr)
        return 2
    settings = TrainSettings(epochs=args.epochs or 20, batch_size=args.batch_size,
                             lr=args.lr or 5e-4,
                             seed=args.seed, text_model=args.text_model,
                             photos_per_item=args.photos, threads=args.threads)
    argv = sys.argv[1:]
    argv = argv[argv.index("train") + 1 :] if "train" in argv else argv
    command = "prodsearch train " + shlex.join(argv)
    started = time.perf_counter()
    state = train(items, args.out, settings, cache_root=args.cache_dir, resume=args.resume,
                  progress=not args.quiet, command=command)
    summary: dict[str, object] = {
        "checkpoint": args.out, "items": len(items), "epochs": state.epoch,
        "steps": state.step, "seconds": round(time.perf_counter() - started, 1),
        "last_epoch": state.history[-1] if state.history else {},
    }
    if args.export:
        summary["exported"] = args.export
        summary["model_version"] = export_checkpoint(args.out, Path(args.export))
    print(json.dumps(summary, indent=2))
    return 0


def _photo_task(args: argparse.Namespace) -> int:
    from encoders.training import photo

    argv = sys.argv[1:]
    argv = argv[argv.index("train") + 1 :] if "train" in argv else argv
    command = "prodsearch train " + shlex.join(argv)
    items = photo.train_items()
    out = args.out if args.out != DEFAULT_OUT else None
    if args.task == "photo-cnn":
        from encoders.training.photo_cnn import PhotoCnnSettings, train_photo_cnn

        settings = PhotoCnnSettings(
            limit=args.limit, val_items=args.val_items, epochs=args.epochs or 4,
            batch_size=args.batch_size, lr=args.lr or 1e-4, split=args.split,
            seed=args.seed, device=args.device, workers=args.workers, threads=args.threads)
        report = train_photo_cnn(items, settings, Path(out) if out else None,
                                 cache=Path(args.cache_dir), progress=not args.quiet,
                                 command=command)
        print(json.dumps(report, indent=2))
        return 0
    if args.task == "vocabulary":
        chosen = photo.seeded(items, args.limit, args.seed, "vocabulary")
        report = photo.build_vocabulary(chosen, args.words, seed=args.seed,
                                        out=out or photo.VOCABULARY_FILE,
                                        progress=not args.quiet, command=command)
    elif args.task == "descriptor-index":
        report = photo.build_descriptor_index(args.limit, args.lists, seed=args.seed,
                                              out=out, cache_dir=args.features_cache,
                                              command=command)
    else:
        from encoders.local_features import scorer_file

        report = photo.fit_photo_scorer(limit=args.limit or 300, seed=args.seed,
                                        out=out or scorer_file(args.image_model),
                                        image_model=args.image_model,
                                        cache_dir=args.features_cache,
                                        catalog_size=args.scorer_catalog,
                                        progress=not args.quiet, command=command)
    print(json.dumps(report, indent=2))
    return 0
