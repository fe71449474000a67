"""The template every encoder model follows.

The public `load()` / `encode()` own the parts that are easy to get wrong once per model:
locking, device choice, eval mode, warm-up and `torch.inference_mode()`. A model implements
only `_load()` (build the network on a device), `_encode()` (one batch) and `_dummy_batch()`
(the warm-up input).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Generic, ParamSpec, TypeVar

import numpy as np
import torch

__all__ = ["EncoderModel", "l2_normalize", "resolve_device"]

log = logging.getLogger(__name__)

InputT = TypeVar("InputT")
OutputT = TypeVar("OutputT")
P = ParamSpec("P")
R = TypeVar("R")


def resolve_device(device: str) -> torch.device:
    """'auto' -> the first CUDA GPU if there is one, else CPU. An explicit CUDA device that
    is not there fails now rather than on the first request."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return resolved


def l2_normalize(x: torch.Tensor) -> np.ndarray:
    """Rows -> unit length, computed in float32 (fp16 norms lose precision), as numpy."""
    x = x.float()
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows -> unit length (numpy, float32, C-contiguous): the encoders' output contract."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


class EncoderModel(ABC, Generic[InputT, OutputT]):
    """Base class: `load()` once (thread-safe, idempotent), then `encode(batch)`."""

    name: str
    dim: int

    def __init__(self, device: str = "auto") -> None:
        self.requested_device = device
        self.device = torch.device("cpu")
        self.load_seconds: float | None = None
        self._loaded = False
        self._load_lock = threading.Lock()
        # One batch at a time per model: HF fast tokenizers are not re-entrant ("Already
        # borrowed") and concurrent forwards would only fight over the same cores.
        self._infer_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def half(self) -> bool:
        """fp16 weights and activations on a GPU; fp32 on CPU, where fp16 is slower."""
        return self.device.type == "cuda"

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.half else torch.float32

    def load(self) -> None:
        """Build the model on its device, switch to eval mode and run one dummy batch so the
        first real request does not pay for lazy initialisation."""
        if self._loaded:
            return
        with self._load_lock:
            if self._loaded:
                return
            start = time.perf_counter()
            self.device = self._choose_device()
            module = self._load()
            if module is not None:
                # Inference only: no dropout, frozen batch-norm statistics, no gradients.
                module.eval()
                module.requires_grad_(False)
            with self._infer_lock, torch.inference_mode():
                self._encode(self._dummy_batch())
            self.load_seconds = time.perf_counter() - start
            self._loaded = True
            log.info("loaded %s on %s in %.2fs", self.name, self.device, self.load_seconds)

    def encode(self, inputs: Sequence[InputT]) -> OutputT:
        """One batch, in one forward pass."""
        return self._infer(self._encode, list(inputs))

    def _infer(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run `fn` loaded, serialised and under inference mode (for extra entry points
        such as the image model's tokens and crops)."""
        self.load()
        with self._infer_lock, torch.inference_mode():
            return fn(*args, **kwargs)

    def _choose_device(self) -> torch.device:
        return resolve_device(self.requested_device)

    @abstractmethod
    def _load(self) -> torch.nn.Module | None:
        """Build the network on `self.device` (in fp16 when `self.half`) and return it, so
        the template can switch it to inference; None for a model that is not torch."""

    @abstractmethod
    def _encode(self, inputs: list[InputT]) -> OutputT:
        """One batch. Runs under inference mode and the inference lock."""

    @abstractmethod
    def _dummy_batch(self) -> list[InputT]:
        """A small representative batch for warm-up."""

    def __repr__(self) -> str:
        state = f"on {self.device}" if self._loaded else "not loaded"
        return f"{type(self).__name__}({self.name!r}, dim={self.dim}, {state})"
