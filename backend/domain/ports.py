"""What the domain needs from the encoder side. `encoders.worker.EncoderWorker` (in-process)
and the remote encoder client both satisfy it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL.Image import Image


class VectorEncoder(Protocol):
    @property
    def model_version(self) -> str: ...

    @property
    def dims(self) -> dict[str, int]: ...

    def start(self) -> None:
        """Load the models, warm them up and start the batcher (idempotent, blocking)."""
        ...

    async def stop(self) -> None: ...

    async def encode(self, image: Image | None, text: str | None) -> dict[str, np.ndarray]:
        """Vectors for one query, through the dynamic batcher (bounded queue)."""
        ...

    def encode_many(
        self, images: Sequence[Image | None], texts: Sequence[str | None]
    ) -> list[dict[str, np.ndarray]]:
        """Vectors for many catalog items at once (bulk indexing, no queue)."""
        ...
