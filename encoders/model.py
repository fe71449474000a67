"""ProductEncoder: the one object the rest of the system asks for product vectors.

It returns an "image" vector (EfficientNet-Lite0), a "text" vector (MiniLM, USE
multilingual or the LSTM) and, when a fusion model is configured or shipped, a "fused"
vector for every element: the trained Transformer over image and text tokens, whose
projection heads put image-only, text-only and image+text inputs in ONE space. Callers look
vectors up by name and read the names from `dims`.

`fusion_checkpoint` (`encoders.checkpoints.FusionCheckpoint`, or a setting's spelling):
none (default) = no fusion; shipped = the checkpoint shipped in `encoders/checkpoints/` for
this text model (multilingual: fusion-default.pt, lstm: fusion-lstm.pt; other text models
have none); a path = that checkpoint; untrained = freshly initialised weights, for
comparisons. `runtime` ("torch" or "onnx") picks the networks' runtime once, here
(`encoders.selection`); `self.runtime` says which one really runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from PIL.Image import Image

from encoders.base import l2_normalize
from encoders.checkpoints import FusionCheckpoint
from encoders.fusion import FusionEncoder, FusionInput
from encoders.image import Box, EfficientNetLite0Encoder, crop_boxes
from encoders.localise import query_views
from encoders.preprocess import letterbox
from encoders.selection import (
    Runtime,
    make_fusion,
    make_image_encoder,
    make_text_model,
    resolve_runtime,
)
from encoders.text import TextEncoder

__all__ = ["PIPELINE_VERSION", "ProductEncoder"]

log = logging.getLogger(__name__)

# Short, stable tags for the model version string (it ends up in collection names).
_VERSION_TAGS = {
    "efficientnet_lite0": "effl0",
    "minilm": "minilm-l6",
    "multilingual": "use-m3",
    "lstm": "lstm",
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
        fusion_checkpoint: FusionCheckpoint | str = FusionCheckpoint.NONE,
        runtime: str = "torch",
    ) -> None:
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self.threads = threads
        self.runtime: Runtime = resolve_runtime(runtime, device)
        self.image: EfficientNetLite0Encoder = make_image_encoder(
            image_model, device, self.runtime, threads)
        self.fusion: FusionEncoder | None = make_fusion(
            FusionCheckpoint.parse(fusion_checkpoint), text_model, device)
        self.text: TextEncoder = make_text_model(
            text_model, device, self.runtime, threads,
            lstm_checkpoint=self.fusion.checkpoint_path if self.fusion is not None else None)
        # Fp16 on a GPU only rounds the same model's vectors: not a reason to re-index, so
        # the device (like the runtime) is deliberately not part of the version.
        # A trained image network names its weights (`effl0p-<tail hash>`): other weights,
        # other vectors, another collection.
        image_tag = getattr(self.image, "version_tag", None) or _VERSION_TAGS[image_model]
        self.model_version = (
            f"{image_tag}+{_VERSION_TAGS[text_model]}.v{PIPELINE_VERSION}"
        )
        self.dims: dict[str, int] = {"image": self.image.dim, "text": self.text.dim}
        if self.fusion is not None:
            self.model_version += f"+{self.fusion.version}"
            self.dims["fused"] = self.fusion.dim

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
