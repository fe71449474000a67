"""RemoteEncoder: the VectorEncoder a search server uses when its models run elsewhere, on
an encoder worker (`prodsearch worker`) reached over gRPC (`PRODSEARCH_ENCODER__WORKER_URL`).

Query images are letterboxed here to the worker's input size and sent as raw RGB pixels
(150 KB at 224 x 224): no JPEG re-encode and decode, and the worker's own letterbox is then
a no-op, so the vectors equal what the in-process encoder gives. Bulk indexing
(`encode_many`) sends chunks of the worker's batch size with two calls in flight, so the
transfer of one chunk overlaps the encoding of the previous one.

Worker errors come back as the domain's exceptions (RESOURCE_EXHAUSTED -> QueueFull,
INVALID_ARGUMENT -> InvalidInput, UNAVAILABLE -> NotReady, DEADLINE_EXCEEDED -> TimeoutError),
so the search server's one error table maps them as if encoding had happened in-process.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL.Image import Image

from backend import errors
from backend.transport.grpc.encoder_service import ENCODER_SERVICE, vectors_from_proto
from backend.transport.grpc.generated.product_search.v1 import encoder_pb2 as pb
from backend.transport.grpc.generated.product_search.v1 import encoder_pb2_grpc as rpc
from encoders.batcher import QueueFull
from encoders.preprocess import letterbox, to_rgb

__all__ = ["RemoteEncoder"]

_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
]
_IN_FLIGHT = 2


def _error(exc: grpc.RpcError) -> Exception:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or str(code)
    return _error_for(code, details)


def _error_for(code: grpc.StatusCode, details: str) -> Exception:
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return QueueFull(f"encoder worker: {details}")
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return errors.InvalidInput(details)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return TimeoutError(f"encoder worker: {details}")
    if code is grpc.StatusCode.UNAVAILABLE:
        return errors.NotReady(f"encoder worker unavailable: {details}")
    return RuntimeError(f"encoder worker failed ({code.name}): {details}")


_CODES = {c.value[0]: c for c in grpc.StatusCode}


class RemoteEncoder:
    """VectorEncoder over the Encoder gRPC service of one worker (or a load balancer in
    front of several: the calls carry no state)."""

    def __init__(
        self, worker_url: str, *, timeout_s: float = 10.0, ready_timeout_s: float = 300.0
    ) -> None:
        if not worker_url:
            raise errors.ConfigError("encoder worker URL is empty")
        self.worker_url = worker_url.removeprefix("grpc://").removeprefix("http://")
        self.timeout_s = timeout_s
        self.ready_timeout_s = ready_timeout_s
        self._channel = grpc.insecure_channel(self.worker_url, options=_OPTIONS)
        self._stub = rpc.EncoderStub(self._channel)
        self._info: pb.EncoderInfo | None = None
        self._info_lock = threading.Lock()
        # One aio channel per event loop that calls `encode` (usually exactly one).
        self._aio: dict[int, tuple[asyncio.AbstractEventLoop, Any, rpc.EncoderStub]] = {}

    # -- VectorEncoder -----------------------------------------------------------------

    @property
    def info(self) -> pb.EncoderInfo:
        if self._info is None:
            with self._info_lock:
                if self._info is None:
                    try:
                        self._info = self._stub.GetInfo(
                            pb.GetInfoRequest(),
                            timeout=self.ready_timeout_s,
                            wait_for_ready=True,
                        )
                    except grpc.RpcError as exc:
                        raise _error(exc) from exc
        return self._info

    @property
    def model_version(self) -> str:
        return self.info.model_version

    @property
    def dims(self) -> dict[str, int]:
        return dict(self.info.dims)

    def start(self) -> None:
        """Wait (up to `ready_timeout_s`) until the worker reports SERVING, i.e. its models
        are warm, then read its model version and dimensions."""
        health_stub = health_pb2_grpc.HealthStub(self._channel)
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                reply = health_stub.Check(
                    health_pb2.HealthCheckRequest(service=ENCODER_SERVICE),
                    timeout=max(0.1, min(5.0, remaining)),
                    wait_for_ready=True,
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError as exc:
                if remaining <= 0:
                    raise _error(exc) from exc
            if remaining <= 0:
                raise errors.NotReady(f"encoder worker {self.worker_url} is not serving")
            time.sleep(0.2)
        _ = self.info

    async def stop(self) -> None:
        for _loop, channel, _stub in list(self._aio.values()):
            await channel.close()
        self._aio.clear()
        self._channel.close()

    async def encode(self, image: Image | None, text: str | None) -> dict[str, np.ndarray]:
        if image is None and text is None:
            raise ValueError("nothing to encode: give an image, a text or both")
        item = pb.EncodeItem()
        if text is not None:
            item.text = text
        if image is not None:
            item.pixels.CopyFrom(await asyncio.to_thread(self._pixels, image))
        try:
            reply = await self._aio_stub().Encode(
                pb.EncodeRequest(item=item), timeout=self.timeout_s
            )
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        return vectors_from_proto(reply.vectors)

    def encode_many(
        self, images: Sequence[Image | None], texts: Sequence[str | None]
    ) -> list[dict[str, np.ndarray]]:
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        step = max(1, int(self.info.max_batch_size))
        out: list[dict[str, np.ndarray]] = []
        pending: deque[Any] = deque()

        def collect() -> None:
            try:
                reply = pending.popleft().result()
            except grpc.RpcError as exc:
                raise _error(exc) from exc
            for result in reply.results:
                if result.error_code:
                    code = _CODES.get(result.error_code, grpc.StatusCode.UNKNOWN)
                    raise _error_for(code, result.error_message)
                out.append(vectors_from_proto(result.vectors))

        for start in range(0, len(images), step):
            items = []
            for img, txt in zip(
                images[start : start + step], texts[start : start + step], strict=True
            ):
                item = pb.EncodeItem()
                if txt is not None:
                    item.text = txt
                if img is not None:
                    item.pixels.CopyFrom(self._pixels(img))
                items.append(item)
            pending.append(
                self._stub.EncodeBatch.future(
                    pb.EncodeBatchRequest(items=items), timeout=self.timeout_s * 6
                )
            )
            if len(pending) >= _IN_FLIGHT:
                collect()
        while pending:
            collect()
        return out

    # -- internals ---------------------------------------------------------------------

    def _pixels(self, image: Image) -> pb.RawImage:
        size = int(self.info.image_input_size) or 224
        boxed = letterbox(image if image.mode == "RGB" else to_rgb(image), size)
        return pb.RawImage(width=boxed.width, height=boxed.height, rgb=boxed.tobytes())

    def _aio_stub(self) -> rpc.EncoderStub:
        loop = asyncio.get_running_loop()
        entry = self._aio.get(id(loop))
        if entry is None or entry[0] is not loop:
            channel = grpc.aio.insecure_channel(self.worker_url, options=_OPTIONS)
            entry = (loop, channel, rpc.EncoderStub(channel))
            self._aio[id(loop)] = entry
        return entry[2]

    def __repr__(self) -> str:
        return f"RemoteEncoder({self.worker_url!r})"
