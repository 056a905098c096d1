"""The store layer: one interface over etcd (a cluster), SQLite (one machine, durable) and memory.

``build_store(StoreSettings())`` gives the configured store; :class:`PrefixMirror` keeps a
live in-memory copy of a key prefix for hot-path reads. Semantics are documented in
``_base`` and are the same for both implementations.
"""

from ._base import Store
from ._errors import (
    Compacted,
    LeaseExpired,
    StoreConflict,
    StoreError,
    StoreInvalidArgument,
    StorePermissionDenied,
    StoreQuotaExceeded,
    StoreResourceExhausted,
    StoreUnauthenticated,
    StoreUnavailable,
)
from ._etcd import EtcdStore
from ._memory import MemoryStore
from ._mirror import MirrorChange, PrefixMirror
from ._room import StoreRoom
from ._settings import StoreSettings, build_store
from ._sqlite import SqliteStore, StoreLocked
from ._types import Compare, Delete, KeyValue, Op, Put, StoreUsage, WatchEvent

__all__ = [
    "Compacted",
    "Compare",
    "Delete",
    "EtcdStore",
    "KeyValue",
    "LeaseExpired",
    "MemoryStore",
    "MirrorChange",
    "Op",
    "PrefixMirror",
    "Put",
    "SqliteStore",
    "Store",
    "StoreConflict",
    "StoreError",
    "StoreInvalidArgument",
    "StoreLocked",
    "StorePermissionDenied",
    "StoreQuotaExceeded",
    "StoreResourceExhausted",
    "StoreRoom",
    "StoreSettings",
    "StoreUnauthenticated",
    "StoreUnavailable",
    "StoreUsage",
    "WatchEvent",
    "build_store",
]
