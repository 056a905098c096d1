"""A model's and a vModel's status: the one function the management API, the CLI and the dashboard use.

Computed from an instance's :class:`ClusterMirror` only (no store read). The state names are
ModelMesh's (``ModelStatusInfo.ModelStatus``, ``VModelStatusInfo.VModelStatus``): the enum values
are what the gRPC and JSON answers carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ._cluster_mirror import ClusterMirror
from ._store_schema import CopyState


class ModelState(StrEnum):
    NOT_FOUND = "NOT_FOUND"
    NOT_LOADED = "NOT_LOADED"
    LOADING = "LOADING"
    LOADED = "LOADED"
    LOADING_FAILED = "LOADING_FAILED"
    UNKNOWN = "UNKNOWN"


class VModelState(StrEnum):
    NOT_FOUND = "NOT_FOUND"
    DEFINED = "DEFINED"
    TRANSITIONING = "TRANSITIONING"
    TRANSITION_FAILED = "TRANSITION_FAILED"


# the states a registered model can be in (what the dashboard filters by)
REGISTERED_STATES = (ModelState.LOADED, ModelState.LOADING, ModelState.LOADING_FAILED, ModelState.NOT_LOADED)

_COPY_STATUS = {CopyState.LOADED: ModelState.LOADED, CopyState.LOADING: ModelState.LOADING, CopyState.FAILED: ModelState.LOADING_FAILED}


@dataclass(frozen=True)
class CopyStatus:
    location: str
    status: ModelState
    time_ms: int


@dataclass(frozen=True)
class ModelStatus:
    status: ModelState
    errors: tuple[str, ...] = ()
    copies: tuple[CopyStatus, ...] = ()


@dataclass(frozen=True)
class VModelStatus:
    status: VModelState
    active_model_id: str = ""
    target_model_id: str = ""
    active_status: ModelStatus | None = None
    target_status: ModelStatus | None = None
    owner: str = ""


def model_state(mirror: ClusterMirror, model_id: str, now: float) -> ModelState:
    """Only the state of :func:`model_status` (no copy list)."""
    return model_status(mirror, model_id, now, with_copies=False).status


def model_status(mirror: ClusterMirror, model_id: str, now: float, *, with_copies: bool = True) -> ModelStatus:
    """A registered model's status: LOADED when any copy is loaded; LOADING while a copy loads or
    an assignment waits for one (and nothing failed); LOADING_FAILED while a load failure (or a
    placement error) is remembered; else NOT_LOADED. NOT_FOUND when it is not registered."""
    if model_id not in mirror.models.items:
        return ModelStatus(ModelState.NOT_FOUND)
    copies = mirror.copies_of(model_id)
    infos: tuple[CopyStatus, ...] = ()
    loading = mirror.loading_on(model_id)
    if with_copies:
        # a copy assigned to a live instance that has not written its record yet is loading too
        arec = mirror.assignments.items.get(model_id)
        pending = [(iid, ModelState.LOADING, arec.updated_at if arec is not None else 0.0) for iid in loading if iid not in copies]
        infos = tuple(
            CopyStatus(iid, state, int(since * 1000))
            for iid, state, since in sorted(
                [(iid, _COPY_STATUS.get(c.state, ModelState.UNKNOWN), c.since) for iid, c in copies.items()] + pending,
                key=lambda t: -t[2],
            )
        )
    states = {c.state for c in copies.values()}
    errors: tuple[str, ...] = ()
    if CopyState.LOADED in states:
        status = ModelState.LOADED
    elif loading or (mirror.assigned(model_id) and CopyState.FAILED not in states):
        status = ModelState.LOADING
    elif any(c.state == CopyState.FAILED and c.failed_until > now for c in copies.values()):
        status = ModelState.LOADING_FAILED
        errors = tuple(sorted({c.error for c in copies.values() if c.state == CopyState.FAILED and c.error}))
    else:
        status = ModelState.NOT_LOADED
    miss_error = mirror.miss_error(model_id)
    if miss_error and status == ModelState.NOT_LOADED:
        status, errors = ModelState.LOADING_FAILED, (miss_error,)
    return ModelStatus(status, errors, infos)


def vmodel_status(mirror: ClusterMirror, name: str, now: float, owner: str = "") -> VModelStatus:
    vm = mirror.vmodels.items.get(name)
    if vm is None or (owner and vm.owner != owner):
        return VModelStatus(VModelState.NOT_FOUND, active_status=ModelStatus(ModelState.NOT_FOUND))
    if vm.active == vm.target:
        status = VModelState.DEFINED
    elif vm.failed or model_state(mirror, vm.target, now) == ModelState.LOADING_FAILED:
        status = VModelState.TRANSITION_FAILED
    else:
        status = VModelState.TRANSITIONING
    return VModelStatus(
        status,
        vm.active,
        vm.target,
        model_status(mirror, vm.active, now),
        model_status(mirror, vm.target, now) if vm.target != vm.active else None,
        vm.owner,
    )
