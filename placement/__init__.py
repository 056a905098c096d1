"""Placement: which models sit where, as pure policy code over a cluster view, plus the
eviction index that keeps decisions cheap and the trace simulator that replays the policy.

The live loop that applies the policy is the mesh's placement leader (``mesh/_leader.py``):
it is elected through the store, turns miss records and ticks into ``on_miss`` / ``on_tick``
calls on a view it keeps incrementally, and writes the actions by compare-and-swap. That loop
lives in ``mesh`` because everything it does besides deciding is store records (misses,
assignments, vModel promotion); the decisions themselves are made here, with no I/O.

Traffic is metered with one estimator, :class:`Usage` (the simulator per model, the mesh's
agents per copy, merged by the leader), and the leader keeps gone copies' traffic in a
:class:`UsageHistory`: so a live mesh replaying a trace decides as the simulator does.

Nothing here imports ``mesh``, ``puller`` or ``runtime_adapters``: the mesh builds
:class:`ClusterView` snapshots from its store and applies the :class:`Action` lists.
"""

from ._adaptive import AdaptivePolicy, AdaptiveState, Ghost, build_policy
from ._compare import Row, compare, markdown_table, plot_comparison
from ._errors import (
    InvalidTrace,
    ModelNotFound,
    ModelNotPlaceable,
    ModelTooLarge,
    NoCapacity,
    NoInstances,
    PlacementError,
    QuotaExceeded,
)
from ._evictions import EvictionMemory
from ._families import FAMILIES, FamilySpec, family, family_spec, generate_family
from ._index import PlacementIndex
from ._policy import BasePolicy, LruPolicy, Policy
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
from ._usage import Remembered, Usage, UsageHistory, merge_usage

__all__ = [
    "FAMILIES",
    "Action",
    "AdaptivePolicy",
    "AdaptiveState",
    "BasePolicy",
    "ClusterView",
    "CopyView",
    "EvictionMemory",
    "FamilySpec",
    "Ghost",
    "InstanceView",
    "InvalidTrace",
    "LruPolicy",
    "ModelNotFound",
    "ModelNotPlaceable",
    "ModelTooLarge",
    "ModelView",
    "NoCapacity",
    "NoInstances",
    "OraclePolicy",
    "PlacementError",
    "PlacementIndex",
    "Policy",
    "PolicySettings",
    "QuotaExceeded",
    "RateOraclePolicy",
    "Remembered",
    "Row",
    "SimResult",
    "SimulationError",
    "TenantQuota",
    "Trace",
    "TraceSpec",
    "Usage",
    "UsageHistory",
    "VirtualCluster",
    "build_policy",
    "compare",
    "family",
    "family_spec",
    "generate",
    "generate_family",
    "markdown_table",
    "merge_usage",
    "plot_comparison",
    "read_csv",
    "simulate",
    "write_csv",
]
