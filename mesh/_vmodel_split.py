"""Traffic split management on vModels (a modelmux extension beside ``mmesh.ModelMesh/setVModel``).

REST only (``/api/v1/vmodels/{name}/split``; the gRPC ``mmesh.ModelMesh`` service is ModelMesh's
and keeps its messages): set weighted targets and a shadow, read them, ``promote`` the candidate
to 100% and ``rollback`` to the stable target, one call each.

By convention the first target of a split is the stable model and the last the candidate (the
order :func:`~mesh._traffic_split.canary` writes). A split vModel's ``active`` and ``target`` are
its primary (largest weight) target, so status, dashboards and metadata keep working; promotion
and rollback leave a plain vModel on one model. ``setVModel`` on a split vModel replaces the split.
Every model of a split is asked to load when it is set, so the first requests to a canary do not
wait for a load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request

from ._access import require_model, require_vmodel
from ._auth import Action, Principal
from ._errors import InvalidRequest, ModelNotFound, PreconditionFailed, Unavailable, VModelNotFound
from ._management import Management
from ._store import Compare, Put, StoreError
from ._store_schema import VModelRecord, decode, encode
from ._traffic_split import TrafficSplit
from ._validation import validate_id


def split_json(vm: VModelRecord | None) -> dict[str, Any]:
    if vm is None:
        return {"split": None}
    return {"vmodel": vm.name, "activeModelId": vm.active, "split": vm.split}


async def _update(m: Management, name: str, owner: str, change: Any) -> VModelRecord:
    """CAS loop on the vModel record: ``change(current or None) -> new record``."""
    key = m.keys.vmodel(name)
    try:
        for _ in range(10):
            kv = await m.store.get(key)
            cur = decode(VModelRecord, kv.value) if kv else None
            if cur is not None and owner and cur.owner and cur.owner != owner:
                raise PreconditionFailed(f"vmodel '{name}' belongs to owner '{cur.owner}', not '{owner}'")
            new: VModelRecord = change(cur)
            ok, _ = await m.store.txn([Compare(key, kv.mod_revision if kv else 0)], [Put(key, encode(new))])
            if ok:
                break
        else:
            raise Unavailable(f"vmodel '{name}' kept changing concurrently; retry")
    except StoreError as exc:
        raise Unavailable(f"store unavailable: {exc}") from exc
    await m.state.wait_for(lambda: m.state.vmodels.items.get(name) == new, 5.0)
    return new


async def set_split(m: Management, name: str, split: TrafficSplit, *, owner: str = "", tenant: str = "") -> VModelRecord:
    """Point ``name`` at weighted targets (and a shadow); creates the vModel (of ``tenant``) when it
    does not exist."""
    validate_id("vmodel id", name)
    for mid in split.models:
        validate_id("target model id", mid)
        if mid not in m.state.models.items and await m.store.get(m.keys.model(mid)) is None:
            raise ModelNotFound(f"model '{mid}' of the split is not registered")
    primary = split.primary

    def change(cur: VModelRecord | None) -> VModelRecord:
        if cur is None:
            return VModelRecord(
                name=name, active=primary, target=primary, owner=owner, updated_at=m.clock(), split=split.to_json(), tenant=tenant
            )
        return replace(cur, active=primary, target=primary, failed=False, failure="", updated_at=m.clock(), split=split.to_json())

    new = await _update(m, name, owner, change)
    for mid in split.models:  # warm every target and the shadow (no-op for loaded ones)
        if not m.state.holders(mid):
            await m.ensure_loaded(mid)
    return new


async def _to_one(m: Management, name: str, owner: str, which: str, model: str) -> VModelRecord:
    def change(cur: VModelRecord | None) -> VModelRecord:
        if cur is None:
            raise VModelNotFound(f"vmodel '{name}' does not exist")
        if not cur.split:
            raise PreconditionFailed(f"vmodel '{name}' has no traffic split to {which}")
        split = TrafficSplit.from_json(cur.split)
        targets = [t for t, _ in split.targets]
        if model and model not in targets:
            raise InvalidRequest(f"'{model}' is not a target of vmodel '{name}' (targets: {', '.join(targets)})")
        chosen = model or (targets[-1] if which == "promote" else targets[0])
        return replace(cur, active=chosen, target=chosen, failed=False, failure="", updated_at=m.clock(), split=None)

    return await _update(m, name, owner, change)


async def promote(m: Management, name: str, *, model: str = "", owner: str = "") -> VModelRecord:
    """All traffic to the candidate (the last target, or ``model``); the split and shadow end."""
    return await _to_one(m, name, owner, "promote", model)


async def rollback(m: Management, name: str, *, owner: str = "") -> VModelRecord:
    """All traffic back to the stable target (the first); the split and shadow end."""
    return await _to_one(m, name, owner, "rollback", "")


def install_split_routes(app: FastAPI, management: Management, read_json: Any, who: Callable[[Request], Principal]) -> None:
    """``GET|PUT /api/v1/vmodels/{name}/split``, ``POST .../split/promote[?model=]``, ``POST .../split/rollback``.

    PUT body: ``{"targets": [{"model_id", "weight"}...], "shadow": {"model_id", "percent"}, "owner"}``
    or ``{"canary": {"stable", "candidate", "percent"}}`` (KServe's canaryTrafficPercent).

    Scoped like every management call (:mod:`mesh._access`): another tenant's vModel does not
    exist for the caller, changing one needs the manage role, and every target and the shadow must
    be models the caller sees (else a vModel would route it to another tenant's model).
    """

    def guard(principal: Principal, name: str, action: Action, split: TrafficSplit | None = None) -> str:
        """The tenant a vModel (new or existing) belongs to, after the caller's rights are checked."""
        vm = management.state.vmodels.items.get(name)
        if vm is not None or action is Action.READ:
            require_vmodel(principal, name, vm.tenant if vm is not None else None, action)
        else:
            principal.require(action, f"vmodel '{name}'")
        for mid in split.models if split is not None else ():
            rec = management.state.models.items.get(mid)
            require_model(principal, mid, rec.tenant if rec is not None else None, Action.INFER)
        if vm is not None:
            return vm.tenant
        return principal.tenant or ""

    @app.get("/api/v1/vmodels/{name}/split")
    async def get_split(name: str, request: Request) -> dict[str, Any]:
        guard(who(request), name, Action.READ)
        return split_json(management.state.vmodels.items.get(name))

    @app.put("/api/v1/vmodels/{name}/split")
    async def put_split(name: str, request: Request) -> dict[str, Any]:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise InvalidRequest("body must be a JSON object")
        owner = body.get("owner") or ""
        if not isinstance(owner, str):
            raise InvalidRequest("'owner' must be a string")
        if "canary" in body:
            from ._traffic_split import canary

            c = body["canary"]
            if not isinstance(c, dict) or not all(isinstance(c.get(k), str) for k in ("stable", "candidate")):
                raise InvalidRequest("'canary' must be {stable, candidate, percent}")
            pct = c.get("percent")
            if not isinstance(pct, int) or isinstance(pct, bool):
                raise InvalidRequest("canary 'percent' must be a whole number")
            split = canary(c["stable"], c["candidate"], pct)
        else:
            split = TrafficSplit.from_json(body)
        tenant = guard(who(request), name, Action.MANAGE, split)
        return split_json(await set_split(management, name, split, owner=owner, tenant=tenant))

    @app.post("/api/v1/vmodels/{name}/split/promote")
    async def promote_route(name: str, request: Request, model: str = "", owner: str = "") -> dict[str, Any]:
        guard(who(request), name, Action.MANAGE)
        return split_json(await promote(management, name, model=model, owner=owner))

    @app.post("/api/v1/vmodels/{name}/split/rollback")
    async def rollback_route(name: str, request: Request, owner: str = "") -> dict[str, Any]:
        guard(who(request), name, Action.MANAGE)
        return split_json(await rollback(management, name, owner=owner))
