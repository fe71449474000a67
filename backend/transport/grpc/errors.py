"""The ONE table mapping domain errors to gRPC status codes. Order matters: first match wins.
Anything not in the table becomes INTERNAL with a generic message; the traceback is logged."""

from __future__ import annotations

import logging

import grpc

from backend import errors
from encoders.batcher import QueueFull
from encoders.preprocess import ImageDecodeError

log = logging.getLogger(__name__)

ERROR_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (ImageDecodeError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.NotReady, grpc.StatusCode.UNAVAILABLE),
    (errors.StoreBusy, grpc.StatusCode.UNAVAILABLE),
    (errors.ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
)

INTERNAL_MESSAGE = "internal error; the server log has the details"
# Status details travel in the reply's trailing metadata: keep them far below its size limit
# whatever a message echoes.
MAX_MESSAGE_CHARS = 1024


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Status code and client-safe message for an exception."""
    for error_type, code in ERROR_TABLE:
        if isinstance(exc, error_type):
            if isinstance(exc, QueueFull):
                return code, "server is at capacity; retry with backoff"
            if isinstance(exc, TimeoutError):
                return code, "deadline exceeded"
            return code, _clamp(str(exc) or error_type.__name__)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def _clamp(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 3] + "..."
