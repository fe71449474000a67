"""The Encoder gRPC service over 127.0.0.1: vectors equal the in-process ones, a full queue
answers RESOURCE_EXHAUSTED at once, a caller's deadline is honoured (and its item dropped),
per-item errors in a batch, health and reflection."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import asyncio
import io
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image, ImageDraw

from backend import errors
from backend.transport.grpc.encoder_client import RemoteEncoder
from backend.transport.grpc.encoder_service import ENCODER_SERVICE, EncoderServer
from backend.transport.grpc.generated.product_search.v1 import encoder_pb2 as pb
from backend.transport.grpc.generated.product_search.v1 import encoder_pb2_grpc as rpc
from encoders.batcher import QueueFull
from encoders.model import ProductEncoder
from encoders.worker import EncoderWorker
from tests.fakes import FakeEncoder

T = TypeVar("T")


class _LoopThread:
    """An event loop in a daemon thread, for running a grpc.aio server beside sync tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class _Served:
    def __init__(self, worker: EncoderWorker) -> None:
        self.worker = worker
        self.loop = _LoopThread()
        self.server = EncoderServer(worker, "127.0.0.1", 0)
        port = self.loop.run(self.server.start())
        self.addr = f"127.0.0.1:{port}"
        self.channel = grpc.insecure_channel(self.addr)
        self.stub = rpc.EncoderStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.loop.run(self.server.stop(0.1))
        self.loop.close()


def _fake_served(delay_s: float, *, batch: int, queue: int, wait_ms: float = 0.0) -> _Served:
    # A text "boom" fails inside the model, like a bug in it would.
    enc = FakeEncoder(dim=4, delay_s=delay_s, fail_on="boom")
    worker = EncoderWorker(
        enc,  # type: ignore[arg-type]
        max_batch_size=batch,
        max_wait_ms=wait_ms,
        max_queue=queue,
    )
    return _Served(worker)


def _jpeg(size: tuple[int, int] = (640, 480), colour: str = "red") -> bytes:
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).ellipse((size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2),
                                fill=colour)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


# -- fake-model tests (fast) ---------------------------------------------------------------


def test_queue_full_is_resource_exhausted_at_once() -> None:
    served = _fake_served(0.3, batch=1, queue=2)
    try:
        futures = [
            served.stub.Encode.future(
                pb.EncodeRequest(item=pb.EncodeItem(text=f"t{i}")), timeout=10
            )
            for i in range(8)
        ]
        codes: list[grpc.StatusCode] = []
        exhausted_after: list[float] = []
        start = time.monotonic()
        # When each call finished, not when this loop got to it: results are read in order
        # and the served ones each take the fake model's 0.3 s.
        finished: dict[int, float] = {}
        for n, f in enumerate(futures):
            f.add_done_callback(lambda _f, n=n: finished.setdefault(n, time.monotonic()))
        for n, f in enumerate(futures):
            try:
                f.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
                if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                    exhausted_after.append(finished[n] - start)
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        assert codes.count(grpc.StatusCode.OK) >= 2
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        # Shed at once: the first refusal does not wait for the queue ahead of it.
        assert min(exhausted_after) < 0.3
    finally:
        served.close()


def test_remote_client_maps_queue_full() -> None:
    served = _fake_served(0.3, batch=1, queue=1)
    try:
        client = RemoteEncoder(served.addr, timeout_s=10)

        async def many() -> list[Any]:
            return await asyncio.gather(
                *(client.encode(None, f"q{i}") for i in range(6)), return_exceptions=True
            )

        outcomes = asyncio.run(many())
        assert any(isinstance(o, QueueFull) for o in outcomes)
        assert any(isinstance(o, dict) for o in outcomes)
    finally:
        served.close()


def test_deadline_is_honoured_and_the_item_dropped() -> None:
    served = _fake_served(0.5, batch=1, queue=8)
    try:
        busy = served.stub.Encode.future(
            pb.EncodeRequest(item=pb.EncodeItem(text="first")), timeout=10
        )
        time.sleep(0.05)  # "first" is now running
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            served.stub.Encode(pb.EncodeRequest(item=pb.EncodeItem(text="late")), timeout=0.15)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - start < 0.4
        busy.result()
        time.sleep(0.7)  # long enough for "late" to have run, had it not been dropped
        assert served.worker.encoder.ran == ["first"]  # type: ignore[attr-defined]
    finally:
        served.close()


def test_batch_errors_are_per_item() -> None:
    served = _fake_served(0.0, batch=8, queue=64, wait_ms=20)
    try:
        items = [
            pb.EncodeItem(text="ok one"),
            pb.EncodeItem(image_bytes=b"not an image"),
            pb.EncodeItem(text="boom"),
            pb.EncodeItem(image_bytes=_jpeg(), text="both"),
            pb.EncodeItem(),
        ]
        reply = served.stub.EncodeBatch(pb.EncodeBatchRequest(items=items), timeout=10)
        codes = [r.error_code for r in reply.results]
        ok, invalid, internal = (grpc.StatusCode.OK.value[0],
                                 grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                 grpc.StatusCode.INTERNAL.value[0])
        assert codes == [ok, invalid, internal, ok, invalid]
        assert set(reply.results[0].vectors) == {"text"}
        assert set(reply.results[3].vectors) == {"image", "text"}
        assert reply.model_version == "fake.v1"
        assert "internal error" in reply.results[2].error_message  # no details leak
    finally:
        served.close()


