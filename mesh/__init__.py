"""modelmux instances: router, agent, placement leader, V2 gRPC + REST servers, management API, store clients, CLI.

The store key layout is documented in :mod:`mesh._store_schema`.
"""

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
from ._instance import Endpoints, Instance
from ._local import LocalMesh, LocalMeshConfig
from ._management import Management, ModelInfoSpec, ModelStatus, VModelStatus
from ._settings import InstanceSettings
from ._store import PrefixMirror, Store, StoreSettings, build_store
from ._store_schema import Keys

__all__ = [
    "STATUS_TABLE",
    "AlreadyExists",
    "Conflict",
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
    "ModelInfoSpec",
    "ModelLoadFailed",
    "ModelNotFound",
    "ModelStatus",
    "NoCapacity",
    "PayloadTooLarge",
    "PreconditionFailed",
    "PrefixMirror",
    "Store",
    "StoreSettings",
    "Unavailable",
    "VModelNotFound",
    "VModelStatus",
    "build_store",
    "status_for",
]
