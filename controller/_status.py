"""The mesh's view of a vModel -> a Predictor's or InferenceService's ``.status`` (pure).

Status follows modelmesh-serving's Predictor status (available, activeModelState,
targetModelState, transitionStatus, lastFailureInfo, totalCopies, failedCopies, endpoints)
with ours added: loadedCopies, loadingCopies, holders, activeModelId, targetModelId,
observedGeneration. One deliberate difference: ``available`` is false while the model is
``Pending`` (not registered yet); modelmesh-serving reports true there. InferenceServices get
KServe's ModelMesh layout (``modelStatus``, ``components.predictor``, conditions).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from mesh import ModelStatus, VModelStatus

from ._kinds import INFERENCE_SERVICE, INVALID_PREDICTOR_SPEC, MODEL_LOAD_FAILED
from ._mapping import Desired, ReconcileContext, Registration, Rejection

PENDING, STANDBY, LOADING, LOADED, FAILED_TO_LOAD = "Pending", "Standby", "Loading", "Loaded", "FailedToLoad"
UP_TO_DATE, IN_PROGRESS, BLOCKED, INVALID_SPEC = "UpToDate", "InProgress", "BlockedByFailedLoad", "InvalidSpec"

_MODEL_STATE = {"NOT_LOADED": STANDBY, "LOADING": LOADING, "LOADED": LOADED, "LOADING_FAILED": FAILED_TO_LOAD}
_TRANSITION = {"DEFINED": UP_TO_DATE, "TRANSITIONING": IN_PROGRESS, "TRANSITION_FAILED": BLOCKED}


@dataclass(frozen=True)
class FailureInfo:
    reason: str
    message: str
    model_id: str = ""
    location: str = ""
    time: str = ""  # RFC 3339, "" when not applicable


@dataclass(frozen=True)
class CRStatus:
    available: bool = False
    active_model_state: str = PENDING
    target_model_state: str = ""
    transition_status: str = UP_TO_DATE
    last_failure: FailureInfo | None = None
    total_copies: int = 0
    failed_copies: int = 0
    loaded_copies: int = 0
    loading_copies: int = 0
    holders: tuple[str, ...] = ()
    grpc_endpoint: str = ""
    http_endpoint: str = ""
    active_model_id: str = ""
    target_model_id: str = ""
    observed_generation: int = 0
    runtime: str = ""  # the runtime that serves the spec ("" when none does)


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(int(t), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _decode_state(st: ModelStatus | None) -> str:
    if st is None:
        return PENDING
    return _MODEL_STATE.get(st.status, PENDING)


def _load_failure(st: ModelStatus | None, model_id: str, previous: FailureInfo | None, now: float) -> FailureInfo | None:
    if st is None or st.status == "LOADED" or not st.errors:
        return None
    info = FailureInfo(MODEL_LOAD_FAILED, st.errors[0], model_id)
    for c in st.copies:
        if c.status == "LOADING_FAILED":
            return replace(info, location=c.location, time=rfc3339(c.time_ms / 1000.0) if c.time_ms else "")
    # a failure that is not tied to a copy (the model could not be placed): keep the first time seen
    if previous is not None and replace(previous, time="") == info:
        return previous
    return replace(info, time=rfc3339(now))


def _count(st: ModelStatus | None, counts: list[int]) -> None:
    if st is None:
        return
    for c in st.copies:
        if c.status == "LOADING":
            counts[0] += 1
        elif c.status == "LOADED":
            counts[1] += 1
        elif c.status == "LOADING_FAILED":
            counts[2] += 1
        counts[3] += 1


def compute_status(
    desired: Desired,
    vm: VModelStatus | None,
    ctx: ReconcileContext,
    *,
    previous: CRStatus | None = None,
    now: float = 0.0,
    conflict: str = "",
) -> CRStatus:
    """The CR status for ``desired`` given the mesh's view of its vModel.

    ``vm`` is the vModel's status (None or NOT_FOUND: not registered yet); ``conflict`` is a
    registration error to report as ``InvalidSpec`` (e.g. the vModel belongs to another
    owner). ``previous`` keeps failure times stable so that an unchanged state gives an equal
    status (and no status write).
    """
    grpc_ep, http_ep = ctx.endpoints(desired.ref.namespace)
    prev_failure = previous.last_failure if previous is not None else None
    ours = vm is not None and vm.status != "NOT_FOUND" and (not vm.owner or vm.owner == desired.owner)
    counts = [0, 0, 0, 0]  # loading, loaded, failed, total
    active_state, target_state, transition = PENDING, "", UP_TO_DATE
    failure: FailureInfo | None = None
    holders: tuple[str, ...] = ()
    active_id = target_id = ""
    if ours:
        assert vm is not None
        active_id, target_id = vm.active_model_id, vm.target_model_id
        active_state = _decode_state(vm.active_status)
        _count(vm.active_status, counts)
        if vm.active_status is not None:
            holders = tuple(sorted(c.location for c in vm.active_status.copies if c.status == "LOADED"))
        target_status = vm.active_status
        if vm.target_model_id != vm.active_model_id:
            target_status = vm.target_status
            target_state = _decode_state(target_status)
            _count(target_status, counts)
        transition = _TRANSITION.get(vm.status, UP_TO_DATE)
        if transition == BLOCKED and target_status is not None and target_status.status == "LOADING":
            transition = IN_PROGRESS  # retrying elsewhere
        failure = _load_failure(target_status, vm.target_model_id, prev_failure, now)
        if isinstance(desired, Registration) and vm.target_model_id != desired.model_id:
            # the spec changed and the new target is not registered yet
            transition, target_state, target_id = IN_PROGRESS, PENDING, desired.model_id
    if isinstance(desired, Rejection):
        transition = INVALID_SPEC
        failure = FailureInfo(desired.reason, desired.message, desired.model_id)
        if not ours:
            target_state = ""
    elif conflict:
        transition = INVALID_SPEC
        failure = FailureInfo(INVALID_PREDICTOR_SPEC, conflict, desired.model_id)
    available = active_state in (STANDBY, LOADING, LOADED)
    return CRStatus(
        available=available,
        active_model_state=active_state,
        target_model_state=target_state,
        transition_status=transition,
        last_failure=failure,
        total_copies=counts[3],
        failed_copies=counts[2],
        loaded_copies=counts[1],
        loading_copies=counts[0],
        holders=holders,
        grpc_endpoint=grpc_ep,
        http_endpoint=http_ep,
        active_model_id=active_id,
        target_model_id=target_id,
        observed_generation=desired.generation,
        runtime=desired.runtime if isinstance(desired, Registration) else "",
    )


# ---------------------------------------------------------------- status <-> JSON


def _failure_json(f: FailureInfo, id_field: str) -> dict[str, Any]:
    out: dict[str, Any] = {"reason": f.reason, "message": f.message}
    if f.model_id:
        out[id_field] = f.model_id
    if f.location:
        out["location"] = f.location
    if f.time:
        out["time"] = f.time
    return out


def _ready(st: CRStatus, previous: Mapping[str, Any], now: float) -> dict[str, Any]:
    """A Predictor's ``Ready`` condition: serving its spec, or why not (reason and message)."""
    ok = st.available and st.transition_status == UP_TO_DATE
    if st.last_failure is not None:
        reason, message = st.last_failure.reason, st.last_failure.message
    elif ok:
        reason, message = st.active_model_state, f"serving model {st.active_model_id}" + (f" on runtime {st.runtime}" if st.runtime else "")
    else:
        reason, message = st.transition_status if st.transition_status != UP_TO_DATE else st.active_model_state, ""
    cond = {**_condition("Ready", ok, previous, now), "reason": reason, "message": message[:1024]}
    return cond


