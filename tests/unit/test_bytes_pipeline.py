"""Encoding from bytes (the GPU ingest path) on its CPU fallback: the same vectors as the PIL
path (decode, letterbox onto white, normalise) to cosine >= 0.99 for JPEG and PNG, EXIF
orientation applied, the pipelined stream in order, a bad image named."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from encoders.bytes_pipeline import (
    BytesImageEncoder,
    apply_orientation,
    decode_batch,
    exif_orientation,
    letterbox_batch,
)
from encoders.image import EfficientNetLite0Encoder
from encoders.preprocess import decode_image, image_tensor

CLIPART = Path("/usr/share/openclipart/png")


def _images() -> list[Image.Image]:
    out: list[Image.Image] = []
    if CLIPART.is_dir():
        for path in sorted(CLIPART.rglob("*.png"))[:3]:
            with Image.open(path) as img:
                out.append(img.convert("RGB"))
    for size, colour in (((640, 480), "red"), ((300, 900), "navy")):
        img = Image.new("RGB", size, "white")
        ImageDraw.Draw(img).ellipse((size[0] // 5, size[1] // 5, size[0] // 2, size[1] // 2),
                                    fill=colour)
        out.append(img)
    return out


def _encoded(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def cnn() -> EfficientNetLite0Encoder:
    enc = EfficientNetLite0Encoder(device="cpu")
    enc.load()
    return enc


def test_vectors_match_the_pil_path(cnn: EfficientNetLite0Encoder) -> None:
    images = _images()
    blobs = [_encoded(img, "JPEG", quality=90) if n % 2 else _encoded(img, "PNG")
             for n, img in enumerate(images)]
    reference = cnn.encode([decode_image(b) for b in blobs])
    got = BytesImageEncoder(cnn).encode(blobs)
    assert got.shape == reference.shape and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (got * reference).sum(axis=1).min() >= 0.99


def test_letterbox_matches_pil_pixels_closely() -> None:
    img = _images()[-1]
    ours = letterbox_batch([torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)])
    theirs = image_tensor([img])
    assert ours.shape == theirs.shape == (1, 3, 224, 224)
    # Same placement and white padding; resampling differs only slightly (normalised units).
    assert float((ours - theirs).abs().mean()) < 0.02


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (400, 200), "white")
    ImageDraw.Draw(img).rectangle((0, 0, 100, 200), fill="black")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    blob = _encoded(img, "JPEG", quality=95, exif=exif.tobytes())
    (decoded,) = decode_batch([blob], torch.device("cpu"))
    assert decoded.shape == (3, 400, 200)
    assert np.array_equal(np.asarray(decode_image(blob)).shape[:2], (400, 200))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_gpu_side_orientation_matches_pil(orientation: int) -> None:
    # nvJPEG ignores EXIF, so the CUDA path rotates the decoded tensor itself.
    from PIL import ImageOps

    img = Image.new("RGB", (60, 40), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, 20, 10), fill="red")
    draw.rectangle((40, 30, 59, 39), fill="blue")
    exif = Image.Exif()
    exif[0x0112] = orientation
    blob = _encoded(img, "PNG", exif=exif.tobytes())
    assert exif_orientation(blob) == orientation
    with Image.open(io.BytesIO(blob)) as stored:
        expected = np.asarray(ImageOps.exif_transpose(stored.convert("RGB")))
    raw = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    got = apply_orientation(raw, orientation).permute(1, 2, 0).numpy()
    assert np.array_equal(got, expected)


def test_stream_keeps_order_and_names_a_bad_image(cnn: EfficientNetLite0Encoder) -> None:
    images = _images()
    blobs = [_encoded(img, "JPEG", quality=90) for img in images]
    batches = [blobs[:2], blobs[2:4], blobs[4:]]
    encoder = BytesImageEncoder(cnn)
    streamed = list(encoder.encode_stream(batches))
    assert [len(v) for v in streamed] == [len(b) for b in batches]
    direct = encoder.encode(blobs)
    np.testing.assert_allclose(np.concatenate(streamed), direct, atol=1e-5)
    with pytest.raises(ValueError, match="image 1"):
        list(encoder.encode_stream([[blobs[0], b"\xff\xd8\xff" + b"\0" * 50]]))
    with pytest.raises(ValueError, match="image 0"):
        decode_batch([b"not an image"], torch.device("cpu"))
