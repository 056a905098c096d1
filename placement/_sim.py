"""Trace simulator: replays requests through a policy's own ``on_miss`` / ``on_tick`` on a virtual cluster.

The virtual cluster keeps the view current incrementally - the ``models`` dict holds the
current :class:`ModelView` of every model, and a :class:`PlacementIndex` in the policy's
order is updated on every change - so a decision costs what the policy costs, not a
rebuild of 100k model views. Loads complete at once on the virtual clock (their time is
summed, not waited for); a request is a hit when some instance holds the model.

Traffic as a mesh measures it: ``last_used`` is the request time, ``rate_rpm`` the rate of
:class:`~placement.Usage` (the estimator the mesh's instances meter copies with), an
exponentially weighted rate with time constant ``rate_window_s`` (60/window per request,
decayed since the previous one), for every model, loaded or not. The views carry that time
constant (``ClusterView.rate_window_s``), as the mesh leader's do.

``simulate(..., record_decisions=True)`` keeps every decision (time, the model missed or
``None`` for a tick, its actions) in :attr:`SimResult.decisions`: what a live mesh replaying
the same trace is compared with, decision by decision (tests/mesh/test_live_parity.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ._adaptive import AdaptivePolicy
from ._errors import PlacementError
from ._evictions import EvictionMemory
from ._index import PlacementIndex
from ._policy import BasePolicy, LruPolicy, Policy
from ._settings import PolicySettings
from ._trace import Trace
from ._types import Action, ClusterView, CopyView, InstanceView, ModelView, TenantQuota
from ._usage import Usage


class SimulationError(AssertionError):
    """A policy broke an invariant the simulator checks (capacity exceeded, bad action)."""


class OraclePolicy(BasePolicy):
    """Furthest-next-use (Belady) eviction: knows the future of the trace; the reference to compare with.

    Precisely: every miss loads the model (no bypass; the same placement engine as the other
    policies, so the same capacity, per-instance packing and "fits without eviction first"
    rules). When a miss needs room, the copies are read in descending order of the time of
    their model's next request (``next_use``, from the trace; infinity when the model is not
    requested again), over all instances, and the first instance whose copies read so far
    free enough bytes takes the load, evicting exactly those copies. So the victims' nearest
    next use is as late as it can be on any single instance. Ties (equal next use, mostly
    "never again") go by model id; evicting a never-again copy costs nothing, whatever its
    size. No residency, fairness or extra copies.

    With equal sizes and one instance this is Belady's optimal algorithm for hits. With
    variable sizes and load times it is a strong heuristic, not the optimum (that problem is
    NP-hard): it never weighs a far-away reload of a large, slow model against a nearer one of
    a small, fast model, and a policy can beat it on a given trace; it is not weakened here.
    """

    name = "oracle"
    rate_copies = False
    fair = False
    residency = False
    swap_guard = False

    def __init__(self, settings: PolicySettings, next_use: Mapping[str, float], seed: int = 0) -> None:
        super().__init__(settings, seed)
        self.next_use = next_use

    def evict_key(self, m: ModelView) -> float | None:
        if m.pinned:
            return None
        return -self.next_use.get(m.model_id, math.inf)


class RateOraclePolicy(BasePolicy):
    """Knows how many times each model is requested (not when), and evicts the lowest
    count x load time / size first: the best a frequency-based policy could know.

    ``window_s`` 0: counts over the whole trace (static). Otherwise counts within the current
    window ``[k * window_s, (k + 1) * window_s)`` (future requests of that window included):
    with ``window_s`` the hot-set shift period of a generated trace, this is each phase's
    true popularity, an upper reference for any policy that estimates rates online.
    """

    name = "rates"
    rate_copies = False
    fair = False
    residency = False
    swap_guard = False

    def __init__(
        self, settings: PolicySettings, trace: Trace, seed: int = 0, *, window_s: float = 0.0
    ) -> None:
        super().__init__(settings, seed)
        self.window_s = window_s
        n = len(trace.names)
        if window_s > 0 and len(trace):
            w = (trace.times // window_s).astype(np.int64)
            self._counts = np.zeros((int(w.max()) + 1, n))
            np.add.at(self._counts, (w, trace.models), 1.0)
            self.name = "wrates"  # type: ignore[misc]
        else:
            self._counts = np.bincount(trace.models, minlength=n).astype(np.float64)[None, :]
        self._pos = {name: i for i, name in enumerate(trace.names)}
        self.window = 0
        self.key_id = f"{self.key_id}/{window_s}"

    def advance(self, now: float) -> bool:
        """Move to the window of ``now``; True when the keys changed (the index must be rebuilt)."""
        if self.window_s <= 0:
            return False
        w = min(int(now // self.window_s), self._counts.shape[0] - 1)
        if w == self.window:
            return False
        self.window = w
        return True

    def evict_key(self, m: ModelView) -> float | None:
        if m.pinned:
            return None
        c = float(self._counts[self.window, self._pos[m.model_id]]) if m.model_id in self._pos else 0.0
        return math.log(c + 1e-3) + math.log(max(m.load_time_s, 1e-3) / max(m.size_bytes, 1))


class VirtualCluster:
    """A mutable cluster the simulator (and tests) drive: applies actions and checks invariants."""

    def __init__(
        self,
        policy: BasePolicy,
        instances: list[InstanceView],
        models: list[ModelView],
        *,
        quotas: Mapping[str, TenantQuota] | None = None,
        rate_window_s: float = 600.0,
        recent_window_s: float = 0.0,
    ) -> None:
        self.policy = policy
        self.instances: dict[str, InstanceView] = {i.instance_id: i for i in instances}
        self.models: dict[str, ModelView] = {m.model_id: m for m in models}
        self.quotas: dict[str, TenantQuota] = dict(quotas or {})
        self.index: PlacementIndex = policy.build_index(self.models.values())
        self.rate_window_s = rate_window_s
        self.recent_window_s = recent_window_s  # 0: ticks read rate_rpm (ClusterView.recent_window_s)
        self.loads = 0
        self.unloads = 0
        self.load_time_s = 0.0
        self.used_total = sum(i.used_bytes for i in instances)
        self.peak_used_bytes = self.used_total
        self.quick_reloads = 0
        """loads of a model within ``quick_reload_s`` of its last eviction (load/evict ping-pong)"""
        self.quick_reload_s = 300.0
        self._evicted_at: dict[str, float] = {}
        self.evictions = EvictionMemory(policy.settings.swap_guard_s)
        """which model each recent eviction made room for (``ClusterView.evicted_for``)"""

    def view(self, now: float) -> ClusterView:
        return ClusterView(
            now=now, instances=self.instances, models=self.models, quotas=self.quotas, index=self.index,
            rate_window_s=self.rate_window_s, recent_window_s=self.recent_window_s, evicted_for=self.evictions.recent,
        )

    def _set(self, m: ModelView) -> None:
        self.models[m.model_id] = m
        self.index.update(m)

    def touch(self, model_id: str, now: float) -> ModelView:
        """Record one request at ``now``."""
        m = self.models[model_id]
        _, rate = Usage(m.last_used, m.rate_rpm).record(now, self.rate_window_s)
        recent = Usage(m.last_used, m.recent_rpm).record(now, self.recent_window_s)[1] if self.recent_window_s else 0.0
        m = ModelView(
            m.model_id, m.size_bytes, m.size_measured, m.tenant, m.copies, m.assigned, now, rate,
            m.inflight, m.load_time_s, m.failures, m.min_copies, m.max_copies, m.pinned, m.awaiting, recent,
        )
        self._set(m)
        return m

    def _instance(self, iid: str, delta: int) -> None:
        i = self.instances[iid]
        used = i.used_bytes + delta
        if used > i.capacity_bytes:
            raise SimulationError(
                f"{self.policy.name}: instance {iid} would hold {used} bytes, capacity {i.capacity_bytes}"
            )
        self.instances[iid] = InstanceView(
            iid, i.capacity_bytes, used, i.loading, i.loading_slots, i.zone, i.labels, i.state
        )
        self.used_total += delta
        if self.used_total > self.peak_used_bytes:
            self.peak_used_bytes = self.used_total

    def apply(self, actions: list[Action], now: float) -> None:
        for a in actions:
            if not a.reason or ":" not in a.reason:
                raise SimulationError(f"{self.policy.name}: action without a reason: {a}")
            m = self.models.get(a.model_id)
            if m is None:
                raise SimulationError(f"{self.policy.name}: action on unknown model {a.model_id!r}")
            if a.kind == "load":
                if a.instance_id in m.assigned:
                    raise SimulationError(f"{self.policy.name}: {a.model_id} already on {a.instance_id}")
                inst = self.instances.get(a.instance_id)
                if inst is None or inst.state != "live":
                    raise SimulationError(f"{self.policy.name}: load on non-live instance {a.instance_id}")
                self._instance(a.instance_id, m.size_bytes)
                copies = (*m.copies, CopyView(a.instance_id, "loaded", now))
                assigned = m.assigned | {a.instance_id}
                self.loads += 1
                self.load_time_s += m.load_time_s
                ev = self._evicted_at.get(a.model_id)
                if ev is not None and now - ev < self.quick_reload_s:
                    self.quick_reloads += 1
            else:
                if a.instance_id not in m.assigned:
                    raise SimulationError(f"{self.policy.name}: {a.model_id} is not on {a.instance_id}")
                if a.instance_id in self.instances:
                    self._instance(a.instance_id, -m.size_bytes)
                copies = tuple(c for c in m.copies if c.instance_id != a.instance_id)
                assigned = m.assigned - {a.instance_id}
                self.unloads += 1
                self._evicted_at[a.model_id] = now
                if a.room_for:
                    self.evictions.note(a.model_id, a.room_for, now)
            self._set(
                ModelView(
                    m.model_id, m.size_bytes, True, m.tenant, copies, assigned, m.last_used, m.rate_rpm,
                    m.inflight, m.load_time_s, m.failures, m.min_copies, m.max_copies, m.pinned, m.awaiting,
                    m.recent_rpm,
                )
            )


@dataclass
class SimResult:
    policy: str
    capacity_bytes: int
    requests: int = 0
    hits: int = 0
    bytes_requested: int = 0
    bytes_hit: int = 0
    loads: int = 0
    evictions: int = 0
    load_time_s: float = 0.0
    peak_used_bytes: int = 0
    refused: int = 0
    quick_reloads: int = 0
    """loads of a model within 5 min of its eviction (load/evict ping-pong)"""
    index_rebuilds: int = 0
    """times the policy's key order changed (an adaptive retune) and the index was rebuilt"""
    wall_s: float = 0.0
    decision_us: list[float] = field(default_factory=list, repr=False)
    decisions: list[tuple[float, str | None, list[Action]]] = field(default_factory=list, repr=False)
    """with ``record_decisions``: (time, model missed or None for a tick, actions) of each decision that acted"""
    tenant_requests: dict[str, int] = field(default_factory=dict, repr=False)
    tenant_hits: dict[str, int] = field(default_factory=dict, repr=False)

    def tenant_hit_ratio(self, tenant: str) -> float:
        n = self.tenant_requests.get(tenant, 0)
        return self.tenant_hits.get(tenant, 0) / n if n else 0.0

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return self.bytes_hit / self.bytes_requested if self.bytes_requested else 0.0

    def decision_percentile_us(self, q: float) -> float:
        return float(np.percentile(self.decision_us, q)) if self.decision_us else 0.0

    def summary(self) -> dict[str, float | int | str]:
        return {
            "policy": self.policy,
            "capacity_bytes": self.capacity_bytes,
            "requests": self.requests,
            "hit_ratio": round(self.hit_ratio, 4),
            "byte_hit_ratio": round(self.byte_hit_ratio, 4),
            "loads": self.loads,
            "evictions": self.evictions,
            "load_time_s": round(self.load_time_s, 1),
            "peak_used_bytes": self.peak_used_bytes,
            "refused": self.refused,
            "quick_reloads": self.quick_reloads,
            "index_rebuilds": self.index_rebuilds,
            "decision_p50_us": round(self.decision_percentile_us(50), 1),
            "decision_p99_us": round(self.decision_percentile_us(99), 1),
            "wall_s": round(self.wall_s, 2),
        }


