"""Candidate generation for photo search, side by side on the same photos: the shipped
visual words (IDF-weighted, as the vector store scores them), a direct vote of every
query descriptor's nearest catalog descriptor (FLANN k-d trees, ratio test), and the
shipped descriptor index's vote (FAISS IVF-SQ8, ratio test against another product: what
search uses), each followed by the same geometric verification of its top candidates.

    python -m bench.photo_candidates --queries 60 --set noncatalog_clutter \
        --out bench/eval_results/photo

Prints, per generator: the share of queries whose photographed item is among the top
`--top` candidates (what verification can at best confirm), the share where it is the
first candidate, the share where the best verified candidate is the item, and the median
milliseconds per query (candidates + verification; extraction excluded, it is shared).
Catalog features come from the evaluation's cache under `--out` (built on first use).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def main() -> None:
    import cv2
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    from encoders.descriptor_index import DescriptorIndex
    from encoders.evaluation import photo_sets
    from encoders.evaluation.shelf_photos import _eval_queries, _openclipart_gallery
    from encoders.evaluation.variants import Context
    from encoders.local_features import (
        LocalFeatureExtractor,
        PhotoScorer,
        VisualVocabulary,
        root_sift,
        verify,
    )
    from encoders.photo_match import PhotoMatcher

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--set", default="noncatalog_clutter",
                        choices=["noncatalog_clutter", "catalog_clutter", "product_photo"])
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--limit", type=int, default=None, help="catalog size (all: 8,101)")
    parser.add_argument("--out", type=Path, default=Path("bench/eval_results/photo"))
    args = parser.parse_args()

    ctx = Context(args.out)
    gallery = _openclipart_gallery(args.limit, 0)
    targets = _eval_queries(gallery, args.queries, 0)
    extractor = LocalFeatureExtractor()
    feats, _ = photo_sets.catalog_local_features(ctx, gallery, extractor)
    roots = [root_sift(f.descriptors).astype(np.float32) for f in feats]
    owner = np.concatenate([np.full(len(r), i, np.int32) for i, r in enumerate(roots)])
    started = time.perf_counter()
    flann = cv2.FlannBasedMatcher({"algorithm": 1, "trees": 4}, {"checks": 64})
    flann.add([np.concatenate(roots)])
    flann.train()
    knn_build_s = time.perf_counter() - started
    words = PhotoMatcher(feats, VisualVocabulary.load(), PhotoScorer.load())
    started = time.perf_counter()
    ivf = DescriptorIndex.empty()
    ivf.add_many((str(i), str(i), f, "") for i, f in enumerate(feats))
    ivf_build_s = time.perf_counter() - started

    def knn_order(q_root: object) -> np.ndarray:
        assert isinstance(q_root, np.ndarray)
        votes = np.zeros(len(feats), np.float32)
        for pair in flann.knnMatch(q_root, k=2):
            if len(pair) == 2 and pair[0].distance < 0.8 * pair[1].distance:
                votes[owner[pair[0].trainIdx]] += 1
        return np.argsort(-votes, kind="stable")[: args.top]

    def words_order(query: object) -> np.ndarray:
        return np.argsort(-words.sparse_scores(query), kind="stable")[: args.top]  # type: ignore[arg-type]

    def ivf_order(q_root: object) -> np.ndarray:
        assert isinstance(q_root, np.ndarray)
        votes = ivf.vote(q_root, np.zeros((len(q_root), 2), np.float32))
        return np.array([int(k) for k, _ in votes.ranked()[: args.top]], dtype=np.int64)

    generators: dict[str, Callable[[object], np.ndarray]] = {
        "visual words": words_order, "descriptor kNN vote (FLANN)": knn_order,
                  "descriptor index vote (shipped)": ivf_order}
    counts = {name: {"in_top": 0, "first": 0, "verified_first": 0} for name in generators}
    times: dict[str, list[float]] = {name: [] for name in generators}
    cv2.setNumThreads(1)
    for target in tqdm(targets, desc=f"{args.set} photos", unit="photo"):
        photo, _ = photo_sets._photo(args.set, gallery, target, 0)
        query = extractor.extract(photo, query=True)
        q_root = root_sift(query.descriptors).astype(np.float32)
        for name, generate in generators.items():
            started = time.perf_counter()
            with threadpool_limits(1):
                order = generate(q_root if name.startswith("descriptor") else query)
                best, best_row = 0, -1
                for row in order:
                    v = verify(query, feats[row], query_root=q_root, candidate_root=roots[row])
                    if v.verified and v.inliers > best:
                        best, best_row = v.inliers, int(row)
            times[name].append(time.perf_counter() - started)
            c = counts[name]
            c["in_top"] += int(target in set(order.tolist()))
            c["first"] += int(len(order) > 0 and order[0] == target)
            c["verified_first"] += int(best_row == target)
    n = len(targets)
    print(f"{args.set}: {n} photos, catalog {len(gallery)} items, "
          f"{len(owner):,} catalog descriptors (FLANN index built in {knn_build_s:.1f} s, "
          f"descriptor index in {ivf_build_s:.1f} s)")
    print(f"| generator | item in top {args.top} | first candidate | verified first | ms median |")
    print("|---|---|---|---|---|")
    for name, c in counts.items():
        print(f"| {name} | {c['in_top'] / n:.2f} | {c['first'] / n:.2f} | "
              f"{c['verified_first'] / n:.2f} | {1000 * float(np.median(times[name])):.0f} |")


if __name__ == "__main__":
    main()
