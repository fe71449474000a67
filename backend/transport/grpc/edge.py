"""Checks every request passes before a handler does any work: the bytes parse, every string
field is text a database can store and of bounded length, and expensive calls stay within a
concurrency limit.

- Malformed bytes (including invalid UTF-8 in a string field, which the protobuf runtime
  refuses while parsing) become INVALID_ARGUMENT with one rate-limited WARNING line, not
  gRPC's UNKNOWN/INTERNAL with an ERROR traceback per request.
- NUL characters and lone surrogates are refused on every string field of every message
  (PostgreSQL cannot store NUL in text; SQLite would store a value no other client can read
  back the same), as are over-long values; messages name the field, never echo the value.
- Expensive calls (photo decoding and encoding, diversified ranking, matching, restock)
  run at most `heavy_concurrency` at a time; a bounded number may wait, the rest get
  RESOURCE_EXHAUSTED at once, so they cannot starve health checks and cheap calls.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from backend.errors import InvalidInput, Overloaded

log = logging.getLogger("prodsearch.edge")

# Longest accepted value per field name; others get DEFAULT_MAX_CHARS. Identifiers match the
# catalog's 255-character columns; free text is longer.
DEFAULT_MAX_CHARS = 4096
IDENTIFIER_MAX_CHARS = 255
FIELD_MAX_CHARS: dict[str, int] = {
    **dict.fromkeys(
        ("product_id", "product_ids", "sku", "merchant", "merchants", "warehouse", "bin",
         "brand", "brands", "size", "sizes", "material", "materials", "colour", "colours",
         "currency", "field"),
        IDENTIFIER_MAX_CHARS),
    "category": 1024,
    "page_token": 256,
    "text": 10_000,
    "description": 65_536,
}

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class _Malformed:
    """Stands in for a request whose bytes did not parse."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<malformed request>"


MALFORMED = _Malformed()


def safe_deserializer(deserialize: Callable[[bytes], Any] | None
                      ) -> Callable[[bytes], Any] | None:
    """Wrap a request deserializer so that bad bytes yield MALFORMED instead of raising
    inside gRPC (which answers UNKNOWN and logs a traceback per request)."""
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:
            return MALFORMED

    return parse


class _RateLimitedWarning:
    """At most one WARNING per `interval` seconds; the lines in between are counted."""

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._last = -float("inf")
        self._suppressed = 0

    def __call__(self, method: str) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        self._last, self._suppressed = now, 0
        log.warning("malformed request bytes for %s refused%s", method, more)


warn_malformed = _RateLimitedWarning()


def refuse_malformed(method: str) -> InvalidInput:
    warn_malformed(method)
    return InvalidInput("the request is not a valid protobuf message for this method "
                        "(malformed bytes or invalid UTF-8 in a string field)")


def check_message(message: Message, path: str = "") -> None:
    """Raise InvalidInput if any string field anywhere in `message` holds a NUL character
    or a lone surrogate, or is longer than its limit."""
    for field, value in message.ListFields():
        name = f"{path}{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            values = value if _is_repeated(field) else (value,)
            for n, text in enumerate(values):
                _check_text(field.name, f"{name}[{n}]" if _is_repeated(field) else name, text)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if _message_type(field).GetOptions().map_entry:
                _check_map(field, name, value)
            elif _is_repeated(field):
                for n, item in enumerate(value):
                    check_message(item, f"{name}[{n}].")
            else:
                check_message(value, f"{name}.")


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _message_type(field: FieldDescriptor) -> Descriptor:
    message_type = field.message_type
    assert message_type is not None  # TYPE_MESSAGE fields always have one
    return message_type


def _check_map(field: FieldDescriptor, name: str, value: Any) -> None:
    entry = _message_type(field)
    key_field = entry.fields_by_name["key"]
    value_field = entry.fields_by_name["value"]
    for n, (key, item) in enumerate(value.items()):
        if key_field.type == FieldDescriptor.TYPE_STRING:
            _check_text(field.name, f"{name} key #{n}", key, limit=IDENTIFIER_MAX_CHARS)
        if value_field.type == FieldDescriptor.TYPE_STRING:
            _check_text(field.name, f"{name} value #{n}", item)
        elif value_field.type == FieldDescriptor.TYPE_MESSAGE:
            check_message(item, f"{name} value #{n}.")


def _check_text(field_name: str, where: str, text: str, limit: int | None = None) -> None:
    if _UNSTORABLE.search(text):
        raise InvalidInput(f"{where}: text may not contain NUL characters or lone surrogates")
    limit = limit or FIELD_MAX_CHARS.get(field_name, DEFAULT_MAX_CHARS)
    if len(text) > limit:
        raise InvalidInput(f"{where} is {len(text)} characters; the limit is {limit}")


async def checked_stream(requests: AsyncIterator[Any], method: str) -> AsyncIterator[Any]:
    """A request stream whose messages are checked one by one as they arrive."""
    async for message in requests:
        if message is MALFORMED:
            raise refuse_malformed(method)
        check_message(message)
        yield message


# ------------------------------------------------------------------------- expensive work

def is_expensive(method: str, request: Any) -> bool:
    """Calls whose cost is dominated by CPU work: photos (decode, encode), diversified
    ranking, matching, restock. Plain text searches and point reads are cheap. Uploads are
    not gated: a stream is mostly waiting on the network (a slow uploader would hold a slot
    for nothing), and the indexer encodes their images in the background."""
    name = method.rsplit("/", 1)[-1]
    if name in ("MatchProduct", "FindRestockMatches"):
        return True
    if name == "Search":
        return bool(getattr(request, "image", b"")) or bool(getattr(request, "diversify", False))
    return False


def default_heavy_concurrency() -> int:
    return max(1, (os.cpu_count() or 1) // 2)


class HeavyWorkGate:
    """At most `concurrency` expensive calls run at once; at most `queue` more wait (each
    until its deadline); any further one is refused with RESOURCE_EXHAUSTED straight away."""

    def __init__(self, concurrency: int, queue: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._queue = queue
        self._waiting = 0
        self.concurrency = concurrency

    async def acquire(self) -> None:
        if self._slots.locked():
            if self._waiting >= self._queue:
                raise Overloaded("the server is busy with expensive requests; "
                                 "retry with backoff")
            self._waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
        else:
            await self._slots.acquire()

    def release(self) -> None:
        self._slots.release()
