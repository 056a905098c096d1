"""The agent: this instance's lease, its published record, and reconciliation of assignments.

Desired state is ``assignments/{model}`` (written by the placement leader);
actual state is ``copies/{model}/{instance}`` (written only here, bound to this
instance's lease). The reconcile loop is idempotent: on every change of the
assignments it unloads what is no longer assigned, then loads what is newly
assigned (bounded by loading slots, and never beyond capacity: a load waits for
unloads in flight to free the bytes it needs).

Usage (last used time, request rate) is counted by the router in memory and
published here at most once per ``publish_interval_s``, never per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from placement import PolicySettings, Usage
from puller import Puller, StagedArtifact, StorageRef
from runtime_adapters import (
    AdapterRegistry,
    BatchingSettings,
    LoadedModel,
    ModelSpec,
    UnsupportedModelType,
    with_batching,
)

from ._cluster_mirror import ClusterMirror
from ._loaded_copies import LoadedCopies
from ._metrics import Metrics
from ._router import Router
from ._runtimes import RuntimeSupervisor
from ._settings import InstanceSettings
from ._store import LeaseExpired, Put, Store, StoreError
from ._store_schema import CopyRecord, CopyState, InstanceRecord, Keys, ModelRecord, encode
from ._tasks import cancel_and_wait

log = logging.getLogger(__name__)

DEFAULT_USAGE_WINDOW_S: float = PolicySettings.model_fields["rate_tau_s"].default
"""the placement meter's window when neither the instance nor its settings name one: the policy's default horizon"""

FIRST_USE_POLL_S = 0.05
"""how often copies just loaded are checked for their first served requests"""
FIRST_USE_WAIT_S = 10.0
"""a copy loaded longer ago than this reports its traffic with the regular publish only"""
LOADING_REPORT_S = 0.5
"""a load still running this long after it took its load slot is reported with a LOADING copy record;
a quicker load's first record is its outcome (LOADED or FAILED). Placement counts an assigned copy
without a record as loading and the model's status says Loading either way, so the record only
tells that a slow load is under way and since when. Written at the start of every load, it was one of
the copy writes each load made (LOADING, LOADED, its first served request), each a watch event in every
instance's mirror: ~80 a second on the density bench"""
INSTANCE_COALESCE_S = 0.2
"""after a load or unload, how long the instance record waits for more changes before it is written:
under churn an instance loads and unloads tens of models a second, and a write after each was an
etcd write each and a watch message in every instance's mirror (130 of the density bench's 790
store events a second on 3 instances); the leader's view learns the bytes a copy freed or measured
at most this much later"""


@dataclass
class LocalCopy:
    model_id: str
    state: CopyState
    since: float
    size_bytes: int = 0
    size_measured: bool = False
    load_time_s: float = 0.0
    error: str = ""
    failed_until: float = 0.0
    task: asyncio.Task[None] | None = None
    loaded: LoadedModel | None = None
    artifact_key: str | None = None
    published: CopyRecord | None = None
    report: asyncio.Task[None] | None = None  # the LOADING record's write, once a load runs long enough for one
    reserved: bool = False  # a loading copy's bytes count against capacity once it has room
    # the copy's traffic as placement meters it (placement.Usage, the simulator's estimator), fed at
    # each publish with the requests the router counted since the last one
    meter: Usage = field(default_factory=Usage)
    recent: Usage = field(default_factory=Usage)  # the same requests over the short rate window (copies by rate)
    counted: int = 0  # the router's request count for the model already in ``meter``


RPM_STEP = 0.25
"""a copy record is not rewritten for its dashboard rate (``rpm``) alone unless that moved by this
share of the published value (and by at least ``RPM_MIN_STEP``) or reached 0"""
RPM_MIN_STEP = 1.0


