"""Domain types of placement: the cluster view the policy reads and the actions it returns.

The view is a snapshot built by the caller (the mesh leader from store records, the
simulator from its virtual cluster). Sizes are bytes; times are seconds on the caller's
clock (``ClusterView.now`` is "now" on that clock; the policy never reads a clock).

Holding: an instance holds a model when it is in the model's ``assigned`` set (desired
state). ``InstanceView.used_bytes`` counts every assigned model, loading ones included
(bytes are reserved when a load starts), so capacity arithmetic never waits for a load to
finish. A model's size is its measured size once one copy has loaded (``size_measured``),
its predicted size before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ._index import PlacementIndex

InstanceState = Literal["live", "shutting_down", "dead"]
CopyState = Literal["loading", "loaded", "failed"]
ActionKind = Literal["load", "unload"]


@dataclass(frozen=True)
class InstanceView:
    """One serving instance: its byte capacity, what is assigned to it, its load concurrency."""

    instance_id: str
    capacity_bytes: int
    used_bytes: int
    loading: int = 0
    loading_slots: int = 2
    zone: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    state: InstanceState = "live"
    assigned_bytes: int | None = None
    """The bytes of the copies assigned to it, where ``used_bytes`` may be more (a live view's
    ``used_bytes`` is the larger of these and what the instance reports, which includes copies
    still unloading); None: the same as ``used_bytes``."""

    @property
    def free_bytes(self) -> int:
        return self.capacity_bytes - self.used_bytes


@dataclass(frozen=True)
class CopyView:
    """Actual state of one copy, as its instance reports it; ``since`` is when it entered it."""

    instance_id: str
    state: CopyState
    since: float


@dataclass(frozen=True)
class ModelView:
    """One registered model and its traffic.

    ``rate_rpm`` is the request rate (per minute) measured around ``last_used``;
    ``load_time_s`` the observed (else expected) time one load takes; ``failures`` maps an
    instance id to the time until which loading there is not retried; ``max_copies`` 0 means
    no limit beyond the number of instances. ``awaiting``: a request that missed is waiting
    for this model (live only: no copy has reported serving it yet; the simulator serves a
    request the moment its copy loads), so its copies are evicted only when nothing else
    anywhere can make room: evicting one would throw its load away and load it again.
    ``recent_rpm``: the rate over the view's short window (``ClusterView.recent_window_s``),
    as of ``last_used``, which ticks add and remove copies by; unused when that window is 0
    (``rate_rpm`` then serves both).
    """

    model_id: str
    size_bytes: int
    size_measured: bool = False
    tenant: str = ""
    copies: tuple[CopyView, ...] = ()
    assigned: frozenset[str] = frozenset()
    last_used: float = 0.0
    rate_rpm: float = 0.0
    inflight: int = 0
    load_time_s: float = 1.0
    failures: Mapping[str, float] = field(default_factory=dict)
    min_copies: int = 0
    max_copies: int = 0
    pinned: bool = False
    awaiting: bool = False
    recent_rpm: float = 0.0

    def copy_on(self, instance_id: str) -> CopyView | None:
        for c in self.copies:
            if c.instance_id == instance_id:
                return c
        return None


@dataclass(frozen=True)
class TenantQuota:
    """Hard limit on the bytes one tenant's assigned copies may take, cluster-wide."""

    tenant: str
    max_bytes: int


@dataclass(frozen=True)
class ClusterView:
    """A snapshot of the cluster at ``now``.

    ``index`` is optional: a :class:`~placement.PlacementIndex` that the producer of views
    keeps current incrementally (the simulator, the mesh's placement leader). When it is
    absent, or was made for another policy's eviction order, the policy builds one from
    ``models`` (a pass over every model) and caches it on this view object. The index only
    orders eviction candidates; every candidate is checked against ``models`` and
    ``instances`` (assigned, copy state, pinned, min copies) before it is used, so a stale
    index can cost quality (order, a missed candidate), never safety.

    ``on_tick`` reads only the models the index watches (see ``BasePolicy.tick_watch``) plus
    the holders of instances that are not live, so a producer that keeps the index must call
    ``update`` after every change of a model, assigned or not (a model below its min copies
    with no copy at all is watched too); a missed update delays that model's tick work.

    ``rate_window_s`` is the time constant of the models' ``rate_rpm`` (the
    :class:`~placement.Usage` estimator, a rate as of ``last_used``): a tick decays each rate
    to ``now`` with it before deciding copies by rate. 0: rates are read as they are.

    ``recent_window_s``: when not 0, models also carry ``recent_rpm``, the same estimator over
    this (short) window, and ticks add and remove copies by it, while eviction values keep
    ``rate_rpm``: a frequency horizon of hours for what to keep, a minute for how many copies
    traffic needs now (the mesh's leader: the instances' ``rate_window_s``). 0: ``rate_rpm``
    serves both (the simulator's default).

    ``evicted_for``: per model evicted lately, the models those evictions made room for and
    when (a :class:`~placement.EvictionMemory` the producer keeps from the decisions it
    applied). A miss of ``a`` weighs the copies of ``b`` at ``swap_guard_penalty`` times their
    value when ``a`` was evicted for ``b`` within ``swap_guard_s`` (no load/evict ping-pong).
    """

    now: float
    instances: Mapping[str, InstanceView]
    models: Mapping[str, ModelView]
    quotas: Mapping[str, TenantQuota] = field(default_factory=dict)
    index: PlacementIndex | None = field(default=None, compare=False, repr=False)
    rate_window_s: float = 0.0
    recent_window_s: float = 0.0
    evicted_for: Mapping[str, Mapping[str, float]] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Action:
    """Load (add ``instance_id`` to the model's assignments) or unload (remove it).

    ``reason`` starts with a short machine word (``miss``, ``evict``, ``scale_out`` ...),
    then ``": "`` and a human detail. ``room_for``: on an eviction a miss or another copy
    asked for, the model it makes room for ("" otherwise).
    """

    kind: ActionKind
    model_id: str
    instance_id: str
    reason: str
    room_for: str = ""

    @property
    def reason_word(self) -> str:
        return self.reason.split(":", 1)[0].strip()
