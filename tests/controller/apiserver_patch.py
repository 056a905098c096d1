"""Pure parts of the API-server stand-in: resource kinds, API errors, merge patch (RFC 7386) and
JSON patch (RFC 6902)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


DEFAULT_RESOURCES = (
    Resource("serving.kserve.io", "v1alpha1", "predictors", "Predictor"),
    Resource("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"),
    Resource("serving.kserve.io", "v1alpha1", "servingruntimes", "ServingRuntime"),
    Resource("serving.kserve.io", "v1alpha1", "clusterservingruntimes", "ClusterServingRuntime", namespaced=False),
    Resource("", "v1", "configmaps", "ConfigMap", status_subresource=False),
    Resource("", "v1", "events", "Event", status_subresource=False),
    Resource("coordination.k8s.io", "v1", "leases", "Lease", status_subresource=False),
    Resource("modelmux.io", "v1alpha1", "tenantquotas", "TenantQuota"),
)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def name_selected(obj: dict[str, Any], field_selector: str) -> bool:
    """Whether ``obj`` passes a ``metadata.name=<name>`` field selector (the only one served)."""
    if not field_selector:
        return True
    field, _, value = field_selector.partition("=")
    if field != "metadata.name":
        raise ApiError(400, "BadRequest", f"field selector {field_selector!r} is not supported")
    return bool((obj.get("metadata") or {}).get("name") == value)


def _now() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902: add, remove, replace, test."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = _pointer(str(op.get("path", "")))
        if not parts:
            raise ApiError(422, "Invalid", "JSON patch on the whole document is not supported")
        parent: Any = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.get(p)
            if parent is None:
                raise ApiError(422, "Invalid", f"JSON patch path {op['path']!r} does not exist")
        last = parts[-1]
        kind = op.get("op")
        if kind == "test":
            cur = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if cur != op.get("value"):
                raise ApiError(422, "Invalid", f"JSON patch test failed at {op['path']!r}")
        elif kind == "remove":
            if isinstance(parent, list):
                parent.pop(int(last))
            elif last in parent:
                del parent[last]
            else:
                raise ApiError(422, "Invalid", f"JSON patch remove: {op['path']!r} does not exist")
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op.get("value"))
                elif kind == "add":
                    parent.insert(int(last), op.get("value"))
                else:
                    parent[int(last)] = op.get("value")
            else:
                parent[last] = op.get("value")
        else:
            raise ApiError(422, "Invalid", f"JSON patch op {kind!r} is not supported")
    return doc