POLICY_NAMES = ("ours", "adaptive", "lru", "oracle", "rates", "wrates")


def make_policy(
    name: str, settings: PolicySettings, trace: Trace, seed: int = 0, *, window_s: float = 4 * 3600.0
) -> tuple[BasePolicy, dict[str, float]]:
    """A policy by name (:data:`POLICY_NAMES`) and the next-use table the oracle reads.

    ``window_s``: the window of ``wrates`` (default: the generated traces' shift period).
    """
    next_use: dict[str, float] = {}
    if name == "rates":
        return RateOraclePolicy(settings, trace, seed), next_use
    if name == "wrates":
        return RateOraclePolicy(settings, trace, seed, window_s=window_s), next_use
    if name == "ours":
        return Policy(settings, seed), next_use
    if name == "adaptive":
        return AdaptivePolicy(settings, seed), next_use
    if name == "lru":
        return LruPolicy(settings, seed), next_use
    if name == "oracle":
        return OraclePolicy(settings, next_use, seed), next_use
    raise ValueError(f"unknown policy {name!r} ({', '.join(POLICY_NAMES)})")


def simulate(
    trace: Trace,
    policy_name: str,
    *,
    instances: int,
    capacity_bytes: int,
    settings: PolicySettings | None = None,
    zones: int = 1,
    tick_s: float = 0.0,
    rate_window_s: float | None = None,
    recent_window_s: float = 0.0,
    seed: int = 0,
    time_decisions: bool = True,
    window_s: float = 4 * 3600.0,
    progress: Callable[[int], None] | None = None,
    record_decisions: bool = False,
) -> SimResult:
    """Replay ``trace`` through one policy on ``instances`` instances sharing ``capacity_bytes`` equally.

    ``rate_window_s`` is the time constant of the request rates the cluster measures
    (default: the policy's ``rate_tau_s``, so that ``rate_rpm * tau / 60`` is the decayed count);
    ``recent_window_s`` (not 0) meters a second, short-window rate that ticks add and remove
    copies by, as the mesh's instances do (``ClusterView.recent_window_s``).
    """
    settings = settings or PolicySettings()
    if rate_window_s is None:
        rate_window_s = settings.rate_tau_s
    policy, next_use = make_policy(policy_name, settings, trace, seed, window_s=window_s)
    windowed = policy if isinstance(policy, RateOraclePolicy) and policy.window_s > 0 else None
    per = capacity_bytes // instances
    insts = [InstanceView(f"i{k:03d}", per, 0, zone=f"z{k % zones}") for k in range(instances)]
    names = trace.names
    sizes = trace.sizes.tolist()
    loads = trace.load_times.tolist()
    models = [
        ModelView(names[i], sizes[i], True, trace.tenants[i], load_time_s=loads[i]) for i in range(len(names))
    ]
    cluster = VirtualCluster(policy, insts, models, rate_window_s=rate_window_s, recent_window_s=recent_window_s)
    nxt = trace.next_use().tolist() if policy_name == "oracle" else None
    res = SimResult(policy=policy.name, capacity_bytes=capacity_bytes)
    timings = res.decision_us
    t_req, t_hit = res.tenant_requests, res.tenant_hits
    per_tenant = len(set(trace.tenants)) > 1
    cmodels = cluster.models
    next_tick = trace.times[0] + tick_s if tick_s > 0 and len(trace) else math.inf
    perf = time.perf_counter
    t0 = perf()
    for k, (t, mi) in enumerate(zip(trace.times.tolist(), trace.models.tolist(), strict=True)):
        if windowed is not None and windowed.advance(t):
            cluster.index = policy.build_index(cmodels.values())
        if t >= next_tick:
            ticked = policy.on_tick(cluster.view(t))
            if record_decisions and ticked:
                res.decisions.append((t, None, ticked))
            cluster.apply(ticked, t)
            next_tick = t + tick_s
        mid = names[mi]
        m = cmodels[mid]
        size = m.size_bytes
        res.requests += 1
        res.bytes_requested += size
        if per_tenant:
            t_req[m.tenant] = t_req.get(m.tenant, 0) + 1
        if m.assigned:
            res.hits += 1
            res.bytes_hit += size
            if per_tenant:
                t_hit[m.tenant] = t_hit.get(m.tenant, 0) + 1
        else:
            view = cluster.view(t)
            try:
                if time_decisions:
                    s0 = perf()
                    actions = policy.on_miss(view, mid)
                    timings.append((perf() - s0) * 1e6)
                else:
                    actions = policy.on_miss(view, mid)
            except PlacementError:
                res.refused += 1
                actions = []
            if record_decisions:
                res.decisions.append((t, mid, actions))
            cluster.apply(actions, t)
            if cluster.index.key_id != policy.key_id:  # the adaptive policy retuned: its key order changed
                cluster.index = policy.build_index(cmodels.values())
                res.index_rebuilds += 1
        if nxt is not None:
            next_use[mid] = nxt[k]
        cluster.touch(mid, t)
        if progress is not None and k % 100_000 == 0:
            progress(k)
    res.wall_s = perf() - t0
    res.loads = cluster.loads
    res.evictions = cluster.unloads
    res.load_time_s = cluster.load_time_s
    res.peak_used_bytes = cluster.peak_used_bytes
    res.quick_reloads = cluster.quick_reloads
    return res
