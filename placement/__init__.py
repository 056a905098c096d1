"""Placement: which models sit where, as pure policy code over a cluster view, plus the
scheduler loop that applies it and the trace simulator that replays it.

Nothing here imports ``mesh``, ``puller`` or ``runtime_adapters``: the mesh builds
:class:`ClusterView` snapshots from its store and applies the :class:`Action` lists.
"""

from ._compare import Row, compare, markdown_table, plot_comparison
from ._errors import (
    InvalidTrace,
    ModelNotFound,
    ModelNotPlaceable,
    ModelTooLarge,
    NoCapacity,
    NoInstances,
    NotLeader,
    PlacementError,
    QuotaExceeded,
)
from ._index import PlacementIndex
from ._policy import BasePolicy, LruPolicy, Policy
from ._scheduler import DecisionConflict, LeaderElection, PlacementBackend, Scheduler, SoloElection
from ._settings import PolicySettings
from ._sim import (
    OraclePolicy,
    RateOraclePolicy,
    SimResult,
    SimulationError,
    VirtualCluster,
    simulate,
)
from ._trace import Trace, TraceSpec, generate, read_csv, write_csv
from ._types import (
    Action,
    ClusterView,
    CopyView,
    InstanceView,
    ModelView,
    TenantQuota,
)

__all__ = [
    "Action",
    "BasePolicy",
    "ClusterView",
    "CopyView",
    "DecisionConflict",
    "InstanceView",
    "InvalidTrace",
    "LeaderElection",
    "LruPolicy",
    "ModelNotFound",
    "ModelNotPlaceable",
    "ModelTooLarge",
    "ModelView",
    "NoCapacity",
    "NoInstances",
    "NotLeader",
    "OraclePolicy",
    "PlacementBackend",
    "PlacementError",
    "PlacementIndex",
    "Policy",
    "PolicySettings",
    "QuotaExceeded",
    "RateOraclePolicy",
    "Row",
    "Scheduler",
    "SimResult",
    "SimulationError",
    "SoloElection",
    "TenantQuota",
    "Trace",
    "TraceSpec",
    "VirtualCluster",
    "compare",
    "generate",
    "markdown_table",
    "plot_comparison",
    "read_csv",
    "simulate",
    "write_csv",
]
