"""Encoders on real weights: shapes, dtypes, unit norms, determinism, semantic sanity, and
image decoding of hostile and unusual inputs. Each model is loaded once per module."""

from __future__ import annotations

import os

# Weights come from installed packages: any attempt to reach a hub must fail loudly.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import asyncio
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFile

from encoders.image import EfficientNetLite0Encoder, crop_boxes
from encoders.model import ProductEncoder
from encoders.preprocess import (
    ImageDecodeError,
    decode_image,
    image_tensor,
    load_image_file,
)
from encoders.text import E5TextEncoder, MiniLMTextEncoder, make_text_encoder
from encoders.worker import EncoderWorker

CLIPART = Path("/usr/share/openclipart/png")


# -- helpers ---------------------------------------------------------------------------


def encode_bytes(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A real 1-bit greyscale PNG of width x height black pixels: every row is compressed
    for real (streamed, so building it needs no full-size buffer) and the file is a few KB
    to a few tens of KB, while decoding it would allocate width * height bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def synthetic(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A deterministic picture with shapes and colours (no file needed)."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, size[0] - 20)), int(rng.integers(0, size[1] - 20))
        x1, y1 = x0 + int(rng.integers(10, size[0] // 2)), y0 + int(rng.integers(10, size[1] // 2))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    return img


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def assert_unit_rows(v: np.ndarray, dim: int, n: int) -> None:
    assert v.shape == (n, dim)
    assert v.dtype == np.float32
    assert np.all(np.isfinite(v))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


# -- fixtures: one load per model per module --------------------------------------------


@pytest.fixture(scope="module")
def product_encoder() -> ProductEncoder:
    enc = ProductEncoder(image_model="efficientnet_lite0", text_model="multilingual", device="cpu")
    enc.load()
    return enc


@pytest.fixture(scope="module")
def image_encoder(product_encoder: ProductEncoder) -> EfficientNetLite0Encoder:
    return product_encoder.image


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    enc = MiniLMTextEncoder(device="cpu")
    enc.load()
    return enc


@pytest.fixture(scope="module")
def clipart() -> list[Image.Image]:
    """Three unrelated real drawings from the openclipart package."""
    if not CLIPART.is_dir():
        pytest.skip(
            f"{CLIPART} not installed (Debian package 'openclipart-png'): "
            "no real images for the semantic checks"
        )
    wanted = ["animals", "food", "electronics", "buildings", "computer"]
    picks: list[Image.Image] = []
    for category in wanted:
        files = sorted((CLIPART / category).rglob("*.png"))
        for f in files:
            if 20_000 < f.stat().st_size < 400_000:
                picks.append(load_image_file(str(f)))
                break
        if len(picks) == 3:
            break
    if len(picks) < 3:
        pytest.skip(f"fewer than 3 usable PNGs under {CLIPART}")
    return picks


# -- decode_image: hostile input ---------------------------------------------------------


def test_rejects_empty() -> None:
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")


def test_rejects_garbage() -> None:
    with pytest.raises(ImageDecodeError, match="not a supported image"):
        decode_image(b"this is not an image at all" * 10)


def test_rejects_truncated_png() -> None:
    data = encode_bytes(synthetic(1), "PNG")
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_rejects_oversize_bytes() -> None:
    data = encode_bytes(synthetic(1), "PNG")
    with pytest.raises(ImageDecodeError, match="more than the limit"):
        decode_image(data, max_bytes=len(data) - 1)
    assert decode_image(data, max_bytes=len(data)).size == (320, 240)


def test_rejects_png_bomb_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = png_bomb(20_000, 20_000)
    assert len(bomb) < 200_000  # 400 megapixels in a small file

    def no_decode(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixel data decoded for an over-size image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        decode_image(bomb)  # above PIL's own bomb limit too
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        decode_image(bomb, max_pixels=10**12)  # PIL's DecompressionBombError, translated
    # Below PIL's limit but above ours: our header check.
    with pytest.raises(ImageDecodeError, match="more than the limit of 40000000"):
        decode_image(png_bomb(8_000, 6_000))


def test_pixel_limit_is_configurable() -> None:
    data = encode_bytes(synthetic(2, (100, 100)), "PNG")
    with pytest.raises(ImageDecodeError, match="10000 pixels"):
        decode_image(data, max_pixels=9_999)
    assert decode_image(data, max_pixels=10_000).size == (100, 100)


# -- decode_image: unusual but valid input ----------------------------------------------


def test_accepts_cmyk_jpeg() -> None:
    img = Image.new("CMYK", (40, 30), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(encode_bytes(img, "JPEG", quality=95))
    assert out.mode == "RGB" and out.size == (40, 30)
    r, g, b = out.getpixel((20, 15))  # type: ignore[misc]
    assert r > 200 and g < 60 and b < 60


def test_accepts_16bit_png() -> None:
    arr = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))
    img = Image.fromarray(arr)  # uint16 -> mode "I;16"
    assert img.mode == "I;16"
    data = encode_bytes(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")
    out = decode_image(data)
    assert out.mode == "RGB" and out.size == (64, 16)
    px = np.asarray(out)
    assert px[0, 0].tolist() == [0, 0, 0]
    assert px[0, -1].tolist() == [255, 255, 255]
    assert 100 < px[0, 32, 0] < 160  # mid-grey, not clipped to white


def test_accepts_animated_gif_first_frame() -> None:
    frames = [Image.new("RGB", (30, 20), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(buf.getvalue())), "n_frames", 1) == 3
    out = decode_image(buf.getvalue())
    assert out.mode == "RGB" and out.size == (30, 20)
    r, g, b = out.getpixel((15, 10))  # type: ignore[misc]
    assert r > 200 and g < 50 and b < 50


def test_accepts_rgba_png_on_white() -> None:
    img = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    img.paste((255, 0, 0, 255), (0, 0, 10, 10))
    out = decode_image(encode_bytes(img, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == (255, 0, 0)
    assert out.getpixel((15, 5)) == (255, 255, 255)  # transparent -> white, not black


def test_accepts_palette_la_and_grayscale() -> None:
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 128, 0] * 256)
    la = Image.new("LA", (8, 8), (0, 0))
    grey = Image.new("L", (8, 8), 77)
    assert decode_image(encode_bytes(pal, "PNG")).getpixel((0, 0)) == (0, 128, 0)
    assert decode_image(encode_bytes(la, "PNG")).getpixel((0, 0)) == (255, 255, 255)
    assert decode_image(encode_bytes(grey, "JPEG", quality=100)).mode == "RGB"


def test_applies_exif_orientation() -> None:
    img = Image.new("RGB", (60, 40), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 30, 40))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    data = encode_bytes(img, "JPEG", exif=exif, quality=95)
    out = decode_image(data)
    assert out.size == (40, 60)  # width and height swapped
    r, _, b = out.getpixel((20, 5))  # type: ignore[misc]
    assert r > 200 and b < 60  # the red half is now on top


def test_load_image_file_paths_and_uris(tmp_path: Path) -> None:
    path = tmp_path / "a b.png"
    synthetic(3).save(path)
    assert load_image_file(str(path)).size == (320, 240)
    assert load_image_file(path.as_uri()).size == (320, 240)
    missing = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        load_image_file(str(missing))
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(ImageDecodeError, match=r"junk\.png"):
        load_image_file(str(tmp_path / "junk.png"))
    with pytest.raises(ImageDecodeError, match="scheme"):
        load_image_file("https://example.com/a.png")


def test_image_tensor_letterboxes_onto_white() -> None:
    wide = Image.new("RGB", (300, 100), (0, 0, 0))
    x = image_tensor([wide, synthetic(4)], 224)
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    white = (255 - 127) / 128
    black = (0 - 127) / 128
    assert torch.allclose(x[0, :, 0, :], torch.tensor(white))  # padding above
    assert torch.allclose(x[0, :, 112, :], torch.tensor(black))  # the image itself
    assert image_tensor([]).shape == (0, 3, 224, 224)


# -- image encoder ---------------------------------------------------------------------


def test_image_vectors(image_encoder: EfficientNetLite0Encoder) -> None:
    images = [synthetic(10), synthetic(11, (200, 400)), Image.new("RGB", (50, 50), "white")]
    v1 = image_encoder.encode(images)
    v2 = image_encoder.encode(images)
    assert_unit_rows(v1, 1280, 3)
    assert np.array_equal(v1, v2)
    assert image_encoder.encode([]).shape == (0, 1280)


def test_image_tokens_pool_to_the_image_vector(image_encoder: EfficientNetLite0Encoder) -> None:
    images = [synthetic(12), synthetic(13)]
    tokens = image_encoder.encode_tokens(images)
    assert tokens.shape == (2, 49, 1280) and tokens.dtype == torch.float32
    assert not torch.is_inference(tokens)  # usable as input to a trainable head
    pooled = tokens.mean(dim=1)
    pooled = pooled / pooled.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(pooled.numpy(), image_encoder.encode(images), atol=1e-5)


def test_crop_boxes_cover_the_image() -> None:
    boxes = crop_boxes(800, 600)
    assert boxes[0] == (0, 0, 800, 600)
    assert len(boxes) == len(set(boxes))
    for left, top, right, bottom in boxes[1:]:
        assert 0 <= left < right <= 800 and 0 <= top < bottom <= 600
        assert right - left == bottom - top
    sides = {b[2] - b[0] for b in boxes[1:]}
    assert sides == {600, 360, 210}
    small = [b for b in boxes if b[2] - b[0] == 210]
    assert max(b[2] for b in small) == 800 and max(b[3] for b in small) == 600
    with pytest.raises(ValueError):
        crop_boxes(100, 100, scales=(1.5,))
    # A shelf panorama or a degenerate strip stays within the crop budget, edge to edge.
    for size in [(4000, 1000), (3000, 60)]:
        strip = crop_boxes(*size, max_crops=128)
        assert len(strip) <= 128
        assert min(b[0] for b in strip) == 0 and max(b[2] for b in strip) == size[0]


def test_encode_crops_finds_a_small_product(
    product_encoder: ProductEncoder, clipart: list[Image.Image]
) -> None:
    product, other1, other2 = clipart
    # A cluttered "shelf": the product small in one corner, two other items bigger.
    scene = Image.new("RGB", (800, 600), (235, 235, 230))
    scene.paste(other1.resize((330, 330)), (20, 20))
    scene.paste(other2.resize((300, 300)), (420, 40))
    scene.paste(product.resize((190, 190)), (560, 380))
    vectors, boxes = product_encoder.encode_crops(scene)
    assert_unit_rows(vectors, 1280, len(boxes))
    assert boxes[0] == (0, 0, 800, 600)
    np.testing.assert_allclose(vectors[0], product_encoder.encode_images([scene])[0], atol=1e-4)

    query = product_encoder.encode_images([product])[0]
    best = boxes[int(np.argmax(vectors @ query))]
    cx, cy = 560 + 95, 380 + 95
    assert best[0] <= cx <= best[2] and best[1] <= cy <= best[3], best
    assert best != boxes[0]


def test_resized_recompressed_copy_is_closer_than_another_image(
    product_encoder: ProductEncoder, clipart: list[Image.Image]
) -> None:
    a, b, c = clipart
    w, h = a.size
    copy = decode_image(encode_bytes(a.resize((int(w * 0.8), int(h * 0.8))), "JPEG", quality=70))
    va, vcopy, vb, vc = product_encoder.encode_images([a, copy, b, c])
    assert cosine(va, vcopy) > cosine(va, vb)
    assert cosine(va, vcopy) > cosine(va, vc)
    assert cosine(va, vcopy) > 0.9


# -- text encoders ---------------------------------------------------------------------


def test_minilm_vectors(minilm: MiniLMTextEncoder) -> None:
    texts = ["red dress", "laptop computer", "", "word " * 2000]  # empty and over-long
    v1 = minilm.encode(texts)
    assert_unit_rows(v1, 384, 4)
    assert np.array_equal(v1, minilm.encode(texts))
    assert minilm.encode([]).shape == (0, 384)
    d, l_, s = minilm.encode(["red dress", "laptop computer", "scarlet evening gown"])
    assert cosine(d, s) > cosine(d, l_)


def test_multilingual_vectors_and_chinese(product_encoder: ProductEncoder) -> None:
    enc = product_encoder.text
    assert enc.name == "multilingual" and enc.dim == 512
    texts = ["red dress", "红色连衣裙", "laptop computer", ""]
    v1 = enc.encode(texts)
    assert_unit_rows(v1, 512, 4)
    assert np.array_equal(v1, enc.encode(texts))
    assert enc.encode([]).shape == (0, 512)
    en, zh, laptop, _ = v1
    assert cosine(en, zh) > cosine(en, laptop)


def test_e5_prefixes_queries_and_passages() -> None:
    enc = make_text_encoder("e5", threads=1)
    assert isinstance(enc, E5TextEncoder) and enc.dim == 384
    docs = enc.encode(["red dress", "红色连衣裙", "laptop computer", ""])
    assert_unit_rows(docs, 384, 4)
    queries = enc.encode_query(["red dress"])
    assert_unit_rows(queries, 384, 1)
    assert enc.encode_query([]).shape == (0, 384)
    # "query: " and "passage: " give different vectors of the same text...
    assert cosine(queries[0], docs[0]) < 0.999
    # ...and a query finds its passage, and its Chinese twin before another product.
    _, zh, laptop, _ = docs
    assert cosine(queries[0], zh) > cosine(queries[0], laptop)


def test_make_text_encoder_names() -> None:
    assert isinstance(make_text_encoder("minilm"), MiniLMTextEncoder)
    assert make_text_encoder("multilingual", threads=1).dim == 512
    with pytest.raises(ValueError, match="minilm, multilingual"):
        make_text_encoder("bert")


# -- ProductEncoder and worker ---------------------------------------------------------


def test_encode_batch(product_encoder: ProductEncoder) -> None:
    assert product_encoder.model_version == "effl0+use-m3.v1"
    assert product_encoder.dims == {"image": 1280, "text": 512}
    images = [synthetic(20), None, synthetic(21), None]
    texts = ["blue shirt", "蓝色衬衫", None, None]
    out = product_encoder.encode_batch(images, texts)
    assert [sorted(d) for d in out] == [["image", "text"], ["text"], ["image"], []]
    for d in out:
        for name, v in d.items():
            assert v.shape == (product_encoder.dims[name],) and v.dtype == np.float32
            assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
    again = product_encoder.encode_batch(images, texts)
    for d1, d2 in zip(out, again, strict=True):
        for name in d1:
            assert np.array_equal(d1[name], d2[name])
    with pytest.raises(ValueError):
        product_encoder.encode_batch([None], [])


def test_worker_batches_queries_and_bulk(product_encoder: ProductEncoder) -> None:
    worker = EncoderWorker(product_encoder, max_batch_size=4, max_wait_ms=20, max_queue=16)
    sizes: list[int] = []
    worker.on_batch = sizes.append
    worker.start()
    img = synthetic(30, (500, 300))

    async def main() -> list[dict[str, np.ndarray]]:
        results = await asyncio.gather(
            worker.encode(img, None),
            worker.encode(None, "red dress"),
            worker.encode(img, "red dress"),
        )
        with pytest.raises(ValueError):
            await worker.encode(None, None)
        await worker.stop()
        return list(results)

    r_img, r_txt, r_both = asyncio.run(main())
    assert sorted(r_img) == ["image"] and sorted(r_txt) == ["text"]
    assert sorted(r_both) == ["image", "text"]
    assert sizes and max(sizes) <= 4
    direct = worker.encode_many([img] * 5 + [None], ["red dress"] * 6)
    assert len(direct) == 6 and sorted(direct[5]) == ["text"]
    np.testing.assert_allclose(r_img["image"], direct[0]["image"], atol=1e-5)
    np.testing.assert_allclose(r_txt["text"], direct[5]["text"], atol=1e-6)
    assert worker.model_version == product_encoder.model_version


@pytest.fixture(autouse=True, scope="module")
def _no_grad_leak() -> Iterator[None]:
    yield
    assert torch.is_grad_enabled()  # inference_mode must not leak out of encode()
