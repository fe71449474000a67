"""The model variants the benchmarks compare, the models they share, and an on-disk cache of
gallery features.

Image variants (one vector per image, cosine similarity ranks):
    raw-pixels       the image letterboxed to 16x16 on white, centred pixels: the floor
    backbone         EfficientNet-Lite0, global average pool (no fusion); the network
                     the run's `image_model` names (`--image-model`, default pretrained)
    photo-cnn        EfficientNet-Lite0 with its tail trained for photos
                     (encoders/checkpoints/photo-cnn.pt), whatever `image_model` says
    fused-untrained  the fusion model with freshly initialised weights
    fused-trained    the fusion model from its trained checkpoint
Text variants: one per text encoder in `encoders.text.TEXT_ENCODERS` (minilm, multilingual,
and whatever else registers there, e.g. an LSTM).

A fused variant is loaded by `FUSED_LOADERS[name](device)`: it returns an object with
`encode_batch(images, texts) -> list[dict[str, np.ndarray]]` whose dicts carry a "fused"
vector (what `encoders.model.ProductEncoder` does once the fusion model is in), and
`model_version`. A loader raises `Unavailable` with a reason when the model is not there;
the benchmark then skips the variant and says why in its JSON.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from encoders.preprocess import letterbox, to_rgb

__all__ = [
    "FUSED_LOADERS",
    "IMAGE_VARIANTS",
    "Context",
    "FeatureCache",
    "ImageVariant",
    "Unavailable",
    "text_variants",
]

BATCH = 32


class Unavailable(RuntimeError):
    """A variant cannot run here (its model is not built yet, ...); the message says why."""


class JointEncoder(Protocol):
    model_version: str
    dims: dict[str, int]

    def encode_batch(self, images: Sequence[Image.Image | None],
                     texts: Sequence[str | None]) -> list[dict[str, np.ndarray]]: ...


def _load_fused_trained(device: str) -> JointEncoder:
    from encoders.checkpoints import FusionCheckpoint
    from encoders.model import ProductEncoder

    encoder = ProductEncoder(device=device, fusion_checkpoint=FusionCheckpoint.SHIPPED)
    if "fused" not in encoder.dims:
        raise Unavailable("ProductEncoder has no 'fused' vector yet (no trained fusion model)")
    encoder.load()
    return encoder


def _load_fused_untrained(device: str) -> JointEncoder:
    from encoders.checkpoints import FusionCheckpoint
    from encoders.model import ProductEncoder

    encoder = ProductEncoder(device=device, fusion_checkpoint=FusionCheckpoint.UNTRAINED)
    if "fused" not in encoder.dims:
        raise Unavailable("ProductEncoder has no 'fused' vector yet")
    encoder.load()
    return encoder


# name -> loader; adding a fused variant is one line here.
FUSED_LOADERS: dict[str, Callable[[str], JointEncoder]] = {
    "fused-untrained": _load_fused_untrained,
    "fused-trained": _load_fused_trained,
}


class Context:
    """Models shared by every task of one run, loaded on first use, and the feature cache."""

    def __init__(self, out_dir: Path, device: str = "cpu", use_cache: bool = True,
                 image_model: str = "efficientnet_lite0") -> None:
        self.out_dir = out_dir
        self.device = device
        self.image_model = image_model
        self.cache = FeatureCache(out_dir / "cache") if use_cache else None
        self._images: dict[str, Any] = {}
        self._texts: dict[str, Any] = {}
        self._fused: dict[str, JointEncoder | Unavailable] = {}

    def backbone(self) -> Any:
        """The run's CNN (`image_model`): the dense vectors of every task and photo set."""
        return self.image_encoder(self.image_model)

    def image_encoder(self, name: str) -> Any:
        if name not in self._images:
            from encoders.selection import make_image_encoder, resolve_runtime

            # On a CPU, the runtime search uses (same vectors to cosine >= 0.9999, ~4x faster).
            runtime = resolve_runtime("onnx" if self.device == "cpu" else "torch", self.device)
            try:
                encoder = make_image_encoder(name, self.device, runtime)
            except FileNotFoundError as exc:
                raise Unavailable(str(exc)) from exc
            encoder.load()
            self._images[name] = encoder
        return self._images[name]

    def image_version(self, name: str) -> str:
        """The image network's tag as in the model version (`effl0`, `effl0p-<tail>`)."""
        from encoders.model import PIPELINE_VERSION

        tag = getattr(self.image_encoder(name), "version_tag", None) or "effl0"
        return f"{tag}.v{PIPELINE_VERSION}"

    def text_encoder(self, name: str) -> Any:
        if name not in self._texts:
            from encoders.text import make_text_encoder

            encoder = make_text_encoder(name, device=self.device)
            encoder.load()
            self._texts[name] = encoder
        return self._texts[name]

    def fused(self, name: str) -> JointEncoder:
        if name not in self._fused:
            try:
                self._fused[name] = FUSED_LOADERS[name](self.device)
            except Unavailable as exc:
                self._fused[name] = exc
        found = self._fused[name]
        if isinstance(found, Unavailable):
            raise found
        return found


