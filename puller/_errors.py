"""The puller's error hierarchy: one root, every subclass carries a semantic ``code``.

The codes belong to the fixed vocabulary that ``mesh`` maps once to gRPC and HTTP statuses.
``retryable`` marks the errors the puller retries with backoff (transient transport failures,
truncated or corrupted transfers); everything else fails the pull at once.
"""

from __future__ import annotations


class PullerError(Exception):
    """Root of every error raised by ``puller``."""

    code: str = "internal"
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidStorageRef(PullerError):
    """The storage reference is malformed, or names a path outside the allowed roots."""

    code = "invalid_argument"


class UnknownStorageKey(PullerError):
    """The reference names a storage key the storage-config secret does not hold.

    ``invalid_argument``: the model's registration is what is wrong (a key that does not
    exist), and retrying the same reference cannot succeed until the registration or the
    secret changes.
    """

    code = "invalid_argument"


class MalformedStorageConfig(PullerError):
    """An entry of the storage-config secret is not a valid JSON object of known fields."""

    code = "invalid_argument"


class ArtifactNotFound(PullerError):
    """The source holds nothing at the referenced location."""

    code = "not_found"


class AccessDenied(PullerError):
    """The credentials are valid but may not read the artifact."""

    code = "permission_denied"


class BadCredentials(PullerError):
    """The store rejected the credentials themselves (unknown key, bad signature, no credentials)."""

    code = "unauthenticated"


class ForbiddenAddress(PullerError):
    """An HTTP(S) source, or one of its redirects, leads to a loopback, link-local, private or
    otherwise non-public address the operator has not allowed (nothing was sent to it)."""

    code = "permission_denied"


class ForbiddenStorageParameter(InvalidStorageRef):
    """``storage_params`` tried to change where a storage key's credentials go (endpoint, url,
    bucket, certificate, TLS verification, headers, credentials themselves...)."""


class PullTimeout(PullerError):
    """A pull ran past its overall deadline (``PullerSettings.pull_deadline_s``); its partial
    download was removed."""

    code = "deadline_exceeded"


class OverBudget(PullerError):
    """The artifact does not fit in the cache budget, even after evicting every unheld artifact."""

    code = "resource_exhausted"


class UnsafeArchive(PullerError):
    """An archive (or a listing) holds an entry that would land outside the target, or exceeds the limits."""

    code = "invalid_argument"


class StorageUnavailable(PullerError):
    """A transient failure talking to the store (connection refused or reset, timeout, 5xx, throttling)."""

    code = "unavailable"
    retryable = True


class IntegrityError(StorageUnavailable):
    """A transfer ended with the wrong size or checksum (a truncated or corrupted download); retried."""


class StorageTlsError(PullerError):
    """TLS verification of the store failed (wrong or missing CA certificate)."""

    code = "unavailable"


class ProviderUnavailable(PullerError):
    """The provider for this storage type needs an optional library that is not installed."""

    code = "failed_precondition"


class UnsupportedStorage(PullerError):
    """A storage type or feature this puller does not implement."""

    code = "unimplemented"


class PullerClosed(PullerError):
    """The puller was closed while the pull was pending."""

    code = "unavailable"


class PullCancelled(PullerError):
    """The pull was cancelled (every caller waiting for it went away, or the puller closed)."""

    code = "aborted"


class LocalDiskError(PullerError):
    """Writing to the cache directory failed (disk full, permissions)."""

    code = "internal"
