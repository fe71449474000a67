"""UpsertProducts memory over gRPC on 127.0.0.1: the server's peak RSS growth while one call
streams S MB of images, for a small stream (the baseline) and a large one, each in a fresh
process. Uploads go to temporary files as they arrive, so the growth should not follow the
stream size: the ratio large/small should stay near 1, far below the size ratio.

    .venv/bin/python -m bench.upsert_memory [--small-mb 15] [--large-mb 240]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from bench._common import machine, table


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class _NoEncoder:
    """The indexer is off: nothing is encoded, only the collection's shape is needed."""

    model_version = "bench-memory"
    dims: ClassVar[dict[str, int]] = {"image": 8, "text": 8}

    def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def encode(self, image: object, text: object) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def encode_many(self, images: Sequence[object], texts: Sequence[object]
                    ) -> list[dict[str, np.ndarray]]:
        raise NotImplementedError


def _child(megabytes: float) -> None:
    import grpc

    from backend.app import build_app
    from backend.config import load_settings
    from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
    from backend.transport.grpc.generated.product_search.v1 import (
        product_search_pb2_grpc as rpc,
    )
    from backend.transport.grpc.server import BackgroundServer

    pixels = np.random.default_rng(1).integers(0, 256, (700, 700, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG", compress_level=1)
    image = buf.getvalue()
    count = max(1, round(megabytes * 1e6 / len(image)))
    with tempfile.TemporaryDirectory(prefix="bench-upsert-mem-") as tmp:
        settings = load_settings(data_dir=Path(tmp), grpc_port=0, indexer_enabled=False,
                                 auth={"enabled": False})
        app = build_app(settings, encoder=_NoEncoder())  # type: ignore[arg-type]
        server = BackgroundServer(app)
        addr = server.start()
        channel = grpc.insecure_channel(addr)

        def messages() -> Iterator[pb.Product]:
            for n in range(count):
                yield pb.Product(sku=f"M-{n}", merchant="bench", title=f"item {n}",
                                 images=[pb.ProductImage(content=image)])

        before = _status_kb("VmRSS")
        start = time.perf_counter()
        reply = rpc.CatalogStub(channel).UpsertProducts(messages(), timeout=900)
        seconds = time.perf_counter() - start
        peak = _status_kb("VmHWM")
        channel.close()
        server.stop()
        app.close()
    print(json.dumps({"streamed_mb": count * len(image) / 1e6, "upserted": reply.upserted,
                      "growth_mb": (peak - before) / 1024, "seconds": seconds}))


def _run(megabytes: float) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "bench.upsert_memory", "--child",
                          str(megabytes)], check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small-mb", type=float, default=15)
    ap.add_argument("--large-mb", type=float, default=240)
    ap.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        _child(args.child)
        return
    print(f"# UpsertProducts peak RSS growth, one call, images streamed over gRPC\n{machine()}\n")
    small = _run(args.small_mb)
    print(f"baseline: {small['streamed_mb']:.0f} MB streamed", flush=True)
    large = _run(args.large_mb)
    rows = [[f"{r['streamed_mb']:.0f}", f"{r['upserted']:.0f}", f"{r['growth_mb']:.0f}",
             f"{r['seconds']:.1f}"] for r in (small, large)]
    print(table(["streamed MB", "products", "peak RSS growth MB", "seconds"], rows))
    print(f"\nstream size ratio {large['streamed_mb'] / small['streamed_mb']:.1f}x, "
          f"RSS growth ratio {large['growth_mb'] / max(small['growth_mb'], 1.0):.2f}x")


if __name__ == "__main__":
    main()
