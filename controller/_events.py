"""Kubernetes Events for a status change: which ones (pure), and the Event object to create."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._kinds import MODEL_LOAD_FAILED, Kind, ObjectRef
from ._status import BLOCKED, IN_PROGRESS, INVALID_SPEC, UP_TO_DATE, CRStatus, rfc3339


@dataclass(frozen=True)
class EventSpec:
    """A Kubernetes Event to emit for the object (``type`` Normal or Warning)."""

    type: str
    reason: str
    message: str


def events_between(old: CRStatus | None, new: CRStatus) -> list[EventSpec]:
    """Events for a status change: load failures and transitions (pure)."""
    out: list[EventSpec] = []
    old_t = old.transition_status if old is not None else UP_TO_DATE
    old_f = old.last_failure if old is not None else None
    f = new.last_failure
    if new.transition_status != old_t or (new.transition_status == INVALID_SPEC and f != old_f):
        t = new.transition_status
        if t == IN_PROGRESS:
            out.append(EventSpec("Normal", "TransitionStarted", f"loading model {new.target_model_id} to replace {new.active_model_id or 'nothing'}"))
        elif t == UP_TO_DATE and old_t in (IN_PROGRESS, BLOCKED, INVALID_SPEC) and new.active_model_id:
            out.append(EventSpec("Normal", "TransitionComplete", f"serving model {new.active_model_id}"))
        elif t == BLOCKED:
            msg = f.message if f is not None else "the target model failed to load"
            out.append(EventSpec("Warning", "TransitionBlocked", f"model {new.target_model_id} failed to load: {msg}"))
        elif t == INVALID_SPEC and f is not None:
            out.append(EventSpec("Warning", "InvalidSpec", f"{f.reason}: {f.message}"))
    if f is not None and f.reason == MODEL_LOAD_FAILED and f != old_f:
        where = f" on {f.location}" if f.location else ""
        out.append(EventSpec("Warning", "ModelLoadFailed", f"model {f.model_id} failed to load{where}: {f.message}"))
    return out


def event_object(
    kind: Kind, ref: ObjectRef, obj: Mapping[str, Any], spec: EventSpec, *, now: float, instance: str
) -> dict[str, Any]:
    """The ``core/v1`` Event that reports ``spec`` on object ``obj`` (a random name suffix)."""
    meta = obj.get("metadata") or {}
    stamp = rfc3339(now)
    return {
        "metadata": {"name": f"{ref.name}.{secrets.token_hex(8)}", "namespace": ref.namespace},
        "involvedObject": {
            "apiVersion": kind.api_version,
            "kind": ref.kind,
            "name": ref.name,
            "namespace": ref.namespace,
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": spec.reason,
        "message": spec.message[:1024],
        "type": spec.type,
        "source": {"component": "modelmux-controller"},
        "reportingComponent": "modelmux.io/controller",
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
