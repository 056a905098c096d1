"""The reconcile loop: Predictor / InferenceService / TenantQuota objects <-> mesh registrations,
status written back. The pure parts live beside it (``_mapping``, ``_status``, ``_events``,
``_tenants``); leader election, health probes and the process entry point in ``_runner``.

Two sides:

- Kubernetes: one :class:`Informer` per kind (list + watch); every change queues the
  object's key in a :class:`WorkQueue`; ``workers`` tasks reconcile keys.
- Mesh: a :class:`ClusterMirror` over the store and an in-process :class:`Management` (the
  code the instances run). Store watches, not polling, drive status: a change to a vModel,
  model, copy or miss record queues the object that owns it. The owning object is found
  from the record alone (``_kinds``): a vModel's owner is ``<source>/<namespace>`` and a
  model id is ``<vmodel>__<source>-<hash>``.

Reconciling one key (idempotent; any error re-queues it with backoff):

1. Object gone: delete its vModel if we own it (the finalizer normally did already).
2. Being deleted (or no longer ours): delete the vModel (its auto-delete target models go
   with it), then remove ``modelmux.io/finalizer``.
3. Otherwise add the finalizer, register the target model and point the vModel at it when
   the spec's model id differs from the vModel's target, then compute the status and patch
   the status subresource when it changed, emitting Events for load failures and
   transitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from mesh import (
    AlreadyExists,
    ClusterMirror,
    InvalidRequest,
    Management,
    MeshError,
    MirrorChange,
    ModelNotFound,
    PreconditionFailed,
    TrafficSplit,
    canary,
    set_traffic_split,
)

from ._events import EventSpec, event_object, events_between
from ._kinds import (
    CLUSTER_SERVING_RUNTIME,
    CONFIG_MAP,
    FINALIZER,
    INFERENCE_SERVICE,
    INVALID_PREDICTOR_SPEC,
    MODEL_KINDS,
    PREDICTOR,
    SERVING_RUNTIME,
    STORAGE_KEY_NOT_ALLOWED,
    Kind,
    ObjectRef,
    owner_for,
    ref_for_vmodel,
    vmodel_name,
    vmodel_of_model,
)
from ._kube_client import Informer, KubeApiError, KubeClient, ObjectEvent, merge_patch
from ._mapping import (
    ReconcileContext,
    Registration,
    Rejection,
    canary_targets,
    desired_state,
)
from ._runtimes import Runtime, cluster_runtimes, runtimes_by_namespace
from ._settings import ControllerSettings
from ._status import CRStatus, compute_status, status_from_json, status_json
from ._storage_access import storage_access_from_configmap
from ._tenants import (
    TENANT_FINALIZER,
    TENANT_QUOTA,
    QuotaSpec,
    owner_of,
    quota_spec,
    quota_status,
    source_of,
)
from ._work_queue import WorkQueue

log = logging.getLogger(__name__)

_KINDS = {**MODEL_KINDS, TENANT_QUOTA.kind: TENANT_QUOTA}


def _rv_at_least(rv: str, than: str) -> bool:
    """Whether resourceVersion ``rv`` is not older than ``than`` (numeric ones only; opaque: no)."""
    return rv.isdigit() and than.isdigit() and int(rv) >= int(than)


class Controller:
    def __init__(
        self,
        settings: ControllerSettings,
        kube: KubeClient,
        state: ClusterMirror,
        management: Management,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.state = state
        self.management = management
        self.clock = clock
        self.queue: WorkQueue[ObjectRef] = WorkQueue(
            retry_initial_s=settings.retry_initial_s, retry_max_s=settings.retry_max_s
        )
        self.informers: dict[str, Informer] = {}
        kinds: list[Kind] = []
        if settings.watch_predictors:
            kinds.append(PREDICTOR)
        if settings.watch_inference_services:
            kinds.append(INFERENCE_SERVICE)
        for kind in kinds:
            self.informers[kind.kind] = Informer(
                kube, kind, settings.namespace, self._on_object, retry_max_s=settings.retry_max_s
            )
        if settings.watch_tenant_quotas:
            self.informers[TENANT_QUOTA.kind] = Informer(
                kube, TENANT_QUOTA, settings.namespace, self._on_object, retry_max_s=settings.retry_max_s
            )
        self._quota_refresh: set[ObjectRef] = set()  # TenantQuota objects with a usage refresh pending
        # the cluster facts the mapping depends on: runtimes and the storage-access ConfigMap;
        # a change re-maps every object
        self.runtime_informer: Informer | None = None
        self.cluster_runtime_informer: Informer | None = None
        self.storage_access_informer: Informer | None = None
        if settings.watch_serving_runtimes:
            self.runtime_informer = Informer(
                kube, SERVING_RUNTIME, settings.namespace, self._on_context, retry_max_s=settings.retry_max_s
            )
        if settings.watch_cluster_serving_runtimes:
            self.cluster_runtime_informer = Informer(
                kube, CLUSTER_SERVING_RUNTIME, "", self._on_context, retry_max_s=settings.retry_max_s
            )
        if settings.storage_access_configmap:
            self.storage_access_informer = Informer(
                kube, CONFIG_MAP, self._storage_access_namespace(), self._on_context, retry_max_s=settings.retry_max_s,
                field_selector=f"metadata.name={settings.storage_access_configmap}",
            )
        elif not settings.namespace:
            log.warning(
                "watching every namespace without storage_access_configmap: "
                "a model of any namespace may name any storage key"
            )
        types = frozenset(t.strip().lower() for t in settings.model_types)
        self.ctx = ReconcileContext(
            builtin=Runtime(settings.builtin_runtime, types, types),
            naming=settings.vmodel_names,
            service_name=settings.service_name,
            service_namespace=settings.service_namespace,
            grpc_port=settings.grpc_port,
            rest_port=settings.rest_port,
        )
        self._written: dict[ObjectRef, tuple[str, dict[str, Any]]] = {}  # ref -> (rv after write, status)
        self._workers: list[asyncio.Task[None]] = []
        self._unsubs: list[Callable[[], None]] = []
        self.reconciles = 0
        self.status_writes = 0
        self.events_emitted = 0
        self.started = False
        self.health_port = 0  # set by run_controller when it serves /healthz and /readyz

    # ------------------------------------------------------------ lifecycle

    def _storage_access_namespace(self) -> str:
        s = self.settings
        return s.storage_access_namespace or s.lease_namespace or os.environ.get("POD_NAMESPACE") or "default"

    def _context_informers(self) -> list[Informer]:
        return [i for i in (self.runtime_informer, self.cluster_runtime_informer, self.storage_access_informer) if i is not None]

    def _all_informers(self) -> list[Informer]:
        return [*self.informers.values(), *self._context_informers()]

    async def start(self) -> None:
        """Start the informers, wait for their first lists, then reconcile everything."""
        for inf in self._all_informers():
            inf.start()
        await asyncio.gather(*(inf.synced.wait() for inf in self._all_informers()))
        self._rebuild_context()
        self._unsubs += [
            self.state.vmodels.subscribe(self._on_vmodels),
            self.state.models.subscribe(self._on_models),
            self.state.copies.subscribe(self._on_copies),
            self.state.misses.subscribe(self._on_models),
            self.state.tenants.subscribe(self._on_tenants),
        ]
        for inf in self.informers.values():
            for ref in inf.cache:
                self.queue.add(ref)
        self._collect_orphans()
        self._workers = [
            asyncio.create_task(self._worker(), name=f"controller-worker-{i}") for i in range(self.settings.workers)
        ]
        self.started = True

    async def stop(self) -> None:
        for unsub in self._unsubs:
            unsub()
        self._unsubs.clear()
        self.queue.close()
        for t in self._workers:
            t.cancel()
        for t in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._workers.clear()
        await asyncio.gather(*(inf.stop() for inf in self._all_informers()))
        self.started = False

    @property
    def ready(self) -> bool:
        return self.started and all(inf.synced.is_set() for inf in self._all_informers()) and self.state.connected

    # ------------------------------------------------------------ triggers

    def _on_object(self, ev: ObjectEvent) -> None:
        if ev.type == "DELETED":
            self._written.pop(ev.ref, None)
        self.queue.add(ev.ref)

    def _on_context(self, _ev: ObjectEvent) -> None:
        if not self.started:
            return
        self._rebuild_context()
        for inf in self.informers.values():
            for ref in inf.cache:
                self.queue.add(ref)

    def _rebuild_context(self) -> None:
        """Runtimes and storage access from the informers' caches into the mapping context."""
        rts = runtimes_by_namespace(self.runtime_informer.cache.values()) if self.runtime_informer else {}
        crts = cluster_runtimes(self.cluster_runtime_informer.cache.values()) if self.cluster_runtime_informer else {}
        access = None
        if self.storage_access_informer is not None:
            name = self.settings.storage_access_configmap
            cm = next((o for r, o in self.storage_access_informer.cache.items() if r.name == name), None)
            access = storage_access_from_configmap(cm)
        self.ctx = replace(self.ctx, runtimes=rts, cluster_runtimes=crts, storage_access=access)

    def _watched(self, ref: ObjectRef) -> bool:
        return ref.kind in self.informers and (not self.settings.namespace or ref.namespace == self.settings.namespace)

    def _enqueue_vmodel(self, name: str) -> None:
        vm = self.state.vmodels.items.get(name)
        if vm is None:
            return
        ref = ref_for_vmodel(name, vm.owner, self.settings.vmodel_names)
        if ref is not None and self._watched(ref):
            self.queue.add(ref)

    def _on_vmodels(self, changes: list[MirrorChange[Any]]) -> None:
        for ch in changes:
            rec = ch.new or ch.old
            ref = ref_for_vmodel(ch.key, rec.owner if rec is not None else "", self.settings.vmodel_names)
            if ref is not None and self._watched(ref):
                self.queue.add(ref)

    def _on_models(self, changes: list[MirrorChange[Any]]) -> None:
        self._enqueue_models(ch.key for ch in changes)
        self._refresh_quotas()

    def _on_copies(self, changes: list[MirrorChange[Any]]) -> None:
        self._enqueue_models(ch.key.rpartition("/")[0] for ch in changes)
        self._refresh_quotas()

    def _on_tenants(self, _changes: list[MirrorChange[Any]]) -> None:
        inf = self.informers.get(TENANT_QUOTA.kind)
        for ref in list(inf.cache) if inf is not None else ():
            self.queue.add(ref)

    def _refresh_quotas(self) -> None:
        """Usage changed: refresh each TenantQuota's status, at most once per interval."""
        inf = self.informers.get(TENANT_QUOTA.kind)
        if inf is None:
            return
        for ref in inf.cache:
            if ref not in self._quota_refresh:
                self._quota_refresh.add(ref)
                self.queue.add_after(ref, self.settings.quota_status_interval_s)

    def _enqueue_models(self, model_ids: Iterable[str]) -> None:
        for name in {vmodel_of_model(m) for m in model_ids}:
            if name:
                self._enqueue_vmodel(name)

    def _collect_orphans(self) -> None:
        """Queue vModels we own whose object no longer exists (deleted while we were down)."""
        for name, vm in self.state.vmodels.items.items():
            ref = ref_for_vmodel(name, vm.owner, self.settings.vmodel_names)
            if ref is None or not self._watched(ref):
                continue
            inf = self.informers[ref.kind]
            if not inf.missing and ref not in inf.cache:
                self.queue.add(ref)

    # ------------------------------------------------------------ workers

    async def _worker(self) -> None:
        while True:
            ref = await self.queue.get()
            try:
                await self.reconcile(ref)
                self.queue.forget(ref)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self.queue.retry(ref)
                level = logging.WARNING if isinstance(exc, KubeApiError | MeshError) else logging.ERROR
                log.log(level, "reconcile %s failed (retry in %.1fs): %s", ref, delay, exc, exc_info=level == logging.ERROR)
            finally:
                self.queue.done(ref)

    # ------------------------------------------------------------ reconcile

    async def reconcile(self, ref: ObjectRef) -> None:
        self.reconciles += 1
        if ref.kind == TENANT_QUOTA.kind:
            await self._reconcile_quota(ref)
            return
        inf = self.informers.get(ref.kind)
        obj = inf.cache.get(ref) if inf is not None else None
        vmodel = vmodel_name(ref, self.settings.vmodel_names)
        owner = owner_for(ref)
        if obj is None:
            await self._unregister(vmodel, owner)
            self._written.pop(ref, None)
            return
        meta = obj.get("metadata") or {}
        finalizers = list(meta.get("finalizers") or ())
        desired = desired_state(obj, self.ctx)
        if desired is None or meta.get("deletionTimestamp"):
            if FINALIZER in finalizers:
                await self._unregister(vmodel, owner)
                await self._set_finalizers(ref, obj, [f for f in finalizers if f != FINALIZER])
                log.info("%s: unregistered vmodel %s", ref, vmodel)
            return
        if FINALIZER not in finalizers:
            obj = await self._set_finalizers(ref, obj, [*finalizers, FINALIZER])
        conflict = ""
        if isinstance(desired, Rejection) and desired.reason == STORAGE_KEY_NOT_ALLOWED:
            # access to the key is refused (or was revoked): nothing of this object may stay
            # registered with it, else a reload would fetch with the key again
            await self._unregister(vmodel, owner)
        vm = self.management.vmodel_status(vmodel)
        if isinstance(desired, Registration):
            if vm.status != "NOT_FOUND" and vm.owner and vm.owner != owner:
                conflict = f"vmodel '{vmodel}' already exists with owner '{vm.owner}' (an object of the same name from another kind or namespace)"
            elif (rollout := self._canary(vmodel, desired)) is not None:
                try:
                    if rollout.to_json() != self._split_json(vmodel):  # else in place already
                        await self._apply_canary(vmodel, owner, desired, rollout)
                except (InvalidRequest, ModelNotFound, PreconditionFailed) as exc:
                    desired = Rejection(ref, vmodel, owner, INVALID_PREDICTOR_SPEC, exc.message, desired.model_id, desired.generation)
                vm = self.management.vmodel_status(vmodel)
            elif vm.status == "NOT_FOUND" or vm.target_model_id != desired.model_id or self._has_split(vmodel):
                try:
                    await self.management.set_vmodel(
                        vmodel,
                        desired.model_id,
                        owner=owner,
                        model_info=desired.info,
                        auto_delete_target=True,
                        load_now=self.settings.load_now,
                    )
                    log.info("%s: vmodel %s -> %s", ref, vmodel, desired.model_id)
                except AlreadyExists as exc:
                    conflict = exc.message
                except (InvalidRequest, ModelNotFound, PreconditionFailed) as exc:
                    desired = Rejection(ref, vmodel, owner, INVALID_PREDICTOR_SPEC, exc.message, desired.model_id, desired.generation)
                vm = self.management.vmodel_status(vmodel)
        await self._write_status(ref, obj, desired, vm, conflict)

    def _split_json(self, vmodel: str) -> dict[str, Any] | None:
        rec = self.management.state.vmodels.items.get(vmodel)
        return rec.split if rec is not None else None

    def _has_split(self, vmodel: str) -> bool:
        return bool(self._split_json(vmodel))

    def _canary(self, vmodel: str, desired: Registration) -> TrafficSplit | None:
        """The split ``canaryTrafficPercent`` asks for (None: no canary rollout)."""
        rec = self.management.state.vmodels.items.get(vmodel)
        if rec is None:
            return None
        targets = tuple(t.get("model_id", "") for t in (rec.split or {}).get("targets") or ())
        rollout = canary_targets(desired, rec.active, targets)
        if rollout is None:
            return None
        return canary(*rollout)

    async def _apply_canary(self, vmodel: str, owner: str, desired: Registration, split: TrafficSplit) -> None:
        await self.management.register_model(desired.model_id, desired.info, auto_delete=True)
        await set_traffic_split(self.management, vmodel, split, owner=owner)
        log.info("%s: vmodel %s split %s", desired.ref, vmodel, split.to_json())

    async def _reconcile_quota(self, ref: ObjectRef) -> None:
        """TenantQuota -> the tenant's quota in the store; status: the quota in force and the usage."""
        self._quota_refresh.discard(ref)
        inf = self.informers[TENANT_QUOTA.kind]
        obj = inf.cache.get(ref)
        if obj is None:
            await self._drop_quotas_from(ref)
            self._written.pop(ref, None)
            return
        meta = obj.get("metadata") or {}
        finalizers = list(meta.get("finalizers") or ())
        if meta.get("deletionTimestamp"):
            if TENANT_FINALIZER in finalizers:
                await self._drop_quotas_from(ref)
                await self._set_finalizers(ref, obj, [f for f in finalizers if f != TENANT_FINALIZER])
                log.info("%s: quota removed", ref)
            return
        if TENANT_FINALIZER not in finalizers:
            obj = await self._set_finalizers(ref, obj, [*finalizers, TENANT_FINALIZER])
        naming = self.settings.vmodel_names
        desired = quota_spec(obj, naming)
        conflict = ""
        keep = None
        if isinstance(desired, QuotaSpec):
            held = self.state.tenants.items.get(desired.tenant)
            owner = owner_of(desired.tenant, inf.cache.values(), held.source if held is not None else "", naming)
            owner_ref = ObjectRef.of(owner) if owner is not None else None
            if owner_ref is not None and owner_ref != ref:
                conflict = f"tenant {desired.tenant!r} already has its quota from {source_of(owner_ref)}"
            else:
                keep = desired.tenant
                rec = self.state.tenants.items.get(desired.tenant)
                if rec is None or (rec.max_bytes, rec.max_rps, rec.source) != (desired.max_bytes, desired.max_rps, source_of(ref)):
                    await self.management.set_tenant_quota(
                        desired.tenant, desired.max_bytes, max_rps=desired.max_rps, source=source_of(ref)
                    )
                    log.info("%s: tenant %s quota %d bytes, %g/s", ref, desired.tenant, desired.max_bytes, desired.max_rps)
        await self._drop_quotas_from(ref, keep=keep)
        current = obj.get("status") or {}
        status = quota_status(
            desired,
            self.management.tenant_usage(desired.tenant).get(desired.tenant),
            generation=int(meta.get("generation") or 1),
            previous=current,
            now=self.clock(),
            conflict=conflict,
        )
        if merge_patch(current, status) == {}:
            return
        try:
            out = await self.kube.patch_status(TENANT_QUOTA, ref.namespace, ref.name, status)
        except KubeApiError as exc:
            if exc.status == 404:
                return
            raise
        self.status_writes += 1
        self._cache_newer(ref, out)
        was: dict[str, Any] = next((c for c in current.get("conditions") or () if c.get("type") == "Ready"), {})
        now_cond = status["conditions"][0]
        if self.settings.events and (was.get("status"), was.get("reason")) != (now_cond["status"], now_cond["reason"]):
            etype = "Normal" if now_cond["status"] == "True" else "Warning"
            await self._emit(ref, obj, EventSpec(etype, now_cond["reason"], now_cond["message"]))

    async def _drop_quotas_from(self, ref: ObjectRef, keep: str | None = None) -> None:
        """Remove the quotas this object set (all, or all but tenant ``keep``)."""
        src = source_of(ref)
        for name, rec in list(self.state.tenants.items.items()):
            if rec.source == src and name != keep:
                # guarded: a quota set since by someone else (the API, another object) stays
                await self.management.delete_tenant_quota(name, source=src)

    async def _unregister(self, vmodel: str, owner: str) -> None:
        try:
            await self.management.delete_vmodel(vmodel, owner)
        except PreconditionFailed:
            pass  # another owner's vModel: not ours to delete

    async def _set_finalizers(self, ref: ObjectRef, obj: dict[str, Any], finalizers: list[str]) -> dict[str, Any]:
        kind = _KINDS[ref.kind]
        meta = obj.get("metadata") or {}
        body = {"metadata": {"finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}}
        try:
            out = await self.kube.patch(kind, ref.namespace, ref.name, body)
        except KubeApiError as exc:
            if exc.status == 404:
                return obj
            raise
        self._cache_newer(ref, out)
        return out

    def _cache_newer(self, ref: ObjectRef, obj: dict[str, Any]) -> None:
        inf = self.informers.get(ref.kind)
        if inf is None:
            return
        cur = inf.cache.get(ref)
        new_rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
        cur_rv = str(((cur or {}).get("metadata") or {}).get("resourceVersion", ""))
        if cur is not None and _rv_at_least(new_rv, cur_rv):
            obj.setdefault("kind", ref.kind)
            obj.setdefault("apiVersion", _KINDS[ref.kind].api_version)
            inf.cache[ref] = obj

    async def _write_status(
        self, ref: ObjectRef, obj: dict[str, Any], desired: Registration | Rejection, vm: Any, conflict: str
    ) -> None:
        current = obj.get("status") or {}
        rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
        written = self._written.get(ref)
        # the cache may not have caught up with our last write yet: compare with that then
        base = written[1] if written is not None and not _rv_at_least(rv, written[0]) else current
        prev = status_from_json(ref.kind, base)
        now = self.clock()
        st: CRStatus = compute_status(desired, vm, self.ctx, previous=prev, now=now, conflict=conflict)
        raw = status_json(ref.kind, st, base, now)
        patch = merge_patch(base, raw)
        if patch == {}:
            return
        kind = MODEL_KINDS[ref.kind]
        try:
            out = await self.kube.patch_status(kind, ref.namespace, ref.name, merge_patch(current, raw))
        except KubeApiError as exc:
            if exc.status == 404:
                return
            raise
        self.status_writes += 1
        self._written[ref] = (str((out.get("metadata") or {}).get("resourceVersion", "")), raw)
        self._cache_newer(ref, out)
        if self.settings.events:
            for ev in events_between(prev, st):
                await self._emit(ref, obj, ev)

    async def _emit(self, ref: ObjectRef, obj: dict[str, Any], spec: EventSpec) -> None:
        event = event_object(_KINDS[ref.kind], ref, obj, spec, now=self.clock(), instance=self.management.instance_id)
        try:
            await self.kube.create_event(ref.namespace, event)
            self.events_emitted += 1
        except KubeApiError as exc:
            log.warning("%s: could not emit event %s: %s", ref, spec.reason, exc)
