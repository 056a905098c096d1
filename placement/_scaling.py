"""The periodic tick: repairs (dead, draining, failed copies; min copies), quotas, overcommitted instances, scale-out/in by rate."""

from __future__ import annotations

import logging
import math
from collections.abc import Collection

from ._index import PlacementIndex
from ._placing import Placing
from ._plan import INF as _INF
from ._plan import Plan, fmt_bytes
from ._types import Action, ClusterView, ModelView

log = logging.getLogger(__name__)


class Scaling(Placing):
    """``on_tick``: repairs first, then quota trims and overcommitted instances, then extra copies for traffic and
    removal of idle ones."""

    def on_tick(self, view: ClusterView) -> list[Action]:
        """Periodic repairs and copy counts: dead/draining/failed copies, min copies, quotas, overcommitment, rates."""
        s = self.settings
        now = view.now
        idx = self.index_for(view)
        plan = Plan(view)
        budget = s.max_actions_per_tick
        instances = view.instances
        live = {iid for iid, i in instances.items() if i.state == "live"}
        repairs: list[ModelView] = []
        hot: list[tuple[float, float, ModelView]] = []  # (-load, rate now, model)
        second: list[tuple[float, float, ModelView]] = []  # (-rate now, rate now, model)
        shrink: list[tuple[float, ModelView]] = []  # (rate now, model)
        models = view.models
        recent = view.recent_window_s > 0  # copies by the short-window rate (else the eviction meter's)
        window = view.recent_window_s if recent else view.rate_window_s
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
            rate = m.recent_rpm if recent else m.rate_rpm
            if window > 0 and now > m.last_used and rate > 0:
                # the rate is as of the last use (placement.Usage): decayed to now, traffic that
                # stopped lets extra copies go and asks for none
                rate *= math.exp(-(now - m.last_used) / window)
            load = max(rate / s.scale_out_rpm_per_copy, m.inflight / s.scale_out_inflight_per_copy) / n_live
            if load > 1 and warm and (m.max_copies == 0 or n_live < m.max_copies) and n_live < len(live):
                hot.append((-load, rate, m))
            elif n_live > max(emin, 1):
                shrink.append((rate, m))
            elif n_live == 1 and warm and rate >= s.second_copy_rpm and m.max_copies != 1 and len(live) > 1:
                second.append((-rate, rate, m))

        for m in sorted(repairs, key=lambda x: x.model_id):
            if len(plan.actions) >= budget:
                return plan.actions
            self._repair(view, plan, idx, m, live)
        self._enforce_quotas(view, plan, idx)
        self._relieve_overcommit(view, plan, idx)
        if self.rate_copies:
            for _, rate, m in sorted(hot, key=lambda x: (x[0], x[2].model_id)):
                if len(plan.actions) >= budget:
                    return plan.actions
                if self._all_loaded(m, plan, live) and self._quota_allows(view, plan, idx, m):
                    n = sum(1 for i in plan.assigned(m) if i in live)
                    self._place(
                        view, plan, idx, m, word="scale_out",
                        why=f"{rate:.0f} rpm, {m.inflight} in flight over {n} cop{'y' if n == 1 else 'ies'}",
                        allow_evict=True, key_limit=self.value_key(m), require_slot=True, max_tier=0,
                    )
            for _, rate, m in sorted(second, key=lambda x: (x[0], x[2].model_id)):
                if len(plan.actions) >= budget:
                    return plan.actions
                if self._all_loaded(m, plan, live) and self._quota_allows(view, plan, idx, m):
                    self._place(
                        view, plan, idx, m, word="second_copy", why=f"in regular use ({rate:.1f} rpm)",
                        allow_evict=False, require_slot=True,
                    )
            for rate, m in sorted(shrink, key=lambda x: x[1].model_id):
                if len(plan.actions) >= budget:
                    return plan.actions
                self._shrink(view, plan, m, live, rate)
        return plan.actions

    # ------------------------------------------------------------------ tick parts

    # instance -> the excess last warned about (a log line, not decision state)
    _overcommit_warned: dict[str, int] | None = None

    def _relieve_overcommit(self, view: ClusterView, plan: Plan, idx: PlacementIndex) -> None:
        """Evict from an instance whose assigned copies hold more bytes than its capacity.

        Placement decides with a model's size as it knows it; a copy measured larger after it
        loaded can leave the instance overcommitted. A load planned beside it then waits on the
        instance for room that no decision makes, until its request's deadline. The cheapest
        copies go (young ones if nothing older covers the excess, a copy a request awaits only
        if nothing else does); copies still loading never."""
        for iid, inst in view.instances.items():
            if inst.state != "live":
                continue
            held = inst.used_bytes if inst.assigned_bytes is None else inst.assigned_bytes
            over = held + plan._used.get(iid, 0) - inst.capacity_bytes
            if over <= 0:
                if self._overcommit_warned:
                    self._overcommit_warned.pop(iid, None)
                continue
            needs = {iid: over}
            found = self._scan_victims(view, plan, idx, needs, None, [iid], _INF, True) or self._scan_victims(
                view, plan, idx, needs, None, [iid], _INF, True, allow_awaited=True
            )
            if found is None:
                # said once per excess, not at every tick while it lasts
                warned = self._overcommit_warned = self._overcommit_warned or {}
                if warned.get(iid) != over:
                    warned[iid] = over
                    log.warning("instance %s holds %d bytes over its capacity and no copy on it may go", iid, over)
                continue
            for vm in found[1]:
                plan.unload(
                    vm, iid,
                    f"over capacity: {iid}'s copies hold {fmt_bytes(held)} of {fmt_bytes(inst.capacity_bytes)} "
                    f"as measured after placement ({self._victim_detail(vm, view.now)})",
                )


    @staticmethod
    def _all_loaded(m: ModelView, plan: Plan, live: set[str]) -> bool:
        for iid in plan.assigned(m):
            if iid in live:
                c = m.copy_on(iid)
                if c is None or c.state != "loaded":
                    return False
        return True

    def _repair(self, view: ClusterView, plan: Plan, idx: PlacementIndex, m: ModelView, live: set[str]) -> None:
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

    def _shrink(self, view: ClusterView, plan: Plan, m: ModelView, live: set[str], rate: float) -> None:
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
        elif rate / (n - 1) < s.scale_in_rpm_per_copy and not (n == 2 and rate >= s.second_copy_off_rpm):
            remove, why = 1, f"scale_in: {rate:.1f} rpm over {n} copies"
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
