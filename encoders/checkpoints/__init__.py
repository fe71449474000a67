"""Fusion checkpoints: the files shipped in this folder, the format every checkpoint has, and
the one reading of the fusion setting (`FusionCheckpoint`).

Checkpoints are plain dicts (tensors, numbers, strings) loaded with `weights_only=True`.
This module imports torch only when a checkpoint is read or hashed, so that the settings can
parse the fusion setting without loading any model code.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHECKPOINT_DIR",
    "CHECKPOINT_FORMAT",
    "DEFAULT_CHECKPOINT",
    "SHIPPED_CHECKPOINTS",
    "FusionCheckpoint",
    "load_checkpoint",
    "state_hash",
]

CHECKPOINT_FORMAT = 1
CHECKPOINT_DIR = Path(__file__).parent
DEFAULT_CHECKPOINT = CHECKPOINT_DIR / "fusion-default.pt"
# The checkpoint that ships for each text model (see README.md in this folder).
SHIPPED_CHECKPOINTS = {
    "multilingual": DEFAULT_CHECKPOINT,
    "lstm": CHECKPOINT_DIR / "fusion-lstm.pt",
}

FusionKind = Literal["none", "shipped", "path", "untrained"]


@dataclass(frozen=True)
class FusionCheckpoint:
    """Which fusion model a ProductEncoder runs.

    none: no fusion model (image and text vectors only; the default);
    shipped: the checkpoint shipped here for the configured text model;
    path: a checkpoint file (`prodsearch train` writes them);
    untrained: freshly initialised weights, a baseline for comparisons (never a setting).
    """

    kind: FusionKind
    path: Path | None = None

    NONE: ClassVar[FusionCheckpoint]
    SHIPPED: ClassVar[FusionCheckpoint]
    UNTRAINED: ClassVar[FusionCheckpoint]

    def __post_init__(self) -> None:
        if (self.kind == "path") != (self.path is not None):
            raise ValueError("a fusion checkpoint has a path exactly when its kind is 'path'")

    @classmethod
    def file(cls, path: str | Path) -> FusionCheckpoint:
        return cls("path", Path(path).expanduser())

    @classmethod
    def parse(cls, value: str | Path | FusionCheckpoint) -> FusionCheckpoint:
        """The setting's spellings (PRODSEARCH_ENCODER__FUSION_CHECKPOINT, config file):
        "none" = no fusion; "shipped" or "" = the shipped checkpoint; anything else = the
        path of a checkpoint file. Case and surrounding spaces of the words are ignored."""
        if isinstance(value, FusionCheckpoint):
            return value
        if isinstance(value, Path):
            return cls.file(value)
        if not isinstance(value, str):
            raise TypeError(f"fusion checkpoint: expected a string, got {type(value).__name__}")
        word = value.strip().lower()
        if word == "none":
            return cls.NONE
        if word in ("", "shipped"):
            return cls.SHIPPED
        return cls.file(value)

    def __str__(self) -> str:
        """The setting's spelling (`parse(str(x)) == x` for every kind but untrained)."""
        return str(self.path) if self.path is not None else self.kind


FusionCheckpoint.NONE = FusionCheckpoint("none")
FusionCheckpoint.SHIPPED = FusionCheckpoint("shipped")
FusionCheckpoint.UNTRAINED = FusionCheckpoint("untrained")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training or shipped checkpoint (tensors and plain values only)."""
    import torch

    ckpt: dict[str, Any] = torch.load(str(path), map_location="cpu", weights_only=True)
    if ckpt.get("format") != CHECKPOINT_FORMAT or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path} is not a fusion checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """12 hex digits over the weights (names, shapes, values): the checkpoint's identity."""
    import numpy as np

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        buf = io.BytesIO()
        np.save(buf, t.float().numpy(), allow_pickle=False)
        h.update(buf.getvalue())
    return h.hexdigest()[:12]
