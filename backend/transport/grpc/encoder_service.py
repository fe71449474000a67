"""The encoder worker over gRPC: `product_search.v1.Encoder` in front of an EncoderWorker.

Every item, from `Encode` or `EncodeBatch`, goes through the worker's dynamic batcher, so
requests from many search servers are merged into one forward pass (max batch size / max
wait from settings). Image bytes are decoded on a thread pool (JPEG draft mode down to the
network's input size) while the batch thread runs the model. The queue is bounded: when it
is full the call fails at once with RESOURCE_EXHAUSTED. A caller's deadline is honoured:
when it passes, the call is cancelled and its items are dropped before their batch runs.

`EncoderServer` is the process `prodsearch worker` runs: grpc.aio, health (SERVING only
after the models are loaded and warmed up), reflection, graceful stop.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import grpc
import numpy as np
from PIL import Image

from backend import errors
from backend.transport.grpc.errors import status_for
from backend.transport.grpc.generated.product_search.v1 import encoder_pb2 as pb
from backend.transport.grpc.generated.product_search.v1 import encoder_pb2_grpc as rpc
from backend.transport.grpc.interceptors import MalformedRequestInterceptor
from backend.transport.grpc.serving import (
    NOT_SERVING,
    SERVING,
    ServingHealth,
    bound_port,
    run_until_signalled,
)
from encoders.preprocess import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode_image
from encoders.worker import EncoderWorker

__all__ = ["ENCODER_SERVICE", "EncoderServer", "EncoderServicer", "serve_worker"]

log = logging.getLogger(__name__)

ENCODER_SERVICE = pb.DESCRIPTOR.services_by_name["Encoder"].full_name


def vectors_to_proto(vectors: dict[str, np.ndarray]) -> dict[str, pb.Vector]:
    return {
        name: pb.Vector(dim=int(v.shape[0]), data=np.ascontiguousarray(v, dtype="<f4").tobytes())
        for name, v in vectors.items()
    }


def vectors_from_proto(vectors: Any) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, v in vectors.items():
        arr = np.frombuffer(v.data, dtype="<f4")
        if arr.shape[0] != v.dim:
            raise ValueError(f"vector {name!r}: {arr.shape[0]} values, dim says {v.dim}")
        out[name] = arr.astype(np.float32, copy=True)
    return out


class EncoderServicer(rpc.EncoderServicer):
    def __init__(
        self,
        worker: EncoderWorker,
        *,
        max_image_bytes: int = DEFAULT_MAX_BYTES,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        decode_threads: int = 4,
        runtime: str = "torch",
    ) -> None:
        self.worker = worker
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels
        self.runtime = runtime
        self._pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="encoder-decode")

    @property
    def input_size(self) -> int:
        return int(getattr(self.worker.encoder.image, "input_size", 224))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- items -------------------------------------------------------------------------

    def _image(self, item: pb.EncodeItem) -> Image.Image | None:
        """Decode (bytes) or wrap (pixels) and letterbox to the input size; on a pool
        thread, so it overlaps the batch thread's forward pass."""
        which = item.WhichOneof("image")
        if which is None:
            return None
        if which == "image_bytes":
            img = decode_image(
                item.image_bytes,
                max_bytes=self.max_image_bytes,
                max_pixels=self.max_image_pixels,
                draft_px=self.input_size,
            )
        else:
            px = item.pixels
            if px.width <= 0 or px.height <= 0 or px.width * px.height > self.max_image_pixels:
                raise errors.InvalidInput(f"bad raw image size {px.width}x{px.height}")
            if len(px.rgb) != px.width * px.height * 3:
                raise errors.InvalidInput(
                    f"raw image {px.width}x{px.height} needs {px.width * px.height * 3} "
                    f"bytes of RGB, got {len(px.rgb)}"
                )
            img = Image.frombytes("RGB", (px.width, px.height), px.rgb)
        return self.worker.encoder.prepare_image(img)

    async def _encode_item(self, item: pb.EncodeItem) -> dict[str, np.ndarray]:
        text = item.text if item.HasField("text") else None
        if item.WhichOneof("image") is None and text is None:
            raise errors.InvalidInput("empty item: give an image, a text or both")
        image = None
        if item.WhichOneof("image") is not None:
            loop = asyncio.get_running_loop()
            image = await loop.run_in_executor(self._pool, self._image, item)
        return await self.worker.batcher.submit((image, text))

    @staticmethod
    async def _within_deadline(context: grpc.aio.ServicerContext, coro: Any) -> Any:
        remaining = context.time_remaining()
        if remaining is None:
            return await coro
        if remaining <= 0:
            coro.close()
            raise TimeoutError("deadline exceeded before the request was queued")
        # Python 3.11: asyncio.wait_for raises the builtin TimeoutError; the status table
        # maps it to DEADLINE_EXCEEDED.
        return await asyncio.wait_for(coro, remaining)

    # -- RPCs --------------------------------------------------------------------------

    async def Encode(
        self, request: pb.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.EncodeResponse:
        try:
            vectors = await self._within_deadline(context, self._encode_item(request.item))
        except Exception as exc:
            await _abort(context, exc)
        return pb.EncodeResponse(
            vectors=vectors_to_proto(vectors), model_version=self.worker.model_version
        )

    async def EncodeBatch(
        self, request: pb.EncodeBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.EncodeBatchResponse:
        items = list(request.items)
        batcher = self.worker.batcher
        try:
            if len(items) > batcher.max_queue:
                raise errors.InvalidInput(
                    f"{len(items)} items in one call; at most {batcher.max_queue}"
                )
            if len(items) > batcher.max_queue - batcher.queue_depth:
                raise errors.Overloaded(
                    f"encoder queue has room for {batcher.max_queue - batcher.queue_depth} "
                    f"items, {len(items)} asked"
                )
            outcomes = await self._within_deadline(
                context,
                asyncio.gather(*(self._encode_item(i) for i in items), return_exceptions=True),
            )
        except Exception as exc:
            await _abort(context, exc)
        results = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome
                code, message = _status(outcome)
                results.append(pb.EncodeResult(error_code=code.value[0], error_message=message))
            else:
                results.append(pb.EncodeResult(vectors=vectors_to_proto(outcome)))
        return pb.EncodeBatchResponse(results=results, model_version=self.worker.model_version)

    async def GetInfo(
        self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.EncoderInfo:
        enc = self.worker.encoder
        return pb.EncoderInfo(
            model_version=self.worker.model_version,
            dims=self.worker.dims,
            image_input_size=self.input_size,
            max_batch_size=self.worker.max_batch_size,
            runtime=self.runtime,
            device=str(enc.image.device),
        )


def _status(exc: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, ValueError) and not isinstance(exc, errors.DomainError):
        # The worker's own argument checks (e.g. nothing to encode).
        code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    else:
        code, message = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("encoder call failed", exc_info=exc)
    return code, message


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
    code, message = _status(exc)
    await context.abort(code, message)


class EncoderServer:
    """grpc.aio server for one EncoderWorker: health NOT_SERVING until warm, reflection."""

    def __init__(
        self,
        worker: EncoderWorker,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_image_bytes: int = DEFAULT_MAX_BYTES,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        runtime: str = "torch",
    ) -> None:
        self.worker = worker
        self._host, self._port = host, port
        self.servicer = EncoderServicer(
            worker,
            max_image_bytes=max_image_bytes,
            max_image_pixels=max_image_pixels,
            runtime=runtime,
        )
        self._options = [
            ("grpc.max_receive_message_length", max(64 << 20, 2 * max_image_bytes)),
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.so_reuseport", 0),
        ]
        self._server: grpc.aio.Server | None = None
        self._health = ServingHealth((ENCODER_SERVICE,))
        self.port = 0

    async def start(self) -> int:
        # Created here, on the loop that will run it (grpc.aio binds to the current loop).
        s = self._server = grpc.aio.server(
            interceptors=[MalformedRequestInterceptor()], options=self._options)
        rpc.add_EncoderServicer_to_server(self.servicer, s)
        self._health.add_to(s)
        self.port = bound_port(s.add_insecure_port(f"{self._host}:{self._port}"), self._host,
                               self._port)
        await self._health.set(NOT_SERVING)
        await s.start()
        log.info("encoder worker listening on %s:%d; warming up", self._host, self.port)
        await asyncio.to_thread(self.worker.start)
        await self._health.set(SERVING)
        log.info("encoder worker serving (model %s)", self.worker.model_version)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        await self._health.stop(self._server, grace)
        await self.worker.stop()
        self.servicer.close()


async def serve_worker(server: EncoderServer) -> None:
    """Run until SIGINT/SIGTERM, then stop gracefully."""
    await run_until_signalled(server.start, server.stop)
