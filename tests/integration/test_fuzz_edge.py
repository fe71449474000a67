"""Fuzzing the request edge over real servers on 127.0.0.1, one on SQLite and one on
PostgreSQL: raw bytes on every method of every service the server exposes (ours, health,
reflection) and unstorable text (NUL, invalid UTF-8) in every string field of every request
message. The server must answer each with a definite status: never INTERNAL or UNKNOWN, and
without logging an ERROR. The default run is bounded; `-m slow` runs many more examples."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from tests.integration.conftest import Running
from tests.integration.fresh_server import fresh_server

NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

METHODS: list[MethodDescriptor] = [
    method
    for file, service in ((pb, "ProductSearch"), (pb, "Catalog"), (health_pb2, "Health"),
                          (reflection_pb2, "ServerReflection"))
    for method in file.DESCRIPTOR.services_by_name[service].methods
]
OUR_METHODS = [m for m in METHODS if m.containing_service.full_name.startswith("product_")]


def method_id(method: MethodDescriptor) -> str:
    return f"{method.containing_service.name}.{method.name}"


# A string field reached from a request message: the fields from the top down.
FieldPath = tuple[FieldDescriptor, ...]


def string_paths(message: Descriptor, prefix: FieldPath = ()) -> list[FieldPath]:
    out: list[FieldPath] = []
    for field in message.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            out.append((*prefix, field))
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None \
                and len(prefix) < 4:
            out.extend(string_paths(field.message_type, (*prefix, field)))
    return out


STRING_FIELDS: list[tuple[MethodDescriptor, FieldPath]] = [
    (method, path) for method in OUR_METHODS for path in string_paths(method.input_type)
]


def path_id(item: tuple[MethodDescriptor, FieldPath]) -> str:
    method, path = item
    return f"{method.name}:{'.'.join(f.name for f in path)}"


@dataclass
class Target:
    name: str
    channel: grpc.Channel


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres",
                                                                  marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, running: Running,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    data_dir = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    with fresh_server(running, data_dir, url) as addr, grpc.insecure_channel(addr) as channel:
        yield Target(request.param, channel)


def call_raw(channel: grpc.Channel, method: MethodDescriptor, raw: bytes
             ) -> tuple[grpc.StatusCode, str]:
    """Send `raw` as the (only) request message of `method`; the status it ends with."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    # Watch streams until the deadline when the request is valid: that is fine too.
    timeout = 1.0 if method.name == "Watch" else 30.0
    try:
        if method.client_streaming and method.server_streaming:
            list(channel.stream_stream(path)(iter([raw]), timeout=timeout))
        elif method.client_streaming:
            channel.stream_unary(path)(iter([raw]), timeout=timeout)
        elif method.server_streaming:
            list(channel.unary_stream(path)(raw, timeout=timeout))
        else:
            channel.unary_unary(path)(raw, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.fixture
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.WARNING)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


# ----------------------------------------------------------------------- raw bytes

# Each is malformed for every message type: a length running past the end, a bad tag, a
# truncated varint, invalid UTF-8 in field 1 and in field 2 (the reproduction).
MALFORMED = [b"\x0a\x05ab", b"\xff\xff\xff\xff", b"\x08\x80", b"\x0a\x02\xc3\x28",
             bytes.fromhex("1204fffec328")]


@pytest.mark.parametrize("method", METHODS, ids=method_id)
def test_malformed_bytes_are_invalid_argument_on_every_method(
        target: Target, method: MethodDescriptor, no_errors_logged: None) -> None:
    for raw in MALFORMED:
        message = GetMessageClass(method.input_type)()
        try:
            message.ParseFromString(raw)
            continue  # valid for this message type (e.g. field 2 is unknown, so skipped)
        except Exception:
            pass
        code, details = call_raw(target.channel, method, raw)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (raw, code, details)


def _fuzz_raw(target: Target, method: MethodDescriptor, raw: bytes) -> None:
    code, details = call_raw(target.channel, method, raw)
    assert code not in NEVER, (method_id(method), raw, code, details)


@pytest.mark.parametrize("method", METHODS, ids=method_id)
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=64))
def test_random_bytes_never_internal(target: Target, method: MethodDescriptor, raw: bytes,
                                     no_errors_logged: None) -> None:
    _fuzz_raw(target, method, raw)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS, ids=method_id)
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=512))
def test_many_random_bytes_never_internal(target: Target, method: MethodDescriptor,
                                          raw: bytes, no_errors_logged: None) -> None:
    _fuzz_raw(target, method, raw)


# ----------------------------------------------------------------------- unstorable text

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def raw_with_string(path: FieldPath, value: bytes) -> bytes:
    """Wire bytes of a request whose string field at `path` holds `value` (any bytes, so
    also invalid UTF-8, which no protobuf library would serialise)."""
    *parents, leaf = path
    payload = _field(leaf.number, value)
    for parent in reversed(parents):
        if parent.message_type is not None and parent.message_type.GetOptions().map_entry:
            # A map entry is a message {1: key, 2: value}; give it the other half too.
            payload = payload + _field(2 if leaf.number == 1 else 1, b"k")
        payload = _field(parent.number, payload)
        leaf = parent
    return payload


def message_with_string(method: MethodDescriptor, path: FieldPath, text: str) -> Message:
    """A request of `method` whose string field at `path` holds `text`."""
    message = GetMessageClass(method.input_type)()
    node: Message = message
    *parents, leaf = path
    for n, parent in enumerate(parents):
        container = getattr(node, parent.name)
        entry = parent.message_type
        if entry is not None and entry.GetOptions().map_entry:
            key, value = (text, "v") if leaf.name == "key" else ("k", text)
            assert n == len(parents) - 1
            container[key] = value
            return message
        node = container.add() if parent.is_repeated else container
    if leaf.is_repeated:
        getattr(node, leaf.name).append(text)
    else:
        setattr(node, leaf.name, text)
    return message


_around = st.text(max_size=8).map(lambda s: s.replace("\x00", ""))
nul_text = st.builds(lambda a, b: f"{a}\x00{b}", _around, _around)
invalid_utf8 = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"ab\xe2\x82",
                                b"\xf8\x88\x80\x80\x80", b"\xc0\xaf", b"ok\x80"])


@pytest.mark.parametrize("field", STRING_FIELDS, ids=path_id)
@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=nul_text, bad=invalid_utf8)
def test_unstorable_text_is_invalid_argument_on_every_string_field(
        target: Target, field: tuple[MethodDescriptor, FieldPath], text: str, bad: bytes,
        no_errors_logged: None) -> None:
    method, path = field
    raw = message_with_string(method, path, text).SerializeToString()
    code, details = call_raw(target.channel, method, raw)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (path_id(field), code, details)
    assert "\x00" not in details
    code, details = call_raw(target.channel, method, raw_with_string(path, bad))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (path_id(field), bad, code, details)


def test_every_request_string_field_is_fuzzed() -> None:
    """The field list comes from the descriptors: a new field is covered automatically."""
    names = {path_id(f) for f in STRING_FIELDS}
    for expected in ("GetProduct:product_id", "GetProduct:sku", "Search:filters.category",
                     "Search:filters.where.key", "Search:filters.where.value",
                     "UpsertProducts:title", "UpsertProducts:inventory.warehouse",
                     "UpsertProducts:attributes.value", "DeleteProducts:product_ids",
                     "UpdateInventory:updates.warehouse", "MatchProduct:listing.title",
                     "FindRestockMatches:warehouse"):
        assert expected in names, sorted(names)
