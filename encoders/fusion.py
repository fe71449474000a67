"""The fusion model: a small Transformer over image tokens (the CNN's 7x7 feature map) and
text tokens (per-token states of MiniLM or the LSTM, or the sentence vector of USE as one
token), with projection heads that put fused, image-only and text-only inputs into ONE
L2-normalised space.

    [CLS + mode] [image tokens + position + modality] [text tokens + position + modality]
        -> 2 pre-norm Transformer encoder layers (multi-head self-attention over the
           concatenation, i.e. cross-attention between the modalities)
        -> the CLS output -> the head of the mode (image / text / fused)
         + (when there is an image) attention pooling of the 49 raw backbone tokens,
           weighted by a score the Transformer computes for each image position, scaled
           per channel and normalised
        -> unit vector (out_dim = the backbone's 1280 by default)

An input with one modality runs the same Transformer with only that modality's tokens
(the other is absent, not zero-filled), so a photo, a text or both query the same vectors.
The CLS token attends over the 49 spatial tokens: the attention learns where the item is in
a cluttered photo, which a global average pool cannot. The image and fused heads start at zero and
the pooling scores at zero, so an untrained model gives exactly the backbone's average-pooled
vector for any input with an image:
training can only move it from that starting point (where to look, what to add from the
text), not start from noise.

Checkpoints (format, shipped files, loading) are `encoders.checkpoints`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from encoders.base import EncoderModel, l2_normalize
from encoders.checkpoints import CHECKPOINT_FORMAT, load_checkpoint, state_hash
from encoders.lstm import LSTMTextNet

__all__ = [
    "FusionConfig",
    "FusionEncoder",
    "FusionInput",
    "FusionModel",
]

log = logging.getLogger(__name__)

MODES = ("image", "text", "fused")


@dataclass(frozen=True)
class FusionConfig:
    text_model: str = "multilingual"  # the text encoder whose tokens the model reads
    image_dim: int = 1280
    image_tokens: int = 49
    text_dim: int = 512
    max_text_tokens: int = 32
    d_model: int = 256
    heads: int = 4
    layers: int = 2
    ff_dim: int = 512
    dropout: float = 0.1
    out_dim: int = 1280
    # The LSTM text encoder trains with the fusion model; its settings live here.
    lstm: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class FusionModel(nn.Module):
    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.image_in = nn.Sequential(nn.LayerNorm(config.image_dim),
                                      nn.Linear(config.image_dim, d))
        self.text_in = nn.Sequential(nn.LayerNorm(config.text_dim),
                                     nn.Linear(config.text_dim, d))
        self.image_pos = nn.Parameter(torch.zeros(config.image_tokens, d))
        self.text_pos = nn.Parameter(torch.zeros(config.max_text_tokens, d))
        self.modality = nn.Parameter(torch.zeros(2, d))  # 0 image, 1 text
        self.cls = nn.Parameter(torch.zeros(len(MODES), d))  # one CLS start per mode
        for p in (self.image_pos, self.text_pos, self.modality, self.cls):
            nn.init.normal_(p, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d, config.heads, config.ff_dim, config.dropout, batch_first=True, norm_first=True,
            activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.heads = nn.ModuleDict({m: nn.Linear(d, config.out_dim) for m in MODES})
        for mode in ("image", "fused"):  # these start as the backbone's pooled vector
            head = self.heads[mode]
            assert isinstance(head, nn.Linear)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.pool_score = nn.Linear(d, 1)
        nn.init.zeros_(self.pool_score.weight)
        nn.init.zeros_(self.pool_score.bias)
        if config.out_dim != config.image_dim:
            raise ValueError("out_dim must equal image_dim (the pooled skip path)")
        self.pool_scale = nn.Parameter(torch.ones(config.image_dim))
        self.lstm: nn.Module | None = None
        if config.text_model == "lstm":
            self.lstm = LSTMTextNet(**config.lstm)

    def text_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids -> LSTM states (only for the LSTM text model)."""
        assert self.lstm is not None
        out: torch.Tensor = self.lstm(ids, mask)
        return out

    def forward(
        self,
        image: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """image (B, 49, image_dim); text (B, T, text_dim) with text_mask (B, T) True where a
        token is real. Returns (B, out_dim) unit vectors (float32)."""
        if image is None and text is None:
            raise ValueError("fusion needs image tokens, text tokens or both")
        mode = "fused" if image is not None and text is not None else (
            "image" if image is not None else "text")
        parts: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        ref = image if image is not None else text
        assert ref is not None
        batch = ref.shape[0]
        cls = self.cls[MODES.index(mode)].expand(batch, 1, -1)
        parts.append(cls)
        masks.append(torch.ones(batch, 1, dtype=torch.bool, device=ref.device))
        if image is not None:
            x = self.image_in(image.float()) + self.image_pos + self.modality[0]
            parts.append(x)
            masks.append(torch.ones(batch, x.shape[1], dtype=torch.bool, device=ref.device))
        if text is not None:
            tokens = text.shape[1]
            if tokens > self.config.max_text_tokens:
                raise ValueError(f"{tokens} text tokens; the model takes at most "
                                 f"{self.config.max_text_tokens}")
            x = self.text_in(text.float()) + self.text_pos[:tokens] + self.modality[1]
            parts.append(x)
            if text_mask is None:
                text_mask = torch.ones(batch, tokens, dtype=torch.bool, device=ref.device)
            masks.append(text_mask.bool())
        seq = torch.cat(parts, dim=1)
        valid = torch.cat(masks, dim=1)
        out = self.encoder(seq, src_key_padding_mask=~valid)
        pooled = self.norm(out[:, 0])
        vec = self.heads[mode](pooled)
        if image is not None:
            scores = self.pool_score(out[:, 1 : 1 + image.shape[1]]).squeeze(-1)
            weights = torch.softmax(scores, dim=1).unsqueeze(-1)
            skip = (weights * image.float()).sum(dim=1) * self.pool_scale
            vec = vec + nn.functional.normalize(skip, dim=-1)
        return nn.functional.normalize(vec.float(), dim=-1)


@dataclass
class FusionInput:
    """One element: (49, image_dim) image tokens and/or (T, text_dim) text tokens (for the
    LSTM model: (T,) token ids), with text_mask (T,) when text is given."""

    image: torch.Tensor | None = None
    text: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None


class FusionEncoder(EncoderModel[FusionInput, np.ndarray]):
    """The trained fusion model behind the encoder template (locking, device, warm-up)."""

    name = "fusion"

    def __init__(self, checkpoint: str | Path | dict[str, Any], device: str = "auto") -> None:
        super().__init__(device)
        if isinstance(checkpoint, dict):
            self.checkpoint_path: Path | None = None
            ckpt = checkpoint
        else:
            self.checkpoint_path = Path(checkpoint)
            ckpt = load_checkpoint(self.checkpoint_path)
        self.config = FusionConfig.from_dict(ckpt["config"])
        self.dim = self.config.out_dim
        self.version = str(ckpt.get("model_version") or state_hash(ckpt["model"]))
        self.info = {k: ckpt.get(k) for k in ("model_version", "data", "settings", "seed",
                                              "epoch", "command")}
        self._state: dict[str, torch.Tensor] | None = ckpt["model"]
        self._model: FusionModel | None = None

    @classmethod
    def untrained(cls, config: FusionConfig, seed: int = 0, device: str = "auto"
                  ) -> FusionEncoder:
        """Freshly initialised weights (seeded; the global RNG is left alone): the
        'fused untrained' baseline."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            state = FusionModel(config).state_dict()
        return cls({"format": CHECKPOINT_FORMAT, "config": asdict(config), "model": state,
                    "model_version": f"fusion-untrained-s{seed}", "seed": seed}, device)

    @property
    def model(self) -> FusionModel:
        """The torch module (loaded)."""
        self.load()
        assert self._model is not None
        return self._model

    def _load(self) -> nn.Module:
        model = FusionModel(self.config)
        assert self._state is not None
        model.load_state_dict({k: v.float() for k, v in self._state.items()}, strict=True)
        self._state = None
        model.to(self.device)
        self._model = model
        return model

    def _dummy_batch(self) -> list[FusionInput]:
        c = self.config
        text = (torch.ones(2, dtype=torch.long) if c.text_model == "lstm"
                else torch.zeros(1, c.text_dim))
        return [FusionInput(torch.zeros(c.image_tokens, c.image_dim), text,
                            torch.ones(text.shape[0], dtype=torch.bool)),
                FusionInput(torch.zeros(c.image_tokens, c.image_dim)),
                FusionInput(None, text, torch.ones(text.shape[0], dtype=torch.bool))]

    def _encode(self, inputs: list[FusionInput]) -> np.ndarray:
        out = torch.zeros(len(inputs), self.dim)
        groups: dict[tuple[bool, bool], list[int]] = {}
        for i, x in enumerate(inputs):
            if x.image is None and x.text is None:
                raise ValueError(f"element {i} has neither image nor text tokens")
            groups.setdefault((x.image is not None, x.text is not None), []).append(i)
        for (has_image, has_text), rows in groups.items():
            image = (torch.stack([inputs[i].image for i in rows]).to(self.device)  # type: ignore[misc]
                     if has_image else None)
            text = mask = None
            if has_text:
                text, mask = self._pad_text([inputs[i] for i in rows])
            out[rows] = self._forward(image, text, mask).cpu()
        return l2_normalize(out)

    def _forward(self, image: torch.Tensor | None, text: torch.Tensor | None,
                 mask: torch.Tensor | None) -> torch.Tensor:
        assert self._model is not None
        if text is not None and self._model.lstm is not None:
            assert mask is not None
            text = self._model.text_tokens(text, mask)
        return self._model(image, text, mask)

    def _pad_text(self, items: Sequence[FusionInput]) -> tuple[torch.Tensor, torch.Tensor]:
        limit = self.config.max_text_tokens
        seqs = [x.text[:limit] for x in items]  # type: ignore[index]
        longest = max(1, max(s.shape[0] for s in seqs))
        shape = (len(seqs), longest, *seqs[0].shape[1:])
        text = torch.zeros(shape, dtype=seqs[0].dtype)
        mask = torch.zeros(len(seqs), longest, dtype=torch.bool)
        for r, (s, x) in enumerate(zip(seqs, items, strict=True)):
            text[r, : s.shape[0]] = s
            m = x.text_mask[:limit] if x.text_mask is not None else torch.ones(s.shape[0])
            mask[r, : s.shape[0]] = m.bool()
        return text.to(self.device), mask.to(self.device)