class FeatureCache:
    """Gallery features on disk, one .npy per (variant version, data set, items) key."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        path = self.path(key)
        if path.is_file():
            return np.load(path)
        return None

    def put(self, key: str, array: np.ndarray) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.tmp.npy"
        np.save(tmp, array)
        tmp.replace(self.path(key))


def cache_key(version: str, dataset: str, ids: Sequence[str]) -> str:
    digest = hashlib.sha1("\n".join(ids).encode("utf-8")).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in version)
    return f"{safe}-{dataset}-{len(ids)}-{digest}"


def batched(fn: Callable[[list[Any]], np.ndarray], inputs: Sequence[Any], desc: str,
            batch: int = BATCH) -> np.ndarray:
    """fn over `inputs` in batches, with a progress bar (stderr); rows stacked."""
    parts = []
    with tqdm(total=len(inputs), desc=desc, unit="img", leave=False) as bar:
        for i in range(0, len(inputs), batch):
            chunk = list(inputs[i : i + batch])
            parts.append(np.asarray(fn(chunk), dtype=np.float32))
            bar.update(len(chunk))
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def raw_pixels(images: Sequence[Image.Image], side: int = 16) -> np.ndarray:
    """Each image letterboxed to side x side on white, flattened, centred, L2-normalised."""
    rows = []
    for img in images:
        small = letterbox(to_rgb(img) if img.mode != "RGB" else img, side)
        rows.append(np.asarray(small, dtype=np.float32).reshape(-1))
    x = np.stack(rows) if rows else np.zeros((0, side * side * 3), np.float32)
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


class ImageVariant:
    """An image embedding: `embed` for queries, `embed_gallery` for catalog items (a fused
    model also sees the item's text there), `embed_crops` for multi-crop queries."""

    name = ""
    supports_crops = False

    def version(self, ctx: Context) -> str:
        raise NotImplementedError

    def check(self, ctx: Context) -> None:
        """Raise Unavailable when the variant cannot run."""

    def embed(self, ctx: Context, images: Sequence[Image.Image]) -> np.ndarray:
        raise NotImplementedError

    def embed_gallery(self, ctx: Context, images: Sequence[Image.Image],
                      texts: Sequence[str] | None = None) -> np.ndarray:
        return self.embed(ctx, images)

    def embed_crops(self, ctx: Context, image: Image.Image) -> np.ndarray:
        raise Unavailable(f"{self.name} has no multi-crop embedding")


class RawPixels(ImageVariant):
    name = "raw-pixels"
    supports_crops = True

    def version(self, ctx: Context) -> str:
        return "raw16"

    def embed(self, ctx: Context, images: Sequence[Image.Image]) -> np.ndarray:
        return raw_pixels(images)

    def embed_crops(self, ctx: Context, image: Image.Image) -> np.ndarray:
        from encoders.image import crop_boxes

        image = to_rgb(image) if image.mode != "RGB" else image
        boxes = crop_boxes(*image.size)
        return raw_pixels([image.crop(box) for box in boxes])


class Backbone(ImageVariant):
    name = "backbone"
    supports_crops = True
    # None: the run's image model (Context.image_model).
    image_model: str | None = None

    def _model(self, ctx: Context) -> str:
        return self.image_model or ctx.image_model

    def version(self, ctx: Context) -> str:
        return ctx.image_version(self._model(ctx))

    def check(self, ctx: Context) -> None:
        ctx.image_encoder(self._model(ctx))

    def embed(self, ctx: Context, images: Sequence[Image.Image]) -> np.ndarray:
        out: np.ndarray = ctx.image_encoder(self._model(ctx)).encode(images)
        return out

    def embed_crops(self, ctx: Context, image: Image.Image) -> np.ndarray:
        vectors, _ = ctx.image_encoder(self._model(ctx)).encode_crops(image)
        return np.asarray(vectors)


class PhotoCnn(Backbone):
    """The CNN with its tail trained for photos (`prodsearch train --task photo-cnn`)."""

    name = "photo-cnn"
    image_model = "efficientnet_lite0_photo"


class Fused(ImageVariant):
    supports_crops = True

    def __init__(self, name: str) -> None:
        self.name = name

    def version(self, ctx: Context) -> str:
        version = f"{self.name}-{ctx.fused(self.name).model_version}"
        if self.name == "fused-untrained":
            # Its version names only the seed: key the cache on the architecture's source too.
            import encoders.fusion

            source = Path(encoders.fusion.__file__).read_bytes()
            version += "-" + hashlib.sha1(source).hexdigest()[:8]
        return version

    def check(self, ctx: Context) -> None:
        ctx.fused(self.name)

    def _fused(self, ctx: Context, images: Sequence[Image.Image | None],
               texts: Sequence[str | None]) -> np.ndarray:
        outs = ctx.fused(self.name).encode_batch(images, texts)
        if any("fused" not in o for o in outs):
            raise Unavailable(f"{self.name}: encode_batch returned no 'fused' vector")
        return np.stack([o["fused"] for o in outs]).astype(np.float32)

    def embed(self, ctx: Context, images: Sequence[Image.Image]) -> np.ndarray:
        return self._fused(ctx, images, [None] * len(images))

    def embed_gallery(self, ctx: Context, images: Sequence[Image.Image],
                      texts: Sequence[str] | None = None) -> np.ndarray:
        return self._fused(ctx, images, list(texts) if texts is not None
                           else [None] * len(images))

    def embed_texts(self, ctx: Context, texts: Sequence[str]) -> np.ndarray:
        return self._fused(ctx, [None] * len(texts), texts)

    def embed_crops(self, ctx: Context, image: Image.Image) -> np.ndarray:
        """Image-only fused vectors of the whole photo and the backbone's crop windows."""
        from encoders.image import crop_boxes

        rgb = to_rgb(image) if image.mode != "RGB" else image
        return self.embed(ctx, [rgb, *(rgb.crop(box) for box in crop_boxes(*rgb.size)[1:])])


IMAGE_VARIANTS: dict[str, ImageVariant] = {
    "raw-pixels": RawPixels(),
    "backbone": Backbone(),
    "photo-cnn": PhotoCnn(),
    **{name: Fused(name) for name in FUSED_LOADERS},
}


def text_variants() -> list[str]:
    from encoders.text import TEXT_ENCODERS

    return list(TEXT_ENCODERS)


def gallery_features(ctx: Context, variant: ImageVariant, dataset: str, ids: Sequence[str],
                     load: Callable[[int], Image.Image],
                     texts: Sequence[str] | None = None) -> tuple[np.ndarray, bool]:
    """(features, came from the cache) of the gallery items `ids` (loaded by index)."""
    key = cache_key(variant.version(ctx), dataset, ids)
    if ctx.cache is not None:
        cached = ctx.cache.get(key)
        if cached is not None and cached.shape[0] == len(ids):
            return cached, True
    parts = []
    with tqdm(total=len(ids), desc=f"{variant.name} gallery", unit="img", leave=False) as bar:
        for i in range(0, len(ids), BATCH):
            index = range(i, min(len(ids), i + BATCH))
            images = [load(j) for j in index]
            chunk_texts = [texts[j] for j in index] if texts is not None else None
            parts.append(variant.embed_gallery(ctx, images, chunk_texts))
            bar.update(len(images))
    features = np.concatenate(parts).astype(np.float32)
    if ctx.cache is not None:
        ctx.cache.put(key, features)
    return features, False


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 2)