def test_oversized_batch_is_refused() -> None:
    served = _fake_served(0.0, batch=4, queue=4)
    try:
        items = [pb.EncodeItem(text=str(i)) for i in range(5)]
        with pytest.raises(grpc.RpcError) as info:
            served.stub.EncodeBatch(pb.EncodeBatchRequest(items=items), timeout=5)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    finally:
        served.close()


def test_health_reflection_and_info() -> None:
    served = _fake_served(0.0, batch=4, queue=16)
    try:
        health = health_pb2_grpc.HealthStub(served.channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=ENCODER_SERVICE), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert served.worker.encoder.loaded  # type: ignore[attr-defined]  # warmed up first
        info = served.stub.GetInfo(pb.GetInfoRequest(), timeout=5)
        assert info.model_version == "fake.v1"
        assert dict(info.dims) == {"image": 4, "text": 4}
        assert info.image_input_size == 16 and info.max_batch_size == 4
        client = RemoteEncoder(served.addr)
        client.start()
        assert client.dims == {"image": 4, "text": 4}
        with pytest.raises(errors.InvalidInput):
            asyncio.run(_bad_pixels(client))
    finally:
        served.close()


async def _bad_pixels(client: RemoteEncoder) -> None:
    stub = client._aio_stub()
    try:
        await stub.Encode(pb.EncodeRequest(item=pb.EncodeItem(
            pixels=pb.RawImage(width=2, height=2, rgb=b"123"))), timeout=5)
    except grpc.RpcError as exc:
        from backend.transport.grpc.encoder_client import _error

        raise _error(exc) from exc


# -- the real model: remote vectors equal in-process vectors --------------------------------


@pytest.fixture(scope="module")
def real() -> Iterator[_Served]:
    model = ProductEncoder(text_model="minilm", device="cpu")
    worker = EncoderWorker(model, max_batch_size=8, max_wait_ms=2, max_queue=64)
    served = _Served(worker)
    yield served
    served.close()


def test_remote_vectors_equal_in_process(real: _Served) -> None:
    client = RemoteEncoder(real.addr)
    client.start()
    assert client.model_version == real.worker.model_version
    assert client.dims == real.worker.dims
    photo = Image.open(io.BytesIO(_jpeg((800, 600), "blue"))).convert("RGB")
    text = "red cotton t-shirt"

    async def both() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        remote = await client.encode(photo, text)
        local = await real.worker.encode(photo, text)
        return remote, local

    remote, local = real.loop.run(both())
    assert set(remote) == set(local) == {"image", "text"}
    for name in local:
        np.testing.assert_allclose(remote[name], local[name], atol=1e-5)

    many = client.encode_many([photo, None, photo], [None, text, "blue bag"])
    direct = real.worker.encode_many([photo, None, photo], [None, text, "blue bag"])
    assert [set(v) for v in many] == [set(v) for v in direct]
    for r, d in zip(many, direct, strict=True):
        for name in d:
            np.testing.assert_allclose(r[name], d[name], atol=1e-5)


def test_image_bytes_match_decoded_image(real: _Served) -> None:
    data = _jpeg((300, 200), "green")  # small: no draft scaling, identical pixels
    reply = real.stub.Encode(pb.EncodeRequest(item=pb.EncodeItem(image_bytes=data)), timeout=30)
    vec = np.frombuffer(reply.vectors["image"].data, dtype="<f4")
    local = real.worker.encode_many([Image.open(io.BytesIO(data)).convert("RGB")], [None])[0]
    np.testing.assert_allclose(vec, local["image"], atol=1e-5)


class _SlowPhotosEncoder(FakeEncoder):
    """Photo batches take a while; text-only batches are instant."""

    def encode_batch(
        self, images: list[Image.Image | None], texts: list[str | None]
    ) -> list[dict[str, np.ndarray]]:
        if any(i is not None for i in images):
            time.sleep(0.5)
        return super().encode_batch(images, texts)


def test_text_queries_do_not_wait_behind_a_photo_batch() -> None:
    worker = EncoderWorker(_SlowPhotosEncoder(), max_batch_size=8,  # type: ignore[arg-type]
                           max_wait_ms=0, max_queue=16)
    worker.start()
    finished: list[str] = []

    async def scenario() -> None:
        async def photo() -> None:
            await worker.encode(Image.new("RGB", (32, 32)), None)
            finished.append("photo")

        async def text() -> None:
            await asyncio.sleep(0.05)  # the photo batch is running by now
            await worker.encode(None, "lamp")
            finished.append("text")

        await asyncio.gather(photo(), text())
        await worker.stop()

    asyncio.run(scenario())
    assert finished == ["text", "photo"]


def test_malformed_bytes_on_every_worker_method_are_invalid_argument() -> None:
    served = _fake_served(0.0, batch=4, queue=8)
    try:
        for method in ("Encode", "EncodeBatch", "GetInfo"):
            call = served.channel.unary_unary(f"/product_search.v1.Encoder/{method}")
            with pytest.raises(grpc.RpcError) as info:
                call(b"\x0a\x05ab", timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        check = served.channel.unary_unary("/grpc.health.v1.Health/Check")
        with pytest.raises(grpc.RpcError) as info:
            check(b"\xff\xff", timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        served.close()
