"""The in-process encoder worker: a ProductEncoder behind a DynamicBatcher.

Queries go through `encode` (batched across concurrent requests, bounded queue); bulk
indexing goes through `encode_many` (direct, fixed-size chunks, no queue). Text-only queries
have their own batcher (and thread): a text search costs milliseconds and must not wait
behind a batch of photos, which can take hundreds on a CPU. The same object
can back a standalone EncoderService on a GPU host.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL.Image import Image

from encoders.batcher import DynamicBatcher
from encoders.model import ProductEncoder
from encoders.priority import lower_this_thread, run_heavy

__all__ = ["EncoderWorker"]

Vectors = dict[str, np.ndarray]
_Request = tuple[Image | None, str | None]


class EncoderWorker:
    def __init__(
        self,
        encoder: ProductEncoder,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        name: str = "encoder",
    ) -> None:
        self.encoder = encoder
        self.max_batch_size = max_batch_size
        # Photo batches run at low CPU priority (encoders.priority); text batches do not.
        self.batcher: DynamicBatcher[_Request, Vectors] = DynamicBatcher(
            self._run_batch, max_batch_size, max_wait_ms, max_queue, name, low_priority=True
        )
        self.text_batcher: DynamicBatcher[_Request, Vectors] = DynamicBatcher(
            self._run_batch, max_batch_size, max_wait_ms, max_queue, f"{name}-text"
        )

    @property
    def model_version(self) -> str:
        return self.encoder.model_version

    @property
    def dims(self) -> dict[str, int]:
        return dict(self.encoder.dims)

    @property
    def queue_depth(self) -> int:
        return self.batcher.queue_depth + self.text_batcher.queue_depth

    @property
    def on_batch(self) -> Callable[[int], None] | None:
        return self.batcher.on_batch

    @on_batch.setter
    def on_batch(self, hook: Callable[[int], None] | None) -> None:
        self.batcher.on_batch = hook
        self.text_batcher.on_batch = hook

    def start(self) -> None:
        """Load and warm up the models, then start the batch thread. Blocking (seconds):
        from async code, `await asyncio.to_thread(worker.start)`."""
        image_model = getattr(self.encoder, "image", None)
        if image_model is not None and hasattr(image_model, "load"):
            # Loaded from a low-priority thread: the threads its runtime starts for the
            # forward pass (ONNX Runtime's pool) inherit that priority.
            loader = threading.Thread(target=_load_low_priority, args=(image_model,),
                                      name="image-model-load")
            loader.start()
            loader.join()
        self.encoder.load()
        self.batcher.start()
        self.text_batcher.start()

    async def stop(self) -> None:
        """Finish the requests already queued, then stop the batch threads."""
        await self.batcher.stop()
        await self.text_batcher.stop()

    async def encode(self, image: Image | None, text: str | None) -> Vectors:
        """Vectors for one query: "image" and/or "text" (whichever inputs were given)."""
        if image is None and text is None:
            raise ValueError("nothing to encode: give an image, a text or both")
        if image is None:
            return await self.text_batcher.submit((None, text))
        # Resize on a pool thread so it overlaps the batch thread's forward pass.
        image = await run_heavy(self.encoder.prepare_image, image)
        return await self.batcher.submit((image, text))

    def encode_many(
        self, images: Sequence[Image | None], texts: Sequence[str | None]
    ) -> list[Vectors]:
        """Vectors for many items, `max_batch_size` at a time, on the calling thread."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        out: list[Vectors] = []
        step = self.max_batch_size
        for start in range(0, len(images), step):
            out.extend(
                self.encoder.encode_batch(images[start : start + step], texts[start : start + step])
            )
        return out

    def _run_batch(self, requests: list[_Request]) -> list[Vectors]:
        return self.encoder.encode_batch([r[0] for r in requests], [r[1] for r in requests])

    def __repr__(self) -> str:
        return f"EncoderWorker({self.encoder!r}, {self.batcher!r})"


def _load_low_priority(model: Any) -> None:
    lower_this_thread()
    model.load()