def _only_rpm_drifted(old: CopyRecord, new: CopyRecord) -> bool:
    """Whether ``new`` differs from the published ``old`` only by a small move of ``rpm``.

    ``rpm`` is the sliding-window rate the dashboards show; placement reads ``usage_rpm`` and
    ``recent_rpm``, which change only with new requests. The sliding window makes an idle copy's
    ``rpm`` fall a little at every publish for up to two windows: publishing each step would
    rewrite every recently used copy every second, a store write each watcher decodes and the
    leader's view recomputes, for a number no decision reads."""
    if replace(new, rpm=old.rpm) != old:
        return False
    if (new.rpm == 0.0) != (old.rpm == 0.0):
        return False
    return abs(new.rpm - old.rpm) < max(RPM_STEP * old.rpm, RPM_MIN_STEP)


@dataclass
class AgentCounters:
    loads: int = 0
    load_failures: int = 0
    unloads: int = 0


def storage_ref(rec: ModelRecord) -> StorageRef:
    params = dict((rec.options.get("storage_params_json") and json.loads(rec.options["storage_params_json"])) or {})
    if "://" in rec.path or not rec.storage_key:
        return StorageRef(storage_uri=rec.path, storage_key=rec.storage_key or None, parameters=params)
    return StorageRef(storage_key=rec.storage_key, path=rec.path, parameters=params)


