"""The one fake encoder of the test suite: fast, deterministic, no model weights."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from encoders.preprocess import letterbox

FAKE_VERSION = "fake.v1"


class FakeImageModel:
    """What an `EncoderWorker` reads of a ProductEncoder's image model."""

    def __init__(self, input_size: int) -> None:
        self.input_size = input_size
        self.device = "cpu"


class FakeEncoder:
    """Unit vectors from SHA-256 of the pixels and of the text: the same input always gives
    the same vector, different inputs practically never the same one.

    It has both faces of an encoder: the `VectorEncoder` port the domain calls (`start`,
    `stop`, `encode`, `encode_many`) and the model an `EncoderWorker` wraps (`load`,
    `prepare_image`, `encode_batch`, `image.input_size`). `delay_s` is spent per item,
    `fail_on` is a text whose encoding raises, `before_batch` runs before each batch, and `ran`
    records the texts encoded, in order.
    """

    def __init__(self, version: str = FAKE_VERSION, dim: int = 8, *, delay_s: float = 0.0,
                 fail_on: str | None = None, before_batch: Callable[[], None] | None = None,
                 input_size: int = 16) -> None:
        self.model_version = version
        self.dims = {"image": dim, "text": dim}
        self.image = FakeImageModel(input_size)
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.before_batch = before_batch
        self.ran: list[str | None] = []
        self.loaded = False

    # -- the model an EncoderWorker wraps

    def load(self) -> None:
        self.loaded = True

    def prepare_image(self, image: Image.Image) -> Image.Image:
        return letterbox(image, self.image.input_size)

    def encode_batch(self, images: Sequence[Image.Image | None],
                     texts: Sequence[str | None]) -> list[dict[str, np.ndarray]]:
        if self.before_batch is not None:
            self.before_batch()
        out: list[dict[str, np.ndarray]] = []
        for image, text in zip(images, texts, strict=True):
            time.sleep(self.delay_s)
            self.ran.append(text)
            if text is not None and text == self.fail_on:
                raise RuntimeError("model failure")
            vectors: dict[str, np.ndarray] = {}
            if image is not None:
                vectors["image"] = self._vector(image.tobytes())
            if text is not None:
                vectors["text"] = self._vector(text.encode())
            out.append(vectors)
        return out

    # -- the VectorEncoder port

    def start(self) -> None:
        self.load()

    async def stop(self) -> None:
        return None

    async def encode(self, image: Image.Image | None, text: str | None
                     ) -> dict[str, np.ndarray]:
        return self.encode_batch([image], [text])[0]

    def encode_many(self, images: Sequence[Image.Image | None],
                    texts: Sequence[str | None]) -> list[dict[str, np.ndarray]]:
        return self.encode_batch(images, texts)

    def _vector(self, data: bytes) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
        v = np.random.default_rng(seed).normal(size=self.dims["text"]).astype(np.float32)
        return v / np.linalg.norm(v)
