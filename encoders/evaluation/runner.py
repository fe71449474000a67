"""Run the benchmarks: one JSON document per run (printed and written to the output folder)
and a Recall@K plot per task, one line per variant (and query strategy).

    python -m encoders.evaluation.runner --task shelf --limit 200 --json
    prodsearch eval --task all --out eval_out
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["TASKS", "add_arguments", "main", "plot_curves", "run", "run_from_args"]

# Task name -> function name in encoders.evaluation.tasks (imported on use: this module is
# imported by the command line parser, which must stay light).
TASKS: dict[str, str] = {
    "fmnist-category": "fmnist_category",
    "shelf": "shelf",
    "text": "text",
}
DEFAULT_OUT = Path("eval_out")


def plot_curves(result: dict[str, Any], path: Path) -> Path:
    """Recall@K against K (log scale), one line per curve in result["curves"]: a colour per
    variant (the label's first word), a line style per strategy or query set (the rest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(result["curves"])
    variants = list(dict.fromkeys(label.split(" ", 1)[0] for label in labels))
    kinds = list(dict.fromkeys(label.partition(" ")[2] for label in labels))
    colours = plt.get_cmap("tab10")
    styles = ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 1)), (0, (3, 1, 1, 1))]
    markers = ["o", "s", "^", "D", "v", "x", "*"]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for label, curve in result["curves"].items():
        variant, _, kind = label.partition(" ")
        v, k = variants.index(variant), kinds.index(kind)
        ks = [int(x) for x in curve]
        ax.plot(ks, list(curve.values()), color=colours(v % 10), linestyle=styles[k % 7],
                marker=markers[k % 7], markersize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    sizes = ", ".join(f"{k}={v}" for k, v in result.get("sizes", {}).items())
    ax.set_title(f"{result['task']} ({sizes})", fontsize=9)
    if result["curves"]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _task_options(task: str, limit: int | None, queries: int | None,
                  crop_queries: int | None, restock_photos: int | None = None
                  ) -> dict[str, Any]:
    """Sizes for one task. `limit` shrinks everything for quick runs: fmnist gets `limit`
    queries and 10 x `limit` gallery images; openclipart tasks a gallery of `limit` items."""
    opts: dict[str, Any] = {}
    if task == "fmnist-category":
        if limit is not None:
            opts.update(queries=limit, gallery=10 * limit)
        if queries is not None:
            opts["queries"] = queries
    else:
        if limit is not None:
            opts["limit"] = limit
        if queries is not None:
            opts["queries"] = queries
        if task == "shelf" and crop_queries is not None:
            opts["crop_queries"] = crop_queries
        if task == "shelf" and restock_photos is not None:
            opts["restock_photos"] = restock_photos
    return opts


def run(task: str, *, out_dir: Path = DEFAULT_OUT, limit: int | None = None,
        seed: int = 0, queries: int | None = None, crop_queries: int | None = None,
        variants: list[str] | None = None, device: str = "cpu", use_cache: bool = True,
        restock_photos: int | None = None,
        text_retrieval: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        image_model: str = "efficientnet_lite0", text_encoder: str = "multilingual"
        ) -> dict[str, Any]:
    """Run one task (or "all"); write <task>.json and <task>_recall.png into `out_dir`;
    return the JSON document. `text_retrieval` adds the text task's rows measured through
    the vector store (given by the backend)."""
    names = list(TASKS) if task == "all" else [task]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join([*TASKS, 'all'])}")
    from encoders.evaluation import tasks
    from encoders.evaluation.variants import Context, Timer

    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(out_dir, device=device, use_cache=use_cache, image_model=image_model)
    timer = Timer()
    docs: dict[str, Any] = {}
    for name in names:
        opts = _task_options(name, limit, queries, crop_queries, restock_photos)
        if variants is not None:
            opts["variants"] = [v for v in variants
                                if v in tasks.IMAGE_VARIANTS
                                or v in (tasks.PHOTO_VARIANT, tasks.PHOTO_DENSE_VARIANT)]
        if name == "text" and text_retrieval is not None:
            opts["retrieval"] = text_retrieval
            opts["retrieval_encoder"] = text_encoder
        task_fn: Callable[..., dict[str, Any]] = getattr(tasks, TASKS[name])
        result = task_fn(ctx, seed=seed, **opts)
        result["png"] = str(plot_curves(result, out_dir / f"{name}_recall.png"))
        result["environment"] = _environment(device)
        result["image_model"] = image_model
        (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False)
                                              + "\n", encoding="utf-8")
        docs[name] = result
    if task != "all":
        return docs[task]
    doc = {"task": "all", "tasks": docs, "seconds": timer.seconds()}
    (out_dir / "all.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    return doc


def _environment(device: str) -> dict[str, Any]:
    import torch

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return {"device": device, "torch_threads": torch.get_num_threads(), "cpus": cpus,
            "machine": platform.machine(), "python": platform.python_version()}


def _table(doc: dict[str, Any]) -> str:
    """A short human-readable summary of a result document."""
    if doc.get("task") == "all":
        return "\n\n".join(_table(d) for d in doc["tasks"].values())
    lines = [f"== {doc['task']}  sizes: {doc.get('sizes')}  ({doc.get('seconds')} s)"]
    for name, res in doc["variants"].items():
        flat = {k: v for k, v in res.items() if isinstance(v, (int, float)) and k != "seconds"
                and not k.endswith("seconds") and not isinstance(v, bool)}
        if flat:
            lines.append(f"  {name:16s} " + "  ".join(f"{k}={v}" for k, v in flat.items()))
        for sub, val in res.items():
            if isinstance(val, dict) and sub != "by_class":
                parts = []
                for k, v in val.items():
                    if isinstance(v, dict):
                        parts.append(f"{k}:" + ",".join(f"{a}={b}" for a, b in v.items()
                                                        if isinstance(b, (int, float))))
                    elif isinstance(v, (int, float)) and not isinstance(v, bool):
                        parts.append(f"{k}={v}")
                lines.append(f"  {name:16s} {sub:9s} " + "  ".join(parts))
    for name, why in doc.get("skipped", {}).items():
        lines.append(f"  {name:16s} skipped: {why}")
    lines.append(f"  plot: {doc.get('png')}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser, extra_tasks: Sequence[str] = ()) -> None:
    """`extra_tasks`: tasks the caller runs itself (the backend's `match` task)."""
    parser.add_argument("--task", required=True, choices=[*TASKS, *extra_tasks, "all"])
    parser.add_argument("--json", action="store_true", help="print the JSON document only")
    parser.add_argument("--limit", type=int, help="small run: fmnist N queries / 10N gallery; "
                        "openclipart gallery of N items")
    parser.add_argument("--queries", type=int, help="number of queries (task default otherwise)")
    parser.add_argument("--crop-queries", type=int, help="shelf: queries run with multi-crop")
    parser.add_argument("--variants", help="comma-separated image variants to run; shelf: "
                        "'photo' runs the photo sets (dense / local / combined), "
                        "'photo-dense' only their dense method")
    parser.add_argument("--image-model", default="efficientnet_lite0",
                        choices=("efficientnet_lite0", "efficientnet_lite0_photo"),
                        help="the CNN of the 'backbone' variant and of the photo sets' "
                        "dense method (default: the pretrained one)")
    parser.add_argument("--restock-photos", type=int, default=None,
                        help="shelf: restock photos of 2-5 items (default 200)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (eval_out)")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    parser.add_argument("--no-cache", action="store_true", help="recompute gallery features")
    parser.add_argument("--text-encoder", default="multilingual",
                        help="text: the encoder whose vectors the vector-store rows use "
                        "(multilingual, e5, minilm)")


def run_from_args(args: argparse.Namespace,
                  text_retrieval: Callable[[dict[str, Any]], dict[str, Any]] | None = None
                  ) -> int:
    doc = run(args.task, out_dir=Path(args.out), limit=args.limit, seed=args.seed,
              queries=args.queries, crop_queries=args.crop_queries,
              variants=args.variants.split(",") if args.variants else None,
              device=args.device, use_cache=not args.no_cache,
              restock_photos=args.restock_photos, text_retrieval=text_retrieval,
              image_model=args.image_model, text_encoder=args.text_encoder)
    if args.json:
        print(json.dumps(doc, ensure_ascii=False))
    else:
        print(_table(doc))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m encoders.evaluation.runner",
                                     description=__doc__)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
