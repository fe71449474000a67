"""The optimised CPU path agrees with the PyTorch reference: ONNX Runtime vectors have
cosine >= 0.99 with eager PyTorch ones (images and MiniLM texts), and so do vectors of large
JPEGs decoded in draft mode. The runtime setting picks the path."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from encoders.image import EfficientNetLite0Encoder
from encoders.model import ProductEncoder
from encoders.preprocess import decode_image
from encoders.text import MiniLMTextEncoder

pytest.importorskip("onnxruntime")

from encoders.optimized import OnnxEfficientNetLite0Encoder, OnnxMiniLMTextEncoder

CLIPART = Path("/usr/share/openclipart/png")
MIN_COSINE = 0.99


@pytest.fixture(scope="module", autouse=True)
def _onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    old = os.environ.get("PRODSEARCH_ONNX_CACHE")
    os.environ["PRODSEARCH_ONNX_CACHE"] = str(tmp_path_factory.mktemp("onnx"))
    yield
    if old is None:
        os.environ.pop("PRODSEARCH_ONNX_CACHE", None)
    else:
        os.environ["PRODSEARCH_ONNX_CACHE"] = old


def _images() -> list[Image.Image]:
    out: list[Image.Image] = []
    if CLIPART.is_dir():
        for path in sorted(CLIPART.rglob("*.png"))[:6]:
            with Image.open(path) as img:
                img.thumbnail((512, 512))
                out.append(img.convert("RGB"))
    rng = np.random.default_rng(0)
    for i in range(6 - len(out) + 2):
        img = Image.new("RGB", (320 + 40 * i, 240), "white")
        draw = ImageDraw.Draw(img)
        for _ in range(5):
            x, y = (int(v) for v in rng.integers(0, 200, 2))
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            draw.rectangle((x, y, x + 80, y + 60), fill=colour)
        out.append(img)
    return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def test_onnx_image_vectors_agree_with_torch() -> None:
    images = _images()
    ref = EfficientNetLite0Encoder(device="cpu")
    fast = OnnxEfficientNetLite0Encoder(threads=2)
    expected = ref.encode(images)
    for batch in (images, images[:1]):  # batched and batch 1
        got = fast.encode(batch)
        assert got.shape == (len(batch), 1280) and got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert _cosines(got, expected[: len(batch)]).min() >= MIN_COSINE
    assert fast.onnx_path is not None and fast.onnx_path.is_file()
    assert fast.encode([]).shape == (0, 1280)


def test_onnx_minilm_vectors_agree_with_torch() -> None:
    texts = ["red cotton t-shirt, size M", "leather boots", "a blue ceramic mug", "x" * 600]
    ref = MiniLMTextEncoder(device="cpu").encode(texts)
    got = OnnxMiniLMTextEncoder(threads=2).encode(texts)
    assert got.shape == ref.shape
    assert _cosines(got, ref).min() >= MIN_COSINE
    one = OnnxMiniLMTextEncoder(threads=2).encode(texts[:1])
    assert _cosines(one, ref[:1]).min() >= MIN_COSINE


def test_jpeg_draft_decode_keeps_vectors() -> None:
    big = Image.new("RGB", (3000, 2000), "white")
    draw = ImageDraw.Draw(big)
    draw.ellipse((800, 400, 2000, 1600), fill=(200, 30, 40))
    draw.rectangle((1900, 1200, 2600, 1800), fill=(20, 60, 180))
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    full = decode_image(data)
    draft = decode_image(data, draft_px=224)
    assert full.size == (3000, 2000)
    assert min(draft.size) >= 224 and draft.size[0] < full.size[0]  # reduced at decode
    enc = OnnxEfficientNetLite0Encoder(threads=2)
    vecs = enc.encode([full, draft])
    assert float(vecs[0] @ vecs[1]) >= MIN_COSINE
    # Not a JPEG, or already small: decoded as before.
    small = io.BytesIO()
    Image.new("RGB", (300, 300), "red").save(small, "JPEG")
    assert decode_image(small.getvalue(), draft_px=224).size == (300, 300)


def test_runtime_chosen_at_construction_switches_only_cpu_models() -> None:
    enc = ProductEncoder(text_model="minilm", device="cpu", runtime="onnx")
    assert isinstance(enc.image, OnnxEfficientNetLite0Encoder)
    assert isinstance(enc.text, OnnxMiniLMTextEncoder)
    assert enc.runtime == "onnx"
    version = ProductEncoder(text_model="minilm", device="cpu").model_version
    assert enc.model_version == version  # same model, same collection
    ref = ProductEncoder(text_model="minilm", device="cpu", runtime="torch")
    assert type(ref.image) is EfficientNetLite0Encoder and ref.runtime == "torch"
    assert type(ref.text) is MiniLMTextEncoder
    multi = ProductEncoder(text_model="multilingual", device="cpu", runtime="onnx")
    assert isinstance(multi.image, OnnxEfficientNetLite0Encoder)
    assert type(multi.text).__name__ == "MultilingualTextEncoder"  # numpy already
    with pytest.raises(ValueError):
        ProductEncoder(device="cpu", runtime="tensorrt")


def test_onnx_runtime_falls_back_to_torch_without_onnxruntime(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import encoders.selection

    monkeypatch.setattr(encoders.selection, "onnx_available", lambda: False)
    enc = ProductEncoder(text_model="minilm", device="cpu", runtime="onnx")
    assert enc.runtime == "torch"
    assert type(enc.image) is EfficientNetLite0Encoder
    assert type(enc.text) is MiniLMTextEncoder
