"""The placement engine's miss path as it was before the decision-latency work (issue 18), kept verbatim.

``reference(cls)`` is ``cls`` with these methods: ``_place``'s pass over every instance,
``_shortlist`` by ``heapq.nsmallest``, ``_fair_offsets`` over the sorted tenants and
``_scan_victims`` reading the index through the per-entry ``_OldScan._advance`` (the index's scan as it
was, kept here so that the reference does not follow changes to ``placement._index.Scan``).
``test_decision_latency_equivalence`` replays traces through both, in lockstep, and checks
that every decision is the same: the optimised code may only be faster, never different.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from placement import BasePolicy, ClusterView, ModelView, PlacementIndex
from placement._index import Candidate, Entry
from placement._plan import INF as _INF
from placement._plan import Plan, fmt_bytes


class _OldScan:
    """``placement._index.Scan`` as it was: lazy heaps read through a heap of heads, a seen set."""

    def __init__(self, index: PlacementIndex, keys: list[tuple[str, str]], offsets: dict[str, float]) -> None:
        self._index = index
        self._offsets = offsets
        self._popped: list[tuple[list[Entry], Entry]] = []
        self._heads: list[tuple[float, float, str, str, str]] = []
        self._seen: set[tuple[str, str]] = set()
        self._closed = False
        self._instances = {hk[0] for hk in keys}
        cache = index._head
        for iid in self._instances:
            cache.pop(iid, None)
        for hk in keys:
            self._advance(hk)

    def _advance(self, hk: tuple[str, str]) -> None:
        idx = self._index
        h = idx._heaps[hk]
        tenant = hk[1]
        live = idx._live
        seen = self._seen
        while h:
            e = heapq.heappop(h)
            key, mid, iid = e
            rec = live.get(mid)
            if rec is not None and rec.key == key and rec.tenant == tenant and iid in rec.assigned:
                sk = (mid, iid)
                if sk not in seen:
                    seen.add(sk)
                    self._popped.append((h, e))
                    off = self._offsets.get(tenant, 0.0) if self._offsets else 0.0
                    heapq.heappush(self._heads, (key + off, key, mid, iid, tenant))
                    return
            idx._entries -= 1  # dead, or a duplicate of a live entry: dropped for good

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        cache = self._index._head
        for iid in self._instances:
            cache.pop(iid, None)
        for h, e in self._popped:
            heapq.heappush(h, e)
        self._popped.clear()
        self._heads.clear()

    def __enter__(self) -> _OldScan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _old_scan(idx: PlacementIndex, instances: list[str] | None, offsets: dict[str, float] | None) -> _OldScan:
    if instances is None:
        keys = list(idx._heaps)
    else:
        keys = [hk for iid in instances for hk in idx._by_instance.get(iid, ())]
    return _OldScan(idx, sorted(keys), offsets or {})


def _old_iter(scan: _OldScan) -> Iterator[Candidate]:
    heads = scan._heads
    while heads:
        order, key, mid, iid, tenant = heapq.heappop(heads)
        yield Candidate(order, key, mid, iid, tenant)
        scan._advance((iid, tenant))


class _Reference(BasePolicy):
    def _place(
        self,
        view: ClusterView,
        plan: Plan,
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
        guarded = self._guarded(view, m)
        found = self._find_victims(view, plan, idx, m, needs, key_limit, max_tier, guarded)
        if found is None:
            return None
        iid, victims = found
        for vm in victims:
            detail = self._victim_detail(vm, now)
            if guarded and vm.model_id in guarded:
                detail += self._swap_detail(m, guarded[vm.model_id], now)
            plan.unload(vm, iid, f"evict: room for {m.model_id} on {iid} ({detail})", m.model_id)
        plan.load(m, iid, f"{word}: {why}; on {iid} after {len(victims)} eviction(s)")
        return iid

    def _fair_offsets(self, view: ClusterView, plan: Plan, idx: PlacementIndex, m: ModelView) -> dict[str, float] | None:
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

    def _shortlist(self, idx: PlacementIndex, needs: dict[str, int], tenants: Collection[str] | None) -> list[str] | None:
        d = self.settings.eviction_shortlist
        if len(needs) <= d:
            return None
        by_need = [i for _, i in heapq.nsmallest((d + 1) // 2, ((n, i) for i, n in needs.items()))]
        picked = set(by_need)
        heads = heapq.nsmallest(d - len(by_need), idx.heads([i for i in needs if i not in picked], tenants))
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
        """One ordered read: the first instance covered by old copies, else by any (awaited copies
        only with ``allow_awaited``, as young ones; ``guarded`` models' copies read at their order
        plus :meth:`swap_margin`).

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
        put_off: list[tuple[float, int, Candidate, ModelView, int]] = []  # guarded copies: (order + margin, seq, ...)

        def count(c: Candidate, vm: ModelView, tier: int, order: float) -> tuple[str, list[ModelView]] | None:
            nonlocal fallback, stop, budget
            iid = c.instance_id
            need = needs[iid]
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
                    stop = min(stop, order + self.young_margin())
                    budget = max(read, 16)
            return None

        with _old_scan(idx, instances, offsets) as scan:
            for c in _old_iter(scan):
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
                if tier == 2:
                    if not allow_awaited:
                        continue
                    tier = 1
                if guarded and c.model_id in guarded:
                    put_off.append((c.order + self.swap_margin(), read, c, vm, tier))
                    put_off.sort(key=lambda p: (p[0], p[1]))
                    continue
                while put_off and put_off[0][0] <= c.order:
                    _, _, pc, pvm, ptier = put_off.pop(0)
                    found = count(pc, pvm, ptier, c.order)
                    if found is not None:
                        return found
                found = count(c, vm, tier, c.order)
                if found is not None:
                    return found
        for eff, _, pc, pvm, ptier in put_off:
            if fallback is not None and eff >= stop:
                break
            found = count(pc, pvm, ptier, eff)
            if found is not None:
                return found
        return fallback



def reference(cls: type[BasePolicy]) -> Any:
    """``cls`` with the reference miss path (its own eviction key, switches and hooks)."""
    return type(f"Reference{cls.__name__}", (_Reference, cls), {})
