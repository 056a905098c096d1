"""The placement policies: pure functions of a cluster view, returning actions with reasons.

:class:`Policy` (ours) values a copy by what losing it would cost: expected future requests
(an exponentially decayed request count: request rate and recency in one number) times the
time a reload takes, per byte it occupies - a GreedyDual-Size-Frequency flavour of
cost-aware LRU. :class:`LruPolicy` is the ModelMesh-style baseline: least recently used goes.

Both share one engine (:class:`BasePolicy`):

* **Place on a miss.** Among live instances that can ever hold the model (capacity, no
  recent load failure there), the ones where it fits without eviction win; among them a
  zone with no copy yet, then a free loading slot, then most free bytes, then fewest loads
  in flight, then a seeded hash. Otherwise the index is read in ascending key order, and
  the first instance whose candidates add up to the bytes it lacks is chosen: its victims
  are the cheapest possible, in the sense that every other instance would need a more
  valuable copy to make room (minimax over instances; found without ranking every copy).
  With more than ``eviction_shortlist`` instances the read covers a shortlist first (the
  smallest shortfalls and the cheapest first candidates), then, only if that fails, all.
* **Loading slots** never cause evictions: a miss prefers an instance with a free slot,
  but when the only instances it fits on (with or without evictions) have their slots
  full, the load is still assigned and waits at that instance's agent for a slot (a client
  is waiting; refusing would fail it). Repairs (min copies, copies lost with an instance,
  moves off draining instances) queue the same way; extra copies for traffic (scale-out,
  second copy) need a free slot.
* **Never evicted:** pinned models, a copy whose removal would leave fewer live copies
  than ``min_copies`` (pinned counts as one), copies still loading (or not reported yet).
* **Residency:** copies younger than ``min_residency_s`` (and the last copy of a model with
  requests in flight) are never removed by a tick (scale-in, cold, quota trims), and a
  miss evicts them only when older copies cannot make room at a value within
  ``young_eviction_penalty`` times theirs (for :class:`Policy`; the baselines only when
  nothing older can make room at all). Churn is bounded, yet a request is never refused
  for it.
* **No OOM by design:** every load is planned against the instance's capacity minus its
  assigned bytes (loading copies included) after the planned evictions.
* **Tenants:** a hard per-tenant byte quota (evicting the tenant's own copies to make room),
  and fair eviction: a tenant above its fair share (capacity divided among tenants used in
  the last ``cold_idle_s``) makes room from its own copies and idle tenants' copies, unless
  another active tenant's copy is worth ``fair_eviction_penalty`` times less; so its scan
  cannot flush another tenant's hot set (the value order already protects hot copies from
  one-off scans; this bounds what a tenant's own heavy traffic takes from the others).
"""

from __future__ import annotations

import heapq
import logging
import math
import zlib
from collections.abc import Collection, Sequence
from typing import Any, ClassVar

from ._errors import (
    ModelNotFound,
    ModelNotPlaceable,
    ModelTooLarge,
    NoCapacity,
    NoInstances,
    QuotaExceeded,
)
from ._index import PlacementIndex
from ._settings import PolicySettings
from ._types import Action, ClusterView, InstanceView, ModelView

log = logging.getLogger(__name__)

_INF = float("inf")
_CACHE_ATTR = "_placement_index_cache"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