def predictor_status_json(st: CRStatus, previous: Mapping[str, Any] | None = None, now: float = 0.0) -> dict[str, Any]:
    """A Predictor's ``.status`` (modelmesh-serving's fields, then ours)."""
    out: dict[str, Any] = {
        "available": st.available,
        "activeModelState": st.active_model_state,
        "targetModelState": st.target_model_state,
        "transitionStatus": st.transition_status,
        "grpcEndpoint": st.grpc_endpoint,
        "httpEndpoint": st.http_endpoint,
        "totalCopies": st.total_copies,
        "failedCopies": st.failed_copies,
        "loadedCopies": st.loaded_copies,
        "loadingCopies": st.loading_copies,
        "holders": list(st.holders),
        "activeModelId": st.active_model_id,
        "targetModelId": st.target_model_id,
        "observedGeneration": st.observed_generation,
        "runtime": st.runtime,
        "conditions": [_ready(st, previous or {}, now)],
    }
    if st.last_failure is not None:
        out["lastFailureInfo"] = _failure_json(st.last_failure, "modelId")
    return out


def _condition(ctype: str, ok: bool, previous: Mapping[str, Any], now: float) -> dict[str, Any]:
    status = "True" if ok else "False"
    for c in previous.get("conditions") or ():
        if isinstance(c, Mapping) and c.get("type") == ctype and c.get("status") == status and c.get("lastTransitionTime"):
            return {"type": ctype, "status": status, "lastTransitionTime": c["lastTransitionTime"]}
    return {"type": ctype, "status": status, "lastTransitionTime": rfc3339(now)}


