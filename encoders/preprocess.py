"""Image decoding and tensor preprocessing shared by every image model.

`decode_image` is the only place untrusted image bytes are parsed: it bounds the work an
attacker can cause (bytes, pixels, formats) and returns a plain RGB image whatever the
source mode, so the models never see CMYK, 16-bit, palette or alpha data.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import io
import os
import stat
import threading
import time
import warnings
from collections.abc import Sequence
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "EFFICIENTNET_LITE_MEAN",
    "EFFICIENTNET_LITE_STD",
    "ImageDecodeError",
    "decode_image",
    "image_tensor",
    "letterbox",
    "load_image_file",
    "local_image_path",
    "open_image_file",
    "read_image_file",
    "to_rgb",
]

DEFAULT_MAX_BYTES = 10_485_760
DEFAULT_MAX_PIXELS = 40_000_000
# Above this many decoded pixels, freed memory is handed back to the OS after the decode.
_TRIM_ABOVE_PIXELS = 4_000_000
# Largest catalog image file read from disk (config: images.max_file_bytes).
DEFAULT_MAX_FILE_BYTES = 32 * 1024 * 1024

# The EfficientNet-Lite weights were converted from the TensorFlow release, whose builder
# (efficientnet/lite/efficientnet_lite_builder.py) normalises with MEAN_RGB=127 and
# STDDEV_RGB=128 on 0..255 pixels, i.e. roughly mean 0.5 / std 0.5, not the ImageNet
# per-channel statistics the package's README example shows.
EFFICIENTNET_LITE_MEAN = (127.0, 127.0, 127.0)
EFFICIENTNET_LITE_STD = (128.0, 128.0, 128.0)

# Raster formats a product photo can reasonably arrive in. Everything else (EPS goes
# through Ghostscript, PSD, FITS, scientific formats...) is refused: less parser surface.
_ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO", "AVIF")
_WHITE = (255, 255, 255)


class ImageDecodeError(ValueError):
    """The bytes are not a usable image. The message is safe to show to a client."""


def _open_formats() -> list[str]:
    Image.init()
    return [f for f in _ALLOWED_FORMATS if f in Image.OPEN]


def decode_image(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_px: int = 0,
    max_decode_pixels: int | None = None,
) -> Image.Image:
    """Decode untrusted bytes into an RGB image (EXIF orientation applied).

    `draft_px` > 0: the result is reduced (by a whole factor, keeping both sides >=
    `draft_px`) as cheaply as the format allows: a JPEG is decoded at 1/2, 1/4 or 1/8 scale
    (libjpeg's DCT scaling, far cheaper than decoding in full), other formats are box-reduced
    right after decoding, so later steps never work on more pixels than they need.

    `max_decode_pixels`: the most pixels actually decoded. A JPEG above it is decoded at a
    smaller DCT scale when one fits; any other image above it is refused from its header
    size, before any pixel data is decompressed (a 35 KB PNG can declare 36 megapixels).

    Raises ImageDecodeError for empty, over-size, unknown, corrupt or truncated data and for
    images with more than `max_pixels` pixels; both pixel counts are checked from the header.
    """
    if not data:
        raise ImageDecodeError("image is empty")
    if len(data) > max_bytes:
        raise ImageDecodeError(f"image is {len(data)} bytes, more than the limit of {max_bytes}")
    try:
        # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; both mean "bomb".
        # catch_warnings is process-global: at worst a racing thread leaves this filter in
        # place, which only turns the same warning into the same error elsewhere.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_open_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"image has too many pixels (limit {max_pixels})") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            "not a supported image (expected JPEG, PNG, GIF, WebP, BMP, TIFF or AVIF)"
        ) from exc
    except Exception as exc:  # a corrupt header can raise almost anything inside a plugin
        raise ImageDecodeError("image header is corrupt") from exc

    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError("image has no pixels")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} = {width * height} pixels, "
            f"more than the limit of {max_pixels}"
        )
    decode_limit = max_pixels if max_decode_pixels is None else min(max_pixels,
                                                                     max_decode_pixels)
    if img.format == "JPEG":
        scale = _jpeg_scale(width, height, draft_px, decode_limit)
        if scale > 1:
            with contextlib.suppress(Exception):
                # draft() picks the largest power-of-2 scale with a result >= the size asked
                # for: ask for the floor, or an odd width would fall back to full size.
                img.draft("RGB", (max(1, width // scale), max(1, height // scale)))
    decoded_w, decoded_h = img.size
    if decoded_w * decoded_h > decode_limit:
        raise ImageDecodeError(
            f"image is {width}x{height} = {width * height} pixels; at most {decode_limit} "
            f"pixels are decoded: send a smaller image"
        )
    try:
        # Animated GIF/WebP/APNG: the file is positioned on frame 0 after open; load() reads
        # that frame only. load() forces the full decode so truncation surfaces here.
        img.load()
    except Exception as exc:
        raise ImageDecodeError("image data is truncated or corrupt") from exc
    rgb = to_rgb(img)
    del img
    if draft_px > 0 and min(rgb.size) >= 2 * draft_px:
        rgb = rgb.reduce(min(rgb.size) // draft_px)
    if decoded_w * decoded_h > _TRIM_ABOVE_PIXELS:
        release_free_memory()
    return rgb


def _jpeg_scale(width: int, height: int, draft_px: int, decode_limit: int) -> int:
    """The JPEG DCT scale (1, 2, 4 or 8) to decode at: as small as `draft_px` allows, and
    small enough to stay within `decode_limit` pixels when any scale can."""
    scale = 1
    while draft_px > 0 and scale < 8 and min(width, height) // (2 * scale) >= draft_px:
        scale *= 2
    while scale < 8 and -(-width // scale) * -(-height // scale) > decode_limit:
        scale *= 2
    return scale


_libc: ctypes.CDLL | None = None
_trim_lock = threading.Lock()
_last_trim = 0.0


def release_free_memory(min_interval_s: float = 1.0) -> None:
    """Hand memory freed by large decodes back to the OS (glibc `malloc_trim`), at most once
    per `min_interval_s`. Without it, big buffers freed in worker threads stay in glibc's
    per-thread arenas and the process size only ever grows after a run of large images."""
    global _libc, _last_trim
    now = time.monotonic()
    if now - _last_trim < min_interval_s or not _trim_lock.acquire(blocking=False):
        return
    try:
        _last_trim = now
        if _libc is None:
            name = ctypes.util.find_library("c")
            if name is None:
                return
            _libc = ctypes.CDLL(name)
        trim = getattr(_libc, "malloc_trim", None)  # glibc only
        if trim is not None:
            trim(0)
    finally:
        _trim_lock.release()


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> a new RGB image: EXIF orientation applied, alpha on white,
    16-bit and float data scaled to 8 bits."""
    # Broken EXIF must not reject otherwise good pixels.
    with contextlib.suppress(Exception):
        img = ImageOps.exif_transpose(img) or img

    mode = img.mode
    try:
        if mode in ("I", "F") or mode.startswith("I;16"):
            img = _high_depth_to_l(img)
            mode = img.mode
        if mode == "P" or "transparency" in img.info:
            # Palette and tRNS transparency: expand first so the alpha is not lost.
            img = img.convert("RGBA")
            mode = img.mode
        if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
            rgba = img.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, _WHITE)
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            return canvas
        # CMYK (Adobe inversion is handled by the JPEG decoder), YCbCr, L, 1, RGBX, RGB.
        # convert() always returns a copy, which also drops the reference to the source bytes.
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageDecodeError(f"unsupported colour mode {mode!r}") from exc


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer / float greyscale -> 8-bit 'L'."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        finite = arr[np.isfinite(arr)]
        # Float images are either 0..1 or 0..255 by convention.
        if finite.size and float(finite.max()) <= 1.0:
            arr = arr * 255.0
        out = np.clip(np.nan_to_num(arr), 0, 255)
    else:
        wide = arr.astype(np.int64)
        # 'I;16*' is always 16-bit; 'I' is usually a widened 16-bit PNG, but 8-bit data in
        # 'I' would turn black if scaled, so only scale when values exceed 8 bits.
        if img.mode.startswith("I;16") or int(wide.max(initial=0)) > 255:
            out = np.clip(wide, 0, 65535) / 257.0
        else:
            out = np.clip(wide, 0, 255)
    return Image.fromarray(np.rint(out).astype(np.uint8), mode="L")


