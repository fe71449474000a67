"""Catalog files: one JSON product per line. Bad lines are reported by number and skipped.

Image paths in a catalog file are relative to the file's folder (or file:// URIs) and must
stay inside that folder or the configured image roots once symlinks are resolved: a file
from elsewhere cannot make the server read /etc/shadow or walk out with `../`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from backend.domain.ports import ProductCatalog, UpsertOutcome
from backend.domain.product_rules import check_price, check_sku
from backend.domain.tenants import fold_name
from backend.domain.types import ProductInput, StockLevel
from backend.errors import InvalidInput
from backend.security.paths import ImagePathPolicy, ImagePathRefused
from encoders.preprocess import DEFAULT_MAX_FILE_BYTES

KNOWN_KEYS = (
    "sku", "merchant", "title", "description", "category", "brand", "size", "material",
    "colour", "price", "currency", "images", "inventory",
)
_REQUIRED = ("sku", "merchant", "title")


@dataclass
class BadLine:
    line: int
    reason: str


@dataclass
class ParsedFile:
    items: list[tuple[int, ProductInput]] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)


def parse_line(text: str, base_dir: Path) -> ProductInput:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(data, dict):
        raise InvalidInput("a line must be a JSON object")
    for key in _REQUIRED:
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise InvalidInput(f"{key!r} is required and must be a non-empty string")
    for key in ("description", "category", "brand", "size", "material", "colour", "currency"):
        if key in data and not isinstance(data[key], str):
            raise InvalidInput(f"{key!r} must be a string")
    price = check_price(data.get("price", 0.0))
    images = data.get("images", [])
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise InvalidInput("'images' must be a list of paths or file:// URIs")
    inventory = data.get("inventory", [])
    if not isinstance(inventory, list):
        raise InvalidInput("'inventory' must be a list")
    levels: list[StockLevel] = []
    for entry in inventory:
        if not isinstance(entry, dict) or not isinstance(entry.get("warehouse"), str):
            raise InvalidInput("each inventory entry needs a 'warehouse' string")
        quantity, reorder = entry.get("quantity", 0), entry.get("reorder_point", 0)
        if not isinstance(quantity, int) or not isinstance(reorder, int) or quantity < 0 \
                or reorder < 0:
            raise InvalidInput("inventory 'quantity' and 'reorder_point' must be integers >= 0")
        levels.append(StockLevel(entry["warehouse"], str(entry.get("bin", "")), quantity, reorder))
    extra = {k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
             for k, v in data.items() if k not in KNOWN_KEYS}
    return ProductInput(
        sku=check_sku(data["sku"]),
        merchant=data["merchant"].strip(),
        title=data["title"].strip(),
        description=data.get("description", ""),
        category=data.get("category", ""),
        brand=data.get("brand", ""),
        size=data.get("size", ""),
        material=data.get("material", ""),
        colour=data.get("colour", ""),
        price=price,
        currency=data.get("currency", "EUR") or "EUR",
        images=list(images),  # confined by ingest_file, relative to base_dir
        inventory=levels,
        attributes=extra,
    )


def read_catalog(path: Path) -> Iterator[tuple[int, ProductInput | BadLine]]:
    """(line number, product or bad line) for every non-blank line."""
    with path.open(encoding="utf-8") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                yield number, parse_line(text, path.parent)
            except InvalidInput as exc:
                yield number, BadLine(number, str(exc))


@dataclass
class IngestReport:
    lines: int = 0
    changed: int = 0
    unchanged: int = 0
    bad: list[BadLine] = field(default_factory=list)
    catalog_version: int = 0


def ingest_file(
    path: Path,
    catalog: ProductCatalog,
    chunk: int = 200,
    progress: Callable[[int], object] | None = None,
    roots: Sequence[Path] = (),
    max_image_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> IngestReport:
    """Write a catalog file into SQL (+ outbox) in chunks of one transaction each. A chunk that
    fails validation is retried line by line so that only the bad lines are skipped.

    Image paths may point into the file's own folder and `roots` (settings.images.roots)."""
    report = IngestReport()
    base = path.parent.absolute()
    paths = ImagePathPolicy([base, *roots], max_image_bytes)
    pending: list[tuple[int, ProductInput]] = []

    def flush() -> None:
        if not pending:
            return
        try:
            _record(report, catalog.upsert_products([p for _, p in pending]))
        except InvalidInput:
            for number, product in pending:
                try:
                    _record(report, catalog.upsert_products([product]))
                except InvalidInput as exc:
                    report.bad.append(BadLine(number, str(exc)))
        if progress:
            progress(len(pending))
        pending.clear()

    seen: dict[tuple[str, str], int] = {}
    for number, parsed in read_catalog(path):
        report.lines += 1
        if isinstance(parsed, BadLine):
            report.bad.append(parsed)
            if progress:
                progress(1)
            continue
        refused = _confine(parsed, paths, base)
        key = (fold_name(parsed.merchant), parsed.sku)
        if refused is not None:
            report.bad.append(BadLine(number, f"image {refused}: not an allowed, readable "
                                              "image file"))
        elif key in seen:
            report.bad.append(
                BadLine(number, f"duplicate sku {parsed.sku!r} (first on line {seen[key]})")
            )
        else:
            seen[key] = number
            pending.append((number, parsed))
        if len(pending) >= chunk:
            flush()
    flush()
    report.bad.sort(key=lambda b: b.line)
    report.catalog_version = catalog.catalog_version()
    return report


def _confine(item: ProductInput, paths: ImagePathPolicy, base: Path) -> int | None:
    """Replace the item's image paths by their confined, resolved form; the index of the
    first refused one, if any (missing and forbidden read the same)."""
    confined = []
    for n, uri in enumerate(item.images):
        try:
            confined.append(paths.confine(uri, base=base))
        except ImagePathRefused:
            return n
    item.images = confined
    return None


def _record(report: IngestReport, outcomes: list[UpsertOutcome]) -> None:
    for outcome in outcomes:
        if outcome.changed:
            report.changed += 1
        else:
            report.unchanged += 1
