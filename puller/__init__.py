"""puller: a model's storage reference -> a verified local artifact.

Providers (local / PVC, HTTP(S), S3 and S3-compatible, GCS, Azure Blob) behind one
``Provider`` protocol; a local disk cache with a byte budget and LRU eviction of unheld
artifacts; single-flight per artifact; atomic staging (temp dir, verify, rename); safe
archive unpacking; retries with backoff; progress reports; tenant-bound storage keys and
claims, credentials that never leave their host, no fetches of private addresses, a cache
budget enforced during downloads and an overall deadline per pull. See ``Puller`` for the hold
(refcount) semantics and how local paths are served in place.
"""

from ._archive import archive_kind, unpack
from ._azure import AzureProvider
from ._config import StorageConfig, StorageSpec
from ._errors import (
    AccessDenied,
    ArtifactNotFound,
    BadCredentials,
    ForbiddenAddress,
    ForbiddenStorageParameter,
    IntegrityError,
    InvalidStorageRef,
    LocalDiskError,
    MalformedStorageConfig,
    OverBudget,
    ProviderUnavailable,
    PullCancelled,
    PullerClosed,
    PullerError,
    PullTimeout,
    StorageTlsError,
    StorageUnavailable,
    UnknownStorageKey,
    UnsafeArchive,
    UnsupportedStorage,
)
from ._gcs import GcsProvider
from ._http import HttpProvider
from ._local import LocalProvider
from ._provider import Listing, Meter, ObjectSink, Provider, ProviderContext, RemoteObject
from ._puller import Puller
from ._resolve import Source
from ._s3 import S3Provider
from ._settings import PullerSettings
from ._types import CachedArtifactInfo, CacheUsage, PullProgress, StagedArtifact, StorageRef

__all__ = [
    "AccessDenied",
    "ArtifactNotFound",
    "AzureProvider",
    "BadCredentials",
    "CacheUsage",
    "CachedArtifactInfo",
    "ForbiddenAddress",
    "ForbiddenStorageParameter",
    "GcsProvider",
    "HttpProvider",
    "IntegrityError",
    "InvalidStorageRef",
    "Listing",
    "LocalDiskError",
    "LocalProvider",
    "MalformedStorageConfig",
    "Meter",
    "ObjectSink",
    "OverBudget",
    "Provider",
    "ProviderContext",
    "ProviderUnavailable",
    "PullCancelled",
    "PullProgress",
    "PullTimeout",
    "Puller",
    "PullerClosed",
    "PullerError",
    "PullerSettings",
    "RemoteObject",
    "S3Provider",
    "Source",
    "StagedArtifact",
    "StorageConfig",
    "StorageRef",
    "StorageSpec",
    "StorageTlsError",
    "StorageUnavailable",
    "UnknownStorageKey",
    "UnsafeArchive",
    "UnsupportedStorage",
    "archive_kind",
    "unpack",
]
