"""Catalog feature settings for the descriptor vote, measured on TRAIN-split photos only
(a dev set: nothing here touches evaluation items), so that the shipped settings are not
tuned on the evaluation's queries.

    python -m bench.photo_vote_dev --catalog 300 --queries 30 \
        --settings 320:500,480:500,480:500:0.01,640:500:0.02

For each `side:keypoints` catalog setting: catalog images of `--catalog` train items at
that longest side and keypoint budget, an IVF index trained on those descriptors, then
photos of `--queries` of the items (single item among non-catalog clutter, and among
catalog clutter) searched by vote -> verification on the vote's correspondences. Prints
the share of photos whose item is first by votes, in the top 30 by votes, verified, and
first after ranking (verified first by inliers, then votes), with extraction and query ms.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import numpy as np


def main() -> None:
    import cv2
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    from encoders.descriptor_index import DescriptorIndex, train_index
    from encoders.evaluation import photo_sets
    from encoders.evaluation.datasets import split_of
    from encoders.evaluation.shelf_photos import _openclipart_gallery
    from encoders.local_features import (
        ExtractorSettings,
        LocalFeatureExtractor,
        root_sift,
        verify,
        verify_matches,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=int, default=600)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--settings", default="320:500,480:500,640:500",
                        help="side:keypoints[:catalog contrast threshold[:extra scales, "
                        "'+'-separated]], comma-separated")
    parser.add_argument("--sets", default="noncatalog_clutter,catalog_clutter")
    parser.add_argument("--query-keypoints", type=int, default=1500)
    parser.add_argument("--nprobe", type=int, default=8)
    parser.add_argument("--reverify", type=int, default=0,
                        help="also verify the N most voted by direct matching against each "
                        "candidate's own descriptors (ratio test + RANSAC) and rank by inliers")
    parser.add_argument("--baseline", action="store_true",
                        help="also run a plain SIFT baseline on the same photos: 500 keypoints "
                        "per catalog image as stored, one FLANN index, ratio test, one vote per "
                        "match")
    args = parser.parse_args()

    cv2.setNumThreads(1)
    train = [it for it in _openclipart_gallery(None, 0) if split_of(it.item_id) == "train"]
    gallery = random.Random("vote-dev:0").sample(train, args.catalog)
    targets = random.Random("vote-dev:q").sample(range(len(gallery)), args.queries)
    photos = {kind: [photo_sets._photo(kind, gallery, t, 7) for t in targets]
              for kind in args.sets.split(",")}
    print(f"dev: {len(gallery)} train-split catalog items, {len(targets)} photos per set")
    print("| catalog side:kp | set | kp/img | extract ms/img | first by votes | top 30 by votes"
          " | item verified | R@1 ranked | query ms | R@1 re-verified | re-verify ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    if args.baseline:
        _baseline(gallery, targets, photos, photo_sets._catalog_image)
    for setting in (args.settings.split(",") if args.settings else []):
        side, kp, *rest = setting.split(":")
        extractor = LocalFeatureExtractor(ExtractorSettings(
            catalog_min_side=int(side), catalog_max_side=int(side), catalog_keypoints=int(kp),
            query_keypoints=args.query_keypoints,
            catalog_contrast_threshold=float(rest[0]) if rest else 0.0,
            catalog_extra_scales=tuple(float(x) for x in rest[1].split("+")) if len(rest) > 1
            else ()))
        t = time.perf_counter()
        feats = [extractor.extract(photo_sets._catalog_image(it))
                 for it in tqdm(gallery, desc=f"catalog {setting}", leave=False)]
        extract_ms = 1000 * (time.perf_counter() - t) / len(gallery)
        trained = train_index(np.concatenate([f.descriptors for f in feats]), 256)
        index = DescriptorIndex(trained, nprobe=args.nprobe)
        index.add_many((str(i), str(i), f, "") for i, f in enumerate(feats))
        roots = [root_sift(f.descriptors) for f in feats]
        for kind, shots in photos.items():
            first = top30 = verified = ranked1 = reverified1 = 0
            times, re_times = [], []
            for target, (photo, _present) in zip(targets, shots, strict=True):
                query = extractor.extract(photo, query=True)
                with threadpool_limits(1):
                    t = time.perf_counter()
                    votes = index.vote(root_sift(query.descriptors), query.keypoints)
                    order = [int(k) for k, _ in votes.ranked()[:30]]
                    best: list[tuple[int, int, int]] = []
                    for rank, row in enumerate(order[:20]):
                        qi, pts = votes.matches[str(row)]
                        v = verify_matches(query.keypoints[qi], query.size, pts,
                                           votes.sizes[str(row)])
                        best.append((-v.inliers, rank, row))
                        if v.verified and row == target:
                            verified += 1
                    best.sort()
                    times.append(time.perf_counter() - t)
                    if args.reverify:
                        t = time.perf_counter()
                        q_root = root_sift(query.descriptors)
                        direct = sorted(
                            (-verify(query, feats[row], query_root=q_root,
                                     candidate_root=roots[row]).inliers, rank, row)
                            for rank, row in enumerate(order[:args.reverify]))
                        re_times.append(time.perf_counter() - t)
                        reverified1 += int(bool(direct) and direct[0][2] == target)
                first += int(bool(order) and order[0] == target)
                top30 += int(target in order)
                ranked1 += int(bool(best) and best[0][2] == target)
            n = len(targets)
            print(f"| {setting} | {kind} | {index.descriptors / len(gallery):.0f} | "
                  f"{extract_ms:.0f} | {first / n:.2f} | {top30 / n:.2f} | {verified / n:.2f}"
                  f" | {ranked1 / n:.2f} | {1000 * float(np.median(times)):.0f} | "
                  f"{reverified1 / n:.2f} | "
                  f"{1000 * float(np.median(re_times)) if re_times else 0:.0f} |", flush=True)


def _baseline(gallery: list, targets: list[int], photos: dict, catalog_image: Callable) -> None:
    """The textbook pipeline, untuned: what the vote path has to beat on the same photos."""
    import cv2

    sift_catalog, sift_query = cv2.SIFT_create(nfeatures=500), cv2.SIFT_create()
    descs, owners = [], []
    for row, item in enumerate(gallery):
        grey = cv2.cvtColor(np.asarray(catalog_image(item)), cv2.COLOR_RGB2GRAY)
        _, desc = sift_catalog.detectAndCompute(grey, None)
        if desc is not None:
            descs.append(desc)
            owners.append(np.full(len(desc), row))
    matcher = cv2.FlannBasedMatcher({"algorithm": 1, "trees": 4}, {"checks": 64})
    matcher.add([np.concatenate(descs)])
    matcher.train()
    owner = np.concatenate(owners)
    for kind, shots in photos.items():
        first, times = 0, []
        for target, (photo, _present) in zip(targets, shots, strict=True):
            t = time.perf_counter()
            grey = cv2.cvtColor(np.asarray(photo.convert("RGB")), cv2.COLOR_RGB2GRAY)
            _, desc = sift_query.detectAndCompute(grey, None)
            votes = np.zeros(len(gallery))
            if desc is not None:
                for pair in matcher.knnMatch(desc, k=2):
                    if len(pair) == 2 and pair[0].distance < 0.75 * pair[1].distance:
                        votes[owner[pair[0].trainIdx]] += 1
            times.append(time.perf_counter() - t)
            first += int(int(np.argmax(votes)) == target)
        print(f"| plain SIFT baseline | {kind} | {len(owner) / len(gallery):.0f} | - | "
              f"{first / len(targets):.2f} | - | - | {first / len(targets):.2f} | "
              f"{1000 * float(np.median(times)):.0f} |", flush=True)


if __name__ == "__main__":
    main()
