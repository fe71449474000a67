"""Query-photo item isolation (`encoders.localise.query_views`) on the full photo (before)
and on a 320 px copy whose mask is scaled back up (after): time per photo and the dense
photo search quality it gives, on the same shelf photos (evaluation split of the openclipart
shelf renderings, enlarged to the size the server decodes a phone JPEG to: long side 1000
px) against the same gallery, max cosine over the views, EfficientNet-Lite0 (ONNX).

    .venv/bin/python -m bench.query_views [--gallery 600] [--queries 120]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image

from bench._common import machine, pct, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gallery", type=int, default=600)
    ap.add_argument("--queries", type=int, default=120)
    ap.add_argument("--side", type=int, default=1000, help="long side of the query photos")
    args = ap.parse_args()
    from encoders.evaluation.shelf_photos import (
        _catalog_image,
        _eval_queries,
        _openclipart_gallery,
        render_query,
    )
    from encoders.localise import QUERY_MASK_SIDE, query_views
    from encoders.optimized import OnnxEfficientNetLite0Encoder

    print(f"# query views: full-size mask vs {QUERY_MASK_SIDE} px mask\n{machine()}\n")
    gallery = _openclipart_gallery(args.gallery, 0)
    wanted = _eval_queries(gallery, args.queries, 0)
    photos = []
    for i in wanted:
        photo = render_query(gallery, i, 0).photo.convert("RGB")
        scale = args.side / max(photo.size)
        photos.append(photo.resize((round(photo.width * scale), round(photo.height * scale)),
                                   Image.Resampling.BICUBIC))
    encoder = OnnxEfficientNetLite0Encoder()
    encoder.load()
    g = np.concatenate([encoder.encode([_catalog_image(it) for it in gallery[s:s + 32]])
                        for s in range(0, len(gallery), 32)])
    target = np.asarray(wanted)
    rows: list[list[object]] = []
    modes = (("full photo (before)", 0), (f"{QUERY_MASK_SIDE} px copy", QUERY_MASK_SIDE))
    for label, side in modes:
        seconds: list[float] = []
        scores = np.empty((len(photos), len(gallery)), dtype=np.float32)
        isolated = 0
        for n, photo in enumerate(photos):
            start = time.perf_counter()
            views = query_views(photo, mask_side=side)
            seconds.append(time.perf_counter() - start)
            isolated += len(views) > 1
            scores[n] = (encoder.encode(views) @ g.T).max(axis=0)
        rank = (scores > scores[np.arange(len(photos)), target][:, None]).sum(axis=1)
        rows.append([label, pct(seconds, 50), pct(seconds, 95), f"{isolated}/{len(photos)}",
                     f"{np.mean(rank == 0):.3f}", f"{np.mean(rank < 5):.3f}",
                     f"{np.mean(1.0 / (rank + 1)):.3f}"])
    print(table(["isolation on", "p50 ms", "p95 ms", "item isolated", "Recall@1",
                 "Recall@5", "MRR"], rows))
    print(f"{len(photos)} photos, {len(gallery)} gallery items, photos {args.side} px long side")


if __name__ == "__main__":
    main()