class _Plan:
    """Tentative cluster state while one decision is built: deltas over the view."""

    __slots__ = ("_added", "_loading", "_removed", "_tenant", "_used", "actions", "view")

    def __init__(self, view: ClusterView) -> None:
        self.view = view
        self.actions: list[Action] = []
        self._used: dict[str, int] = {}
        self._loading: dict[str, int] = {}
        self._added: dict[str, set[str]] = {}
        self._removed: dict[str, set[str]] = {}
        self._tenant: dict[str, int] = {}

    def assigned(self, m: ModelView) -> frozenset[str]:
        a = m.assigned
        add = self._added.get(m.model_id)
        rem = self._removed.get(m.model_id)
        if add:
            a = a | add
        if rem:
            a = a - rem
        return a

    def free(self, inst: InstanceView) -> int:
        return inst.capacity_bytes - inst.used_bytes - self._used.get(inst.instance_id, 0)

    def loading(self, inst: InstanceView) -> int:
        return inst.loading + self._loading.get(inst.instance_id, 0)

    def tenant_delta(self, tenant: str) -> int:
        return self._tenant.get(tenant, 0)

    def load(self, m: ModelView, iid: str, reason: str) -> None:
        self._added.setdefault(m.model_id, set()).add(iid)
        rem = self._removed.get(m.model_id)
        if rem:
            rem.discard(iid)
        self._used[iid] = self._used.get(iid, 0) + m.size_bytes
        self._loading[iid] = self._loading.get(iid, 0) + 1
        self._tenant[m.tenant] = self._tenant.get(m.tenant, 0) + m.size_bytes
        self.actions.append(Action("load", m.model_id, iid, reason))

    def unload(self, m: ModelView, iid: str, reason: str) -> None:
        self._removed.setdefault(m.model_id, set()).add(iid)
        self._used[iid] = self._used.get(iid, 0) - m.size_bytes
        c = m.copy_on(iid)
        if c is None or c.state == "loading":
            self._loading[iid] = self._loading.get(iid, 0) - 1
        self._tenant[m.tenant] = self._tenant.get(m.tenant, 0) - m.size_bytes
        self.actions.append(Action("unload", m.model_id, iid, reason))


