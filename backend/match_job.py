"""`prodsearch eval --task match`: fit the match calibration for the current model version on
pairs built from the catalog, save it beside the data, and report held-out metrics."""

from __future__ import annotations

from collections.abc import Callable

from backend.config import Settings
from backend.domain.match_eval import evaluate_matching
from backend.domain.match_model import calibration_path
from backend.domain.ports import VectorEncoder
from backend.domain.types import Product
from backend.stores.catalog.repository import CatalogRepository

CASES_PER_ITEM = 4


def calibrate_matching(
    settings: Settings,
    catalog: CatalogRepository,
    encoder: VectorEncoder,
    limit: int = 200,
    progress_factory: Callable[[int], Callable[[int], object]] | None = None,
) -> dict[str, object]:
    products: list[Product] = []
    for batch in catalog.iter_products():
        products.extend(p for p in batch if p.images)
        if len(products) >= limit:
            break
    products = products[:limit]
    if len(products) < 10:
        raise ValueError("matching needs at least 10 catalog products with images to calibrate")
    progress = progress_factory(len(products) * CASES_PER_ITEM) if progress_factory else None
    result = evaluate_matching(products, encoder, progress=progress)
    path = calibration_path(settings.data_dir, encoder.model_version)
    result.calibration.save(path)
    result.report["calibration_file"] = str(path)
    return result.report
