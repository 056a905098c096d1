"""Victim selection: which copies may be evicted, and the cheapest ones that make room.

Eviction never touches pinned copies, copies still loading, or a copy whose removal would
leave fewer live copies than min copies; young copies (and the last copy serving requests)
go only as a last resort, and copies of a model a request is waiting for (``awaiting``: its
load would be thrown away) only when nothing else anywhere makes room. A miss reads the policy's eviction index in ascending key order
(shortlist of instances first) until one instance's candidates cover its shortfall; fair
eviction between tenants is a key offset on other active tenants' copies. Quotas evict a
tenant's own cheapest copies.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Mapping
from typing import Any

from ._core import PolicyCore
from ._errors import QuotaExceeded
from ._index import PlacementIndex
from ._plan import INF as _INF
from ._plan import Plan, fmt_bytes
from ._types import ClusterView, ModelView


def _smallest(k: int, values: list[Any], ids: list[str]) -> list[str]:
    """The ids of ``sorted(zip(values, ids))[:k]`` (heapq.nsmallest's order, ties by id).

    Sorts the bare numbers first (CPython's sort compares a list of one number type
    without tuple comparisons), then only the pairs at or below the k-th smallest.
    """
    if k <= 0:
        return []
    if len(values) > k:
        cut = sorted(values)[k - 1]
        if cut == cut:  # not NaN (a NaN makes the order of a sort undefined: keep the plain one)
            return [i for _, i in sorted([(v, i) for v, i in zip(values, ids, strict=True) if v <= cut])[:k]]
    return [i for _, i in sorted(zip(values, ids, strict=True))[:k]]


class VictimSelection(PolicyCore):
    """Evictability, fair-eviction offsets, the ordered victim scan, and tenant (quota) evictions."""

    def _victim_tier(self, view: ClusterView, plan: Plan, vm: ModelView, iid: str) -> int | None:
        """0: evictable; 1: evictable only as a last resort (young, or serving its last requests);
        2: only when no tier 0 or 1 copy anywhere makes room (a request awaits it); None: never."""
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
        if vm.awaiting:
            return 2
        if c.state == "loaded" and self.residency and view.now - c.since < self.settings.min_residency_s:
            return 1
        if vm.inflight > 0 and live_n == 1:
            return 1
        return 0

    def _total_capacity(self, view: ClusterView) -> int:
        return sum(i.capacity_bytes for i in view.instances.values() if i.state == "live")

    def _fair_offsets(self, view: ClusterView, plan: Plan, idx: PlacementIndex, m: ModelView) -> dict[str, float] | None:
        """Key offsets that make other tenants' copies dearer to a miss of ``m``, or None (no fairness needed).

        When ``m``'s tenant holds more than its fair share (capacity divided among the
        tenants used in the last ``cold_idle_s``), every other active tenant's copies count
        ``fair_eviction_penalty`` times their value: the tenant makes room from its own
        copies (and idle tenants') unless another tenant's copy is far cheaper.
        """
        if not (self.fair and self.settings.fair_eviction):
            return None
        tenants = idx.tenant_set()
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

    def _find_victims(
        self,
        view: ClusterView,
        plan: Plan,
        idx: PlacementIndex,
        m: ModelView,
        needs: dict[str, int],
        key_limit: float,
        max_tier: int,
        guarded: Mapping[str, float] | None = None,
    ) -> tuple[str, list[ModelView]] | None:
        """The instance whose cheapest evictable copies cover its shortfall first, in key order, and those copies.

        Other tenants' copies may weigh more (fair eviction, :meth:`_fair_offsets`). The
        read covers a shortlist of instances first (smallest shortfall, cheapest head),
        then all of them. Copies of ``guarded`` models (:meth:`_guarded`) weigh more.
        """
        offsets = self._fair_offsets(view, plan, idx, m)
        short = self._shortlist(idx, needs, None)
        passes = [short, None] if short is not None else [None]
        for instances in passes:
            found = self._scan_victims(view, plan, idx, needs, offsets, instances, key_limit, max_tier >= 1, guarded=guarded)
            if found is not None:
                return found
        if max_tier >= 1 and any(vm.awaiting for vm in view.models.values()):  # nothing else anywhere: awaited copies too
            for instances in passes:
                found = self._scan_victims(view, plan, idx, needs, offsets, instances, key_limit, True, allow_awaited=True)
                if found is not None:
                    return found
        return None

    def _guarded(self, view: ClusterView, m: ModelView) -> dict[str, float] | None:
        """The models ``m`` was evicted for within ``swap_guard_s`` (and when), or None.

        Evicting one of them for ``m`` would reverse a swap just made: the two would take turns
        evicting each other (load/evict ping-pong), so a miss of ``m`` counts their copies at
        ``swap_guard_penalty`` times their value (:meth:`swap_margin`)."""
        if not self.swap_guard:
            return None
        seen = view.evicted_for.get(m.model_id) if view.evicted_for else None
        if not seen:
            return None
        cutoff = view.now - self.settings.swap_guard_s
        out = {b: t for b, t in seen.items() if t >= cutoff}
        return out or None

    def _swap_detail(self, m: ModelView, swapped_at: float, now: float) -> str:
        """What an eviction's reason adds when the victim is a model ``m`` was evicted for lately."""
        bound = "nothing else makes room" if self.swap_margin() == _INF else (
            f"no other victim within {self.settings.swap_guard_penalty:g}x its value"
        )
        return f"; {m.model_id} was evicted for it {now - swapped_at:.0f}s ago, {bound}"

    def _shortlist(self, idx: PlacementIndex, needs: dict[str, int], tenants: Collection[str] | None) -> list[str] | None:
        d = self.settings.eviction_shortlist
        if len(needs) <= d:
            return None
        by_need = _smallest((d + 1) // 2, list(needs.values()), list(needs))
        picked = set(by_need)
        rest = [i for i in needs if i not in picked]
        if tenants is None:
            return by_need + _smallest(d - len(by_need), idx.head_values(rest), rest)
        heads = sorted(idx.heads(rest, tenants))[: d - len(by_need)]
        return by_need + [i for _, i in heads]

    def _scan_victims(
        self,
        view: ClusterView,
        plan: Plan,
        idx: PlacementIndex,
        needs: dict[str, int],
        offsets: dict[str, float] | None,
        instances: list[str] | None,
        key_limit: float,
        allow_young: bool,
        allow_awaited: bool = False,
        guarded: Mapping[str, float] | None = None,
    ) -> tuple[str, list[ModelView]] | None:
        """One ordered read: the first instance covered by old copies, else by any (copies of an
        awaited model, tier 2, only when ``allow_awaited``, and then as young ones).

        Copies of ``guarded`` models (:meth:`_guarded`) are read as if their key were
        :meth:`swap_margin` higher (``swap_guard_penalty`` times their value): another copy
        goes instead unless it is worth that much more; with nothing else, they still go.

        Once young copies would cover an instance, the read goes on for old ones only within
        :meth:`young_margin` of that key and for as many entries again as it has read (at
        least 16): the preference for old victims never costs more than doubling the read.
        ``key_limit`` bounds the victims' own keys (offsets aside).
        """
        models = view.models
        tier_of = self._victim_tier
        # the common copy (no min copies, nothing in flight) is judged inline, as _victim_tier does
        inline = type(self)._victim_tier is VictimSelection._victim_tier
        clean = not (plan._added or plan._removed)
        now = view.now
        min_res = self.settings.min_residency_s if self.residency else None
        # per instance read so far: [old copies' bytes, old copies, any copies' bytes, any copies]
        acc: dict[str, list[Any]] = {}
        fallback: tuple[str, list[ModelView]] | None = None
        max_off = max(offsets.values(), default=0.0) if offsets else 0.0
        stop = key_limit + max_off  # in scan order; past it no victim's own key is below key_limit
        read = 0
        limit = -1  # once young copies would do: the read stops after this many entries (for an old alternative)
        # copies of guarded models, put off: (order + swap margin, read, instance, model, tier, size)
        deferred: list[tuple[float, int, str, ModelView, int, int]] = []
        swap_margin = self.swap_margin() if guarded else 0.0

        def take(iid: str, vm: ModelView, tier: int, size: int, order: float) -> tuple[str, list[ModelView]] | None:
            """Count a candidate copy as read at ``order``: the instance and its victims once they cover it."""
            nonlocal fallback, stop, limit
            st = acc.get(iid)
            if st is None:
                st = acc[iid] = [0, [], 0, []]
            if tier == 0:
                st[1].append(vm)
                st[0] += size
                if st[0] >= needs[iid]:
                    return iid, st[1]
            if allow_young and fallback is None:
                st[3].append(vm)
                st[2] += size
                if st[2] >= needs[iid]:
                    fallback = iid, st[3]
                    stop = min(stop, order + self.young_margin())
                    limit = read + max(read, 16)
            return None

        with idx.scan(None, instances, offsets) as scan:
            for order, e, tenant, _, rec in scan.raw():
                if order >= stop or read == limit:
                    break
                read += 1
                key, mid, iid = e
                if key >= key_limit:
                    continue
                if iid not in needs:
                    continue
                vm = models.get(mid)
                if vm is None:
                    continue
                since = rec.since
                if vm is rec.view and since is not None and inline and clean:
                    # the index's record was made from this very (immutable) view and the row is
                    # live in it: tenant, assignment and size as recorded; the copy's state and
                    # age precomputed (what the branch below reads from the view)
                    loaded_at = since.get(iid)
                    if loaded_at is None:
                        continue
                    tier = 2 if vm.awaiting else 1 if min_res is not None and now - loaded_at < min_res else 0
                    size = rec.size_bytes
                elif vm.tenant != tenant:
                    continue
                elif not inline or vm.min_copies > 0 or vm.inflight > 0:
                    judged = tier_of(view, plan, vm, iid)
                    if judged is None:
                        continue
                    tier = judged
                    size = vm.size_bytes
                else:
                    if vm.pinned or iid not in (vm.assigned if clean else plan.assigned(vm)):
                        continue
                    for c in vm.copies:
                        if c.instance_id == iid:
                            break
                    else:
                        continue
                    if c.state == "loading":
                        continue
                    tier = 2 if vm.awaiting else 1 if min_res is not None and c.state == "loaded" and now - c.since < min_res else 0
                    size = vm.size_bytes
                if tier == 2:  # awaited: only in the read that allows them, then as young
                    if not allow_awaited:
                        continue
                    tier = 1
                if guarded is not None and mid in guarded:  # read again later, as if its key were swap_margin higher
                    heapq.heappush(deferred, (order + swap_margin, read, iid, vm, tier, size))
                    continue
                while deferred and deferred[0][0] <= order:
                    _, _, d_iid, d_vm, d_tier, d_size = heapq.heappop(deferred)
                    if (found := take(d_iid, d_vm, d_tier, d_size, order)) is not None:
                        return found
                if (found := take(iid, vm, tier, size, order)) is not None:
                    return found
        # the guarded copies not read yet: within the read's bound, or all of them when nothing else made room
        while deferred:
            eff, _, d_iid, d_vm, d_tier, d_size = heapq.heappop(deferred)
            if fallback is not None and eff >= stop:
                break
            if (found := take(d_iid, d_vm, d_tier, d_size, eff)) is not None:
                return found
        return fallback

    def _evict_tenant(
        self, view: ClusterView, plan: Plan, idx: PlacementIndex, tenant: str, nbytes: int, reason: str, max_tier: int
    ) -> int:
        """Plan evictions of the tenant's cheapest copies, on any instance, until ``nbytes`` are freed."""
        freed = 0
        models = view.models
        # past young copies, awaited ones too: a quota holds even against copies just loaded
        for tier_max in range(max_tier + 2 if max_tier >= 1 else 1):
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

    def _quota_room(self, view: ClusterView, plan: Plan, idx: PlacementIndex, m: ModelView) -> None:
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

    @staticmethod
    def _quota_allows(view: ClusterView, plan: Plan, idx: PlacementIndex, m: ModelView) -> bool:
        """An optional copy (scale-out, second copy) fits within its tenant's quota as it stands."""
        q = view.quotas.get(m.tenant)
        if q is None:
            return True
        return idx.tenant_bytes(m.tenant) + plan.tenant_delta(m.tenant) + m.size_bytes <= q.max_bytes

    def _enforce_quotas(self, view: ClusterView, plan: Plan, idx: PlacementIndex) -> None:
        for tenant in sorted(view.quotas):
            q = view.quotas[tenant]
            used = idx.tenant_bytes(tenant) + plan.tenant_delta(tenant)
            if used > q.max_bytes:
                self._evict_tenant(
                    view, plan, idx, tenant, used - q.max_bytes,
                    f"quota: tenant {tenant!r} holds {fmt_bytes(used)}, over its {fmt_bytes(q.max_bytes)} quota",
                    1,  # a quota is a hard limit: young copies go too, once older ones are not enough
                )
