"""Domain errors. They know nothing of gRPC: transport/grpc/errors.py maps them to status codes."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a caller can act on. The message is safe to show to clients."""


class InvalidInput(DomainError):
    """The request itself is wrong (empty query, bad image, out-of-range value)."""


class NotFound(DomainError):
    """A referenced product, SKU or category does not exist."""


class AlreadyExists(DomainError):
    """A write would duplicate something that must be unique."""


class Unauthenticated(DomainError):
    """No credentials or unknown credentials."""


class PermissionDenied(DomainError):
    """Valid credentials that may not do this."""


class Overloaded(DomainError):
    """A bounded queue is full; the caller should retry later."""


class NotReady(DomainError):
    """The service is still warming up or a requested catalog version is not indexed yet."""


class ConfigError(DomainError):
    """Settings that cannot work; refused at start-up."""


class BuildAborted(RuntimeError):
    """An index build gave up because of the writes made meanwhile (the index serves as
    before); retried once writes slow down."""


class StoreBusy(DomainError):
    """Another process owns the embedded store (one process per shard directory)."""


ECHO_LIMIT = 64


def shown(value: object, limit: int = ECHO_LIMIT) -> str:
    """`repr(value)` for an error message, cut to about `limit` characters: a message that
    echoed a whole 100 KB input would not fit in the reply's metadata."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(str(value))} characters)"
