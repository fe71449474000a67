"""Image vectors straight from encoded bytes, for bulk ingest on a GPU.

The PIL path decodes and resizes on the CPU: 66-125 images/s per core (issue #15), so a GPU
that encodes thousands of images a second waits for tens of cores. Here JPEGs are decoded
on the GPU in batches (`torchvision.io.decode_jpeg(..., device="cuda")`, nvJPEG), other
formats on the CPU by torchvision; the letterbox resize (white padding, as
`preprocess.letterbox`) and normalisation run on the device as tensor ops; the bytes sit in
pinned host memory so the copies are asynchronous; and `encode_stream` decodes batch n+1
on a side CUDA stream in a second thread while the model runs batch n.

Without CUDA the same functions run on the CPU (torchvision decode, torch resize): that is
the fallback the unit tests check against the PIL path (cosine >= 0.99), and what the CPU
figures in bench/RESULTS.md measure.
"""

from __future__ import annotations

import contextlib
import io
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from encoders.image import EfficientNetLite0Encoder
from encoders.preprocess import EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD

__all__ = ["BytesImageEncoder", "apply_orientation", "decode_batch", "exif_orientation",
           "letterbox_batch"]

_JPEG_MAGIC = b"\xff\xd8\xff"
_ORIENTATION = 0x0112


def _byte_tensor(blob: bytes, pin: bool) -> torch.Tensor:
    t = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    return t.pin_memory() if pin else t


def decode_batch(blobs: Sequence[bytes], device: torch.device) -> list[torch.Tensor]:
    """Encoded images -> (3, H, W) uint8 RGB tensors on `device`, EXIF orientation applied.
    JPEGs decode in one batched call (on the GPU when `device` is CUDA); PNG, WebP and GIF
    decode on the CPU and are copied over. Raises ValueError naming the first bad item."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    cuda = device.type == "cuda"
    out: list[torch.Tensor | None] = [None] * len(blobs)
    jpegs = [i for i, b in enumerate(blobs) if b[:3] == _JPEG_MAGIC]
    if jpegs:
        data = [_byte_tensor(blobs[i], pin=cuda) for i in jpegs]
        try:
            # On CUDA torchvision ignores apply_exif_orientation: applied below instead.
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device,
                                  apply_exif_orientation=True)
        except RuntimeError:
            # One bad JPEG fails the batch: decode one by one to name it.
            decoded = []
            for i, d in zip(jpegs, data, strict=True):
                try:
                    decoded.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device,
                                               apply_exif_orientation=True))
                except RuntimeError as exc:
                    raise ValueError(f"image {i}: not a decodable JPEG ({exc})") from exc
        for i, img in zip(jpegs, decoded, strict=True):
            out[i] = apply_orientation(img, exif_orientation(blobs[i])) if cuda else img
    for i, blob in enumerate(blobs):
        if out[i] is not None:
            continue
        try:
            img = decode_image(_byte_tensor(blob, pin=False), mode=ImageReadMode.RGB,
                               apply_exif_orientation=True)
        except RuntimeError as exc:
            raise ValueError(f"image {i}: not a decodable image ({exc})") from exc
        out[i] = img.pin_memory().to(device, non_blocking=True) if cuda else img
    return [t for t in out if t is not None]


def exif_orientation(blob: bytes) -> int:
    """The EXIF orientation tag (1-8; 1 when absent or unreadable), from the headers only."""
    try:
        with Image.open(io.BytesIO(blob)) as img:
            value = img.getexif().get(_ORIENTATION, 1)
    except Exception:  # a broken header only loses the rotation
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def apply_orientation(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """(3, H, W) as displayed for an EXIF orientation, as PIL's `exif_transpose` does."""
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-1).flip(-2)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(1, 2)
    if orientation == 6:
        return torch.rot90(img, -1, dims=(1, 2))
    if orientation == 7:
        return img.transpose(1, 2).flip(-1).flip(-2)
    if orientation == 8:
        return torch.rot90(img, 1, dims=(1, 2))
    return img


def letterbox_batch(images: Sequence[torch.Tensor], size: int = 224) -> torch.Tensor:
    """(3, H, W) uint8 images -> (N, 3, size, size) float32, each fitted inside the square
    (bicubic, antialiased when shrinking) and centred on white, then normalised as the
    network expects: the tensor version of `preprocess.image_tensor`."""
    if not images:
        return torch.empty((0, 3, size, size), dtype=torch.float32)
    device = images[0].device
    canvas = torch.full((len(images), 3, size, size), 255.0, device=device)
    for n, img in enumerate(images):
        _, h, w = img.shape
        scale = size / max(h, w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        x = img.unsqueeze(0).float()
        if (new_h, new_w) != (h, w):
            x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False,
                              antialias=scale < 1).clamp_(0, 255).round_()
        top, left = (size - new_h) // 2, (size - new_w) // 2
        canvas[n, :, top:top + new_h, left:left + new_w] = x[0]
    mean = torch.tensor(EFFICIENTNET_LITE_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(EFFICIENTNET_LITE_STD, device=device).view(1, 3, 1, 1)
    return (canvas - mean) / std


class BytesImageEncoder:
    """EfficientNet-Lite0 vectors from encoded images, decode and resize on the encoder's
    device (see the module docstring)."""

    def __init__(self, encoder: EfficientNetLite0Encoder) -> None:
        self.encoder = encoder

    def _prepared(self, blobs: Sequence[bytes]) -> torch.Tensor:
        self.encoder.load()
        return letterbox_batch(decode_batch(blobs, self.encoder.device),
                               self.encoder.input_size)

    def encode(self, blobs: Sequence[bytes]) -> np.ndarray:
        """(N, 1280) float32 L2-normalised vectors of one batch."""
        x = self._prepared(blobs)
        return self.encoder._infer(self.encoder._pooled, x)

    def encode_stream(self, batches: Iterable[Sequence[bytes]], depth: int = 2
                      ) -> Iterator[np.ndarray]:
        """Vectors per batch, in order. A second thread decodes and resizes the next
        batches (at most `depth` ahead; on CUDA on its own stream) while the model runs
        the current one."""
        self.encoder.load()
        device = self.encoder.device
        ready: queue.Queue[tuple[torch.Tensor, torch.cuda.Event | None] | BaseException | None]
        ready = queue.Queue(maxsize=depth)
        stop = threading.Event()

        def produce() -> None:
            stream = torch.cuda.Stream(device) if device.type == "cuda" else None
            try:
                for blobs in batches:
                    if stop.is_set():
                        return
                    if stream is None:
                        ready.put((self._prepared(blobs), None))
                        continue
                    with torch.cuda.stream(stream):
                        x = self._prepared(blobs)
                        done = torch.cuda.Event()
                        done.record(stream)
                    ready.put((x, done))
                ready.put(None)
            except BaseException as exc:  # handed to the consumer, raised there
                ready.put(exc)

        thread = threading.Thread(target=produce, name="bytes-decode", daemon=True)
        thread.start()
        try:
            while True:
                item = ready.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                x, done = item
                if done is not None:
                    torch.cuda.current_stream(device).wait_event(done)
                    # The tensor was made on the side stream: keep its memory alive until
                    # the main stream has used it.
                    x.record_stream(torch.cuda.current_stream(device))
                yield self.encoder._infer(self.encoder._pooled, x)
        finally:
            stop.set()
            while thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    ready.get(timeout=0.1)
            thread.join()
