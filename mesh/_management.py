"""Management API (ModelMesh semantics) over the store, shared by the gRPC and REST edges.

Registrations are written to the store (create-only / CAS); reads come from the
instance's mirrors. Every call takes the caller's principal (default: LOCAL_ADMIN, for embedded
callers) and is scoped to its tenant by :mod:`mesh._access`: another tenant's model, vModel or
tenant answers exactly what a missing one answers. Calls that need the store fail fast with UNAVAILABLE when it
is unreachable (the store client bounds every operation).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from puller import Puller

from ._access import (
    require_model,
    require_tenant,
    scope_registration,
    visible,
)
from ._auth import LOCAL_ADMIN, Action, Principal
from ._caps import RegistrationCaps, check_key, check_record, check_tenant_count
from ._cluster_mirror import ClusterMirror
from ._errors import (
    AlreadyExists,
    InvalidRequest,
    ModelNotFound,
    PreconditionFailed,
    TenantNotFound,
    Unavailable,
    VModelNotFound,
)
from ._load_request import request_load
from ._model_status import (
    CopyStatus,
    ModelState,
    ModelStatus,
    VModelState,
    VModelStatus,
    model_state,
    model_status,
    vmodel_status,
)
from ._paging import Page, PageRequest, page_of
from ._store import Compare, Delete, Put, Store, StoreError, StoreResourceExhausted, StoreRoom
from ._store_schema import Keys, ModelRecord, TenantRecord, VModelRecord, decode, encode
from ._validation import MAX_BYTES, MAX_COPIES, parse_bytes, parse_rate, valid_id, validate_id

__all__ = [
    "CopyStatus",
    "Management",
    "ModelInfoSpec",
    "ModelStatus",
    "VModelStatus",
    "auto_delete_ops",
    "model_record_from_info",
    "parse_bytes",
    "valid_id",
    "validate_id",
]


@dataclass(frozen=True)
class ModelInfoSpec:
    """ModelMesh's ModelInfo (type, path, key) plus modelmux's optional extras.

    ``key`` is either a storage-config key, or a JSON object with any of:
    ``storage_key``, ``storage_params`` (object), ``schema_path``, ``tenant``,
    ``min_copies``, ``max_copies``, ``pinned``, ``size_bytes`` (predicted size).
    """

    type: str
    path: str = ""
    key: str = ""


def model_record_from_info(model_id: str, info: ModelInfoSpec, *, last_used_ms: int = 0, clock: Callable[[], float] = time.time) -> ModelRecord:
    validate_id("model id", model_id)
    if not info.type:
        raise InvalidRequest(f"model '{model_id}': modelInfo.type must be set")
    extras: dict[str, Any] = {}
    storage_key = info.key
    if info.key.strip().startswith("{"):
        try:
            extras = json.loads(info.key)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InvalidRequest(f"model '{model_id}': modelInfo.key is not valid JSON: {exc}") from exc
        if not isinstance(extras, dict):
            raise InvalidRequest(f"model '{model_id}': modelInfo.key JSON must be an object")
        storage_key = str(extras.get("storage_key", ""))
    if not info.path and not storage_key:
        raise InvalidRequest(f"model '{model_id}': modelInfo.path (or a storage key) must be set")
    options: dict[str, str] = {}
    if extras.get("storage_params"):
        if not isinstance(extras["storage_params"], dict):
            raise InvalidRequest(f"model '{model_id}': storage_params must be an object")
        options["storage_params_json"] = json.dumps(extras["storage_params"], sort_keys=True)
    extra_options = extras.get("options") or {}
    if not isinstance(extra_options, dict):
        raise InvalidRequest(f"model '{model_id}': options must be an object")
    for k, v in extra_options.items():
        options[str(k)] = str(v)
    try:
        min_copies = int(extras.get("min_copies", 0))
        max_copies = int(extras.get("max_copies", 0))
        size = int(extras.get("size_bytes", 0))
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: Infinity
        raise InvalidRequest(f"model '{model_id}': min_copies/max_copies/size_bytes must be integers") from exc
    if min_copies < 0 or max_copies < 0 or (max_copies and min_copies > max_copies):
        raise InvalidRequest(f"model '{model_id}': need 0 <= min_copies <= max_copies (0 = unlimited)")
    if max(min_copies, max_copies) > MAX_COPIES or size > MAX_BYTES:
        raise InvalidRequest(f"model '{model_id}': copies above {MAX_COPIES} or size_bytes above {MAX_BYTES}")
    runtime = extras.get("runtime", "")
    if not isinstance(runtime, str) or (runtime and not valid_id(runtime)):
        raise InvalidRequest(f"model '{model_id}': runtime must be a runtime's name")
    now = clock()
    return ModelRecord(
        model_id=model_id,
        model_type=info.type.lower(),
        path=info.path,
        storage_key=storage_key,
        schema_path=str(extras.get("schema_path", "")),
        tenant=str(extras.get("tenant", "")),
        min_copies=min_copies,
        max_copies=max_copies,
        pinned=bool(extras.get("pinned", False)),
        predicted_size_bytes=max(size, 0),
        registered_at=now,
        last_used=(last_used_ms / 1000.0) if last_used_ms else now,
        options=options,
        runtime=runtime,
    )


def is_local_path(rec: ModelRecord) -> bool:
    """Whether a record names a local artifact (no storage key; a bare, file:// or pvc:// path)."""
    path = rec.path
    return bool(path) and not rec.storage_key and ("://" not in path or path.startswith(("file://", "pvc://")))


def _same_spec(a: ModelRecord, b: ModelRecord) -> bool:
    strip = {"registered_at": 0.0, "last_used": 0.0, "auto_delete": False}
    return replace(a, **strip) == replace(b, **strip)  # type: ignore[arg-type]


def auto_delete_ops(
    keys: Keys, candidates: Iterable[str], models: Mapping[str, ModelRecord], other_vmodels: Iterable[VModelRecord]
) -> list[Delete]:
    """The deletes that remove each candidate model registered with ``auto_delete`` once no other
    vModel (``other_vmodels``) refers to it (the one rule, used by vModel deletion and promotion)."""
    still = {m for v in other_vmodels for m in v.referenced()}
    ops: list[Delete] = []
    for mid in dict.fromkeys(candidates):
        rec = models.get(mid)
        if rec is not None and rec.auto_delete and mid not in still:
            ops += [Delete(keys.model(mid)), Delete(keys.assignment(mid))]
    return ops


class Management:
    """The management calls. ``store`` is where registrations are written; ``state`` the mirror
    they are read back from. ``puller`` (optional; the
    controller has none) validates a local artifact path against its roots at registration —
    lexically, before any file-system access — and measures it on its executor as the predicted
    size; without it a local path is not looked at."""

    def __init__(
        self,
        state: ClusterMirror,
        instance_id: str,
        *,
        store: Store,
        clock: Callable[[], float] = time.time,
        puller: Puller | None = None,
    ) -> None:
        self.puller = puller
        self.caps = RegistrationCaps()
        self.state = state
        self.store = store
        # writes that grow the store are refused past its high-water mark; deletes never are
        self.room = StoreRoom(store)
        self.keys = state.keys
        self.instance_id = instance_id
        self.clock = clock

    # ------------------------------------------------------------ status

    def _model_tenant(self, model_id: str) -> str | None:
        rec = self.state.models.items.get(model_id)
        return rec.tenant if rec is not None else None

    def _sees_model(self, principal: Principal, model_id: str) -> bool:
        tenant = self._model_tenant(model_id)
        return tenant is not None and principal.sees(tenant)

    def model_status(self, model_id: str, *, principal: Principal = LOCAL_ADMIN) -> ModelStatus:
        principal.require(Action.READ, f"model '{model_id}'")
        if not self._sees_model(principal, model_id):
            return ModelStatus(ModelState.NOT_FOUND)
        return model_status(self.state, model_id, self.clock())

    # ------------------------------------------------------------ models

    async def register_model(
        self, model_id: str, info: ModelInfoSpec, *, load_now: bool = False, sync: bool = False, last_used_ms: int = 0, timeout_s: float = 60.0, auto_delete: bool = False,
        principal: Principal = LOCAL_ADMIN,
    ) -> ModelStatus:
        check_key(model_id, info.key, self.caps)
        rec = model_record_from_info(model_id, info, last_used_ms=last_used_ms, clock=self.clock)
        rec = scope_registration(principal, replace(rec, auto_delete=auto_delete))
        check_record(model_id, encode(rec), self.caps)
        if model_id not in self.state.models.items:
            check_tenant_count(model_id, rec.tenant, (m.tenant for m in self.state.models.items.values()), self.caps)
        if self.puller is not None and rec.predicted_size_bytes <= 0 and is_local_path(rec):
            # refuses a path outside the allowed roots (PullerError, invalid_argument) before touching it
            from ._agent import storage_ref  # (the agent's module imports this one)

            size = await self.puller.local_size(storage_ref(rec), tenant=rec.tenant or None)
            rec = replace(rec, predicted_size_bytes=size)
        key = self.keys.model(model_id)
        if model_id not in self.state.models.items:  # re-registering the same spec adds nothing
            await self.room.check(f"registering model '{model_id}'")
        try:
            rev = await self.store.cas(key, encode(rec), 0)
            if rev is None:
                kv = await self.store.get(key)
                if kv is not None and not _same_spec(decode(ModelRecord, kv.value), rec):
                    raise AlreadyExists(f"model '{model_id}' is already registered with a different spec")
            else:
                await self.state.wait_for(lambda: model_id in self.state.models.items, 5.0)
        except StoreResourceExhausted:
            raise  # the store is full (etcd's NOSPACE): not an outage
        except StoreError as exc:
            raise Unavailable(f"store unavailable: {exc}") from exc
        if load_now:
            return await self.ensure_loaded(model_id, sync=sync, timeout_s=timeout_s, principal=principal)
        return self.model_status(model_id, principal=principal)

    async def unregister_model(self, model_id: str, *, principal: Principal = LOCAL_ADMIN) -> None:
        """Remove a registration. A model that is not registered is a no-op (ModelMesh), and so,
        for a tenant-bound caller, is another tenant's model (nothing is removed, nothing leaked)."""
        principal.require(Action.MANAGE, f"model '{model_id}'")
        try:
            if principal.tenant is not None:
                kv = await self.store.get(self.keys.model(model_id))
                if kv is None or not principal.sees(decode(ModelRecord, kv.value).tenant):
                    return
            vms, _ = await self.store.get_prefix(self.keys.vmodels)
            refs = [decode(VModelRecord, kv.value) for kv in vms]
            users = sorted(v.name for v in refs if model_id in v.referenced())
            if users:
                raise PreconditionFailed(f"model '{model_id}' is still referenced by vmodel(s) {', '.join(users)}")
            await self.store.txn(
                [],
                [Delete(self.keys.model(model_id)), Delete(self.keys.assignment(model_id)), Delete(self.keys.miss(model_id))],
            )
        except StoreError as exc:
            raise Unavailable(f"store unavailable: {exc}") from exc

    async def ensure_loaded(
        self, model_id: str, *, sync: bool = False, timeout_s: float = 60.0, principal: Principal = LOCAL_ADMIN
    ) -> ModelStatus:
        require_model(principal, model_id, self._model_tenant(model_id), Action.INFER)
        if not self.state.holders(model_id) and not self.state.assigned(model_id):
            try:
                await request_load(self.store, self.keys, model_id, requester=self.instance_id, at=self.clock())
            except StoreError as exc:
                raise Unavailable(f"store unavailable: {exc}") from exc
        if sync:
            await self.state.wait_for(
                lambda: model_state(self.state, model_id, self.clock())
                in (ModelState.LOADED, ModelState.LOADING_FAILED, ModelState.NOT_FOUND),
                timeout_s,
            )
        return self.model_status(model_id, principal=principal)

    # ------------------------------------------------------------ vModels

    def vmodel_status(self, name: str, owner: str = "", *, principal: Principal = LOCAL_ADMIN) -> VModelStatus:
        principal.require(Action.READ, f"vmodel '{name}'")
        vm = self.state.vmodels.items.get(name)
        if vm is not None and not principal.sees(vm.tenant):
            return vmodel_status(self.state, "", self.clock(), owner)  # what a missing vModel answers
        return vmodel_status(self.state, name, self.clock(), owner)

    async def set_vmodel(
        self,
        name: str,
        target: str,
        *,
        owner: str = "",
        update_only: bool = False,
        model_info: ModelInfoSpec | None = None,
        auto_delete_target: bool = False,
        load_now: bool = False,
        force: bool = False,
        sync: bool = False,
        expected_target: str = "",
        timeout_s: float = 60.0,
        principal: Principal = LOCAL_ADMIN,
    ) -> VModelStatus:
        validate_id("vmodel id", name)
        validate_id("target model id", target)
        principal.require(Action.MANAGE, f"vmodel '{name}'")
        key = self.keys.vmodel(name)
        try:
            if model_info is None:
                tkv = await self.store.get(self.keys.model(target))
                if tkv is None or not principal.sees(decode(ModelRecord, tkv.value).tenant):
                    raise ModelNotFound(f"target model '{target}' is not registered")
            for _ in range(10):
                kv = await self.store.get(key)
                cur = decode(VModelRecord, kv.value) if kv else None
                if cur is not None and not principal.sees(cur.tenant):
                    # vModel names are global: the name is taken (see docs/security.md, known limits)
                    raise AlreadyExists(f"vmodel '{name}' already exists")
                if model_info is not None:
                    await self.register_model(target, model_info, auto_delete=auto_delete_target, principal=principal)
                    model_info = None
                if cur is None:
                    if update_only:
                        raise VModelNotFound(f"vmodel '{name}' does not exist")
                    if expected_target and expected_target != target:
                        raise PreconditionFailed(f"vmodel '{name}' does not exist (expected target '{expected_target}')")
                    await self.room.check(f"creating vmodel '{name}'")
                    # a new vModel is active on its target at once (nothing to protect yet)
                    new = VModelRecord(
                        name=name, active=target, target=target, owner=owner, updated_at=self.clock(),
                        tenant=principal.tenant or self._model_tenant(target) or "",
                    )
                    rev = 0
                else:
                    if owner and cur.owner and cur.owner != owner:
                        raise AlreadyExists(f"vmodel '{name}' belongs to owner '{cur.owner}'")
                    if expected_target and cur.target != expected_target:
                        raise PreconditionFailed(
                            f"vmodel '{name}' targets '{cur.target}', not the expected '{expected_target}'"
                        )
                    if cur.target == target and not force and not cur.split:
                        new = cur
                    else:
                        active = target if (force or cur.active == target) else cur.active
                        # setVModel keeps its meaning: one target (a traffic split, if any, is replaced)
                        new = replace(
                            cur, target=target, active=active, failed=False, failure="", updated_at=self.clock(), split=None
                        )
                    rev = kv.mod_revision if kv else 0
                if new is cur:
                    break
                ok, _ = await self.store.txn([Compare(key, rev)], [Put(key, encode(new))])
                if ok:
                    break
            else:
                raise Unavailable(f"vmodel '{name}' kept changing concurrently; retry")
            await self.state.wait_for(lambda: self.state.vmodels.items.get(name) == new, 5.0)
            if load_now or new.active != new.target or not self.state.holders(new.target):
                if load_now or new.active != new.target:
                    await self.ensure_loaded(target, principal=principal)
            if sync:
                await self.state.wait_for(
                    lambda: self.vmodel_status(name, principal=principal).status in (VModelState.DEFINED, VModelState.TRANSITION_FAILED)
                    and (
                        not load_now
                        or model_state(self.state, target, self.clock()) in (ModelState.LOADED, ModelState.LOADING_FAILED)
                    ),
                    timeout_s,
                )
        except StoreResourceExhausted:
            raise
        except StoreError as exc:
            raise Unavailable(f"store unavailable: {exc}") from exc
        return self.vmodel_status(name, principal=principal)

    async def delete_vmodel(self, name: str, owner: str = "", *, principal: Principal = LOCAL_ADMIN) -> None:
        principal.require(Action.MANAGE, f"vmodel '{name}'")
        key = self.keys.vmodel(name)
        try:
            kv = await self.store.get(key)
            if kv is None:
                return
            vm = decode(VModelRecord, kv.value)
            if not principal.sees(vm.tenant):
                return  # another tenant's: as for a missing vModel, nothing to delete
            if owner and vm.owner != owner:
                raise PreconditionFailed(f"vmodel '{name}' belongs to owner '{vm.owner}', not '{owner}'")
            others, _ = await self.store.get_prefix(self.keys.vmodels)
            models: dict[str, ModelRecord] = {}
            for mid in {vm.active, vm.target}:
                mkv = await self.store.get(self.keys.model(mid))
                if mkv is not None:
                    models[mid] = decode(ModelRecord, mkv.value)
            other_vms = [decode(VModelRecord, o.value) for o in others if o.key != key]
            ops: list[Put | Delete] = [Delete(key), *auto_delete_ops(self.keys, (vm.active, vm.target), models, other_vms)]
            ok, _ = await self.store.txn([Compare(key, kv.mod_revision)], ops)
            if not ok:
                raise Unavailable(f"vmodel '{name}' changed concurrently; retry")
        except StoreError as exc:
            raise Unavailable(f"store unavailable: {exc}") from exc

    # ------------------------------------------------------------ views (visibility)

    def list_models(
        self, *, principal: Principal = LOCAL_ADMIN, limit: int | str | None = None, page_token: str = ""
    ) -> Page[dict[str, Any]]:
        """A page of the caller's models in model-id order (:mod:`mesh._paging`: scoped, then cut)."""
        principal.require(Action.READ, "models")
        req = PageRequest.parse("models", limit, page_token)
        items = self.state.models.items
        page = page_of((mid for mid, _ in visible(principal, items.items(), lambda kv: kv[1].tenant)), req)
        now = self.clock()
        out = []
        for mid in page.items:
            st = model_status(self.state, mid, now)
            out.append(
                {
                    "model_id": mid,
                    "type": items[mid].model_type,
                    "status": st.status,
                    "copies": {c.location: c.status for c in st.copies},
                    "size_bytes": max((c.size_bytes for c in self.state.copies_of(mid).values()), default=0),
                    "errors": list(st.errors),
                }
            )
        return Page(out, page.next_page_token, page.total)

    def list_instances(
        self, *, principal: Principal = LOCAL_ADMIN, limit: int | str | None = None, page_token: str = ""
    ) -> Page[dict[str, Any]]:
        """A page of the instances in instance-id order (cluster-wide: capacity is shared by every tenant)."""
        principal.require(Action.READ, "instances")
        req = PageRequest.parse("instances", limit, page_token)
        items = self.state.instances.items
        page = page_of(items, req)
        rows = []
        for iid in page.items:
            r = items[iid]
            rows.append(
                {
                    "instance_id": iid,
                    "address": r.address,
                    "capacity_bytes": r.capacity_bytes,
                    "used_bytes": r.used_bytes,
                    "models": r.model_count,
                    "loading": r.loading,
                    "rpm": r.rpm,
                    "shutting_down": r.shutting_down,
                    "zone": r.zone,
                }
            )
        return Page(rows, page.next_page_token, page.total)

    # ------------------------------------------------------------ tenants

    def tenant_usage(self, only: str | None = None) -> dict[str, dict[str, int]]:
        """Per tenant (or only tenant ``only``): bytes its assigned copies hold (measured size,
        else predicted) and model count."""
        usage: dict[str, dict[str, int]] = {}
        for mid, rec in self.state.models.items.items():
            if only is not None and rec.tenant != only:
                continue
            u = usage.setdefault(rec.tenant, {"used_bytes": 0, "models": 0, "copies": 0})
            u["models"] += 1
            assigned = self.state.assigned(mid)
            if not assigned:
                continue
            size = self.state.measured_size(mid) or rec.predicted_size_bytes
            u["used_bytes"] += size * len(assigned)
            u["copies"] += len(assigned)
        return usage

    def _tenant_json(self, name: str, rec: TenantRecord | None, usage: dict[str, int] | None) -> dict[str, Any]:
        u = usage or {"used_bytes": 0, "models": 0, "copies": 0}
        return {
            "tenant": name,
            "max_bytes": rec.max_bytes if rec is not None else 0,
            "max_rps": rec.max_rps if rec is not None else 0.0,
            "source": rec.source if rec is not None else "",
            "updated_at": rec.updated_at if rec is not None else 0.0,
            **u,
        }

    def list_tenants(
        self, *, principal: Principal = LOCAL_ADMIN, limit: int | str | None = None, page_token: str = ""
    ) -> Page[dict[str, Any]]:
        """A page of the tenants that have a quota or a registered model (``max_bytes`` 0: no
        quota), in name order; a tenant-bound caller sees its own only."""
        principal.require(Action.READ, "tenants")
        req = PageRequest.parse("tenants", limit, page_token)
        usage = self.tenant_usage(principal.tenant)
        quotas = self.state.tenants.items
        page = page_of(visible(principal, set(usage) | set(quotas), lambda n: n), req)
        return Page([self._tenant_json(n, quotas.get(n), usage.get(n)) for n in page.items], page.next_page_token, page.total)

    def tenant(self, name: str, *, principal: Principal = LOCAL_ADMIN) -> dict[str, Any]:
        require_tenant(principal, name, Action.READ)
        rec = self.state.tenants.items.get(name)
        usage = self.tenant_usage(name).get(name)
        if rec is None and usage is None:
            raise TenantNotFound(f"tenant '{name}' has no quota and no models")
        return self._tenant_json(name, rec, usage)

    async def set_tenant_quota(
        self,
        name: str,
        max_bytes: int | None = None,
        *,
        max_rps: float | None = None,
        source: str = "api",
        principal: Principal = LOCAL_ADMIN,
    ) -> dict[str, Any]:
        """Create or change a tenant's quota (admin only): ``max_bytes`` (placement enforces it from
        its next decision) and ``max_rps`` (each instance's admission, from the next request);
        ``None`` keeps the current value (0 when there is none), 0 removes that limit."""
        require_tenant(principal, name, Action.ADMIN)
        validate_id("tenant", name)
        current = self.state.tenants.items.get(name)
        if max_bytes is None:
            max_bytes = current.max_bytes if current is not None else 0
        if max_rps is None:
            max_rps = current.max_rps if current is not None else 0.0
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or not 0 <= max_bytes <= MAX_BYTES:
            raise InvalidRequest(
                f"quota of tenant '{name}' must be a number of bytes from 0 (none) to {MAX_BYTES}, got {max_bytes!r}"
            )
        max_rps = parse_rate(max_rps, f"rate of tenant '{name}'")
        if not max_bytes and not max_rps:
            raise InvalidRequest(f"a quota of tenant '{name}' needs maxBytes or maxRps; to remove it, delete it")
        rec = TenantRecord(name=name, max_bytes=max_bytes, source=source, updated_at=self.clock(), max_rps=max_rps)
        if name not in self.state.tenants.items:
            await self.room.check(f"setting a quota for tenant '{name}'")
        try:
            await self.store.put(self.keys.tenant(name), encode(rec))
            await self._forget_placement_failures(name)
        except StoreResourceExhausted:
            raise
        except StoreError as exc:
            raise Unavailable(f"store unavailable: {exc}") from exc
        return self._tenant_json(name, rec, self.tenant_usage(name).get(name))

    async def delete_tenant_quota(self, name: str, *, source: str | None = None, principal: Principal = LOCAL_ADMIN) -> bool:
        """Remove a tenant's quota (its models stay registered); False when it had none.

        With ``source``, only a quota set by that source is removed (the Kubernetes
        controller removes what its TenantQuota object wrote, never a quota set since by
        someone else); the check and the delete are one transaction.
        """
        require_tenant(principal, name, Action.ADMIN)
        validate_id("tenant", name)
        key = self.keys.tenant(name)
        try:
            if source is None:
                gone = await self.store.delete(key)
            else:
                kv = await self.store.get(key)
                if kv is None or decode(TenantRecord, kv.value).source != source:
                    return False
                gone = await self.store.delete_if(key, kv.mod_revision)
            if gone:
                await self._forget_placement_failures(name)
            return gone
        except StoreError as exc:
            raise Unavailable(f"store unavailable: {exc}") from exc

    async def _forget_placement_failures(self, tenant: str) -> None:
        """A changed quota may make a model placeable that was not: drop the remembered
        placement errors of the tenant's models (miss records with an error, each guarded by
        its revision), so the next request asks placement again at once instead of failing
        until the error's TTL ends."""
        models = self.state.models.items
        for mid, miss in list(self.state.misses.items.items()):
            rec = models.get(mid)
            if miss.error and rec is not None and rec.tenant == tenant:
                await self.store.delete_if(self.keys.miss(mid), self.state.misses.revision_of(mid))