def load_image_file(path_or_uri: str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                    max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Image.Image:
    """Read a catalog image from a local path or file:// URI and decode it to RGB.

    The file is opened safely (`open_image_file`): never through a symlink, never a FIFO,
    device or directory (so a reader can never hang in open()), at most `max_bytes`.
    FileNotFoundError (with the path) if it does not exist, another OSError if it is not a
    plain readable file, ImageDecodeError if it is too big, not a usable image or the URI
    scheme is not local.
    """
    # Resolved first, so a catalog that names a symlink still loads; the open below refuses
    # a symlink swapped in after that, and anything that is not a plain file.
    path = os.path.realpath(local_image_path(path_or_uri))
    try:
        data = read_image_file(path, max_bytes=max_bytes)
    except FileNotFoundError as exc:
        raise FileNotFoundError(exc.errno, "image file not found", path) from None
    try:
        return decode_image(data, max_bytes=max(len(data), 1), max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{path}: {exc}") from exc


def open_image_file(path: str, *, max_bytes: int) -> int:
    """Open a file for reading the way untrusted paths must be opened; returns the fd.

    O_NOFOLLOW: the last component must not be a symlink (paths are stored resolved, so a
    symlink there was put in after the check). O_NONBLOCK: opening a FIFO returns at once
    instead of waiting for a writer. Then the *opened* file is checked (fstat, no race with
    a path check): a regular file of at most `max_bytes`. OSError (errno ELOOP, EINVAL...)
    or ImageDecodeError otherwise.
    """
    flags = (os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        if info.st_size > max_bytes:
            raise ImageDecodeError(
                f"image file is {info.st_size} bytes, more than the limit of {max_bytes}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_image_file(path: str, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file opened with `open_image_file` (a file that grows past
    `max_bytes` while being read is refused too)."""
    fd = open_image_file(path, max_bytes=max_bytes)
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageDecodeError(f"image file is more than the limit of {max_bytes} bytes")
    return data


def local_image_path(path_or_uri: str) -> str:
    """A local path or a file:// URI (percent-encoded, host empty or 'localhost') -> path."""
    if "://" not in path_or_uri:
        return path_or_uri
    parsed = urlparse(path_or_uri)
    if parsed.scheme.lower() != "file":
        raise ImageDecodeError(
            f"unsupported image URI scheme {parsed.scheme!r}: only local paths and file:// URIs"
        )
    if parsed.netloc.lower() not in ("", "localhost"):
        raise ImageDecodeError("file:// URI on another host is not supported")
    return url2pathname(unquote(parsed.path))


def letterbox(img: Image.Image, size: int, fill: tuple[int, int, int] = _WHITE) -> Image.Image:
    """Fit the whole image inside size x size, centred on a `fill` background."""
    if img.mode != "RGB":
        img = to_rgb(img)
    width, height = img.size
    if width == size and height == size:
        return img
    scale = size / max(width, height)
    new_w = max(1, round(width * scale))
    new_h = max(1, round(height * scale))
    # reducing_gap: a cheap box reduction first for big photos, then bicubic; visually the
    # same, several times faster on 12-megapixel phone pictures.
    resized = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    if new_w == size and new_h == size:
        return resized
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
    return canvas


def image_tensor(
    images: Sequence[Image.Image],
    size: int = 224,
    *,
    mean: Sequence[float] = EFFICIENTNET_LITE_MEAN,
    std: Sequence[float] = EFFICIENTNET_LITE_STD,
) -> torch.Tensor:
    """Images -> float32 tensor (N, 3, size, size), normalised as (pixel - mean) / std on the
    0..255 scale (defaults: EfficientNet-Lite's TensorFlow preprocessing).

    Each image is letterboxed onto white rather than centre-cropped: a crop cuts the ends off
    long products (scarves, shoes, cables) and the parts that tell variants apart are often
    there, while catalog photos are mostly shot on white, so white padding looks like the
    photo's own background instead of adding a new border feature.
    """
    if not images:
        return torch.empty((0, 3, size, size), dtype=torch.float32)
    batch = np.stack([np.asarray(letterbox(img, size), dtype=np.uint8) for img in images])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(torch.float32)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()