class Agent:
    def __init__(
        self,
        settings: InstanceSettings,
        instance_id: str,
        address: str,
        store: Store,
        state: ClusterMirror,
        router: Router,
        adapters: AdapterRegistry,
        puller: Puller,
        *,
        loaded: LoadedCopies,
        rest_address: str = "",
        version: str = "",
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        batching: BatchingSettings | None = None,
        runtimes: RuntimeSupervisor | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        usage_window_s: float | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        # the placement meter's time constant (InstanceSettings.usage_window_s; the instance passes
        # its policy's rate_tau_s when that is unset): what the leader merges the reports with
        self.usage_window_s = usage_window_s or settings.usage_window_s or DEFAULT_USAGE_WINDOW_S
        # adaptive batching of loaded copies (built once by the instance; model options override it)
        self.batching = batching or BatchingSettings()
        self.runtimes = runtimes  # model types it handles load in runtime processes (issue 14)
        self.settings = settings
        self.instance_id = instance_id
        self.address = address
        self.rest_address = rest_address
        self.link_address = ""  # set by the instance once its peer link listens
        self.store = store
        self.state = state
        self.keys: Keys = state.keys
        self.router = router
        self.adapters = adapters
        self.puller = puller
        self.version = version
        self.clock = clock
        self.monotonic = monotonic  # times loads (a copy's load_time_s is its reload cost to placement) and unloads
        self.copies: dict[str, LocalCopy] = {}  # every copy this agent is loading, holds or unloads
        self.loaded = loaded  # the loaded ones: written only here, read by the router
        self.counters = AgentCounters()
        self.lease = 0
        self.shutting_down = False
        self._slots = asyncio.Semaphore(settings.loading_slots)
        self._freed = asyncio.Event()
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._fresh: set[str] = set()  # copies loaded whose first served requests are not published yet
        self._unsub: Callable[[], None] | None = None
        self._published_instance: InstanceRecord | None = None
        self._instance_changed = asyncio.Event()  # a load or unload changed the record: written soon
        self._started_at = clock()
        self.lease_lost = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.lease = await self.store.grant_lease(self.settings.lease_ttl_s)
        await self._forget_previous_incarnation()
        await self._publish_instance(force=True)
        self._unsub = self.state.assignments.subscribe(lambda _c: self._dirty.set())
        self._tasks = [
            asyncio.create_task(self._keepalive_loop(), name=f"keepalive-{self.instance_id}"),
            asyncio.create_task(self._reconcile_loop(), name=f"reconcile-{self.instance_id}"),
            asyncio.create_task(self._publish_loop(), name=f"publish-{self.instance_id}"),
            asyncio.create_task(self._first_use_loop(), name=f"first-use-{self.instance_id}"),
            asyncio.create_task(self._instance_loop(), name=f"instance-record-{self.instance_id}"),
        ]
        self._dirty.set()

    async def drain(self, timeout_s: float) -> bool:
        """Graceful shutdown, step 1: announce it and wait until models have moved away, or until no
        other live instance is left to take them (a lone instance has nowhere to move them: waiting
        the whole grace period would only delay its stop)."""
        self.shutting_down = True
        with contextlib.suppress(StoreError):
            await self._publish_instance(force=True)

        def done() -> bool:
            if not any(self.instance_id in rec.instances for rec in self.state.assignments.items.values()):
                return True
            return not any(iid != self.instance_id and not rec.shutting_down for iid, rec in self.state.instances.items.items())

        return await self.state.wait_for(done, timeout_s)

    async def stop(self) -> None:
        if self._unsub:
            self._unsub()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            await cancel_and_wait(t)
        self._tasks.clear()
        for mid in list(self.copies):
            await self._unload(mid, publish=False)
        if self.lease:
            with contextlib.suppress(StoreError):
                await self.store.revoke_lease(self.lease)

    # ------------------------------------------------------------ accounting

    @property
    def used_bytes(self) -> int:
        """Bytes held or reserved: loaded and unloading copies, and loads that have room (a load
        still waiting for room holds nothing yet; counted, it showed the instance over capacity)."""
        return sum(
            c.size_bytes
            for c in self.copies.values()
            if c.state in (CopyState.LOADED, CopyState.UNLOADING) or (c.state == CopyState.LOADING and c.reserved)
        )

    @property
    def loading(self) -> int:
        return sum(1 for c in self.copies.values() if c.state == CopyState.LOADING)

    def _instance_record(self) -> InstanceRecord:
        loaded = [c for c in self.copies.values() if c.state == CopyState.LOADED]
        lru = min((self.router.usage[c.model_id].last_used for c in loaded if c.model_id in self.router.usage), default=0.0)
        return InstanceRecord(
            instance_id=self.instance_id,
            address=self.address,
            rest_address=self.rest_address,
            link_address=self.link_address,
            capacity_bytes=self.settings.capacity_bytes,
            used_bytes=self.used_bytes,
            model_count=len(loaded),
            loading=self.loading,
            loading_slots=self.settings.loading_slots,
            lru_oldest=lru,
            rpm=round(sum(self._rpm(c.model_id) for c in loaded), 1),
            zone=self.settings.zone,
            version=self.version,
            shutting_down=self.shutting_down,
            started_at=self._started_at,
            requests=self.router.counters.requests,
            misses=self.router.counters.misses,
        )

    def _rpm(self, mid: str) -> float:
        st = self.router.usage.get(mid)
        if st is None:
            return 0.0
        return st.rate_rpm(time.monotonic(), self.settings.rate_window_s)

    def update_gauges(self) -> None:
        rec = self._instance_record()
        m = self.metrics
        m.capacity.set(rec.capacity_bytes)
        m.used.set(rec.used_bytes)
        m.used_bps.set(int(rec.used_bytes * 10_000 / rec.capacity_bytes) if rec.capacity_bytes else 0)
        m.instance_models.set(rec.model_count)
        m.lru_age.set(int(max(self.clock() - rec.lru_oldest, 0.0)) if rec.lru_oldest else 0)
        m.lru_time.set(int(rec.lru_oldest))
        if m.reports_cluster:  # the cluster-wide gauges: only the instance that exports them counts
            m.set_cluster(self.state.model_counts())

    async def _forget_previous_incarnation(self) -> None:
        """Delete copy records a previous process with this instance id left (killed, restarted
        before its lease ran out): this process holds nothing yet. Done before the instance record
        with the new address is published, so that no peer forwards to the new address on the
        strength of a copy that died with the old process (it would answer NOT_FOUND until the
        reload, and requests would give up); peers instead see the model unplaced or loading."""
        stale = [mid for mid, by_instance in self.state.copies_by_model().items() if self.instance_id in by_instance]
        for mid in stale:
            try:
                await self.store.delete(self.keys.copy(mid, self.instance_id))
            except StoreError as exc:
                log.warning("could not delete the stale copy record of %s: %s", mid, exc)
        if stale:
            log.info("forgot %d copy record(s) of a previous incarnation of %s", len(stale), self.instance_id)

    async def _publish_instance(self, *, force: bool = False) -> None:
        rec = self._instance_record()
        if not force and rec == self._published_instance:
            return
        await self.store.put(self.keys.instance(self.instance_id), encode(rec), lease=self.lease)
        self._published_instance = rec

    def _meter(self, copy: LocalCopy) -> Usage:
        """The copy's placement meter, fed with the requests served since the last publish.

        The router counts requests and keeps the last one's time (the hot path does no more);
        requests coalesced into one publish are metered as if they came at the last one's time,
        which is exact when each publish sees at most one request and otherwise off by at most
        a publish interval of decay.
        """
        st = self.router.usage.get(copy.model_id)
        if st is not None and st.count > copy.counted and st.last_used > 0:
            n = st.count - copy.counted
            copy.meter = copy.meter.record(st.last_used, self.usage_window_s, n)
            copy.recent = copy.recent.record(st.last_used, self.settings.rate_window_s, n)
            copy.counted = st.count
        return copy.meter

    def _copy_record(self, copy: LocalCopy) -> CopyRecord | None:
        """The copy's record as it stands, or None when what was published last still holds."""
        st = self.router.usage.get(copy.model_id)
        meter = self._meter(copy)
        rec = CopyRecord(
            model_id=copy.model_id,
            instance_id=self.instance_id,
            state=copy.state,
            since=copy.since,
            size_bytes=copy.size_bytes,
            size_measured=copy.size_measured,
            load_time_s=round(copy.load_time_s, 4),
            last_used=st.last_used if st else 0.0,
            rpm=round(self._rpm(copy.model_id), 1),
            usage_rpm=meter.rate_rpm,
            recent_rpm=copy.recent.rate_rpm,
            error=copy.error,
            failed_until=copy.failed_until,
        )
        if rec == copy.published or (copy.published is not None and _only_rpm_drifted(copy.published, rec)):
            return None
        return rec

    async def _publish_copy(self, copy: LocalCopy) -> None:
        rec = self._copy_record(copy)
        if rec is None:
            return
        await self.store.put(self.keys.copy(copy.model_id, self.instance_id), encode(rec), lease=self.lease)
        copy.published = rec

    async def _publish_copies(self) -> None:
        """The publish loop's copy records: those that changed, written a transaction of up to the
        store's limit at a time. Under churn most copies change every second; one put each was an
        RPC each here and a watch message each in every instance's mirror, where a transaction is
        one of each. A copy that left the loaded or failed state while a transaction was on its way
        is not written (its own transition publishes it)."""
        pending: list[tuple[LocalCopy, CopyRecord]] = []
        for c in list(self.copies.values()):
            if c.state in (CopyState.LOADED, CopyState.FAILED) and (rec := self._copy_record(c)) is not None:
                pending.append((c, rec))
        per = self.store.max_txn_ops
        for start in range(0, len(pending), per):
            part = [(c, rec) for c, rec in pending[start : start + per]
                    if self.copies.get(c.model_id) is c and c.state == rec.state]
            if not part:
                continue
            await self.store.txn(
                [], [Put(self.keys.copy(c.model_id, self.instance_id), encode(rec), lease=self.lease) for c, rec in part]
            )
            for c, rec in part:
                c.published = rec

    # ------------------------------------------------------------ loops

    async def _keepalive_loop(self) -> None:
        interval = max(self.settings.lease_ttl_s / 3.0, 0.5)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.store.keepalive(self.lease)
            except LeaseExpired:
                # the store forgot us (outage longer than the TTL): re-register everything
                log.warning("lease of %s expired; re-registering", self.instance_id)
                self.lease_lost += 1
                try:
                    self.lease = await self.store.grant_lease(self.settings.lease_ttl_s)
                    await self._publish_instance(force=True)
                    for c in list(self.copies.values()):
                        c.published = None
                        await self._publish_copy(c)
                except StoreError as exc:
                    log.warning("re-registration failed: %s", exc)
            except StoreError as exc:
                log.warning("keepalive failed (store unreachable?): %s", exc)

    async def _first_use_loop(self) -> None:
        """A copy just loaded reports its first served requests within FIRST_USE_POLL_S instead of
        at the next publish: the leader protects the copies of a model a request waits for
        (placement's ``awaiting``) until a copy reports serving it, so the sooner it knows, the
        sooner those copies are ordinary victims again. Bounded: copies loaded in the last
        FIRST_USE_WAIT_S, one store write each."""
        while True:
            await asyncio.sleep(FIRST_USE_POLL_S)
            if not self._fresh:
                continue
            now = self.clock()
            for mid in list(self._fresh):
                c = self.copies.get(mid)
                if c is None or c.state != CopyState.LOADED or now - c.since > FIRST_USE_WAIT_S:
                    self._fresh.discard(mid)
                    continue
                st = self.router.usage.get(mid)
                if st is not None and st.count > c.counted:
                    self._fresh.discard(mid)
                    with contextlib.suppress(StoreError):
                        await self._publish_copy(c)

    async def _instance_loop(self) -> None:
        """Write the instance record :data:`INSTANCE_COALESCE_S` after a load or unload changed it,
        with whatever else changed meanwhile: one write for a burst of changes."""
        while True:
            await self._instance_changed.wait()
            await asyncio.sleep(INSTANCE_COALESCE_S)
            self._instance_changed.clear()
            with contextlib.suppress(StoreError):
                await self._publish_instance()

    async def _publish_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.publish_interval_s)
            try:
                await self._publish_copies()
                await self._publish_instance()
                self._expire_failures()
                self.update_gauges()
            except StoreError as exc:
                log.debug("publish skipped: %s", exc)

    def _expire_failures(self) -> None:
        now = self.clock()
        for mid, c in list(self.copies.items()):
            if c.state == CopyState.FAILED and c.failed_until <= now:
                self.copies.pop(mid, None)
                task = asyncio.create_task(self._delete_copy_record(mid))
                self._tasks.append(task)
                self._dirty.set()

    async def _delete_copy_record(self, mid: str) -> None:
        with contextlib.suppress(StoreError):
            await self.store.delete(self.keys.copy(mid, self.instance_id))

    async def _reconcile_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.reconcile()
            except Exception:  # never let one bad record stop reconciliation
                log.exception("reconcile failed")

    def desired(self) -> frozenset[str]:
        return self.state.assigned_to(self.instance_id)

    async def reconcile(self) -> None:
        desired = self.desired()
        for mid in [m for m in self.copies if m not in desired]:
            copy = self.copies[mid]
            if copy.state == CopyState.FAILED:
                continue  # keep the failure visible until it expires
            await self._unload(mid)
        for mid in sorted(desired):
            if mid in self.copies:
                continue
            rec = self.state.model(mid)
            if rec is None:
                continue
            copy = LocalCopy(model_id=mid, state=CopyState.LOADING, since=self.clock())
            if (st := self.router.usage.get(mid)) is not None:  # a new copy meters only its own requests
                copy.counted = st.count
            self.copies[mid] = copy
            copy.task = asyncio.create_task(self._load(rec, copy), name=f"load-{mid}")

    # ------------------------------------------------------------ load / unload

    def _spec(self, rec: ModelRecord) -> ModelSpec:
        return ModelSpec(
            model_id=rec.model_id,
            model_type=rec.model_type,
            schema_path=rec.schema_path or None,
            options={k: v for k, v in rec.options.items() if k != "storage_params_json"},
        )

    def _adapter_for(self, rec: ModelRecord) -> Any:
        """Where the model loads: the runtime it names, else by type - a runtime process when the
        supervisor takes the type, else this process's adapter."""
        if rec.runtime:
            if self.runtimes is None or not self.runtimes.named(rec.runtime):
                configured = ", ".join(self.runtimes.names()) if self.runtimes is not None else ""
                raise UnsupportedModelType(
                    f"model '{rec.model_id}' names runtime '{rec.runtime}', which instance {self.instance_id} "
                    f"does not have (runtimes here: {configured or 'none'})"
                )
            return self.runtimes
        if self.runtimes is not None and self.runtimes.handles(rec.model_type):
            return self.runtimes
        return self.adapters.for_type(rec.model_type)

    async def _load(self, rec: ModelRecord, copy: LocalCopy) -> None:
        mid = rec.model_id
        start = self.monotonic()
        report: asyncio.TimerHandle | None = None
        try:
            async with self._slots:
                self.metrics.model(self.metrics.loading_queue_ms, mid).observe((self.monotonic() - start) * 1000)
                adapter: Any = self._adapter_for(rec)
                assignment = self.state.assignments.items.get(mid)
                planned = (assignment.planned_bytes if assignment is not None else 0) or rec.predicted_size_bytes
                copy.size_bytes = planned
                report = asyncio.get_running_loop().call_later(LOADING_REPORT_S, self._report_loading, copy)
                staged = await self._stage(rec)
                copy.artifact_key = staged.key
                local_path = Path(staged.local_path)
                # reserve what placement planned with (its estimate, else the registration's
                # prediction), so that the agent and the leader agree on what fits; the adapter's
                # own guess only fills in when neither is known. The measured size replaces it
                # after the load.
                copy.size_bytes = planned or adapter.predict_size(self._spec(rec), local_path)
                await self._wait_for_room(copy)
                if rec.runtime:
                    loaded = await adapter.load(self._spec(rec), local_path, runtime=rec.runtime)
                else:
                    loaded = await adapter.load(self._spec(rec), local_path)
                if not getattr(loaded, "forwards_raw", False):  # a runtime process batches on its own
                    try:
                        loaded = with_batching(loaded, self.batching, self.metrics)
                    except Exception:  # bad batching options: the load fails, the model is not kept
                        await loaded.unload()
                        raise
            if self.copies.get(mid) is not copy:  # unassigned while loading
                await loaded.unload()
                return
            copy.loaded = loaded
            if loaded.size_bytes < copy.size_bytes:
                self._freed.set()  # smaller than reserved: a waiting load may fit now
            copy.size_bytes = loaded.size_bytes
            copy.size_measured = True
            copy.load_time_s = self.monotonic() - start
            copy.state = CopyState.LOADED
            copy.since = self.clock()
            self.loaded.add(mid, loaded)
            self._fresh.add(mid)
            self.counters.loads += 1
            self.metrics.model(self.metrics.load_ms, mid).observe(copy.load_time_s * 1000)
            self.metrics.model(self.metrics.loaded_size, mid).observe(copy.size_bytes)
            log.info("loaded %s in %.3fs (%d bytes)", mid, copy.load_time_s, copy.size_bytes)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.counters.load_failures += 1
            self.metrics.load_failures.inc()
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            log.warning("load of %s failed: %s", mid, reason)
            if copy.artifact_key:
                with contextlib.suppress(Exception):
                    await self.puller.release(copy.artifact_key)
                copy.artifact_key = None
            if self.copies.get(mid) is not copy:
                return
            copy.state = CopyState.FAILED
            copy.error = reason
            copy.size_bytes = 0
            copy.since = self.clock()
            copy.failed_until = self.clock() + self.settings.failure_ttl_s
            self._freed.set()
        finally:
            if report is not None:
                report.cancel()
        await self._reported(copy)  # a LOADING record on its way lands before the outcome's
        await self._publish_copy_quiet(copy)
        self._instance_changed.set()

    def _report_loading(self, copy: LocalCopy) -> None:
        """The load of ``copy`` has run :data:`LOADING_REPORT_S`: write its LOADING record."""
        if self.copies.get(copy.model_id) is copy and copy.state == CopyState.LOADING:
            copy.report = asyncio.create_task(self._publish_copy_quiet(copy), name=f"loading-{copy.model_id}")

    @staticmethod
    async def _reported(copy: LocalCopy) -> None:
        """Wait for the copy's LOADING record write, if one was started (its own errors are logged)."""
        if copy.report is not None:
            await asyncio.wait([copy.report])

    async def _stage(self, rec: ModelRecord) -> StagedArtifact:
        """Stage the artifact, counting pulls (and their bytes) and cache hits; local paths are served in place."""
        staged = await self.puller.stage(storage_ref(rec), tenant=rec.tenant)
        if staged.from_cache:
            self.metrics.puller_hits.inc()
        elif not staged.in_place:
            self.metrics.puller_pulls.inc()
            self.metrics.puller_bytes.inc(staged.size_bytes)
        return staged

    async def _publish_copy_quiet(self, copy: LocalCopy) -> None:
        try:
            await self._publish_copy(copy)
        except StoreError as exc:
            log.warning("could not publish copy %s: %s", copy.model_id, exc)

    async def _wait_for_room(self, copy: LocalCopy) -> None:
        """Never start a load that does not fit: wait for unloads in flight to free bytes."""
        cap = self.settings.capacity_bytes
        while True:
            # a loading copy counts once it has room: copies that all wait must not wait on each other
            others = sum(
                c.size_bytes
                for c in self.copies.values()
                if c is not copy
                and (c.state in (CopyState.LOADED, CopyState.UNLOADING) or (c.state == CopyState.LOADING and c.reserved))
            )
            if copy.size_bytes > cap:
                raise RuntimeError(
                    f"model {copy.model_id} needs {copy.size_bytes} bytes, more than this instance's capacity {cap}"
                )
            if others + copy.size_bytes <= cap:
                copy.reserved = True
                return
            self._freed.clear()
            try:
                await asyncio.wait_for(self._freed.wait(), timeout=self.settings.default_deadline_s)
            except TimeoutError as exc:
                raise RuntimeError(
                    f"no room for {copy.model_id}: needs {copy.size_bytes} bytes, "
                    f"{cap - others} free of {cap}"
                ) from exc

    async def _unload(self, mid: str, *, publish: bool = True) -> None:
        copy = self.copies.get(mid)
        if copy is None:
            return
        if copy.task is not None and not copy.task.done():
            await cancel_and_wait(copy.task)
        await self._reported(copy)  # its LOADING record is not written after the delete below
        copy.state = CopyState.UNLOADING
        self.loaded.remove(mid)
        if copy.loaded is not None:
            if publish and mid in self.state.models.items:
                # unassigned while still registered: evicted (or moved), not unregistered
                usage = self.router.usage.get(mid)
                last = usage.last_used if usage and usage.last_used else copy.since
                self.metrics.model(self.metrics.age_at_eviction_ms, mid).observe(max(self.clock() - last, 0.0) * 1000)
            t0 = self.monotonic()
            try:
                await copy.loaded.unload()
            except Exception:
                self.metrics.unload_failures.inc()
                log.exception("unload of %s failed", mid)
            self.metrics.model(self.metrics.unload_ms, mid).observe((self.monotonic() - t0) * 1000)
            self.counters.unloads += 1
        if copy.artifact_key:
            with contextlib.suppress(Exception):
                await self.puller.release(copy.artifact_key)
        self.copies.pop(mid, None)
        self.router.forget_usage(mid)
        self._freed.set()
        if publish:
            with contextlib.suppress(StoreError):
                await self.store.delete(self.keys.copy(mid, self.instance_id))
            self._instance_changed.set()

    def copies_lost(self, model_ids: list[str], reason: str) -> None:
        """A runtime process died or was recycled: its copies are gone now (not after a lease expiry).

        Their records are deleted and reconciliation loads them again (the supervisor refuses a
        model that crash-loops, and that load then fails with the reason like any other).
        """
        for mid in model_ids:
            copy = self.copies.get(mid)
            if copy is None or copy.state != CopyState.LOADED:
                continue
            log.warning("copy of %s lost with its runtime: %s", mid, reason)
            self.loaded.remove(mid)
            self.copies.pop(mid, None)
            if copy.artifact_key:
                self._tasks.append(asyncio.create_task(self.puller.release(copy.artifact_key)))
            self._tasks.append(asyncio.create_task(self._delete_copy_record(mid)))
        self._freed.set()
        self._dirty.set()
