"""mesh's own errors and the one table that maps every semantic code to a status.

Every package's root error carries a class attribute ``code`` drawn from one
vocabulary (``runtime_adapters``, ``puller``, ``placement`` and mesh itself).
:func:`status_for` is the only place that turns a code into a gRPC status and an
HTTP status; the gRPC interceptor and the FastAPI handler both call it.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc


class MeshError(Exception):
    """Root of mesh's errors."""

    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelNotFound(MeshError):
    code = "not_found"


class VModelNotFound(MeshError):
    code = "not_found"


class TenantNotFound(MeshError):
    code = "not_found"


class InvalidRequest(MeshError):
    code = "invalid_argument"


class AlreadyExists(MeshError):
    code = "already_exists"


class PreconditionFailed(MeshError):
    code = "failed_precondition"


class ModelLoadFailed(MeshError):
    """The model could not be loaded anywhere (reason from the runtime)."""

    code = "load_failed"


class NoCapacity(MeshError):
    code = "resource_exhausted"


class PayloadTooLarge(MeshError):
    code = "resource_exhausted"


class Unavailable(MeshError):
    code = "unavailable"


class DeadlineExceeded(MeshError):
    code = "deadline_exceeded"


class Conflict(MeshError):
    code = "aborted"


class Unauthenticated(MeshError):
    """No credentials, or credentials that name no principal."""

    code = "unauthenticated"


class PermissionDenied(MeshError):
    """An authenticated caller whose role does not allow the call."""

    code = "permission_denied"


class TooManyRequests(MeshError):
    """A concurrency limit (instance or tenant) is full; ``retry_after_s`` is a hint for the client."""

    code = "resource_exhausted"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Status:
    grpc: grpc.StatusCode
    http: int


STATUS_TABLE: dict[str, Status] = {
    "invalid_argument": Status(grpc.StatusCode.INVALID_ARGUMENT, 400),
    "not_found": Status(grpc.StatusCode.NOT_FOUND, 404),
    "already_exists": Status(grpc.StatusCode.ALREADY_EXISTS, 409),
    "failed_precondition": Status(grpc.StatusCode.FAILED_PRECONDITION, 412),
    "resource_exhausted": Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    # the store is full (past its high-water mark): retrying later does not help, freeing room does
    "insufficient_storage": Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 507),
    "unavailable": Status(grpc.StatusCode.UNAVAILABLE, 503),
    "deadline_exceeded": Status(grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    "permission_denied": Status(grpc.StatusCode.PERMISSION_DENIED, 403),
    "unauthenticated": Status(grpc.StatusCode.UNAUTHENTICATED, 401),
    "internal": Status(grpc.StatusCode.INTERNAL, 500),
    "unimplemented": Status(grpc.StatusCode.UNIMPLEMENTED, 501),
    "aborted": Status(grpc.StatusCode.ABORTED, 409),
    "load_failed": Status(grpc.StatusCode.INTERNAL, 500),
    "cancelled": Status(grpc.StatusCode.CANCELLED, 499),
}

_INTERNAL = STATUS_TABLE["internal"]
# gRPC carries the message percent-encoded in a trailer; peers drop trailers over 8-16 KB, which would
# turn a clear error into RESOURCE_EXHAUSTED on the client. 512 characters stay under 8 KB encoded.
MAX_MESSAGE_CHARS = 512


def _roots() -> tuple[type[Exception], ...]:
    from placement import PlacementError
    from puller import PullerError
    from runtime_adapters import AdapterError

    from ._store import StoreError
    from ._wire import WireError

    return (MeshError, AdapterError, PullerError, PlacementError, StoreError, WireError)


ERROR_ROOTS: tuple[type[Exception], ...] = _roots()


def status_for(exc: BaseException) -> tuple[Status, str]:
    """(status, message) for any exception; unknown ones are INTERNAL/500."""
    code = getattr(exc, "code", None)
    status = STATUS_TABLE.get(code, _INTERNAL) if isinstance(code, str) else _INTERNAL
    if isinstance(exc, PayloadTooLarge):
        status = Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 413)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    return status, message
