"""The instance's in-memory view of the cluster, kept current by store watches.

Routing reads only this view (never the store). One :class:`PrefixMirror` per key
family; small derived indexes (loaded holders per model, copies per model) are
updated from the mirrors' change callbacks, so a routing decision is a couple of
dictionary look-ups.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ._decision_log import DecisionLog
from ._metrics import ClusterCounts
from ._store import PrefixMirror, Store
from ._store_schema import (
    AssignmentRecord,
    CopyRecord,
    CopyState,
    InstanceRecord,
    Keys,
    MissRecord,
    ModelRecord,
    TenantRecord,
    VModelRecord,
    decode,
)


def _rel(prefix: str, key: str) -> str:
    return key[len(prefix) :] if key.startswith(prefix) else key


class ClusterMirror:
    def __init__(self, store: Store, keys: Keys, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.keys = keys
        self.clock = clock
        self.instances: PrefixMirror[InstanceRecord] = PrefixMirror(
            store, keys.instances, lambda k, v: decode(InstanceRecord, v)
        )
        self.models: PrefixMirror[ModelRecord] = PrefixMirror(store, keys.models, lambda k, v: decode(ModelRecord, v))
        self.vmodels: PrefixMirror[VModelRecord] = PrefixMirror(
            store, keys.vmodels, lambda k, v: decode(VModelRecord, v)
        )
        self.assignments: PrefixMirror[AssignmentRecord] = PrefixMirror(
            store, keys.assignments, lambda k, v: decode(AssignmentRecord, v)
        )
        self.copies: PrefixMirror[CopyRecord] = PrefixMirror(store, keys.copies, lambda k, v: decode(CopyRecord, v))
        self.misses: PrefixMirror[MissRecord] = PrefixMirror(store, keys.misses, lambda k, v: decode(MissRecord, v))
        self.tenants: PrefixMirror[TenantRecord] = PrefixMirror(store, keys.tenants, lambda k, v: decode(TenantRecord, v))
        # the leader key alone (its prefix is the key; kept as bytes, read by relative key ""):
        # a follower campaigns again when it changes, not on every other change (mesh._leader)
        self.leader: PrefixMirror[bytes] = PrefixMirror(store, keys.leader, lambda k, v: v)
        # the decision log stays bytes until read (mesh._decision_log: decoded it was ~3.7x its size)
        self.decisions = DecisionLog(PrefixMirror(store, keys.decisions, lambda k, v: v))
        self._mirrors: list[PrefixMirror[Any]] = [
            self.instances,
            self.models,
            self.vmodels,
            self.assignments,
            self.copies,
            self.misses,
            self.tenants,
            self.decisions.mirror,
            self.leader,
        ]
        # derived indexes
        self._copies_by_model: dict[str, dict[str, CopyRecord]] = {}
        self._holders: dict[str, tuple[str, ...]] = {}
        self._assigned_to: dict[str, set[str]] = {}  # instance -> models assigned to it
        self._unsubs: list[Callable[[], None]] = []
        self._changed = asyncio.Event()

    async def start(self) -> None:
        self._unsubs.append(self.copies.subscribe(self._on_copies))
        self._unsubs.append(self.instances.subscribe(self._on_instances))
        self._unsubs.append(self.assignments.subscribe(self._on_assignments))
        for mirror in self._mirrors:
            self._unsubs.append(mirror.subscribe(self._notify))
        for mirror in self._mirrors:
            await mirror.start()
        self._rebuild_copies()

    async def stop(self) -> None:
        for unsub in self._unsubs:
            unsub()
        self._unsubs.clear()
        for mirror in self._mirrors:
            await mirror.stop()

    def _notify(self, _changes: object) -> None:
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``predicate()`` holds, re-checked after every change to any mirror."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while True:
            if predicate():
                return True
            remaining = end - loop.time()
            if remaining <= 0:
                return False
            self._changed.clear()
            if predicate():
                return True
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=remaining)
            except TimeoutError:
                return predicate()

    @property
    def connected(self) -> bool:
        return all(m.connected for m in self._mirrors)

    # ------------------------------------------------------------ look-ups

    def resolve(self, name: str) -> str | None:
        """vModel name or model id -> model id (None when neither exists)."""
        vm = self.vmodels.items.get(name)
        if vm is not None:
            return vm.active
        if name in self.models.items:
            return name
        return None

    def model(self, model_id: str) -> ModelRecord | None:
        return self.models.items.get(model_id)

    def holders(self, model_id: str) -> tuple[str, ...]:
        """Instances with a loaded copy of the model (live ones only)."""
        return self._holders.get(model_id, ())

    def copies_of(self, model_id: str) -> dict[str, CopyRecord]:
        return self._copies_by_model.get(model_id, {})

    def copies_by_model(self) -> dict[str, dict[str, CopyRecord]]:
        """Every copy record, by model then instance (read-only: the live index)."""
        return self._copies_by_model

    def measured_size(self, model_id: str) -> int:
        """The largest size a copy of the model measured after loading (0 before any did)."""
        return max((c.size_bytes for c in self.copies_of(model_id).values() if c.size_measured), default=0)

    def assigned(self, model_id: str) -> tuple[str, ...]:
        rec = self.assignments.items.get(model_id)
        return rec.instances if rec else ()

    def assigned_to(self, instance_id: str) -> frozenset[str]:
        """The models assigned to ``instance_id`` (kept from the assignments' changes: an agent
        reconciles after every change, and a scan of every assignment for each took ~2% of the
        leader's event loop with 10,000 models under churn)."""
        return frozenset(self._assigned_to.get(instance_id, ()))

    def address(self, instance_id: str) -> str | None:
        rec = self.instances.items.get(instance_id)
        return rec.address if rec else None

    def link_address(self, instance_id: str) -> str:
        """The instance's peer-link address ("" when it advertises none)."""
        rec = self.instances.items.get(instance_id)
        return rec.link_address if rec else ""

    def loading_on(self, model_id: str) -> tuple[str, ...]:
        """The instances where a copy of the model is loading: its record says so, or the model is
        assigned to a live instance that has not written one yet (a load writes its first record
        only after ``mesh._agent.LOADING_REPORT_S``, a quick one only its outcome)."""
        copies = self.copies_of(model_id)
        live = self.instances.items
        return tuple(
            [iid for iid, c in copies.items() if c.state == CopyState.LOADING]
            + [iid for iid in self.assigned(model_id) if iid not in copies and iid in live]
        )

    def failure(self, model_id: str) -> str | None:
        """The load error when the model has failed recently and nothing is loading or loaded."""
        copies = self.copies_of(model_id)
        if not copies:
            return None
        now = self.clock()
        error = None
        for c in copies.values():
            if c.state in (CopyState.LOADED, CopyState.LOADING):
                return None
            if c.state == CopyState.FAILED and c.failed_until > now:
                error = c.error or "load failed"
        if error is not None and self.loading_on(model_id):
            return None  # another copy is loading: its outcome decides
        return error

    def miss_error(self, model_id: str) -> str | None:
        rec = self.misses.items.get(model_id)
        return rec.error if rec is not None and rec.error else None

    def model_counts(self) -> ClusterCounts:
        """Registered models, those with a loaded copy, those with a recent load failure (O(copies))."""
        models = self.models.items
        now = self.clock()
        failed = {
            mid
            for mid, copies in self._copies_by_model.items()
            if mid in models and any(c.state == CopyState.FAILED and c.failed_until > now for c in copies.values())
        }
        loaded = sum(1 for mid in self._holders if mid in models)
        return ClusterCounts(loaded=loaded, with_failure=len(failed), managed=len(models))

    def referencing_vmodels(self, model_id: str) -> list[str]:
        return sorted(
            name for name, vm in self.vmodels.items.items() if model_id in vm.referenced()
        )

    # ------------------------------------------------------------ index upkeep

    def _split_copy_key(self, key: str) -> tuple[str, str]:
        rel = _rel(self.keys.copies, key)
        mid, _, iid = rel.rpartition("/")
        return mid, iid

    def _rebuild_copies(self) -> None:
        by_model: dict[str, dict[str, CopyRecord]] = {}
        for key, rec in self.copies.items.items():
            mid, iid = self._split_copy_key(key)
            by_model.setdefault(mid, {})[iid] = rec
        self._copies_by_model = by_model
        self._holders = {}
        for mid in by_model:
            self._recompute_holders(mid)

    def _recompute_holders(self, mid: str) -> None:
        copies = self._copies_by_model.get(mid)
        live = self.instances.items
        if not copies:
            self._holders.pop(mid, None)
            return
        holders = tuple(
            sorted(
                iid
                for iid, c in copies.items()
                if c.state == CopyState.LOADED and iid in live and not live[iid].shutting_down
            )
        )
        # a shutting-down instance still serves while nothing else holds the model
        if not holders:
            holders = tuple(sorted(iid for iid, c in copies.items() if c.state == CopyState.LOADED and iid in live))
        if holders:
            self._holders[mid] = holders
        else:
            self._holders.pop(mid, None)

    def _on_copies(self, changes: list[Any]) -> None:
        touched: set[str] = set()
        for ch in changes:
            mid, iid = self._split_copy_key(ch.key)
            rec = ch.new
            per = self._copies_by_model.setdefault(mid, {})
            if rec is None:
                per.pop(iid, None)
                if not per:
                    self._copies_by_model.pop(mid, None)
            else:
                per[iid] = rec
            touched.add(mid)
        for mid in touched:
            self._recompute_holders(mid)

    def _on_assignments(self, changes: list[Any]) -> None:
        index = self._assigned_to
        for ch in changes:
            mid = ch.key
            if ch.old is not None:
                for iid in ch.old.instances:
                    models = index.get(iid)
                    if models is not None:
                        models.discard(mid)
                        if not models:
                            del index[iid]
            if ch.new is not None:
                for iid in ch.new.instances:
                    index.setdefault(iid, set()).add(mid)

    def _on_instances(self, changes: list[Any]) -> None:
        # holders depend on which instances exist and which are shutting down, nothing else: an
        # instance's usage and capacity change at every publish under load, and recomputing every
        # model's holders for each of those took a large share of the event loop in a churn run
        moved = {
            ch.key for ch in changes
            if ch.old is None or ch.new is None or ch.old.shutting_down != ch.new.shutting_down
        }
        if not moved:
            return
        for mid, copies in list(self._copies_by_model.items()):
            if not moved.isdisjoint(copies):
                self._recompute_holders(mid)
