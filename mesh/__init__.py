"""modelmux instances: router, agent, placement leader, V2 gRPC + REST servers, management API, store clients, CLI.

The store key layout is documented in :mod:`mesh._store_schema`.
"""

from ._cluster_mirror import ClusterMirror
from ._errors import (
    STATUS_TABLE,
    AlreadyExists,
    Conflict,
    DeadlineExceeded,
    InvalidRequest,
    MeshError,
    ModelLoadFailed,
    ModelNotFound,
    NoCapacity,
    PayloadTooLarge,
    PreconditionFailed,
    Unavailable,
    VModelNotFound,
    status_for,
)
from ._http_tiny import serve_http
from ._instance import Endpoints, Instance
from ._local import LocalMesh, LocalMeshConfig
from ._management import (
    CopyStatus,
    Management,
    ModelInfoSpec,
    ModelStatus,
    VModelStatus,
    parse_bytes,
    validate_id,
)
from ._settings import InstanceSettings
from ._store import MirrorChange, PrefixMirror, Store, StoreError, StoreSettings, build_store
from ._store_schema import Keys

__all__ = [
    "STATUS_TABLE",
    "AlreadyExists",
    "ClusterMirror",
    "Conflict",
    "CopyStatus",
    "DeadlineExceeded",
    "Endpoints",
    "Instance",
    "InstanceSettings",
    "InvalidRequest",
    "Keys",
    "LocalMesh",
    "LocalMeshConfig",
    "Management",
    "MeshError",
    "MirrorChange",
    "ModelInfoSpec",
    "ModelLoadFailed",
    "ModelNotFound",
    "ModelStatus",
    "NoCapacity",
    "PayloadTooLarge",
    "PreconditionFailed",
    "PrefixMirror",
    "Store",
    "StoreError",
    "StoreSettings",
    "Unavailable",
    "VModelNotFound",
    "VModelStatus",
    "build_store",
    "parse_bytes",
    "serve_http",
    "status_for",
    "validate_id",
]