def isvc_status_json(st: CRStatus, previous: Mapping[str, Any] | None = None, now: float = 0.0) -> dict[str, Any]:
    """An InferenceService's ``.status`` in KServe's ModelMesh layout (``modelStatus``,
    ``components.predictor``, ``PredictorReady`` / ``Ready`` conditions)."""
    prev = previous or {}
    model_status: dict[str, Any] = {
        "transitionStatus": st.transition_status,
        "states": {"activeModelState": st.active_model_state, "targetModelState": st.target_model_state},
        "copies": {
            "failedCopies": st.failed_copies,
            "totalCopies": st.total_copies,
            "loadedCopies": st.loaded_copies,
            "loadingCopies": st.loading_copies,
            "holders": list(st.holders),
        },
    }
    if st.last_failure is not None:
        model_status["lastFailureInfo"] = _failure_json(st.last_failure, "modelRevisionName")
    if st.runtime:
        model_status["runtime"] = st.runtime
    out: dict[str, Any] = {
        "modelStatus": model_status,
        "observedGeneration": st.observed_generation,
        "conditions": [_condition("PredictorReady", st.available, prev, now), _condition("Ready", st.available, prev, now)],
    }
    if st.available:
        out["url"] = st.grpc_endpoint
        out["components"] = {"predictor": {"url": st.grpc_endpoint, "grpcUrl": st.grpc_endpoint, "restUrl": st.http_endpoint}}
    return out


def status_json(kind: str, st: CRStatus, previous: Mapping[str, Any] | None = None, now: float = 0.0) -> dict[str, Any]:
    if kind == INFERENCE_SERVICE.kind:
        return isvc_status_json(st, previous, now)
    return predictor_status_json(st, previous, now)


def _failure_from(raw: Any, id_field: str) -> FailureInfo | None:
    if not isinstance(raw, Mapping):
        return None
    return FailureInfo(
        str(raw.get("reason", "")),
        str(raw.get("message", "")),
        str(raw.get(id_field, "")),
        str(raw.get("location", "")),
        str(raw.get("time", "")),
    )


def status_from_json(kind: str, raw: Mapping[str, Any] | None) -> CRStatus | None:
    """Parse a status this module wrote (to diff against, for events); None when absent."""
    if not isinstance(raw, Mapping) or not raw:
        return None
    try:
        if kind == INFERENCE_SERVICE.kind:
            ms = raw.get("modelStatus") or {}
            states = ms.get("states") or {}
            copies = ms.get("copies") or {}
            conds = {c.get("type"): c.get("status") for c in raw.get("conditions") or () if isinstance(c, Mapping)}
            preds = (raw.get("components") or {}).get("predictor") or {}
            return CRStatus(
                available=conds.get("PredictorReady") == "True",
                active_model_state=str(states.get("activeModelState", PENDING)),
                target_model_state=str(states.get("targetModelState", "")),
                transition_status=str(ms.get("transitionStatus", UP_TO_DATE)),
                last_failure=_failure_from(ms.get("lastFailureInfo"), "modelRevisionName"),
                total_copies=int(copies.get("totalCopies", 0)),
                failed_copies=int(copies.get("failedCopies", 0)),
                loaded_copies=int(copies.get("loadedCopies", 0)),
                loading_copies=int(copies.get("loadingCopies", 0)),
                holders=tuple(copies.get("holders") or ()),
                runtime=str(ms.get("runtime", "")),
                grpc_endpoint=str(preds.get("grpcUrl", "")),
                http_endpoint=str(preds.get("restUrl", "")),
                observed_generation=int(raw.get("observedGeneration", 0)),
            )
        return CRStatus(
            available=bool(raw.get("available", False)),
            active_model_state=str(raw.get("activeModelState", PENDING)),
            target_model_state=str(raw.get("targetModelState", "")),
            transition_status=str(raw.get("transitionStatus", UP_TO_DATE)),
            last_failure=_failure_from(raw.get("lastFailureInfo"), "modelId"),
            total_copies=int(raw.get("totalCopies", 0)),
            failed_copies=int(raw.get("failedCopies", 0)),
            loaded_copies=int(raw.get("loadedCopies", 0)),
            loading_copies=int(raw.get("loadingCopies", 0)),
            holders=tuple(raw.get("holders") or ()),
            grpc_endpoint=str(raw.get("grpcEndpoint", "")),
            http_endpoint=str(raw.get("httpEndpoint", "")),
            active_model_id=str(raw.get("activeModelId", "")),
            target_model_id=str(raw.get("targetModelId", "")),
            observed_generation=int(raw.get("observedGeneration", 0)),
            runtime=str(raw.get("runtime", "")),
        )
    except (TypeError, ValueError, AttributeError):
        return None
