"""Server-side image paths: only files under allow-listed folders, opened safely.

A client (an admin key, or a catalog file given to `prodsearch ingest`) may name an image by
path instead of uploading it. Without care that reads any file the server can read
(/etc/shadow, /proc/self/environ, `../../`), hangs on a FIFO, or reads a huge file whole.
Here a path is accepted only when, after resolving symlinks, it lies under one of the
configured roots; the file is then opened without following a final symlink and without
blocking, and the *opened* file is checked (a plain file, under the size cap, and - where
/proc shows it - really under a root), so swapping a path after the check gains nothing.

Every refusal is the same `ImagePathRefused` with no detail, so a caller cannot tell "does
not exist" from "exists but forbidden".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from encoders.preprocess import ImageDecodeError, local_image_path, open_image_file


class ImagePathRefused(Exception):
    """Not an allowed, readable image file. Deliberately says nothing more."""


class ImagePathPolicy:
    def __init__(self, roots: Sequence[Path], max_bytes: int) -> None:
        self._roots = tuple(dict.fromkeys(Path(os.path.realpath(r)) for r in roots))
        self._max_bytes = max_bytes

    @property
    def roots(self) -> tuple[Path, ...]:
        return self._roots

    def with_roots(self, *extra: Path) -> ImagePathPolicy:
        return ImagePathPolicy([*self._roots, *extra], self._max_bytes)

    def confine(self, uri: str, base: Path | None = None) -> str:
        """The canonical (resolved, absolute) path of an allowed image file named by `uri`:
        a path or a file:// URI (percent-encoded, host empty or 'localhost'). A relative
        path is taken relative to `base`, and refused when there is none.
        ImagePathRefused otherwise."""
        try:
            raw = local_image_path(uri.strip())
        except ImageDecodeError:
            raise ImagePathRefused() from None
        if not raw or "\x00" in raw:
            raise ImagePathRefused()
        path = Path(raw)
        if not path.is_absolute():
            if base is None:
                raise ImagePathRefused()
            path = base / path
        resolved = Path(os.path.realpath(path))
        if not self._inside(resolved):
            raise ImagePathRefused()
        try:
            fd = open_image_file(str(resolved), max_bytes=self._max_bytes)
        except (OSError, ImageDecodeError):
            raise ImagePathRefused() from None
        try:
            opened = _fd_path(fd)
        finally:
            os.close(fd)
        if opened is not None and not self._inside(opened):
            raise ImagePathRefused()
        return str(resolved)

    def _inside(self, path: Path) -> bool:
        return any(path == root or path.is_relative_to(root) for root in self._roots)


def _fd_path(fd: int) -> Path | None:
    """Where an open file really is (Linux /proc); None where the platform cannot say."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None
