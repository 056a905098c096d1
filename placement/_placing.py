"""Placing one more copy of a model: on a miss, for a repair, or for traffic (see ``_policy``'s overview)."""

from __future__ import annotations

from ._errors import ModelNotFound, ModelNotPlaceable, ModelTooLarge, NoCapacity, NoInstances
from ._index import PlacementIndex
from ._plan import INF as _INF
from ._plan import Plan, fmt_bytes
from ._types import Action, ClusterView, InstanceView, ModelView
from ._victims import VictimSelection


class Placing(VictimSelection):
    """Choose an instance for one more copy (where it fits, else after the cheapest evictions); ``on_miss``."""

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
        ninf = -_INF
        for iid, inst in instances.items():
            cap = inst.capacity_bytes
            if cap < size or inst.state != "live" or iid in assigned:
                continue
            if failures and failures.get(iid, ninf) > now:
                continue
            if require_slot:
                loading = inst.loading
                if load_d:
                    loading += load_d.get(iid, 0)
                if loading >= inst.loading_slots:
                    continue
            free = cap - inst.used_bytes
            if used_d:
                free -= used_d.get(iid, 0)
            if free >= size:  # loads in flight matter only here (and above when a slot is required)
                loading = inst.loading
                if load_d:
                    loading += load_d.get(iid, 0)
                score = (inst.zone not in zones, loading < inst.loading_slots, free, -loading)
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
            swapped = guarded.get(vm.model_id) if guarded else None
            if swapped is not None:
                detail += self._swap_detail(m, swapped, now)
            plan.unload(vm, iid, f"evict: room for {m.model_id} on {iid} ({detail})", m.model_id)
        plan.load(m, iid, f"{word}: {why}; on {iid} after {len(victims)} eviction(s)")
        return iid

    def on_miss(self, view: ClusterView, model_id: str) -> list[Action]:
        """Place one copy of ``model_id`` (plus the evictions it needs); [] if it is already assigned."""
        m = view.models.get(model_id)
        if m is None:
            raise ModelNotFound(f"model {model_id!r} is not in the cluster view")
        for iid in m.assigned:
            inst = view.instances.get(iid)
            if inst is not None and inst.state != "dead":
                return []
        # one pass: stops at the first live instance that may take the model; the error paths
        # below (rare) recount what their messages name
        now = view.now
        size = m.size_bytes
        failures = m.failures
        any_live = any_allowed = fits = False
        for i in view.instances.values():
            if i.state != "live":
                continue
            any_live = True
            if failures and failures.get(i.instance_id, -_INF) > now:
                continue
            any_allowed = True
            if i.capacity_bytes >= size:
                fits = True
                break
        if not any_live:
            raise NoInstances(f"no live instance to place model {model_id!r} on")
        if not any_allowed:
            live = [i for i in view.instances.values() if i.state == "live"]
            raise ModelNotPlaceable(
                f"model {model_id!r} failed to load recently on every live instance "
                f"({', '.join(sorted(i.instance_id for i in live))}); retried after the failures expire"
            )
        if not fits:
            allowed = self._allowed(view, m)
            raise ModelTooLarge(
                f"model {model_id!r} ({fmt_bytes(size)}) is larger than the capacity of every "
                f"live instance (largest {fmt_bytes(max(i.capacity_bytes for i in allowed))})"
            )
        plan = Plan(view)
        idx = None
        if m.tenant in view.quotas:
            idx = self.index_for(view)
            self._quota_room(view, plan, idx, m)
        if self._place(view, plan, idx, m, word="miss", why=f"requested, {fmt_bytes(m.size_bytes)}", allow_evict=True):
            return plan.actions
        raise NoCapacity(
            f"no instance can make room for model {model_id!r} ({fmt_bytes(m.size_bytes)}): every copy that "
            f"could go on the {len(self._allowed(view, m))} eligible instance(s) is pinned, loading or at its min copies"
        )

    @staticmethod
    def _allowed(view: ClusterView, m: ModelView) -> list[InstanceView]:
        """Live instances where ``m`` has not failed to load recently."""
        now = view.now
        live = [i for i in view.instances.values() if i.state == "live"]
        return [i for i in live if m.failures.get(i.instance_id, -_INF) <= now] if m.failures else live
