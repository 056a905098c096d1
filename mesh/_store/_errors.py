"""Errors of the store layer. Each carries a semantic ``code`` (see mesh's status table)."""

from __future__ import annotations


class StoreError(Exception):
    """Root of the store's errors."""

    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StoreUnavailable(StoreError):
    """The store cannot be reached, is closed, or an operation ran past its time limit."""

    code = "unavailable"


class LeaseExpired(StoreError):
    """The lease does not exist (any more): it expired or was revoked."""

    code = "not_found"


class Compacted(StoreError):
    """The requested revision is older than the history the store keeps; re-list."""

    code = "aborted"

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class StoreConflict(StoreError):
    """A compare-and-swap lost against a concurrent writer (for callers that raise it)."""

    code = "aborted"


class StoreInvalidArgument(StoreError):
    """The request itself is malformed (e.g. one key twice in one transaction)."""

    code = "invalid_argument"


class StorePermissionDenied(StoreError):
    code = "permission_denied"


class StoreUnauthenticated(StoreError):
    code = "unauthenticated"


class StoreResourceExhausted(StoreError):
    """The store refuses writes for lack of space or because it is overloaded."""

    code = "resource_exhausted"


class StoreQuotaExceeded(StoreResourceExhausted):
    """The store is filled past its high-water mark: writes that grow it are refused (before
    the store itself refuses everything, as etcd does with its NOSPACE alarm); deletes still
    work and free room."""

    code = "insufficient_storage"
