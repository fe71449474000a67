"""Image encoding from encoded bytes: today's path (PIL decode + letterbox on the CPU, then
the network) beside the bytes pipeline (encoders/bytes_pipeline.py: batched decode and
resize on the device, decode of batch n+1 overlapped with inference of batch n).

On the CPU it reports the preprocessing alone, images/s on one thread, for catalog-size
JPEG/PNG and phone-size JPEGs: the CPU-side ceiling that bounds a GPU fed by the PIL path.
With CUDA it also measures end to end from JPEG bytes (images/s through `encode_stream`)
and batch-1 latency p50/p99, with today's PIL-fed throughput beside it.

    .venv/bin/python -m bench.gpu_ingest [--seconds 3] [--batch 256]
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image

from bench._common import machine, pct, table, throughput
from bench.encoding import sample_images


def _blobs(images: list[Image.Image], fmt: str, side: int | None = None) -> list[bytes]:
    out = []
    for img in images:
        if side is not None:
            scale = side / max(img.size)
            img = img.resize((round(img.width * scale), round(img.height * scale)),
                             Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        out.append(buf.getvalue())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    from encoders.bytes_pipeline import BytesImageEncoder, decode_batch, letterbox_batch
    from encoders.image import EfficientNetLite0Encoder
    from encoders.preprocess import decode_image, image_tensor

    torch.set_num_threads(1)
    print(f"# image encoding from bytes\n{machine()}\n")
    images = sample_images(32)
    sets = {
        "catalog PNG (<= 640 px)": _blobs(images, "PNG"),
        "catalog JPEG (<= 640 px)": _blobs(images, "JPEG"),
        "phone JPEG (4000 px)": _blobs(images[:8], "JPEG", side=4000),
    }
    cpu = torch.device("cpu")
    rows: list[list[object]] = []
    for name, blobs in sets.items():
        def pil(blobs: list[bytes] = blobs) -> int:
            image_tensor([decode_image(b) for b in blobs])
            return len(blobs)

        def tensors(blobs: list[bytes] = blobs) -> int:
            letterbox_batch(decode_batch(blobs, cpu))
            return len(blobs)

        before = throughput(pil, args.seconds)
        after = throughput(tensors, args.seconds)
        rows.append([name, before, after, f"{after / before:.2f}x"])
    print("## CPU preprocessing, one thread (decode + letterbox + normalise)\n")
    print(table(["images", "PIL images/s (today)", "torchvision + torch images/s", "ratio"],
                rows))
    if not torch.cuda.is_available():
        print("\nno CUDA device: GPU figures not measured (run bash bench/gpu_check.sh there)")
        return

    print(f"\n## GPU end to end from bytes ({torch.cuda.get_device_name(0)})\n")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cnn = EfficientNetLite0Encoder(device="cuda")
    cnn.load()
    fast = BytesImageEncoder(cnn)
    jpegs = sets["catalog JPEG (<= 640 px)"]
    batch = [jpegs[i % len(jpegs)] for i in range(args.batch)]
    gpu_rows: list[list[object]] = []

    def today(n_batches: int = 8) -> int:
        for _ in range(n_batches):
            cnn.encode([decode_image(b) for b in batch])
        torch.cuda.synchronize()
        return n_batches * len(batch)

    def stream(n_batches: int = 32) -> int:
        for _ in fast.encode_stream([batch] * n_batches):
            pass
        torch.cuda.synchronize()
        return n_batches * len(batch)

    gpu_rows.append(["PIL decode on 1 CPU thread -> GPU (today)", args.batch,
                     throughput(today, args.seconds), "-", "-"])
    gpu_rows.append(["bytes pipeline, nvJPEG + GPU resize, overlapped", args.batch,
                     throughput(stream, args.seconds), "-", "-"])
    lat = []
    for i in range(300):
        start = time.perf_counter()
        fast.encode([jpegs[i % len(jpegs)]])
        torch.cuda.synchronize()
        lat.append(time.perf_counter() - start)
    gpu_rows.append(["bytes pipeline, batch 1", 1, 1.0 / float(np.median(lat)), pct(lat[20:], 50),
                     pct(lat[20:], 99)])
    print(table(["path", "batch", "images/s", "p50 ms", "p99 ms"], gpu_rows))
    print("targets: >= 3,000 images/s end to end from JPEG bytes; batch-1 p99 <= 10 ms")


if __name__ == "__main__":
    main()
