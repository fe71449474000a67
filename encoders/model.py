"""ProductEncoder: the one object the rest of the system asks for product vectors.

Today it returns an "image" vector (EfficientNet-Lite0) and a "text" vector (MiniLM or USE
multilingual). The trained fusion model (a Transformer over image and text tokens, with
projection heads putting image-only, text-only and fused vectors in one space) plugs in at
the places marked FUSION below; nothing else in the system has to change, because callers
look vectors up by name and read the names from `dims`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL.Image import Image

from encoders.image import Box, EfficientNetLite0Encoder
from encoders.preprocess import letterbox
from encoders.text import TextEncoder, make_text_encoder

__all__ = ["IMAGE_MODELS", "PIPELINE_VERSION", "ProductEncoder"]

log = logging.getLogger(__name__)

IMAGE_MODELS: dict[str, Callable[[str], EfficientNetLite0Encoder]] = {
    "efficientnet_lite0": lambda device: EfficientNetLite0Encoder(device=device),
}

# Short, stable tags for the model version string (it ends up in collection names).
_VERSION_TAGS = {
    "efficientnet_lite0": "effl0",
    "minilm": "minilm-l6",
    "multilingual": "use-m3",
}

# Bump whenever preprocessing or pooling changes, i.e. whenever the same models would
# produce different vectors for the same input (letterbox vs crop, normalisation, ...).
PIPELINE_VERSION = 1


class ProductEncoder:
    """Image and text encoders behind one batch call. Thread-safe; call `load()` once."""

    def __init__(
        self,
        image_model: str = "efficientnet_lite0",
        text_model: str = "multilingual",
        device: str = "auto",
        threads: int = 0,
    ) -> None:
        if image_model not in IMAGE_MODELS:
            valid = ", ".join(sorted(IMAGE_MODELS))
            raise ValueError(f"unknown image model {image_model!r}; valid names: {valid}")
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self.threads = threads
        self.image = IMAGE_MODELS[image_model](device)
        text_kw: dict[str, object] = {"device": device}
        if text_model == "multilingual":
            text_kw["threads"] = threads
        self.text: TextEncoder = make_text_encoder(text_model, **text_kw)
        # Fp16 on a GPU only rounds the same model's vectors: not a reason to re-index, so
        # the device is deliberately not part of the version.
        self.model_version = (
            f"{_VERSION_TAGS[image_model]}+{_VERSION_TAGS[text_model]}.v{PIPELINE_VERSION}"
        )
        self.dims: dict[str, int] = {"image": self.image.dim, "text": self.text.dim}
        # FUSION: load the trained checkpoint here, add its hash to model_version and
        # dims["fused"] = its output size.

    @property
    def loaded(self) -> bool:
        return self.image.loaded and self.text.loaded

    def load(self) -> None:
        """Load and warm up both encoders (idempotent, blocking)."""
        if self.threads > 0:
            # Process-wide: intra-op threads for every torch model in this process.
            torch.set_num_threads(self.threads)
        self.image.load()
        self.text.load()
        # FUSION: load and warm up the fusion model.

    def prepare_image(self, image: Image) -> Image:
        """Resize/letterbox to the network's input size. Optional: running it before a batch
        (on the caller's thread) moves the per-image resize off the batch thread; the batch
        gives identical vectors either way."""
        return letterbox(image, self.image.input_size)

    def encode_images(self, images: Sequence[Image]) -> np.ndarray:
        return self.image.encode(images)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.text.encode(texts)

    def encode_batch(
        self, images: Sequence[Image | None], texts: Sequence[str | None]
    ) -> list[dict[str, np.ndarray]]:
        """Element i gets "image" if images[i] is set and "text" if texts[i] is set; an
        element with neither gets an empty dict. One forward pass per modality."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        out: list[dict[str, np.ndarray]] = [{} for _ in images]
        image_items = [(i, img) for i, img in enumerate(images) if img is not None]
        text_items = [(i, txt) for i, txt in enumerate(texts) if txt is not None]
        if image_items:
            vectors = self.image.encode([img for _, img in image_items])
            for row, (i, _) in enumerate(image_items):
                out[i]["image"] = vectors[row]
        if text_items:
            vectors = self.text.encode([txt for _, txt in text_items])
            for row, (i, _) in enumerate(text_items):
                out[i]["text"] = vectors[row]
        # FUSION: for elements with an image, run the fusion model over the image tokens
        # (and text tokens when present) and set out[i]["fused"].
        return out

    def encode_crops(self, image: Image) -> tuple[np.ndarray, list[Box]]:
        """Whole image plus multi-scale sliding-window crops: (M, dim) vectors and boxes."""
        return self.image.encode_crops(image)

    def __repr__(self) -> str:
        return f"ProductEncoder({self.model_version!r}, dims={self.dims})"
