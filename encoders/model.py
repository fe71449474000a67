"""ProductEncoder: the one object the rest of the system asks for product vectors.

It returns an "image" vector (EfficientNet-Lite0), a "text" vector (MiniLM, USE
multilingual or the LSTM) and, when a fusion model is configured or shipped, a "fused"
vector for every element: the trained Transformer over image and text tokens, whose
projection heads put image-only, text-only and image+text inputs in ONE space. Callers look
vectors up by name and read the names from `dims`.

`fusion_checkpoint`: "none" (default) = no fusion, "" = the checkpoint shipped in
`encoders/checkpoints/` for this text model (multilingual: fusion-default.pt, lstm:
fusion-lstm.pt; other text models have none), a path = that checkpoint,
None = a freshly initialised (untrained) fusion model, for comparisons.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL.Image import Image

from encoders.base import l2_normalize
from encoders.fusion import (
    DEFAULT_CHECKPOINT,
    SHIPPED_CHECKPOINTS,
    FusionConfig,
    FusionEncoder,
    FusionInput,
    load_checkpoint,
)
from encoders.image import Box, EfficientNetLite0Encoder, crop_boxes
from encoders.localise import query_views
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
    "lstm": "lstm",
}
_TEXT_DIMS = {"multilingual": 512, "minilm": 384}

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
        fusion_checkpoint: str | None = "none",
    ) -> None:
        if image_model not in IMAGE_MODELS:
            valid = ", ".join(sorted(IMAGE_MODELS))
            raise ValueError(f"unknown image model {image_model!r}; valid names: {valid}")
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self.threads = threads
        self.image = IMAGE_MODELS[image_model](device)
        self.fusion: FusionEncoder | None = self._make_fusion(
            fusion_checkpoint, text_model, device)
        text_kw: dict[str, object] = {"device": device}
        if text_model == "multilingual":
            text_kw["threads"] = threads
        if text_model == "lstm":
            if self.fusion is None or self.fusion.checkpoint_path is None:
                raise ValueError("the LSTM text model needs a fusion checkpoint trained with it")
            text_kw["checkpoint"] = self.fusion.checkpoint_path
        self.text: TextEncoder = make_text_encoder(text_model, **text_kw)
        # Fp16 on a GPU only rounds the same model's vectors: not a reason to re-index, so
        # the device is deliberately not part of the version.
        self.model_version = (
            f"{_VERSION_TAGS[image_model]}+{_VERSION_TAGS[text_model]}.v{PIPELINE_VERSION}"
        )
        self.dims: dict[str, int] = {"image": self.image.dim, "text": self.text.dim}
        if self.fusion is not None:
            self.model_version += f"+{self.fusion.version}"
            self.dims["fused"] = self.fusion.dim

    @staticmethod
    def _make_fusion(checkpoint: str | None, text_model: str, device: str
                     ) -> FusionEncoder | None:
        if checkpoint is None:
            if text_model not in _TEXT_DIMS:
                raise ValueError(f"no untrained fusion model for text model {text_model!r}")
            return FusionEncoder.untrained(
                FusionConfig(text_model=text_model, text_dim=_TEXT_DIMS[text_model]),
                device=device)
        if checkpoint.strip().lower() == "none":
            return None
        shipped = checkpoint == ""
        path = (SHIPPED_CHECKPOINTS.get(text_model, DEFAULT_CHECKPOINT) if shipped
                else Path(checkpoint).expanduser())
        if shipped and not path.exists():
            log.warning("no fusion checkpoint shipped at %s: no fused vector", path)
            return None
        trained_for = load_checkpoint(path)["config"].get("text_model")
        if trained_for != text_model:
            if shipped:
                log.warning("the shipped fusion model was trained for text model %r, not %r: "
                            "no fused vector (train one: prodsearch train --text-model %s)",
                            trained_for, text_model, text_model)
                return None
            raise ValueError(f"fusion checkpoint {path} was trained for text model "
                             f"{trained_for!r}, not {text_model!r}")
        return FusionEncoder(path, device=device)

    @property
    def loaded(self) -> bool:
        fusion_loaded = self.fusion is None or self.fusion.loaded
        return self.image.loaded and self.text.loaded and fusion_loaded

    def load(self) -> None:
        """Load and warm up both encoders (idempotent, blocking)."""
        if self.threads > 0:
            # Process-wide: intra-op threads for every torch model in this process.
            torch.set_num_threads(self.threads)
        self.image.load()
        self.text.load()
        if self.fusion is not None:
            self.fusion.load()

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
        """Element i gets "image" if images[i] is set and "text" if texts[i] is set, and
        with a fusion model "fused" whenever it has either (image-only, text-only and both
        land in one space); an element with neither gets an empty dict. One forward pass per
        modality, one fusion pass per combination of modalities present."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        out: list[dict[str, np.ndarray]] = [{} for _ in images]
        image_items = [(i, img) for i, img in enumerate(images) if img is not None]
        text_items = [(i, txt) for i, txt in enumerate(texts) if txt is not None]
        if self.fusion is None:
            if image_items:
                vectors = self.image.encode([img for _, img in image_items])
                for row, (i, _) in enumerate(image_items):
                    out[i]["image"] = vectors[row]
            if text_items:
                vectors = self.text.encode([txt for _, txt in text_items])
                for row, (i, _) in enumerate(text_items):
                    out[i]["text"] = vectors[row]
            return out
        inputs = [FusionInput() for _ in images]
        if image_items:
            # One CNN pass: the pooled "image" vector is the mean of the same tokens.
            tokens = self.image.encode_tokens([img for _, img in image_items]).cpu()
            vectors = l2_normalize(tokens.mean(dim=1))
            for row, (i, _) in enumerate(image_items):
                out[i]["image"] = vectors[row]
                inputs[i].image = tokens[row]
        if text_items:
            vectors, text_tokens = self.text.encode_with_tokens([t for _, t in text_items])
            for row, (i, _) in enumerate(text_items):
                out[i]["text"] = vectors[row]
                inputs[i].text = text_tokens[row]
        present = [i for i, x in enumerate(inputs) if x.image is not None or x.text is not None]
        if present:
            fused = self.fusion.encode([inputs[i] for i in present])
            for row, i in enumerate(present):
                out[i]["fused"] = fused[row]
        return out

    def query_image_vectors(self, image: Image, crops: bool = False) -> np.ndarray:
        """(V, d) vectors of a query photo's views (`localise.query_views`: the photo and
        the isolated item when one stands out; with `crops`, also the multi-scale square
        windows of `crop_boxes`) in the space search should use: "fused" with a fusion
        model, else "image". Search keeps each point's best score over the rows."""
        views = query_views(image)
        if crops:
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            views += [rgb.crop(box) for box in crop_boxes(*rgb.size)[1:]]
        encoded = self.encode_batch(views, [None] * len(views))
        name = "fused" if self.fusion is not None else "image"
        return np.stack([e[name] for e in encoded])

    def encode_crops(self, image: Image) -> tuple[np.ndarray, list[Box]]:
        """Whole image plus multi-scale sliding-window crops: (M, dim) vectors and boxes."""
        return self.image.encode_crops(image)

    def __repr__(self) -> str:
        return f"ProductEncoder({self.model_version!r}, dims={self.dims})"
