"""Server interceptors: API-key auth and role checks, deadlines, one log line per call with a
request id, and secret redaction in every log record.

Each protected handler is wrapped, so that authentication, the principal (a context variable
the domain reads) and the deadline all live in the task that runs the handler.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc

from backend import metrics
from backend.errors import (
    DomainError,
    InvalidInput,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
)
from backend.security import ApiKeys, Principal, Role, reset_current, set_current
from backend.security.principal import UNRESTRICTED
from backend.transport.grpc import edge
from backend.transport.grpc.errors import status_for

log = logging.getLogger("prodsearch.calls")

API_KEY_HEADER = "x-api-key"
REQUEST_ID_HEADER = "x-request-id"

# Always open: load balancers and tooling must not need a key.
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

# Roles allowed besides admin (admin may call everything). Any method not listed here is
# admin-only: new RPCs are closed until someone decides who may call them.
METHOD_ROLES: dict[str, frozenset[Role]] = {
    "/product_search.v1.ProductSearch/Search": frozenset({Role.STOREFRONT}),
    "/product_search.v1.ProductSearch/GetProduct": frozenset({Role.STOREFRONT, Role.WAREHOUSE}),
    "/product_search.v1.ProductSearch/MatchProduct": frozenset({Role.STOREFRONT}),
    "/product_search.v1.ProductSearch/FindRestockMatches": frozenset({Role.WAREHOUSE}),
    "/product_search.v1.Catalog/UpdateInventory": frozenset({Role.WAREHOUSE}),
}

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "prodsearch_request_id", default="-")


def request_id() -> str:
    return _request_id.get()


# ---------------------------------------------------------------------------------- redaction

_KEY_RE = re.compile(r"psk_[A-Za-z0-9_\-]{4,}")
_URL_CREDENTIALS_RE = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s:@]*:)[^@\s/]+@")
_secrets: set[str] = set()
_installed = False


def register_secret(value: str) -> None:
    """A literal (a DB password, a Qdrant key) to blank out of every log record."""
    if value and len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    text = _KEY_RE.sub("psk_***", text)
    text = _URL_CREDENTIALS_RE.sub(r"\1***@", text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def install_log_hygiene() -> None:
    """Every log record, from any logger and to any handler: secrets redacted (message and
    traceback), and `record.request_id` set (the call's id, or '-'). Idempotent."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = logging.getLogRecordFactory()
    formatter = logging.Formatter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = _request_id.get()
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it for the handler to report
            return record
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = redact(formatter.formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)


def secret_values(settings: Any) -> Iterable[str]:
    """The secret values in the settings (DB password, Qdrant API key)."""
    from sqlalchemy.engine import make_url

    url = settings.database_url.get_secret_value()
    if url:
        try:
            password = make_url(url).password
        except Exception:
            password = None
        if password:
            yield str(password)
    qdrant_key = settings.qdrant_api_key.get_secret_value()
    if qdrant_key:
        yield qdrant_key


# ---------------------------------------------------------------------------------- interceptor


def _metadata(details: grpc.HandlerCallDetails) -> Mapping[str, str]:
    out: dict[str, str] = {}
    for key, value in details.invocation_metadata or ():
        if isinstance(value, str):
            out[key.lower()] = value
    return out


def _presented_key(md: Mapping[str, str]) -> str:
    key = md.get(API_KEY_HEADER, "")
    if not key:
        auth = md.get("authorization", "")
        if auth.lower().startswith("bearer "):
            key = auth[7:]
    return key


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Auth (when `keys` is given), deadlines, request checks (edge.py), the limit on
    expensive calls (`gate`) and call logging for every protected method. Open methods
    (health, reflection) get the malformed-bytes check only."""

    def __init__(self, keys: ApiKeys | None, gate: edge.HeavyWorkGate | None = None) -> None:
        self._keys = keys
        self._gate = gate

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return handler
        if method.startswith(OPEN_PREFIXES):
            return _wrap_open(handler, method)
        return _wrap(handler, self._guard(method, _metadata(handler_call_details)))

    async def authorise(self, method: str, md: Mapping[str, str]) -> Principal:
        if self._keys is None:
            return UNRESTRICTED
        principal = await asyncio.to_thread(self._keys.authenticate, _presented_key(md))
        allowed = METHOD_ROLES.get(method, frozenset())
        if principal.role is not Role.ADMIN and principal.role not in allowed:
            raise PermissionDenied(
                f"a {principal.role.value} key may not call {method.rsplit('/', 1)[-1]}")
        return principal

    def _guard(self, method: str, md: Mapping[str, str]) -> _Guard:
        return _Guard(self, method, md, self._gate)


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """For servers without auth (the encoder worker): malformed request bytes on any method
    answer INVALID_ARGUMENT with one rate-limited WARNING, not UNKNOWN with a traceback."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return _wrap_open(handler, handler_call_details.method)


class _Guard:
    """Runs one call: request id, auth, principal, deadline, log line."""

    def __init__(self, owner: ServerInterceptor, method: str, md: Mapping[str, str],
                 gate: edge.HeavyWorkGate | None = None) -> None:
        self.owner, self.method, self.md, self.gate = owner, method, md, gate

    def _rid(self) -> str:
        given = self.md.get(REQUEST_ID_HEADER, "")
        if given and len(given) <= 64 and given.isprintable():
            return redact(given)
        return uuid.uuid4().hex[:16]

    async def enter(self, context: grpc.aio.ServicerContext
                    ) -> tuple[list[contextvars.Token[Any]], float, float | None]:
        rid = self._rid()
        tokens: list[contextvars.Token[Any]] = [_request_id.set(rid)]
        start = time.perf_counter()
        context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
        try:
            principal = await self.owner.authorise(self.method, self.md)
        except (Unauthenticated, PermissionDenied) as exc:
            code, message = status_for(exc)
            self.done(start, code, None, "-")
            _request_id.reset(tokens[0])
            await context.abort(code, message)
        tokens.append(set_current(principal))
        remaining = context.time_remaining()
        timeout = remaining if remaining is not None and remaining < 1e6 else None
        if timeout is not None and timeout <= 0:
            self.exit(tokens, start, grpc.StatusCode.DEADLINE_EXCEEDED)
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        return tokens, start, timeout

    def done(self, start: float, code: grpc.StatusCode, principal: Principal | None,
             label: str) -> None:
        ms = (time.perf_counter() - start) * 1000
        metrics.observe_rpc(self.method, code.name, ms / 1000)
        who = principal.label if principal is not None else label
        level = logging.DEBUG if code == grpc.StatusCode.OK else logging.INFO
        log.log(level, "rid=%s %s %s %s %.1fms", _request_id.get(), self.method, who,
                code.name, ms)

    def exit(self, tokens: list[contextvars.Token[Any]], start: float,
             code: grpc.StatusCode) -> None:
        from backend.security import current

        self.done(start, code, current(), "-")
        if len(tokens) > 1:
            reset_current(tokens[1])
        _request_id.reset(tokens[0])


def _code_of(context: grpc.aio.ServicerContext, exc: BaseException | None) -> grpc.StatusCode:
    if exc is None:
        return grpc.StatusCode.OK
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    try:
        code = context.code()
    except Exception:
        code = None
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(exc, DomainError):
        return status_for(exc)[0]
    return grpc.StatusCode.UNKNOWN


def _wrap(handler: grpc.RpcMethodHandler, guard: _Guard) -> grpc.RpcMethodHandler:
    async def unary_response(behaviour: Callable[..., Awaitable[Any]], request: Any,
                             context: grpc.aio.ServicerContext, streamed: bool) -> Any:
        tokens, start, timeout = await guard.enter(context)
        error: BaseException | None = None
        try:
            async with asyncio.timeout(timeout):
                request = await _checked(guard.method, request, context, streamed)
                gate = guard.gate if edge.is_expensive(guard.method, request) else None
                if gate is not None:
                    await _admit(gate, context)
                try:
                    return await behaviour(request, context)
                finally:
                    if gate is not None:
                        gate.release()
        except TimeoutError as exc:
            # The deadline passed: the handler's awaits were cancelled (queued encoder work
            # is dropped); the client already sees DEADLINE_EXCEEDED.
            error = exc
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        except BaseException as exc:
            error = exc
            raise
        finally:
            code = (grpc.StatusCode.DEADLINE_EXCEEDED if isinstance(error, TimeoutError)
                    else _code_of(context, error))
            guard.exit(tokens, start, code)

    async def stream_response(behaviour: Callable[..., Any], request: Any,
                              context: grpc.aio.ServicerContext,
                              streamed: bool) -> AsyncIterator[Any]:
        tokens, start, _ = await guard.enter(context)
        error: BaseException | None = None
        try:
            request = await _checked(guard.method, request, context, streamed)
            async for item in behaviour(request, context):
                yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            guard.exit(tokens, start, _code_of(context, error))

    # grpc.aio tells coroutine handlers from generators by inspection: real `async def`s.
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def uu(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await unary_response(inner_uu, request, context, False)

        return grpc.unary_unary_rpc_method_handler(
            uu, edge.safe_deserializer(handler.request_deserializer),
            handler.response_serializer)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def su(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            return await unary_response(inner_su, requests, context, True)

        return grpc.stream_unary_rpc_method_handler(
            su, edge.safe_deserializer(handler.request_deserializer),
            handler.response_serializer)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def us(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for item in stream_response(inner_us, request, context, False):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            us, edge.safe_deserializer(handler.request_deserializer),
            handler.response_serializer)
    inner_ss = handler.stream_stream
    assert inner_ss is not None

    async def ss(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for item in stream_response(inner_ss, requests, context, True):
            yield item

    return grpc.stream_stream_rpc_method_handler(
        ss, edge.safe_deserializer(handler.request_deserializer),
        handler.response_serializer)


async def _checked(method: str, request: Any, context: grpc.aio.ServicerContext,
                   streamed: bool) -> Any:
    """The request once edge.py's checks pass (a stream: checked message by message as the
    handler reads it); otherwise the call ends with INVALID_ARGUMENT here."""
    if streamed:
        return _aborting_stream(method, request, context)
    try:
        if request is edge.MALFORMED:
            raise edge.refuse_malformed(method)
        edge.check_message(request)
    except InvalidInput as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, status_for(exc)[1])
    return request


async def _aborting_stream(method: str, requests: AsyncIterator[Any],
                           context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    try:
        async for message in edge.checked_stream(requests, method):
            yield message
    except InvalidInput as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, status_for(exc)[1])


async def _admit(gate: edge.HeavyWorkGate, context: grpc.aio.ServicerContext) -> None:
    try:
        await gate.acquire()
    except Overloaded as exc:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, status_for(exc)[1])


def _wrap_open(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """Open methods (health, reflection): no auth, but malformed bytes still answer
    INVALID_ARGUMENT without a traceback."""

    async def refuse(context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            status_for(edge.refuse_malformed(method))[1])

    async def messages(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[Any]:
        async for message in requests:
            if message is edge.MALFORMED:
                await refuse(context)
            yield message

    deserialize = edge.safe_deserializer(handler.request_deserializer)
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        inner_uu: Any = handler.unary_unary

        async def uu(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if request is edge.MALFORMED:
                await refuse(context)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(uu, deserialize, serialize)
    if handler.unary_stream is not None:
        inner_us: Any = handler.unary_stream

        if not inspect.isasyncgenfunction(inner_us):  # writes with context.write (Watch)
            async def us_writer(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if request is edge.MALFORMED:
                    await refuse(context)
                return await inner_us(request, context)

            return grpc.unary_stream_rpc_method_handler(us_writer, deserialize, serialize)

        async def us(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if request is edge.MALFORMED:
                await refuse(context)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(us, deserialize, serialize)
    if handler.stream_unary is not None:
        inner_su: Any = handler.stream_unary

        async def su(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            return await inner_su(messages(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(su, deserialize, serialize)
    inner_ss: Any = handler.stream_stream
    assert inner_ss is not None

    if not inspect.isasyncgenfunction(inner_ss):
        async def ss_writer(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            return await inner_ss(messages(requests, context), context)

        return grpc.stream_stream_rpc_method_handler(ss_writer, deserialize, serialize)

    async def ss(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for item in inner_ss(messages(requests, context), context):
            yield item

    return grpc.stream_stream_rpc_method_handler(ss, deserialize, serialize)
