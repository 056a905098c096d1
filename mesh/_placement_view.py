"""The leader's cluster view, kept current incrementally from the store mirrors.

Building a :class:`~placement.ClusterView` from scratch walks every registered model, its
copies and its assignment: about 50 ms at 10k models and a second at 100k, on the event loop
of an instance that also serves traffic, once per miss. This builder instead marks a model
dirty when one of its records changes (registration, copy report, assignment) and recomputes
only the dirty ones when a view is asked for; the per-instance byte and loading totals and the
policy's eviction index (:class:`~placement.PlacementIndex`) are adjusted by each model's
change, not recounted.

Sizes: a model's size is the largest measured size among its copies; before any copy has
loaded it is the registration's predicted size times the measured/predicted ratio learned for
its model type (the median over loaded models of that type, at least 1.0: ONNX Runtime, for one,
holds several times the file size), else a default. When a type's ratio moves by more than
:data:`RATIO_STEP`, every unmeasured model of that type is recomputed, at most
:data:`RESIZE_PER_VIEW` (32) per view: at 10k models of one type a ratio change took 100 ms of
the event loop in one piece (a second at 100k), and 1,000 per view still did on the density
bench's leader, where a recompute under churn costs more (a stall watchdog caught it in the
hits-only phase); 128 per view still held it 12-25 ms (under a stall logger on asyncio's own loop)
at each size look-up of a decision. The
copies' sizes it refines are estimates that may lag some views.

Traffic: a model's ``last_used`` and ``rate_rpm`` are the merge (:class:`placement.Usage`, the
simulator's estimator) of what its copies report and of its history: the traffic of copies
that are gone, folded into a bounded :class:`placement.UsageHistory` when their records go,
with the last measured load time and size. So a model evicted and requested again is valued
by its past (rate, recency, reload cost, size), as the simulator values it, not as a model
never seen. A new leader rebuilds the history from the decision log (each record that removes
copies carries what the leader then remembered of their models: ``DecisionRecord.usage``),
which every instance mirrors: no store read, and no store write beyond the log's own.

The view's ``models`` mapping is a read-only proxy over the live dictionary: valid for a
decision made synchronously on it, not across an ``await`` (the next view reflects changes).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Literal

from placement import (
    Action,
    BasePolicy,
    ClusterView,
    CopyView,
    EvictionMemory,
    InstanceView,
    ModelView,
    PlacementIndex,
    Remembered,
    TenantQuota,
    Usage,
    UsageHistory,
)

from ._cluster_mirror import ClusterMirror
from ._store_schema import CopyRecord, CopyState

PlacementCopyState = Literal["loading", "loaded", "failed"]  # placement's CopyView.state

# a copy being unloaded still holds its bytes: placement counts it as loaded until it is gone
_PLACEMENT_STATE: dict[CopyState, PlacementCopyState] = {
    CopyState.LOADING: "loading",
    CopyState.LOADED: "loaded",
    CopyState.FAILED: "failed",
    CopyState.UNLOADING: "loaded",
}

MAX_MISSED = 100_000
"""models whose missed request is counted before any copy reported it (oldest dropped first)"""
AWAIT_MAX_S = 60.0
"""a missed request not reported served after this long no longer protects the model's copies"""
MISS_CLOCK_SLACK_S = 1.0
"""a copy's report this much before the miss (another instance's clock) still covers the missed request"""

RATIO_STEP = 0.05
"""relative change of a type's learned size ratio that re-sizes its unmeasured models"""

RESIZE_PER_VIEW = 32
"""unmeasured models re-sized for a ratio change per view (the rest in the views after it)"""
CATCH_UP_CHUNK = 32
"""models recomputed between two yields of :meth:`PlacementViewBuilder.catch_up` and :meth:`~PlacementViewBuilder.warm`
(128 a chunk held a busy leader's loop 12-25 ms under a stall logger on asyncio's own loop, which a
request arriving meanwhile waited out; a yield costs one loop iteration)"""


