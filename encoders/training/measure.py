"""A quick shelf measurement on cached features: photo-like renderings of held-out items
(queries) against their catalog images (gallery), backbone-only vs a fusion model. The full
benchmark with its own data handling is `prodsearch eval` (encoders.evaluation); this one
reads the training caches, so it costs no CNN pass."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from encoders.fusion import FusionModel
from encoders.training.cache import FeatureCache
from encoders.training.train import load_text_features

__all__ = ["recall_metrics", "shelf_report"]

_CHUNK = 128


def recall_metrics(scores: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """scores (Q, G), truth (Q,) gallery index of each query's item."""
    target = scores[np.arange(len(truth)), truth]
    rank = (scores > target[:, None]).sum(axis=1) + 1  # ties count in the query's favour
    out = {f"recall@{k}": float((rank <= k).mean()) for k in (1, 5, 10)}
    out["mrr"] = float((1.0 / rank).mean())
    return out


def _chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        parts = [fn(x[i : i + _CHUNK].float()) for i in range(0, x.shape[0], _CHUNK)]
    return torch.cat(parts).numpy()


def _mean_pool(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.mean(dim=1), dim=-1)


def shelf_report(eval_cache: FeatureCache, model: FusionModel | None = None,
                 distractors: FeatureCache | None = None) -> dict[str, object]:
    """Recall@1/5/10 and MRR of each photo view alone ('whole', 'isolated') and of the max
    over the views (as search does), for backbone-only and, when given, the fusion
    model (gallery = fused(image + text), queries = image-only). `distractors`: another
    cache whose catalog items join the gallery (never as answers)."""
    n = len(eval_cache)
    photos = torch.from_numpy(np.array(eval_cache.photos[:, 0]))  # (N, V, 49, C)
    catalog = torch.from_numpy(np.array(eval_cache.catalog))
    views = photos.shape[1]
    caches = [eval_cache] + ([distractors] if distractors is not None else [])
    truth = np.arange(n)
    report: dict[str, object] = {"queries": n, "gallery": n + (len(distractors) if
                                                               distractors else 0)}

    def run(name: str, gallery_fn: Callable[[FeatureCache], np.ndarray],
            query_fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        gallery = np.concatenate([gallery_fn(c) for c in caches])
        per_view = [(_chunks(query_fn, photos[:, v]) @ gallery.T) for v in range(views)]
        names = eval_cache.meta.get("views") or [f"view{v}" for v in range(views)]
        result = {str(names[v]): recall_metrics(per_view[v], truth) for v in range(views)}
        result["views"] = recall_metrics(np.max(per_view, axis=0), truth)
        report[name] = result

    def backbone_gallery(c: FeatureCache) -> np.ndarray:
        tokens = catalog if c is eval_cache else torch.from_numpy(np.array(c.catalog))
        return _chunks(_mean_pool, tokens)

    run("backbone", backbone_gallery, _mean_pool)
    if model is not None:
        model.eval()
        text_model = model.config.text_model

        def fused_gallery(c: FeatureCache) -> np.ndarray:
            tokens = (catalog if c is eval_cache
                      else torch.from_numpy(np.array(c.catalog)))
            text, mask = load_text_features(c, text_model, progress=False)
            out = []
            with torch.no_grad():
                for i in range(0, len(c), _CHUNK):
                    t, m = text[i : i + _CHUNK], mask[i : i + _CHUNK]
                    t = model.text_tokens(t, m) if model.lstm is not None else t.float()
                    out.append(model(tokens[i : i + _CHUNK].float(), t, m))
            return torch.cat(out).numpy()

        run("fused", fused_gallery, lambda x: model(x))
    return report
