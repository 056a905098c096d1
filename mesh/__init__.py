"""modelmux instances: router, agent, placement leader, V2 gRPC + REST servers, management API, store clients, CLI.

The store key layout is documented in :mod:`mesh._store_schema`.
"""

import os as _os

# Before gRPC loads: its fork handlers pause and reset gRPC's threads around every fork() and run
# in the child, and this package forks only to exec (runtime workers, etcd, helpers), where they
# are pure risk (a child of a busy process crashed in them). setdefault: an embedder may opt in.
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

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
    parse_rate,
    validate_id,
)
from ._runtimes import ExternalRuntime, RuntimeSettings
from ._settings import InstanceSettings
from ._store import MirrorChange, PrefixMirror, Store, StoreError, StoreSettings, build_store
from ._store_schema import Keys
from ._traffic_split import TrafficSplit, canary
from ._vmodel_split import set_split as set_traffic_split

__all__ = [
    "STATUS_TABLE",
    "AlreadyExists",
    "ClusterMirror",
    "Conflict",
    "CopyStatus",
    "DeadlineExceeded",
    "Endpoints",
    "ExternalRuntime",
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
    "RuntimeSettings",
    "Store",
    "StoreError",
    "StoreSettings",
    "TrafficSplit",
    "Unavailable",
    "VModelNotFound",
    "VModelStatus",
    "build_store",
    "canary",
    "parse_bytes",
    "parse_rate",
    "serve_http",
    "set_traffic_split",
    "status_for",
    "validate_id",
]