class BasePolicy:
    """The engine shared by the policies; subclasses define the eviction key and switches."""

    name: ClassVar[str] = "base"
    rate_copies: ClassVar[bool] = True
    """add and remove copies by request rate (scale out / second copy / scale in)"""
    fair: ClassVar[bool] = True
    """fair eviction between tenants"""
    residency: ClassVar[bool] = True
    """protect copies younger than min_residency_s (second pass only)"""

    def __init__(self, settings: PolicySettings, seed: int = 0) -> None:
        self.settings = settings
        self.seed = seed
        st = settings
        self.key_id = (
            f"{type(self).__name__}:{self._key_params()}|{st.scale_out_rpm_per_copy}/"
            f"{st.scale_out_inflight_per_copy}/{st.second_copy_rpm}"
        )
        self._inst_hash: dict[str, int] = {}

    # ------------------------------------------------------------------ keys

    def _key_params(self) -> str:
        return ""

    def evict_key(self, m: ModelView) -> float | None:
        """Eviction order of the model's copies (lower goes first); None: never evicted."""
        raise NotImplementedError

    def value_key(self, m: ModelView) -> float:
        """The key the model would have as a single copy (threshold for evicting on its behalf)."""
        k = self.evict_key(m)
        return _INF if k is None else k

    def tick_watch(self, m: ModelView) -> bool:
        """Whether :meth:`on_tick` may act on ``m`` while every instance it is assigned to is live.

        A superset of the per-model conditions of a tick (below min copies, a failed copy,
        more than one copy, a rate or load that asks for another copy); the time-dependent
        parts (idle, young copies) are checked by the tick itself. The index keeps the set
        of models this holds for, so a tick reads those and the holders of instances that
        are not live instead of every model.
        """
        if self.min_copies(m) > 0:
            return True
        a = m.assigned
        if not a:
            return False
        for c in m.copies:
            if c.state == "failed" and c.instance_id in a:
                return True
        if not self.rate_copies:
            return False
        if len(a) > 1:
            return True
        s = self.settings
        return (
            m.rate_rpm >= s.second_copy_rpm
            or m.rate_rpm > s.scale_out_rpm_per_copy
            or m.inflight > s.scale_out_inflight_per_copy
        )

    def new_index(self) -> PlacementIndex:
        """An empty index in this policy's eviction order, for producers that keep one current."""
        return PlacementIndex(self.evict_key, self.key_id, self.tick_watch)

    def build_index(self, models: Sequence[ModelView] | Any) -> PlacementIndex:
        return PlacementIndex.build(self.evict_key, self.key_id, models, self.tick_watch)

    def index_for(self, view: ClusterView) -> PlacementIndex:
        """The view's own index when it is in this policy's order, else one built from the view (cached on it)."""
        if view.index is not None and view.index.key_id == self.key_id:
            return view.index
        cached = view.__dict__.get(_CACHE_ATTR)
        if cached is not None and cached.key_id == self.key_id:
            return cached  # type: ignore[no-any-return]
        idx = self.build_index(view.models.values())
        object.__setattr__(view, _CACHE_ATTR, idx)
        return idx

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def min_copies(m: ModelView) -> int:
        return max(m.min_copies, 1 if m.pinned else 0)

    def _tiebreak(self, model_hash: int, iid: str) -> int:
        h = self._inst_hash.get(iid)
        if h is None:
            h = self._inst_hash[iid] = zlib.crc32(f"{self.seed}/{iid}".encode())
        return (h ^ model_hash) * 2654435761 % (1 << 32)

    def _model_hash(self, m: ModelView) -> int:
        return zlib.crc32(m.model_id.encode())

    def _victim_tier(self, view: ClusterView, plan: _Plan, vm: ModelView, iid: str) -> int | None:
        """0: evictable; 1: evictable only as a last resort (young, or serving its last requests); None: never."""
        if vm.pinned:
            return None
        assigned = plan.assigned(vm) if (plan._added or plan._removed) else vm.assigned
        if iid not in assigned:
            return None
        c = None
        for x in vm.copies:
            if x.instance_id == iid:
                c = x
                break
        if c is None or c.state == "loading":
            return None
        instances = view.instances
        emin = vm.min_copies
        live_n = -1
        if emin > 0 or vm.inflight > 0:
            inst = instances.get(iid)
            if inst is not None and inst.state == "live":
                live_n = 0
                for other in assigned:
                    o = instances.get(other)
                    if o is not None and o.state == "live":
                        live_n += 1
                if live_n <= emin:
                    return None
        if c.state == "loaded" and self.residency and view.now - c.since < self.settings.min_residency_s:
            return 1
        if vm.inflight > 0 and live_n == 1:
            return 1
        return 0

    def _total_capacity(self, view: ClusterView) -> int:
        return sum(i.capacity_bytes for i in view.instances.values() if i.state == "live")

    def _fair_offsets(self, view: ClusterView, plan: _Plan, idx: PlacementIndex, m: ModelView) -> dict[str, float] | None:
        """Key offsets that make other tenants' copies dearer to a miss of ``m``, or None (no fairness needed).

        When ``m``'s tenant holds more than its fair share (capacity divided among the
        tenants used in the last ``cold_idle_s``), every other active tenant's copies count
        ``fair_eviction_penalty`` times their value: the tenant makes room from its own
        copies (and idle tenants') unless another tenant's copy is far cheaper.
        """
        if not (self.fair and self.settings.fair_eviction):
            return None
        tenants = idx.tenants()
        if len(tenants) <= 1:
            return None
        cutoff = view.now - self.settings.cold_idle_s
        active = [t for t in tenants if t == m.tenant or idx.tenant_last_used(t) >= cutoff]
        if len(active) <= 1:
            return None
        share = self._total_capacity(view) / len(active)
        used = idx.tenant_bytes(m.tenant) + plan.tenant_delta(m.tenant)
        if used + m.size_bytes <= share:
            return None
        off = self.fair_margin()
        return {t: off for t in active if t != m.tenant}

    def fair_margin(self) -> float:
        """Key offset of other tenants' copies for a tenant over its share (in the units of the key)."""
        return 0.0

    # ------------------------------------------------------------------ placing

    def _place(
        self,
        view: ClusterView,
        plan: _Plan,
        idx: PlacementIndex | None,
        m: ModelView,
        *,
        word: str,
        why: str,
        allow_evict: bool,
        key_limit: float = _INF,
        require_slot: bool = False,
        max_tier: int = 1,
    ) -> str | None:
        """Plan one more copy of ``m``; the instance chosen, or None when none can take it."""
        now = view.now
        size = m.size_bytes
        assigned = plan.assigned(m)
        instances = view.instances
        spread = self.settings.spread_zones
        zones: set[str] = set()
        if spread:
            for i in assigned:
                inst_i = instances.get(i)
                if inst_i is not None and inst_i.state == "live":
                    zones.add(inst_i.zone)
        failures = m.failures
        mh = self._model_hash(m)
        used_d = plan._used
        load_d = plan._loading
        best: tuple[bool, bool, int, int] | None = None
        best_iid = ""
        needs: dict[str, int] = {}
        for iid, inst in instances.items():
            if inst.state != "live" or inst.capacity_bytes < size or iid in assigned:
                continue
            if failures and failures.get(iid, -_INF) > now:
                continue
            loading = inst.loading + load_d.get(iid, 0) if load_d else inst.loading
            slot = loading < inst.loading_slots
            if require_slot and not slot:
                continue
            free = inst.capacity_bytes - inst.used_bytes
            if used_d:
                free -= used_d.get(iid, 0)
            if free >= size:
                score = (inst.zone not in zones, slot, free, -loading)
                if (
                    best is None
                    or score > best
                    or (score == best and self._tiebreak(mh, iid) > self._tiebreak(mh, best_iid))
                ):
                    best, best_iid = score, iid
            elif allow_evict:
                needs[iid] = size - free
        if best is not None:
            free_before = plan.free(instances[best_iid])
            plan.load(m, best_iid, f"{word}: {why}; fits on {best_iid} ({fmt_bytes(free_before)} free)")
            return best_iid
        if not needs:
            return None
        if idx is None:  # only now: a view without an index pays for building one only when it must evict
            idx = self.index_for(view)
        found = self._find_victims(view, plan, idx, m, needs, key_limit, max_tier)
        if found is None:
            return None
        iid, victims = found
        for vm in victims:
            plan.unload(vm, iid, f"evict: room for {m.model_id} on {iid} ({self._victim_detail(vm, now)})")
        plan.load(m, iid, f"{word}: {why}; on {iid} after {len(victims)} eviction(s)")
        return iid

    def _victim_detail(self, vm: ModelView, now: float) -> str:
        return f"idle {now - vm.last_used:.0f}s, {vm.rate_rpm:.1f} rpm, {fmt_bytes(vm.size_bytes)}"

    def _find_victims(
        self,
        view: ClusterView,
        plan: _Plan,
        idx: PlacementIndex,
        m: ModelView,
        needs: dict[str, int],
        key_limit: float,
        max_tier: int,
    ) -> tuple[str, list[ModelView]] | None:
        """The instance whose cheapest evictable copies cover its shortfall first, in key order, and those copies.

        Other tenants' copies may weigh more (fair eviction, :meth:`_fair_offsets`). The
        read covers a shortlist of instances first (smallest shortfall, cheapest head),
        then all of them.
        """
        offsets = self._fair_offsets(view, plan, idx, m)
        short = self._shortlist(idx, needs, None)
        for instances in ([short, None] if short is not None else [None]):
            found = self._scan_victims(view, plan, idx, needs, offsets, instances, key_limit, max_tier >= 1)
            if found is not None:
                return found
        return None

    def _shortlist(self, idx: PlacementIndex, needs: dict[str, int], tenants: Collection[str] | None) -> list[str] | None:
        d = self.settings.eviction_shortlist
        if len(needs) <= d:
            return None
        by_need = [i for _, i in heapq.nsmallest((d + 1) // 2, ((n, i) for i, n in needs.items()))]
        picked = set(by_need)
        heads = heapq.nsmallest(d - len(by_need), idx.heads([i for i in needs if i not in picked], tenants))
        return by_need + [i for _, i in heads]

    def young_margin(self) -> float:
        """How much further (in key) a scan looks for old victims once young ones would do."""
        return _INF

    def _scan_victims(
        self,
        view: ClusterView,
        plan: _Plan,
        idx: PlacementIndex,
        needs: dict[str, int],
        offsets: dict[str, float] | None,
        instances: list[str] | None,
        key_limit: float,
        allow_young: bool,
    ) -> tuple[str, list[ModelView]] | None:
        """One ordered read: the first instance covered by old copies, else by any.

        Once young copies would cover an instance, the read goes on for old ones only within
        :meth:`young_margin` of that key and for as many entries again as it has read (at
        least 16): the preference for old victims never costs more than doubling the read.
        ``key_limit`` bounds the victims' own keys (offsets aside).
        """
        models = view.models
        acc0: dict[str, int] = {}
        acc1: dict[str, int] = {}
        old: dict[str, list[ModelView]] = {}
        any_: dict[str, list[ModelView]] = {}
        fallback: tuple[str, list[ModelView]] | None = None
        max_off = max(offsets.values(), default=0.0) if offsets else 0.0
        stop = key_limit + max_off  # in scan order; past it no victim's own key is below key_limit
        read = 0
        budget = -1  # entries left to read for an old alternative once young copies would do
        with idx.scan(None, instances, offsets) as scan:
            for c in scan:
                if c.order >= stop or budget == 0:
                    break
                read += 1
                budget -= 1
                if c.key >= key_limit:
                    continue
                iid = c.instance_id
                need = needs.get(iid)
                if need is None:
                    continue
                vm = models.get(c.model_id)
                if vm is None or vm.tenant != c.tenant:
                    continue
                tier = self._victim_tier(view, plan, vm, iid)
                if tier is None:
                    continue
                if tier == 0:
                    lst = old.setdefault(iid, [])
                    lst.append(vm)
                    total = acc0[iid] = acc0.get(iid, 0) + vm.size_bytes
                    if total >= need:
                        return iid, lst
                if allow_young and fallback is None:
                    lst = any_.setdefault(iid, [])
                    lst.append(vm)
                    total = acc1[iid] = acc1.get(iid, 0) + vm.size_bytes
                    if total >= need:
                        fallback = iid, lst
                        stop = min(stop, c.order + self.young_margin())
                        budget = max(read, 16)
        return fallback

    def _evict_tenant(
        self, view: ClusterView, plan: _Plan, idx: PlacementIndex, tenant: str, nbytes: int, reason: str, max_tier: int
    ) -> int:
        """Plan evictions of the tenant's cheapest copies, on any instance, until ``nbytes`` are freed."""
        freed = 0
        models = view.models
        for tier_max in range(max_tier + 1):
            with idx.scan([tenant]) as scan:
                for c in scan:
                    vm = models.get(c.model_id)
                    if vm is None or vm.tenant != tenant:
                        continue
                    tier = self._victim_tier(view, plan, vm, c.instance_id)
                    if tier is None or tier > tier_max:
                        continue
                    plan.unload(vm, c.instance_id, reason)
                    freed += vm.size_bytes
                    if freed >= nbytes:
                        return freed
        return freed

    def _quota_room(self, view: ClusterView, plan: _Plan, idx: PlacementIndex, m: ModelView) -> None:
        q = view.quotas.get(m.tenant)
        if q is None:
            return
        used = idx.tenant_bytes(m.tenant) + plan.tenant_delta(m.tenant)
        excess = used + m.size_bytes - q.max_bytes
        if excess <= 0:
            return
        if m.size_bytes > q.max_bytes:
            raise QuotaExceeded(
                f"model {m.model_id!r} ({fmt_bytes(m.size_bytes)}) is larger than the quota of tenant "
                f"{m.tenant!r} ({fmt_bytes(q.max_bytes)})"
            )
        freed = self._evict_tenant(
            view, plan, idx, m.tenant, excess, f"quota: room for {m.model_id} within tenant {m.tenant!r} quota", 1
        )
        if freed < excess:
            raise QuotaExceeded(
                f"tenant {m.tenant!r} is at its quota ({fmt_bytes(used)} of {fmt_bytes(q.max_bytes)}) and "
                f"cannot free {fmt_bytes(excess)} for model {m.model_id!r}: its other copies are pinned, "
                "loading or at their min copies"
            )

    # ------------------------------------------------------------------ events

    def on_miss(self, view: ClusterView, model_id: str) -> list[Action]:
        """Place one copy of ``model_id`` (plus the evictions it needs); [] if it is already assigned."""
        m = view.models.get(model_id)
        if m is None:
            raise ModelNotFound(f"model {model_id!r} is not in the cluster view")
        for iid in m.assigned:
            inst = view.instances.get(iid)
            if inst is not None and inst.state != "dead":
                return []
        live = [i for i in view.instances.values() if i.state == "live"]
        if not live:
            raise NoInstances(f"no live instance to place model {model_id!r} on")
        now = view.now
        allowed = [i for i in live if m.failures.get(i.instance_id, -_INF) <= now] if m.failures else live
        if not allowed:
            raise ModelNotPlaceable(
                f"model {model_id!r} failed to load recently on every live instance "
                f"({', '.join(sorted(i.instance_id for i in live))}); retried after the failures expire"
            )
        if all(i.capacity_bytes < m.size_bytes for i in allowed):
            raise ModelTooLarge(
                f"model {model_id!r} ({fmt_bytes(m.size_bytes)}) is larger than the capacity of every "
                f"live instance (largest {fmt_bytes(max(i.capacity_bytes for i in allowed))})"
            )
        plan = _Plan(view)
        idx = None
        if m.tenant in view.quotas:
            idx = self.index_for(view)
            self._quota_room(view, plan, idx, m)
        if self._place(view, plan, idx, m, word="miss", why=f"requested, {fmt_bytes(m.size_bytes)}", allow_evict=True):
            return plan.actions
        raise NoCapacity(
            f"no instance can make room for model {model_id!r} ({fmt_bytes(m.size_bytes)}): every copy that "
            f"could go on the {len(allowed)} eligible instance(s) is pinned, loading or at its min copies"
        )

    def on_tick(self, view: ClusterView) -> list[Action]:
        """Periodic repairs and copy counts: dead/draining/failed copies, min copies, quotas, rates."""
        s = self.settings
        now = view.now
        idx = self.index_for(view)
        plan = _Plan(view)
        budget = s.max_actions_per_tick
        instances = view.instances
        live = {iid for iid, i in instances.items() if i.state == "live"}
        repairs: list[ModelView] = []
        hot: list[tuple[float, ModelView]] = []
        second: list[tuple[float, ModelView]] = []
        shrink: list[ModelView] = []
        models = view.models
        if idx.watch is not None:  # the watched models plus the holders of instances that are not live
            candidates: Collection[ModelView] = [
                m for mid in idx.tick_candidates(live) if (m := models.get(mid)) is not None
            ]
        else:
            candidates = models.values()
        for m in candidates:
            a = m.assigned
            emin = self.min_copies(m)
            if not a and emin == 0:
                continue
            n_live = 0
            bad = False
            for iid in a:
                if iid in live:
                    n_live += 1
                else:
                    bad = True
            if not bad:
                for c in m.copies:
                    if c.state == "failed" and c.instance_id in a:
                        bad = True
                        break
            if bad or n_live < emin:
                repairs.append(m)
                continue
            if not self.rate_copies:
                continue
            if n_live == 0:
                continue
            warm = now - m.last_used < s.cold_idle_s
            load = max(m.rate_rpm / s.scale_out_rpm_per_copy, m.inflight / s.scale_out_inflight_per_copy) / n_live
            if load > 1 and warm and (m.max_copies == 0 or n_live < m.max_copies) and n_live < len(live):
                hot.append((-load, m))
            elif n_live > max(emin, 1):
                shrink.append(m)
            elif n_live == 1 and warm and m.rate_rpm >= s.second_copy_rpm and m.max_copies != 1 and len(live) > 1:
                second.append((-m.rate_rpm, m))

        for m in sorted(repairs, key=lambda x: x.model_id):
            if len(plan.actions) >= budget:
                return plan.actions
            self._repair(view, plan, idx, m, live)
        self._enforce_quotas(view, plan, idx)
        if self.rate_copies:
            for _, m in sorted(hot, key=lambda x: (x[0], x[1].model_id)):
                if len(plan.actions) >= budget:
                    return plan.actions
                if self._all_loaded(m, plan, live) and self._quota_allows(view, plan, idx, m):
                    n = sum(1 for i in plan.assigned(m) if i in live)
                    self._place(
                        view, plan, idx, m, word="scale_out",
                        why=f"{m.rate_rpm:.0f} rpm, {m.inflight} in flight over {n} cop{'y' if n == 1 else 'ies'}",
                        allow_evict=True, key_limit=self.value_key(m), require_slot=True, max_tier=0,
                    )
            for _, m in sorted(second, key=lambda x: (x[0], x[1].model_id)):
                if len(plan.actions) >= budget:
                    return plan.actions
                if self._all_loaded(m, plan, live) and self._quota_allows(view, plan, idx, m):
                    self._place(
                        view, plan, idx, m, word="second_copy", why=f"in regular use ({m.rate_rpm:.1f} rpm)",
                        allow_evict=False, require_slot=True,
                    )
            for m in sorted(shrink, key=lambda x: x.model_id):
                if len(plan.actions) >= budget:
                    return plan.actions
                self._shrink(view, plan, m, live)
        return plan.actions

    # ------------------------------------------------------------------ tick parts

    @staticmethod
    def _all_loaded(m: ModelView, plan: _Plan, live: set[str]) -> bool:
        for iid in plan.assigned(m):
            if iid in live:
                c = m.copy_on(iid)
                if c is None or c.state != "loaded":
                    return False
        return True

    def _repair(self, view: ClusterView, plan: _Plan, idx: PlacementIndex, m: ModelView, live: set[str]) -> None:
        s = self.settings
        warm = view.now - m.last_used < s.cold_idle_s
        lost = False
        for iid in sorted(plan.assigned(m)):
            inst = view.instances.get(iid)
            c = m.copy_on(iid)
            if inst is None or inst.state == "dead":
                plan.unload(m, iid, f"instance_dead: {iid} is {'gone' if inst is None else 'dead'}")
                lost = True
            elif c is not None and c.state == "failed":
                plan.unload(m, iid, f"failed: copy on {iid} failed to load")
        draining = sorted(i for i in plan.assigned(m) if i not in live)
        emin = self.min_copies(m)
        target = emin
        if (lost or draining) and warm:
            target = max(target, 1)
        n_live = sum(1 for i in plan.assigned(m) if i in live)
        while n_live < target:
            below_min = n_live < emin
            word = "min_copies" if below_min else ("drain" if draining else "replace")
            why = (
                f"{n_live} of min {emin} copies"
                if below_min
                else (f"move off shutting-down {draining[0]}" if draining else "copy lost with its instance")
            )
            placed = self._place(
                view, plan, idx, m, word=word, why=why, allow_evict=True,
                key_limit=_INF if below_min else self.value_key(m), max_tier=1 if below_min else 0,
            )
            if placed is None:
                log.debug("tick: no room for another copy of %s (%s)", m.model_id, why)
                break
            n_live += 1
        if draining:
            has_loaded_live = any(
                (c := m.copy_on(i)) is not None and c.state == "loaded" for i in plan.assigned(m) if i in live
            )
            if has_loaded_live or not (warm or emin):
                for iid in draining:
                    plan.unload(
                        m, iid,
                        f"drain: {iid} is shutting down" + ("; served elsewhere" if has_loaded_live else "; model is cold"),
                    )

    @staticmethod
    def _quota_allows(view: ClusterView, plan: _Plan, idx: PlacementIndex, m: ModelView) -> bool:
        """An optional copy (scale-out, second copy) fits within its tenant's quota as it stands."""
        q = view.quotas.get(m.tenant)
        if q is None:
            return True
        return idx.tenant_bytes(m.tenant) + plan.tenant_delta(m.tenant) + m.size_bytes <= q.max_bytes

    def _enforce_quotas(self, view: ClusterView, plan: _Plan, idx: PlacementIndex) -> None:
        for tenant in sorted(view.quotas):
            q = view.quotas[tenant]
            used = idx.tenant_bytes(tenant) + plan.tenant_delta(tenant)
            if used > q.max_bytes:
                self._evict_tenant(
                    view, plan, idx, tenant, used - q.max_bytes,
                    f"quota: tenant {tenant!r} holds {fmt_bytes(used)}, over its {fmt_bytes(q.max_bytes)} quota",
                    1,  # a quota is a hard limit: young copies go too, once older ones are not enough
                )

    def _shrink(self, view: ClusterView, plan: _Plan, m: ModelView, live: set[str]) -> None:
        s = self.settings
        now = view.now
        emin = max(self.min_copies(m), 1)
        held = sorted(i for i in plan.assigned(m) if i in live)
        n = len(held)
        if n <= emin:  # copies went earlier in this tick (quota)
            return
        idle = now - m.last_used
        remove = 0
        why = ""
        if m.max_copies and n > m.max_copies:
            remove, why = n - m.max_copies, f"max_copies: {n} copies, max {m.max_copies}"
        elif idle >= s.cold_idle_s:
            remove, why = n - emin, f"cold: idle {idle:.0f}s"
        elif m.rate_rpm / (n - 1) < s.scale_in_rpm_per_copy and not (n == 2 and m.rate_rpm >= s.second_copy_off_rpm):
            remove, why = 1, f"scale_in: {m.rate_rpm:.1f} rpm over {n} copies"
        remove = min(remove, n - emin)
        if remove <= 0:
            return
        old: list[tuple[int, int, str]] = []
        mh = self._model_hash(m)
        for iid in held:
            c = m.copy_on(iid)
            if c is None or c.state != "loaded" or now - c.since < s.min_residency_s:
                continue
            old.append((plan.free(view.instances[iid]), self._tiebreak(mh, iid), iid))
        old.sort()
        for _, _, iid in old[:remove]:
            plan.unload(m, iid, why)


class Policy(BasePolicy):
    """Ours: cost-aware eviction (decayed request count x reload time / bytes), copies by rate, fair tenants.

    Eviction key (the log of a copy's value per byte, without the ``-now / tau`` term that
    every copy shares, so the order holds until the model changes)::

        log(f * load_time_s / size_bytes) + last_used / tau
          (+ log(replica_eviction_discount) when the model has other copies)
        f = max(max(rate_rpm * tau / 60, 1) - evidence_discount, value_floor)

    ``rate_rpm * tau / 60`` is the request count a rate implies over one decay time (tau =
    ``rate_tau_s``), so the value is the expected number of near-future requests, decayed
    by idleness, times what a reload would cost them - GreedyDual-Size-Frequency with time
    decay instead of an inflation clock. A model used once counts as one request.
    """

    name = "ours"

    def _key_params(self) -> str:
        s = self.settings
        return f"{s.rate_tau_s}/{s.replica_eviction_discount}/{s.evidence_discount}/{s.value_floor}"

    def __init__(self, settings: PolicySettings, seed: int = 0) -> None:
        super().__init__(settings, seed)
        self._tau = settings.rate_tau_s
        self._per_min = settings.rate_tau_s / 60.0
        self._discount = math.log(settings.replica_eviction_discount)
        self._prior = settings.evidence_discount
        self._floor = settings.value_floor
        self._young = math.log(settings.young_eviction_penalty)
        self._fair = math.log(settings.fair_eviction_penalty)

    def evict_key(self, m: ModelView) -> float | None:
        if m.pinned:
            return None
        f = m.rate_rpm * self._per_min
        if f < 1.0:
            f = 1.0
        f -= self._prior
        if f < self._floor:
            f = self._floor
        lt = m.load_time_s if m.load_time_s > 1e-3 else 1e-3
        k = math.log(f * lt / (m.size_bytes if m.size_bytes > 1 else 1)) + m.last_used / self._tau
        if len(m.assigned) > 1:
            k += self._discount
        return k

    def value_key(self, m: ModelView) -> float:
        k = self.evict_key(m)
        if k is None:
            return _INF
        return k - self._discount if len(m.assigned) > 1 else k

    def young_margin(self) -> float:
        return self._young

    def fair_margin(self) -> float:
        return self._fair


class LruPolicy(BasePolicy):
    """Baseline, as ModelMesh does it: place where most free, evict the least recently used copies.

    Hard constraints are kept (capacity, pinned, min copies, loading copies, dead and
    draining instances, quotas); no rate-driven copies, no fairness, no residency.
    """

    name = "lru"
    rate_copies = False
    fair = False
    residency = False

    def evict_key(self, m: ModelView) -> float | None:
        return None if m.pinned else m.last_used