class RatioSamples:
    """One model type's measured/predicted size ratios, one per measured model, also kept sorted
    so the median is read, not sorted for: a sample changes at each copy report of a measured
    model, and sorting thousands of them at every view was a quarter of the density bench
    leader's view time (py-spy)."""

    __slots__ = ("_by_model", "_sorted")

    def __init__(self) -> None:
        self._by_model: dict[str, float] = {}
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._by_model)

    def put(self, mid: str, value: float) -> None:
        old = self._by_model.get(mid)
        if old == value:
            return
        if old is not None:
            self._drop(old)
        self._by_model[mid] = value
        bisect.insort(self._sorted, value)

    def pop(self, mid: str) -> bool:
        """Forget ``mid``'s sample; False if it had none."""
        old = self._by_model.pop(mid, None)
        if old is None:
            return False
        self._drop(old)
        return True

    def _drop(self, value: float) -> None:
        del self._sorted[bisect.bisect_left(self._sorted, value)]

    def median(self) -> float | None:
        """The upper median (the middle one of an odd count), None without samples."""
        s = self._sorted
        return s[len(s) // 2] if s else None


class PlacementViewBuilder:
    def __init__(
        self,
        state: ClusterMirror,
        policy: BasePolicy,
        *,
        default_model_size_bytes: int,
        clock: Callable[[], float],
        rate_window_s: float = 60.0,
        usage_window_s: float | None = None,
        history_max_models: int = 50_000,
    ) -> None:
        self.state = state
        self.policy = policy
        # the copies' placement meter (usage_rpm, what eviction values): the instances' usage window,
        # the policy's frequency horizon by default, as the simulator meters
        self.usage_window_s = usage_window_s or policy.settings.rate_tau_s
        self.rate_window_s = rate_window_s  # the copies' short-window rate (recent_rpm, copies by rate)
        self.default_model_size_bytes = default_model_size_bytes
        self.clock = clock
        self._models: dict[str, ModelView] = {}
        self._models_view = MappingProxyType(self._models)
        self._index: PlacementIndex = policy.new_index()
        # per model: (size, assigned instances, instances where that copy is still loading)
        self._contrib: dict[str, tuple[int, tuple[str, ...], tuple[str, ...]]] = {}
        self._used: dict[str, int] = {}
        self._loading: dict[str, int] = {}
        # size learning: type -> model -> measured/predicted; the ratio in use per type
        self._samples: dict[str, RatioSamples] = {}
        self._samples_changed: set[str] = set()
        self._ratios: dict[str, float] = {}
        self._unmeasured: dict[str, set[str]] = {}  # type -> models sized by prediction
        self._resize: dict[str, None] = {}  # unmeasured models whose type's ratio moved, not yet re-sized (in order)
        self._type_of: dict[str, str] = {}
        # traffic of copies that are gone, their last load time and size (see the module doc)
        self._history = UsageHistory(history_max_models)
        # which model each recent eviction made room for (the policy's swap guard), from the decisions
        self._evictions = EvictionMemory(policy.settings.swap_guard_s)
        self._dirty: set[str] = set()
        self._all_dirty = True
        self._generation = 0  # bumped by stop(): a warm() in progress gives up
        # the request that missed, per model, until a copy reports serving traffic after it
        self._missed: dict[str, Usage] = {}
        self._unsubs: list[Callable[[], None]] = []
        self.recomputed = 0  # models recomputed so far (for tests and metrics)

    def start(self) -> None:
        """Follow the mirrors; the next view is built from every record, later ones from changes."""
        self.stop()
        st = self.state
        self._unsubs = [
            st.models.subscribe(self._on_keyed),
            st.assignments.subscribe(self._on_keyed),
            st.copies.subscribe(self._on_copies),
        ]
        self._all_dirty = True
        self._rebuild_history()

    async def warm(self, chunk: int = CATCH_UP_CHUNK) -> None:
        """Build the first view's models ``chunk`` at a time, yielding to the event loop between
        chunks: a new leader's first view walks every model (~100 ms at 10k, a second at 100k) on
        an instance that also serves. Changes that arrive meanwhile are marked dirty as usual, and
        the next :meth:`view` has only them (and the bookkeeping) left to do."""
        if not self._all_dirty:
            return
        generation = self._generation
        self._all_dirty = False
        self._dirty.clear()
        ids = list(self._all_ids())
        for start in range(0, len(ids), chunk):
            for mid in ids[start : start + chunk]:
                self._recompute(mid)
            await asyncio.sleep(0)
            if self._generation != generation:  # stopped (leadership lost) meanwhile: what was built is gone
                return

    async def catch_up(self, chunk: int = CATCH_UP_CHUNK) -> None:
        """Recompute the models that changed ``chunk`` at a time, yielding to the event loop
        between chunks, until at most one chunk is left for the next :meth:`view`. Under churn
        hundreds of models change between two decisions, and one view recomputing them all held
        the leader's loop (which also serves) for 15 ms and more. A no-op when little changed."""
        if self._all_dirty:
            await self.warm()
        generation = self._generation
        while len(self._dirty) > chunk:
            for _ in range(chunk):
                self._recompute(self._dirty.pop())
            await asyncio.sleep(0)
            if self._generation != generation:  # stopped (leadership lost) meanwhile
                return

    def _all_ids(self) -> set[str]:
        st = self.state
        return set(st.models.items) | set(st.assignments.items) | set(self._models) | set(self._contrib)

    def stop(self) -> None:
        """Stop following and drop what was built (memory only a leader needs)."""
        self._generation += 1
        for u in self._unsubs:
            u()
        self._unsubs.clear()
        self._models.clear()
        self._index = self.policy.new_index()
        for d in (self._contrib, self._used, self._loading, self._samples, self._ratios, self._unmeasured, self._type_of):
            d.clear()
        self._history.clear()
        self._evictions.clear()
        self._missed.clear()
        self._samples_changed.clear()
        self._resize.clear()
        self._dirty.clear()
        self._all_dirty = True

    def note_miss(self, mid: str, at: float) -> None:
        """A request for ``mid`` found no copy at ``at``: it counts as a use from now on, as the
        simulator counts a request when it arrives, until a copy of the model reports traffic at
        or after it (the copy's meter then holds that request). Without it a copy loaded for a
        request looks idle until its first usage report, and the next miss evicts it at once."""
        pending = self._missed.get(mid)
        if pending is not None and pending.last_used >= at:
            return
        self._missed.pop(mid, None)
        self._missed[mid] = Usage().record(at, self.usage_window_s)
        while len(self._missed) > MAX_MISSED:
            del self._missed[next(iter(self._missed))]
        self._dirty.add(mid)

    def _on_keyed(self, changes: list[Any]) -> None:
        for ch in changes:
            self._dirty.add(ch.key)

    def _on_copies(self, changes: list[Any]) -> None:
        for ch in changes:
            mid = ch.key.rpartition("/")[0]
            self._dirty.add(mid)
            if ch.new is None and ch.old is not None:  # the copy is gone: its traffic joins the history
                self._fold(mid, ch.old)

    @staticmethod
    def _report(c: CopyRecord) -> tuple[Usage, float, int]:
        """A copy's last report as history takes it: traffic, load time (once loaded), measured size."""
        return (
            Usage(c.last_used, c.usage_rpm),
            c.load_time_s if c.state == CopyState.LOADED else 0.0,
            c.size_bytes if c.size_measured else 0,
        )

    def _fold(self, mid: str, c: CopyRecord) -> None:
        usage, load_time_s, size = self._report(c)
        if usage.last_used > 0 or load_time_s or size:
            self._history.fold(mid, usage, self.usage_window_s, load_time_s=load_time_s, size_bytes=size)

    def _rebuild_history(self) -> None:
        """The history as the decision log left it: per model, its newest record that carries it;
        and the recent evictions with the model each made room for."""
        self._history.clear()
        self._evictions.clear()
        models = self.state.models.items
        for rec in self.state.decisions.records():
            for mid, values in rec.usage.items():
                if mid in models and len(values) == 4:
                    last_used, rate, load_time_s, size = values
                    self._history.put(mid, Remembered(last_used, rate, load_time_s, int(size)))
            for a in rec.actions:
                if a.get("kind") == "unload" and a.get("room_for"):
                    self._evictions.note(a["model_id"], a["room_for"], rec.at)

    def note_applied(self, actions: Iterable[Action], at: float) -> None:
        """The leader applied ``actions`` at ``at``: remember the evictions among them (the swap guard)."""
        self._evictions.note_actions(actions, at)

    def remembered_after(self, mid: str, removed: Iterable[str]) -> Remembered:
        """What the history will hold for ``mid`` once its copies on ``removed`` are gone (for the log)."""
        self._flush()
        copies = self.state.copies_of(mid)
        entry = self._history.get(mid) or Remembered(0.0, 0.0)
        for iid in removed:
            if (c := copies.get(iid)) is not None:
                usage, load_time_s, size = self._report(c)
                entry = entry.with_part(usage, self.usage_window_s, load_time_s=load_time_s, size_bytes=size)
        return entry

    def remembered(self, mid: str) -> Remembered | None:
        """The model's history (traffic of its gone copies), if the leader keeps one."""
        self._flush()
        return self._history.get(mid)

    # ------------------------------------------------------------ upkeep

    def _flush(self) -> None:
        if self._missed:  # a request that waited this long has been answered or given up
            cutoff = self.clock() - AWAIT_MAX_S
            while self._missed:
                mid, pending = next(iter(self._missed.items()))
                if pending.last_used >= cutoff:
                    break
                del self._missed[mid]
                self._dirty.add(mid)
        if self._all_dirty:
            self._all_dirty = False
            self._dirty.clear()
            for mid in self._all_ids():
                self._recompute(mid)
        while self._dirty:
            dirty, self._dirty = self._dirty, set()
            for mid in dirty:
                self._recompute(mid)
        changed, self._samples_changed = self._samples_changed, set()
        for mtype in changed:
            samples = self._samples.get(mtype)
            median = samples.median() if samples is not None else None
            ratio = max(median, 1.0) if median is not None else 1.0
            old = self._ratios.get(mtype, 1.0)
            if abs(ratio - old) > RATIO_STEP * old:
                self._ratios[mtype] = ratio
                self._resize.update(dict.fromkeys(self._unmeasured.get(mtype, ())))
        if self._resize:
            for resized in list(itertools.islice(self._resize, RESIZE_PER_VIEW)):
                self._recompute(resized)  # (drops it from the pending ones)

    def _recompute(self, mid: str) -> None:
        self.recomputed += 1
        self._resize.pop(mid, None)
        st = self.state
        rec = st.models.items.get(mid)
        copies = st.copies_of(mid)
        arec = st.assignments.items.get(mid)
        assigned = arec.instances if arec is not None else ()

        old_type = self._type_of.pop(mid, None)
        if old_type is not None:
            self._unmeasured.get(old_type, set()).discard(mid)
            samples = self._samples.get(old_type)
            if samples is not None and samples.pop(mid):
                self._samples_changed.add(old_type)

        size = 0
        if rec is not None:
            measured = st.measured_size(mid)
            mtype = rec.model_type
            self._type_of[mid] = mtype
            seen = self._history.get(mid)  # the model's gone copies: their traffic, load time and size
            seen_size = seen.size_bytes if seen is not None else 0
            if measured or seen_size:
                size, is_measured = measured or seen_size, True
                if measured and rec.predicted_size_bytes > 0:
                    self._samples.setdefault(mtype, RatioSamples()).put(mid, size / rec.predicted_size_bytes)
                    self._samples_changed.add(mtype)
            else:
                is_measured = False
                self._unmeasured.setdefault(mtype, set()).add(mid)
                if rec.predicted_size_bytes:
                    size = int(rec.predicted_size_bytes * self._ratios.get(mtype, 1.0))
                else:
                    size = self.default_model_size_bytes
            load_times = [c.load_time_s for c in copies.values() if c.load_time_s > 0]
            usage = seen.usage if seen is not None else Usage()
            recent = Usage()
            for cr in copies.values():  # each copy meters the requests it served: merged, they are the model's
                usage = usage.merge(Usage(cr.last_used, cr.usage_rpm), self.usage_window_s)
                recent = recent.merge(Usage(cr.last_used, cr.recent_rpm), self.rate_window_s)
            missed = self._missed.get(mid)
            awaiting = False
            if missed is not None:
                # served since (clocks of two instances: a second's slack): the copies' reports count it
                if any(cr.last_used >= missed.last_used - MISS_CLOCK_SLACK_S for cr in copies.values()):
                    del self._missed[mid]
                else:
                    usage = usage.merge(missed, self.usage_window_s)
                    awaiting = True  # the request that missed waits for this model's copy
            last_used = max(rec.last_used, usage.last_used)
            rate = usage.rate_rpm
            if not load_times and seen is not None and seen.load_time_s > 0:
                load_times = [seen.load_time_s]  # the reload cost of a model whose copies went
            mv = ModelView(
                model_id=mid,
                size_bytes=size,
                size_measured=is_measured,
                tenant=rec.tenant,
                copies=tuple(
                    CopyView(instance_id=iid, state=_PLACEMENT_STATE[c.state], since=c.since)
                    for iid, c in sorted(copies.items())
                ),
                assigned=frozenset(assigned),
                last_used=last_used,
                rate_rpm=rate,
                load_time_s=max(load_times) if load_times else 1.0,
                # unfiltered: the policy compares failed_until with the view's now
                failures={iid: c.failed_until for iid, c in copies.items() if c.state == CopyState.FAILED},
                min_copies=rec.min_copies,
                max_copies=rec.max_copies,
                pinned=rec.pinned,
                awaiting=awaiting,
                recent_rpm=recent.rate_rpm,
            )
            self._models[mid] = mv
            self._index.update(mv)
        else:
            self._history.forget(mid)
            self._missed.pop(mid, None)
            if self._models.pop(mid, None) is not None:
                self._index.remove(mid)

        old = self._contrib.pop(mid, None)
        if old is not None:
            osize, oassigned, oloading = old
            for iid in oassigned:
                self._used[iid] -= osize
            for iid in oloading:
                self._loading[iid] -= 1
        if assigned:
            loading = tuple(iid for iid in assigned if (c := copies.get(iid)) is None or c.state == CopyState.LOADING)
            self._contrib[mid] = (size, assigned, loading)
            for iid in assigned:
                self._used[iid] = self._used.get(iid, 0) + size
            for iid in loading:
                self._loading[iid] = self._loading.get(iid, 0) + 1

    # ------------------------------------------------------------ views

    def view(self, quotas: Mapping[str, TenantQuota] | None = None) -> ClusterView:
        self._flush()
        if self._index.key_id != self.policy.key_id:  # an adaptive policy retuned: its eviction order changed
            self._index = self.policy.build_index(self._models.values())
        instances = {
            iid: InstanceView(
                instance_id=iid,
                capacity_bytes=rec.capacity_bytes,
                # desired bytes, or what the instance reports holding when that is more
                # (copies still unloading, sizes measured after the decision)
                used_bytes=max(self._used.get(iid, 0), rec.used_bytes),
                assigned_bytes=self._used.get(iid, 0),
                loading=self._loading.get(iid, 0),
                loading_slots=rec.loading_slots,
                zone=rec.zone,
                labels=dict(rec.labels),
                state="shutting_down" if rec.shutting_down else "live",
            )
            for iid, rec in self.state.instances.items.items()
        }
        return ClusterView(
            now=self.clock(), instances=instances, models=self._models_view, quotas=quotas or {}, index=self._index,
            rate_window_s=self.usage_window_s, recent_window_s=self.rate_window_s, evicted_for=self._evictions.recent,
        )

    def size_of(self, mid: str) -> int:
        self._flush()
        mv = self._models.get(mid)
        return mv.size_bytes if mv is not None else 0

    def ratios(self) -> dict[str, float]:
        self._flush()
        return dict(self._ratios)
