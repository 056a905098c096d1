"""Placement leader: elected through the store, it turns misses and ticks into assignments.

Election: the leader key ``P/leader`` is created (create-only) bound to the
instance's lease; it disappears when that instance dies or stops, and the other
candidates, watching it, campaign again. The leader rebuilds everything it needs
from the mirrors: it keeps no state of its own.

While leader:

* each miss record ``P/misses/{model}`` is answered with ``Policy.on_miss``;
* every tick (and after copy changes) ``Policy.on_tick`` adds / removes copies,
  moves models off shutting-down instances, and failed copies are unassigned;
* vModel transitions are promoted once their target has loaded (or marked failed).

Actions are applied in one transaction per decision, guarded by the mod revision
of every assignment record it rewrites: a stale view (or a leader that lost its
lease mid-decision) changes nothing, and the decision is retried on a fresh view.

History: the view remembers the traffic, reload cost and size of models whose copies
went (mesh._placement_view), so a returning model is valued by its past as the
simulator values it. A decision that removes copies logs what the leader remembers of
those models (``DecisionRecord.usage``, in the same transaction), and a new leader
rebuilds the history from the mirrored log: it does not start blind. The adaptive
policy's ghost lists are seeded from that view.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from placement import Action, AdaptivePolicy, ClusterView, PlacementError, Policy, TenantQuota

from ._cluster_mirror import ClusterMirror
from ._load_request import request_load
from ._management import auto_delete_ops
from ._metrics import Metrics
from ._placement_view import PlacementViewBuilder
from ._store import Compare, Delete, Put, Store, StoreError
from ._store_schema import (
    AssignmentRecord,
    CopyState,
    DecisionRecord,
    Keys,
    LeaderRecord,
    VModelRecord,
    decode,
    encode,
)
from ._tasks import cancel_and_wait

log = logging.getLogger(__name__)

DEFAULT_MODEL_SIZE = 1 << 20  # predicted size of a model with no local artifact and no measurement
DECISION_LOG_SIZE = 2000  # decision records kept in the store (each one applied decision)
_TRIM_BATCH = 25  # the log is trimmed once this many records over its size (bounded ops per transaction)


def _logged_action(kind: str, model_id: str, instance_id: str, reason: str, room_for: str = "") -> dict[str, str]:
    """One action as the decision log keeps it; ``room_for`` only on evictions that made room for a model."""
    out = {"kind": kind, "model_id": model_id, "instance_id": instance_id, "reason": reason}
    if room_for:
        out["room_for"] = room_for
    return out


class Leader:
    def __init__(
        self,
        instance_id: str,
        store: Store,
        state: ClusterMirror,
        policy: Policy,
        lease: Callable[[], int],
        *,
        tick_s: float = 2.0,
        failure_ttl_s: float = 30.0,
        default_model_size_bytes: int = DEFAULT_MODEL_SIZE,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        decision_log_size: int = DECISION_LOG_SIZE,
        rate_window_s: float = 60.0,
        usage_window_s: float | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.decision_log_size = decision_log_size
        self.instance_id = instance_id
        self.store = store
        self.state = state
        self.keys: Keys = state.keys
        self.policy = policy
        self._lease = lease
        self.tick_s = tick_s
        self.failure_ttl_s = failure_ttl_s
        self.default_model_size_bytes = default_model_size_bytes
        self.clock = clock
        self.is_leader = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._leader_changed = asyncio.Event()  # the leader key changed (a follower campaigns again)
        self.campaign_retry_s = 1.0  # a follower's attempt without a change seen (a lost watch event)
        self._unsubs: list[Callable[[], None]] = []
        # what the cleanup before each batch of misses checks: models whose copy failed or whose
        # assignment changed since the last cleanup, or everything once an instance is gone (the
        # tick's cleanup always checks everything)
        self._cleanup_due: set[str] = set()
        self._cleanup_all = True
        self._views = PlacementViewBuilder(
            state, policy, default_model_size_bytes=default_model_size_bytes, clock=clock, rate_window_s=rate_window_s,
            usage_window_s=usage_window_s,
        )

    async def start(self) -> None:
        self._unsubs.append(self.state.vmodels.subscribe(self._on_vmodels))
        self._pending_vmodels = {n for n, vm in self.state.vmodels.items.items() if vm.active != vm.target}
        for mirror in (self.state.misses, self.state.copies, self.state.vmodels, self.state.instances, self.state.tenants):
            self._unsubs.append(mirror.subscribe(lambda _c: self._wake.set()))
        self._unsubs += [
            self.state.leader.subscribe(lambda _c: self._leader_changed.set()),
            self.state.copies.subscribe(self._note_copies),
            self.state.assignments.subscribe(self._note_assignments),
            self.state.instances.subscribe(self._note_instances),
        ]
        self._task = asyncio.create_task(self._run(), name=f"leader-{self.instance_id}")

    async def stop(self) -> None:
        for u in self._unsubs:
            u()
        self._views.stop()
        if self._task:
            await cancel_and_wait(self._task)
        if self.is_leader:
            with contextlib.suppress(StoreError):
                kv = await self.store.get(self.keys.leader)
                if kv is not None and decode(LeaderRecord, kv.value).instance_id == self.instance_id:
                    await self.store.delete_if(self.keys.leader, kv.mod_revision)
        self.is_leader = False

    # ------------------------------------------------------------ election

    async def _campaign(self) -> None:
        while True:
            self._leader_changed.clear()  # before the attempt: a change while it runs is not missed
            try:
                rev = await self.store.cas(
                    self.keys.leader,
                    encode(LeaderRecord(instance_id=self.instance_id, since=self.clock())),
                    0,
                    lease=self._lease(),
                )
                if rev is not None:
                    self._leader_rev = rev
                    self.is_leader = True
                    log.info("%s is the placement leader", self.instance_id)
                    return
                kv = await self.store.get(self.keys.leader)
                if kv is not None and decode(LeaderRecord, kv.value).instance_id == self.instance_id:
                    self._leader_rev = kv.mod_revision
                    self.is_leader = True
                    return
            except StoreError as exc:
                log.debug("campaign: %s", exc)
            # try again when the leader key changes (its holder's lease ran out, it stepped down),
            # and every campaign_retry_s. Not on every change of the cluster: under churn that was
            # a compare-and-swap and a read per copy record written, from every follower.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leader_changed.wait(), timeout=self.campaign_retry_s)

    async def _still_leader(self) -> bool:
        kv = await self.store.get(self.keys.leader)
        return kv is not None and decode(LeaderRecord, kv.value).instance_id == self.instance_id

    async def _run(self) -> None:
        while True:
            self._views.stop()
            try:
                await self._campaign()
                self._next_seq = 0  # continue the decision log where the last leader left it
                self._cleanup_all = True  # what changed while following was not noted
                self._views.start()  # followed only while leading: a follower keeps no view
                await self._views.warm()  # the first view's models, built without holding the loop
                if isinstance(self.policy, AdaptivePolicy):  # do not start blind: ghosts from what instances report
                    self.policy.seed_ghosts(self.view())
                next_tick = time.monotonic()
                while True:
                    await self._process_misses()
                    await self._promote_vmodels()
                    if time.monotonic() >= next_tick:
                        await self._tick()
                        next_tick = time.monotonic() + self.tick_s
                        if not await self._still_leader():
                            self.is_leader = False
                            log.warning("%s lost leadership", self.instance_id)
                            break
                    self._wake.clear()
                    if any(not m.error for m in self.state.misses.items.values()):
                        # unanswered misses (new, or a decision that conflicted): go again, but
                        # let the loop run first. Misses that carry a placement error only wait
                        # for their expiry, checked on the next wake or tick.
                        await asyncio.sleep(0)
                        continue
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=max(next_tick - time.monotonic(), 0.01))
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                log.warning("leader loop: store error %s", exc)
                self.is_leader = False
                await asyncio.sleep(0.5)
            except Exception:
                log.exception("leader loop failed")
                self.is_leader = False
                await asyncio.sleep(0.5)

    # ------------------------------------------------------------ view

    def view(self) -> ClusterView:
        """The current cluster view (incrementally maintained: see :mod:`mesh._placement_view`)."""
        quotas = {n: TenantQuota(n, r.max_bytes) for n, r in self.state.tenants.items.items() if r.max_bytes > 0}
        return self._views.view(quotas)

    # ------------------------------------------------------------ apply

    async def apply(self, actions: Sequence[Action], *, extra: Sequence[Put | Delete] = ()) -> bool:
        """Apply actions, guarded by the revisions of every record they rewrite: atomically when
        they fit in one transaction of the store (``max_txn_ops``, etcd's ``--max-txn-ops``).

        More (the copies of an instance that went, a tick that trims many): in parts of whole
        models, each part atomic and logged as its own decision; the models that only lose
        copies go first, so no part plans a load before the room made for it (between parts a
        model may be out, never an instance over its capacity). ``extra`` goes with the last
        part. Stops at the first part whose guard fails (the view was stale: the caller decides
        again from a newer one); True when every part was applied."""
        if not actions and not extra:
            return True
        await self._views.catch_up()  # what changed while deciding: not all at the first size look-up
        parts = self._parts(actions, len(extra))
        for i, part in enumerate(parts):
            if not await self._apply_part(part, extra if i == len(parts) - 1 else ()):
                return False
        return True

    def _parts(self, actions: Sequence[Action], n_extra: int) -> list[Sequence[Action]]:
        # per model: one compare and one put or delete; the log: its sequence compare, one put
        # and at most 2 x _TRIM_BATCH trimmed records; the leader key's compare
        per = max(1, self.store.max_txn_ops - n_extra - 2 * _TRIM_BATCH - 4)
        by_model: dict[str, list[Action]] = {}
        for a in actions:
            by_model.setdefault(a.model_id, []).append(a)
        if len(by_model) <= per:
            return [actions]
        groups = sorted(by_model.values(), key=lambda acts: any(a.kind != "unload" for a in acts))  # stable
        return [[a for acts in groups[i : i + per] for a in acts] for i in range(0, len(groups), per)]

    async def _apply_part(self, actions: Sequence[Action], extra: Sequence[Put | Delete]) -> bool:
        by_model: dict[str, list[Action]] = {}
        for a in actions:
            by_model.setdefault(a.model_id, []).append(a)
        compares: list[Compare] = [Compare(self.keys.leader, self._leader_rev)] if self._leader_rev else []
        ops: list[Put | Delete] = list(extra)
        now = self.clock()
        for mid, acts in by_model.items():
            key = self.keys.assignment(mid)
            current = self.state.assignments.items.get(mid)
            rev = self.state.assignments.revision_of(mid) if current is not None else 0
            instances = list(current.instances) if current else []
            reasons = dict(current.reasons) if current else {}
            for a in acts:
                if a.kind == "load" and a.instance_id not in instances:
                    instances.append(a.instance_id)
                    reasons[a.instance_id] = a.reason
                elif a.kind == "unload" and a.instance_id in instances:
                    instances.remove(a.instance_id)
                    reasons.pop(a.instance_id, None)
            compares.append(Compare(key, rev))
            if instances:
                planned = self._views.size_of(mid)
                ops.append(Put(key, encode(AssignmentRecord(mid, tuple(instances), reasons, now, planned))))
            else:
                ops.append(Delete(key))
        usage: dict[str, list[float]] = {}
        for mid, acts in by_model.items():
            removed = [a.instance_id for a in acts if a.kind == "unload"]
            if removed and mid in self.state.models.items:
                usage[mid] = list(self._views.remembered_after(mid, removed))
        log_compares, log_ops = self._decision_log(
            [(a.kind, a.model_id, a.instance_id, a.reason, a.room_for) for a in actions], now, usage
        )
        ok, revision = await self.store.txn([*compares, *log_compares], [*ops, *log_ops])
        self._logged(ok and bool(log_ops))
        if ok:
            self._views.note_applied(actions, now)
            for a in actions:
                self.metrics.decisions.labels(a.kind, a.reason.split(":", 1)[0].split(" ", 1)[0][:40]).inc()
                log.info("placement: %s %s on %s (%s)", a.kind, a.model_id, a.instance_id, a.reason)
            # do not decide again before our own writes are visible in the view
            mirror = self.state.assignments if by_model else self.state.misses
            await self.state.wait_for(lambda: mirror.revision >= revision, 5.0)
        return ok

    _leader_rev = 0

    # ------------------------------------------------------------ decision log

    _next_seq = 0  # next decision-log sequence number; 0: derive it from the mirror

    def _decision_log(
        self, actions: Sequence[tuple[str, ...]], now: float, usage: dict[str, list[float]] | None = None
    ) -> tuple[list[Compare], list[Put | Delete]]:
        """The store ops that log a decision (kind, model, instance, reason and, on an eviction that
        makes room for a model, ``room_for`` per action) and trim the log.

        ``usage``: per model whose copies the decision removes, what the history will hold for it
        (placement.Remembered as a list), for a later leader to rebuild the history from.

        Written in the same transaction as the change it records, so the log and the
        assignments never disagree; the newest ``decision_log_size`` records are kept, the
        oldest deleted in small batches.
        """
        if not actions:
            return [], []
        items = self.state.decisions.items
        if not self._next_seq:
            self._next_seq = max((int(k) for k in items if k.isdigit()), default=0) + 1
        key = self.keys.decision(self._next_seq)
        record = DecisionRecord(
            seq=self._next_seq,
            at=now,
            leader=self.instance_id,
            actions=tuple(_logged_action(*a) for a in actions),
            usage=usage or {},
        )
        ops: list[Put | Delete] = [Put(key, encode(record))]
        excess = len(items) + 1 - self.decision_log_size
        batch = max(1, min(_TRIM_BATCH, self.decision_log_size // 10))
        if excess >= batch:
            ops += [Delete(self.keys.decisions + k) for k in heapq.nsmallest(min(excess, 2 * batch), items)]
        return [Compare(key, 0)], ops

    def _logged(self, ok: bool) -> None:
        # a failed transaction may have failed on our sequence number (another leader wrote it):
        # derive it again from the mirror next time
        self._next_seq = self._next_seq + 1 if ok else 0

    # ------------------------------------------------------------ misses

    async def _process_misses(self) -> None:
        if any(not m.error for m in self.state.misses.items.values()):
            await self._cleanup(full=False)
        for mid, miss in list(self.state.misses.items.items()):
            key = self.keys.miss(mid)
            if miss.error:
                if self.clock() - miss.at > self.failure_ttl_s:
                    await self.store.delete(key)
                continue
            if mid not in self.state.models.items:
                await self.store.delete(key)
                continue
            self._views.note_miss(mid, miss.at)  # the request that missed is a use, as in the simulator
            for _attempt in range(5):
                await self._views.catch_up()  # the view's backlog of changes, a chunk at a time
                view = self.view()
                try:
                    actions = self.policy.on_miss(view, mid)
                except PlacementError as exc:
                    log.warning("cannot place %s: %s", mid, exc)
                    now = self.clock()
                    log_compares, log_ops = self._decision_log([("reject", mid, "", str(exc)[:500])], now)
                    ok, _ = await self.store.txn(log_compares, [Put(key, encode(replace(miss, error=str(exc), at=now))), *log_ops])
                    self._logged(ok)
                    if not ok:  # only the log entry can conflict: record the error without it
                        await self.store.put(key, encode(replace(miss, error=str(exc), at=now)))
                    self.metrics.decisions.labels("reject", "no_capacity").inc()
                    break
                if await self.apply(actions, extra=[Delete(key)]):
                    break
            else:
                log.warning("placement of %s kept conflicting; will retry", mid)

    # ------------------------------------------------------------ tick

    def _note_copies(self, changes: list[Any]) -> None:
        if self.is_leader:
            for ch in changes:
                if ch.new is not None and ch.new.state == CopyState.FAILED:
                    self._cleanup_due.add(ch.key.rpartition("/")[0])

    def _note_assignments(self, changes: list[Any]) -> None:
        if self.is_leader:
            self._cleanup_due.update(ch.key for ch in changes if ch.new is not None)

    def _note_instances(self, changes: list[Any]) -> None:
        if any(ch.new is None for ch in changes):
            self._cleanup_all = True

    async def _cleanup(self, *, full: bool = True) -> None:
        """Unassign failed copies (the instance is free; a later miss may retry) and vanished instances.

        ``full``: check every assignment (the tick). Otherwise (before each batch of misses) only
        the models noted since the last cleanup: a walk of every assignment before each miss cost
        the leader's loop ~4% at 60 misses/s over 10,000 models."""
        assignments = self.state.assignments.items
        if full or self._cleanup_all:
            self._cleanup_all = False
            self._cleanup_due.clear()
            mids: Iterable[str] = list(assignments)
        else:
            mids, self._cleanup_due = self._cleanup_due, set()
        failed: list[Action] = []
        for mid in mids:
            arec = assignments.get(mid)
            if arec is None:
                continue
            copies = self.state.copies_of(mid)
            for iid in arec.instances:
                c = copies.get(iid)
                if c is not None and c.state == CopyState.FAILED:
                    failed.append(Action(kind="unload", model_id=mid, instance_id=iid, reason="load_failed: " + c.error[:200]))
                elif iid not in self.state.instances.items:
                    failed.append(Action(kind="unload", model_id=mid, instance_id=iid, reason="instance_gone"))
        if failed:
            await self.apply(failed)

    async def _tick(self) -> None:
        await self._cleanup()
        await self._views.catch_up()
        view = self.view()
        try:
            actions = self.policy.on_tick(view)
        except PlacementError as exc:
            log.warning("tick: %s", exc)
            return
        if actions:
            await self.apply(actions)

    # ------------------------------------------------------------ vModels

    _pending_vmodels: set[str]

    def _on_vmodels(self, changes: list[Any]) -> None:
        for ch in changes:
            if ch.new is not None and ch.new.active != ch.new.target:
                self._pending_vmodels.add(ch.key)
            else:
                self._pending_vmodels.discard(ch.key)

    async def _promote_vmodels(self) -> None:
        """Move each vModel in transition to its target once loaded (only those in transition: O(pending))."""
        for name in sorted(self._pending_vmodels):
            vm = self.state.vmodels.items.get(name)
            if vm is None or vm.active == vm.target:
                self._pending_vmodels.discard(name)
                continue
            target = vm.target
            if target not in self.state.models.items:
                continue
            holders = self.state.holders(target)
            error = self.state.failure(target)
            new: VModelRecord | None = None
            if holders:
                new = replace(vm, active=target, failed=False, failure="", updated_at=self.clock())
            elif error is not None and not vm.failed:
                new = replace(vm, failed=True, failure=error, updated_at=self.clock())
            elif not self.state.assigned(target) and target not in self.state.misses.items and error is None:
                # make sure the target gets loaded
                await request_load(self.store, self.keys, target, requester=self.instance_id, at=self.clock())
            if new is None:
                continue
            rev = self.state.vmodels.revision_of(name)
            ops: list[Put | Delete] = [Put(self.keys.vmodel(name), encode(new))]
            old = vm.active
            if new.active != old:
                others = [v for n, v in self.state.vmodels.items.items() if n != name]
                ops += auto_delete_ops(self.keys, (old,), self.state.models.items, others)
            ok, _ = await self.store.txn([Compare(self.keys.vmodel(name), rev)], ops)
            if ok:
                log.info("vmodel %s: active %s -> %s", name, old, new.active)

    def describe(self) -> dict[str, Any]:
        """Leadership and the newest decisions of the one decision log (the store's, written with
        each decision: see :meth:`_decision_log`), oldest first."""
        records = list(itertools.islice(self.state.decisions.records(newest_first=True), 50))
        flat = [
            {"at": r.at, "kind": a["kind"], "model_id": a["model_id"], "instance_id": a["instance_id"], "reason": a["reason"]}
            for r in reversed(records)
            for a in r.actions
        ]
        return {"leader": self.is_leader, "decisions": flat[-50:]}
