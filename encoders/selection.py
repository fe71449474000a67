"""Which networks a ProductEncoder runs, decided once, at construction: the image and text
encoders for the runtime (eager PyTorch or ONNX Runtime) and the fusion checkpoint.

The ONNX runtime is a CPU path: on a GPU the torch models run in fp16, and without
onnxruntime installed the torch models run with a warning. It replaces only the networks it
has a graph for (EfficientNet-Lite0 pooled vectors, MiniLM); the others stay torch or numpy.
A runtime only rounds the same model's vectors, so it is not part of the model version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

import torch

from encoders.checkpoints import (
    DEFAULT_CHECKPOINT,
    SHIPPED_CHECKPOINTS,
    FusionCheckpoint,
    load_checkpoint,
)
from encoders.fusion import FusionConfig, FusionEncoder
from encoders.image import EfficientNetLite0Encoder
from encoders.optimized import OnnxEfficientNetLite0Encoder, OnnxMiniLMTextEncoder, onnx_available
from encoders.photo_cnn import OnnxPhotoCnnEncoder, PhotoCnnEncoder
from encoders.text import TextEncoder, make_text_encoder

__all__ = [
    "IMAGE_MODELS",
    "RUNTIMES",
    "Runtime",
    "make_fusion",
    "make_image_encoder",
    "make_text_model",
    "resolve_runtime",
]

log = logging.getLogger(__name__)

Runtime = Literal["torch", "onnx"]
RUNTIMES: tuple[Runtime, ...] = get_args(Runtime)

# The pretrained network, and the same network with the tail trained for photos
# (`encoders/photo_cnn.py`, the checkpoint shipped in encoders/checkpoints/photo-cnn.pt).
IMAGE_MODELS: dict[str, Callable[[str], EfficientNetLite0Encoder]] = {
    "efficientnet_lite0": lambda device: EfficientNetLite0Encoder(device=device),
    "efficientnet_lite0_photo": lambda device: PhotoCnnEncoder(device=device),
}
_ONNX_IMAGE_MODELS: dict[str, Callable[[int], EfficientNetLite0Encoder]] = {
    "efficientnet_lite0": lambda threads: OnnxEfficientNetLite0Encoder(threads=threads),
    "efficientnet_lite0_photo": lambda threads: OnnxPhotoCnnEncoder(threads=threads),
}
# The text dimension an untrained fusion model reads, per text model (the LSTM's comes
# from its checkpoint).
_TEXT_DIMS = {"multilingual": 512, "minilm": 384}


def resolve_runtime(requested: str, device: str) -> Runtime:
    """The runtime that will really run: "onnx" only on a CPU with onnxruntime installed."""
    if requested not in RUNTIMES:
        raise ValueError(f"unknown runtime {requested!r}; valid: {', '.join(RUNTIMES)}")
    if requested == "torch":
        return "torch"
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if on_gpu:
        log.info("runtime=onnx ignored on %s: the torch fp16 path is used", device)
        return "torch"
    if not onnx_available():
        log.warning("onnxruntime is not installed: using the torch path")
        return "torch"
    return "onnx"


def make_image_encoder(name: str, device: str, runtime: Runtime, threads: int = 0
                       ) -> EfficientNetLite0Encoder:
    if name not in IMAGE_MODELS:
        valid = ", ".join(sorted(IMAGE_MODELS))
        raise ValueError(f"unknown image model {name!r}; valid names: {valid}")
    if runtime == "onnx":
        return _ONNX_IMAGE_MODELS[name](threads)
    return IMAGE_MODELS[name](device)


def make_text_model(name: str, device: str, runtime: Runtime, threads: int = 0,
                    lstm_checkpoint: Path | None = None) -> TextEncoder:
    """A text encoder by name (`encoders.text.make_text_encoder`) on the runtime; the LSTM
    reads its weights from `lstm_checkpoint`, the fusion checkpoint it was trained in."""
    if name == "minilm" and runtime == "onnx":
        return OnnxMiniLMTextEncoder(threads=threads)
    kw: dict[str, object] = {"device": device}
    if name in ("multilingual", "minilm"):
        kw["threads"] = threads
    if name == "lstm":
        if lstm_checkpoint is None:
            raise ValueError("the LSTM text model needs a fusion checkpoint trained with it")
        kw["checkpoint"] = lstm_checkpoint
    return make_text_encoder(name, **kw)


def make_fusion(choice: FusionCheckpoint, text_model: str, device: str
                ) -> FusionEncoder | None:
    """The fusion model for `choice`, or None for no fused vector. A shipped checkpoint that
    is missing or was trained for another text model gives None with a warning; a checkpoint
    file trained for another text model is refused."""
    if choice.kind == "none":
        return None
    if choice.kind == "untrained":
        if text_model not in _TEXT_DIMS:
            raise ValueError(f"no untrained fusion model for text model {text_model!r}")
        return FusionEncoder.untrained(
            FusionConfig(text_model=text_model, text_dim=_TEXT_DIMS[text_model]), device=device)
    shipped = choice.kind == "shipped"
    path = SHIPPED_CHECKPOINTS.get(text_model, DEFAULT_CHECKPOINT) if shipped else choice.path
    assert path is not None
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
