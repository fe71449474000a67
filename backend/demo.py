"""`prodsearch demo`: build a catalog from real images, ingest and index it, serve it on
127.0.0.1, and print example searches. A second run reuses what is already indexed."""

from __future__ import annotations

import random
import signal
import threading
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from backend.app import App, build_app
from backend.config import Settings
from backend.demo_catalog import build_catalog, ensure_openclipart, pick_images, write_catalog
from backend.domain.ingest import ingest_file
from backend.transport.grpc import client
from backend.transport.grpc.server import BackgroundServer
from encoders.photo_conditions import EASY, SHELF, photo_jpeg, render_photo, render_shelf

DEMO_CALIBRATION_ITEMS = 30  # 240 labelled listings: about 2 CPU-minutes


def photo_of(image_path: Path, seed: int = 3) -> bytes:
    """A phone-photo-like JPEG of a catalog image: the item fills most of the frame, slightly
    rotated and off-centre on a tinted, lightly textured surface (the EASY rendering)."""
    with Image.open(image_path) as item:
        photo, _ = render_photo(item, random.Random(seed), EASY)
    return photo_jpeg(photo)


def shelf_photo_of(image_path: Path, seed: int = 3) -> tuple[bytes, tuple[int, int, int, int]]:
    """A JPEG of a catalog item photographed on a shelf: small and off-centre, in
    perspective, on a textured surface under coloured light, blurred and compressed (the
    SHELF rendering); and the item's true box in it."""
    with Image.open(image_path) as item:
        photo, box = render_photo(item, random.Random(seed), SHELF)
    return photo_jpeg(photo), box


def prepare(settings: Settings, products: int) -> tuple[App, list[dict[str, object]]]:
    root = ensure_openclipart()
    catalog_path = settings.data_dir / "demo" / "catalog.jsonl"
    print(f"building a catalog of {products} products from {root} ...")
    catalog = build_catalog(pick_images(root, products), root)
    write_catalog(catalog, catalog_path)
    # A collection of another model version is rebuilt here (progress bar), even on a server.
    app = build_app(settings, auto_reindex=True)
    with tqdm(total=len(catalog), desc="catalog", unit="product") as bar:
        # The demo's images live in the openclipart package's folder, not beside the file.
        report = ingest_file(catalog_path, app.catalog, progress=bar.update, roots=[root])
    print(f"catalog: {report.changed} new or changed, {report.unchanged} unchanged, "
          f"{len(report.bad)} skipped")
    pending = app.catalog.pending_count()
    if pending:
        app.encoder.start()
        with tqdm(total=pending, desc="index", unit="product") as bar:
            stats = app.indexer.drain(settings.indexer_batch, progress=bar.update)
        app.vectors.build_index(app.vectors.resolve(settings.collection))
        print(f"indexed {stats.upserted_products} products")
    else:
        print("index already up to date: nothing to encode")
    status = app.calibrator.status()
    if status.stale:
        app.encoder.start()
        print(f"calibrating product matching on labelled listings made from the catalog "
              f"({status.reason}) ...")
        with tqdm(desc="match listings", unit="listing") as bar:
            calibration = app.calibrator.calibrate(DEMO_CALIBRATION_ITEMS,
                                                   progress=bar.update)
        easy, hard = calibration.f1("SAME", "easy"), calibration.f1("SAME", "hard")
        print(f"match calibration saved; held-out SAME F1 {easy:.2f} (easy photos), "
              f"{hard:.2f} (hard photos)")
    return app, catalog


def example_searches(addr: str, catalog: list[dict[str, object]], data_dir: Path) -> bool:
    """Print example searches; True when the photographed item came back first."""
    # A product-like item (an animal figure, a food item, a container...), not a pattern or flag.
    item = next((p for p in catalog
                 if str(p["category"]).split("/")[0] in ("food", "containers", "tools", "animals")),
                catalog[0])
    image_path = Path(str(item["images"][0]))  # type: ignore[index]
    photo = data_dir / "demo" / "query_photo.jpg"
    jpeg, true_box = shelf_photo_of(image_path)
    photo.write_bytes(jpeg)

    print(f"\n1) photo search: a shelf photo of {item['sku']} '{item['title']}' ({photo}; "
          f"the item is at {list(true_box)})")
    found = client.search(addr, client.build_search_request(image=photo, top_k=5))
    print(client.search_table(found))
    first_ok = bool(found.hits) and found.hits[0].product.sku == item["sku"]
    print("   -> the photographed item is first, verified by its local features, boxed where "
          "it was found" if first_ok else "   -> the photographed item is NOT first")

    searches = [
        ("2) text search 'red' in category food, in stock",
         client.build_search_request(text="something red to eat", category="food",
                                     in_stock=True, top_k=5)),
        ("3) Chinese text search '小狗' (puppy) in category animals",
         client.build_search_request(text="小狗", category="animals", top_k=5)),
        ("4) text 'a tool for the workshop', material=metal, price 10-120",
         client.build_search_request(text="a tool for the workshop", where={"material": "metal"},
                                     min_price=10, max_price=120, top_k=5)),
    ]
    for title, request in searches:
        print(f"\n{title}")
        print(client.search_table(client.search(addr, request)))

    other_size = "XL" if item["size"] != "XL" else "S"
    print(f"\n5) match: a merchant lists '{item['title']}' in size {other_size} with a photo")
    print(client.match_table(client.match(
        addr, [photo], title=str(item["title"]), size=other_size,
        material=str(item["material"]), colour=str(item["colour"]))))

    rng = random.Random(5)
    entries = rng.sample(catalog, 3)
    shelf, _ = render_shelf([Image.open(str(e["images"][0])) for e in entries],  # type: ignore[index]
                            rng, style=EASY)
    shelf_path = data_dir / "demo" / "shelf_photo.jpg"
    shelf_path.write_bytes(photo_jpeg(shelf))
    print(f"\n6) restock: a shelf photo of {', '.join(str(e['sku']) for e in entries)} "
          f"in warehouse berlin ({shelf_path}); every product verified on it, with its box")
    print(client.restock_table(client.restock(addr, shelf_path, "berlin", top_k=6)))
    return first_ok


def run_demo(settings: Settings, products: int = 800, serve: bool = True) -> int:
    app, catalog = prepare(settings, products)
    server = BackgroundServer(app, settings.grpc_host, settings.grpc_port)
    try:
        addr = server.start()
        example_searches(addr, catalog, settings.data_dir)
        if serve:
            print(f"\nserving on {addr} (Ctrl-C to stop). Try:\n"
                  f"  prodsearch search --text 'cat' --category animals --addr {addr}\n"
                  f"  prodsearch search --image {settings.data_dir}/demo/query_photo.jpg "
                  f"--addr {addr} --json")
            _wait_for_signal()
    finally:
        server.stop(grace=1.0)
        app.close()
    return 0


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
