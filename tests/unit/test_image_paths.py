"""Server-side image paths: only allow-listed folders, opened safely (no symlink swapped in,
no FIFO, device or directory, size-capped), one answer for "missing" and "forbidden"; the
same rules for `prodsearch ingest` (the catalog file's folder), and an indexer that cannot
hang in open()."""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from PIL import Image

from backend.domain.catalog import CatalogService, ImageBlobStore
from backend.domain.ingest import ingest_file
from backend.domain.types import ProductInput
from backend.errors import InvalidInput
from backend.security.paths import ImagePathPolicy, ImagePathRefused
from backend.stores.catalog import migrate
from backend.stores.catalog.db import make_engine
from backend.stores.catalog.repository import CatalogRepository
from encoders.preprocess import ImageDecodeError, load_image_file


def write_png(path: Path, colour: tuple[int, int, int] = (10, 120, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return path


def finishes(fn: Callable[[], object], within_s: float = 5.0) -> BaseException | object:
    """Run fn in a thread; fail the test if it blocks (a FIFO open would block forever)."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within_s)
    assert not thread.is_alive(), "blocked"
    return out[0]


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "catalog-images"
    outside = tmp_path / "private"
    paths = {
        "root": root,
        "good": write_png(root / "shoes" / "a b%.png"),
        "secret": write_png(outside / "secret.png"),
        "big": root / "big.png",
        "fifo": root / "pipe.png",
        "link_out": root / "link-out.png",
        "link_in": root / "link-in.png",
        "dir": root / "folder.png",
    }
    paths["big"].write_bytes(b"\x89PNG" + b"\0" * 5000)
    os.mkfifo(paths["fifo"])
    os.symlink(paths["secret"], paths["link_out"])
    os.symlink(paths["good"], paths["link_in"])
    paths["dir"].mkdir()
    return paths


@pytest.fixture
def policy(layout: dict[str, Path]) -> ImagePathPolicy:
    return ImagePathPolicy([layout["root"]], max_bytes=4096)


def test_paths_inside_the_roots_are_accepted_in_every_spelling(
        policy: ImagePathPolicy, layout: dict[str, Path]) -> None:
    good = str(layout["good"])
    for spelling in (good, "file://" + quote(good), "file://localhost" + quote(good),
                     "FILE://localhost" + good.replace(" ", "%20").replace("%.", "%25."),
                     str(layout["link_in"])):
        assert policy.confine(spelling) == good, spelling
    assert policy.confine("shoes/a b%.png", base=layout["root"]) == good


@pytest.mark.parametrize("name", [
    "/etc/passwd", "/etc/shadow", "/proc/self/environ", "/dev/zero",
    "secret", "link_out", "fifo", "big", "dir", "missing", "escape", "relative", "remote",
    "http",
])
def test_everything_else_gets_one_answer_and_never_blocks(
        policy: ImagePathPolicy, layout: dict[str, Path], name: str) -> None:
    root = layout["root"]
    uri = {
        "secret": str(layout["secret"]),
        "link_out": str(layout["link_out"]),
        "fifo": str(layout["fifo"]),
        "big": str(layout["big"]),
        "dir": str(layout["dir"]),
        "missing": str(root / "nope.png"),
        "escape": str(root / ".." / "private" / "secret.png"),
        "relative": "shoes/a b%.png",  # no base folder for an API call
        "remote": "file://example.com" + str(layout["good"]),
        "http": "http://127.0.0.1/a.png",
    }.get(name, name)
    result = finishes(lambda: policy.confine(uri))
    assert isinstance(result, ImagePathRefused)
    assert str(result) == ""  # nothing that tells missing from forbidden


def test_a_catalog_write_answers_missing_and_forbidden_alike(
        tmp_path: Path, layout: dict[str, Path]) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        catalog = CatalogRepository(engine)
        service = CatalogService(
            catalog, None, "products", ImageBlobStore(tmp_path / "uploads"),  # type: ignore[arg-type]
            max_image_bytes=1 << 20, max_image_pixels=1_000_000,
            image_paths=ImagePathPolicy([layout["root"]], 4096))

        def message(uri: str) -> str:
            with pytest.raises(InvalidInput) as info:
                service.upsert([ProductInput(sku="P-1", merchant="m", title="t", images=[uri])])
            return str(info.value)

        answers = {message(u) for u in (
            "/etc/shadow", str(layout["root"] / "nope.png"), str(layout["link_out"]),
            str(layout["fifo"]), "../../../../etc/passwd", "file:///etc/passwd")}
        assert len(answers) == 1 and "/etc" not in answers.pop()
        [outcome] = service.upsert([ProductInput(
            sku="P-1", merchant="m", title="t",
            images=["file://localhost" + quote(str(layout["link_in"]))])])
        # Stored resolved: the indexer opens exactly the file that was checked.
        stored = catalog.get_product(outcome.product_id).images[0].uri
        assert stored == str(layout["good"])
        assert catalog.catalog_version() == 1
    finally:
        engine.dispose()


def test_the_loader_never_hangs_on_a_fifo_and_caps_the_size(
        layout: dict[str, Path], tmp_path: Path) -> None:
    assert isinstance(finishes(lambda: load_image_file(str(layout["fifo"]))), OSError)
    # A checked path whose file is later swapped for a FIFO, through a symlink or not.
    swapped = write_png(tmp_path / "swap.png")
    swapped.unlink()
    os.mkfifo(swapped)
    assert isinstance(finishes(lambda: load_image_file(str(swapped))), OSError)
    assert isinstance(finishes(lambda: load_image_file(str(layout["dir"]))), OSError)
    assert isinstance(finishes(lambda: load_image_file("/dev/zero")), OSError)
    too_big = finishes(lambda: load_image_file(str(layout["good"]), max_bytes=10))
    assert isinstance(too_big, ImageDecodeError)
    assert load_image_file(str(layout["link_in"])).size == (16, 16)


# ---------------------------------------------------------------------------------- ingest


def _line(sku: str, *images: str) -> str:
    return json.dumps({"sku": sku, "merchant": "m", "title": f"t {sku}", "images": list(images)})


def test_ingest_reads_images_only_from_the_catalog_folder(
        tmp_path: Path, sqlite_catalog: CatalogRepository) -> None:
    folder = tmp_path / "drop"
    inside = write_png(folder / "img" / "ok.png")
    outside = write_png(tmp_path / "elsewhere" / "x.png")
    os.symlink(outside, folder / "img" / "sneaky.png")
    os.mkfifo(folder / "img" / "pipe.png")
    lines = [
        _line("I-1", "img/ok.png"),
        _line("I-2", "../elsewhere/x.png"),
        _line("I-3", str(outside)),
        _line("I-4", "img/sneaky.png"),
        _line("I-5", "/etc/passwd"),
        _line("I-6", "file://localhost" + quote(str(inside))),
        _line("I-7", "img/pipe.png"),
        _line("I-8", "img/missing.png"),
    ]
    catalog = folder / "catalog.jsonl"
    catalog.write_text("\n".join(lines) + "\n")
    report: Any = finishes(lambda: ingest_file(catalog, sqlite_catalog), within_s=30)
    assert [b.line for b in report.bad] == [2, 3, 4, 5, 7, 8]
    assert len({b.reason for b in report.bad}) == 1  # missing and forbidden read the same
    assert report.changed == 2
    for sku in ("I-1", "I-6"):
        found = sqlite_catalog.find_by_sku("m", sku)
        assert found is not None and found.images[0].uri == str(inside)
    # An operator can allow another folder explicitly.
    again = ingest_file(catalog, sqlite_catalog, roots=[tmp_path / "elsewhere"])
    assert [b.line for b in again.bad] == [5, 7, 8]
