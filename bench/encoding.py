"""Encoding throughput: eager PyTorch (baseline) vs the optimised CPU path (ONNX Runtime),
batch 1 and batch 32, images and texts; plus a GPU section when CUDA is available
(fp16 throughput and batch-1 p99 latency through the dynamic batcher at concurrency 1/8/32).

    .venv/bin/python -m bench.encoding [--seconds 3] [--gpu-only]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from bench._common import machine, pct, table, throughput

CLIPART = Path("/usr/share/openclipart/png")


def sample_images(n: int = 32) -> list[Image.Image]:
    out: list[Image.Image] = []
    if CLIPART.is_dir():
        for path in sorted(CLIPART.rglob("*.png"))[:n]:
            with Image.open(path) as img:
                img.thumbnail((640, 640))
                out.append(img.convert("RGB"))
    rng = np.random.default_rng(0)
    while len(out) < n:
        img = Image.new("RGB", (640, 480), "white")
        x, y = (int(v) for v in rng.integers(0, 400, 2))
        ImageDraw.Draw(img).ellipse((x, y, x + 200, y + 150), fill=(200, 40, 40))
        out.append(img)
    return out


TEXTS = [f"{c} cotton t-shirt, size {s}, short sleeves, round neck"
         for c in ("red", "blue", "green", "black") for s in ("XS", "S", "M", "L", "XL", "XXL",
                                                                "3XL", "4XL")]


def cpu_section(seconds: float) -> None:
    from encoders.image import EfficientNetLite0Encoder
    from encoders.optimized import OnnxEfficientNetLite0Encoder, OnnxMiniLMTextEncoder
    from encoders.text import MiniLMTextEncoder, MultilingualTextEncoder

    images = sample_images(32)
    rows: list[list[object]] = []
    pairs = [
        ("images", "EfficientNet-Lite0", EfficientNetLite0Encoder(device="cpu"),
         OnnxEfficientNetLite0Encoder(), images),
        ("texts", "MiniLM-L6 (en)", MiniLMTextEncoder(device="cpu"),
         OnnxMiniLMTextEncoder(), TEXTS),
    ]
    for kind, name, eager, fast, inputs in pairs:
        eager.load()
        fast.load()
        for bs in (1, 32):
            batch = inputs[:bs]
            base = throughput(lambda e=eager, b=batch: len(e.encode(b)), seconds)
            opt = throughput(lambda f=fast, b=batch: len(f.encode(b)), seconds)
            rows.append([f"{kind}/s", name, bs, base, opt, f"{opt / base:.1f}x"])
    use = MultilingualTextEncoder(device="cpu")
    use.load()
    for bs in (1, 32):
        t = throughput(lambda b=TEXTS[:bs]: len(use.encode(b)), seconds)
        rows.append(["texts/s", "USE-m3 (zh+en, numpy; no torch path)", bs, t, t, "1.0x"])
    print(table(["metric", "model", "batch", "eager PyTorch", "ONNX Runtime", "ratio"], rows))


def gpu_section(seconds: float, concurrency: tuple[int, ...] = (1, 8, 32)) -> None:
    """fp16 EfficientNet-Lite0 on CUDA: raw batch throughput, then single-image requests from
    N concurrent callers through the dynamic batcher (throughput and per-request p99)."""
    from encoders.model import ProductEncoder
    from encoders.worker import EncoderWorker

    model = ProductEncoder(text_model="minilm", device="cuda")
    model.load()
    images = [model.prepare_image(img) for img in sample_images(64)]
    rows: list[list[object]] = []
    for bs in (1, 32, 64):
        def run(bs: int = bs) -> int:
            model.image.encode(images[:bs])
            torch.cuda.synchronize()
            return bs
        rows.append(["direct batch", bs, throughput(run, seconds), "-", "-"])

    for conc in concurrency:
        worker = EncoderWorker(model, max_batch_size=64, max_wait_ms=2.0, max_queue=4096)
        worker.start()
        lat: list[float] = []

        async def client(i: int, stop: float, worker: EncoderWorker = worker,
                         lat: list[float] = lat) -> int:
            n = 0
            while time.perf_counter() < stop:
                t = time.perf_counter()
                await worker.batcher.submit((images[(i + n) % len(images)], None))
                lat.append(time.perf_counter() - t)
                n += 1
            return n

        async def drive(conc: int = conc, lat: list[float] = lat) -> float:
            await asyncio.gather(*(client(i, time.perf_counter() + 1.0) for i in range(conc)))
            lat.clear()
            start = time.perf_counter()
            done = await asyncio.gather(*(client(i, start + seconds) for i in range(conc)))
            return sum(done) / (time.perf_counter() - start)

        rate = asyncio.run(drive())
        asyncio.run(worker.stop())
        rows.append([f"batcher, concurrency {conc}", 1, rate, pct(lat, 50), pct(lat, 99)])
    print(table(["mode", "request batch", "images/s", "p50 ms", "p99 ms"], rows))
    print("targets: >= 3,000 images/s; batch-1 p99 <= 10 ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    ap.add_argument("--gpu-only", action="store_true")
    args = ap.parse_args()
    print(f"# encoding\n{machine()}, torch threads {torch.get_num_threads()}\n")
    if not args.gpu_only:
        cpu_section(args.seconds)
    if torch.cuda.is_available():
        print("\n## GPU (fp16, channels_last)\n")
        gpu_section(args.seconds)
    elif args.gpu_only:
        raise SystemExit("no CUDA device")


if __name__ == "__main__":
    main()
