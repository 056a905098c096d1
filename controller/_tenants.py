"""TenantQuota objects (``modelmux.io/v1alpha1``): quotas of tenants, set from the cluster.

A TenantQuota in namespace N sets the quota of tenant ``spec.tenant`` (default: N, the
tenant of every Predictor in N unless it names another through the
``modelmux.io/tenant-quota`` annotation) to ``spec.maxBytes``, an integer or a Kubernetes
quantity (``8Gi``, ``500M``), and its rate to ``spec.maxRps`` (requests per second each
instance admits from the tenant; absent or 0: none). Pure mapping and status here; the
controller applies it to the mesh store and writes the status back.

With one mesh for every namespace (``vmodel_names="namespace.name"``) tenant names are
resolved within the object's namespace (:func:`tenant_id`): N's own tenant is ``N`` and any
other name ``t`` is ``N.t``, for quotas and Predictor references alike, so no namespace can
claim, cap or use up another namespace's quota.

When two objects claim one tenant, the one whose quota is in force keeps it (else the
oldest by creation time, then namespace/name); the others report ``Ready=False,
reason=Conflict`` and change nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh import InvalidRequest, parse_bytes, parse_rate, validate_id

from ._kinds import Kind, ObjectRef, VModelNaming, tenant_id
from ._status import rfc3339

TENANT_QUOTA = Kind("TenantQuota", "modelmux.io", "v1alpha1", "tenantquotas", "")
TENANT_FINALIZER = "modelmux.io/tenant-quota"


@dataclass(frozen=True)
class QuotaSpec:
    tenant: str
    max_bytes: int
    max_rps: float = 0.0


@dataclass(frozen=True)
class QuotaRejection:
    tenant: str
    reason: str
    message: str


def source_of(ref: ObjectRef) -> str:
    """How a quota set from ``ref`` is marked in the store (``TenantQuota/<ns>/<name>``)."""
    return f"{ref.kind}/{ref.namespace}/{ref.name}"


def quota_spec(obj: Mapping[str, Any], naming: VModelNaming = "name") -> QuotaSpec | QuotaRejection:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    namespace = str(meta.get("namespace") or "default")
    tenant = tenant_id(namespace, str(spec.get("tenant") or namespace), naming)
    try:
        validate_id("tenant", tenant)
        if "maxBytes" not in spec:
            raise InvalidRequest("spec.maxBytes is required")
        max_bytes = parse_bytes(spec["maxBytes"], "spec.maxBytes")
        if max_bytes <= 0:
            raise InvalidRequest(f"spec.maxBytes must be positive, got {spec['maxBytes']!r}")
        max_rps = parse_rate(spec.get("maxRps", 0), "spec.maxRps")
    except InvalidRequest as exc:
        return QuotaRejection(tenant, "InvalidSpec", exc.message)
    return QuotaSpec(tenant, max_bytes, max_rps)


def _age_key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def owner_of(
    tenant: str, objects: Iterable[Mapping[str, Any]], incumbent: str = "", naming: VModelNaming = "name"
) -> Mapping[str, Any] | None:
    """The object that owns ``tenant``'s quota among the live valid claims: the one whose quota
    is in force (``incumbent``: the store record's source) keeps it, else the oldest."""
    claims = [
        o for o in objects
        if not (o.get("metadata") or {}).get("deletionTimestamp")
        and isinstance(s := quota_spec(o, naming), QuotaSpec) and s.tenant == tenant
    ]
    for o in claims:
        if incumbent and source_of(ObjectRef.of(o)) == incumbent:
            return o
    return min(claims, key=_age_key) if claims else None


def quota_status(
    desired: QuotaSpec | QuotaRejection,
    usage: Mapping[str, int] | None,
    *,
    generation: int,
    previous: Mapping[str, Any],
    now: float,
    conflict: str = "",
) -> dict[str, Any]:
    """The status subresource: the quota in force, the tenant's usage, a Ready condition."""
    if isinstance(desired, QuotaRejection):
        ready, reason, message = "False", desired.reason, desired.message
    elif conflict:
        ready, reason, message = "False", "Conflict", conflict
    else:
        rate = f", {desired.max_rps:g} requests per second on each instance" if desired.max_rps else ""
        ready, reason, message = "True", "QuotaSet", f"tenant {desired.tenant!r} may hold {desired.max_bytes} bytes{rate}"
    u = usage or {}
    prev_cond = next((c for c in previous.get("conditions") or () if c.get("type") == "Ready"), None)
    same = prev_cond is not None and (prev_cond.get("status"), prev_cond.get("reason"), prev_cond.get("message")) == (ready, reason, message)
    cond = {
        "type": "Ready",
        "status": ready,
        "reason": reason,
        "message": message,
        "lastTransitionTime": prev_cond.get("lastTransitionTime") if same and prev_cond else rfc3339(now),
        "observedGeneration": generation,
    }
    return {
        "tenant": desired.tenant,
        "maxBytes": desired.max_bytes if isinstance(desired, QuotaSpec) and not conflict else 0,
        "maxRps": desired.max_rps if isinstance(desired, QuotaSpec) and not conflict else 0.0,
        "usedBytes": int(u.get("used_bytes", 0)),
        "models": int(u.get("models", 0)),
        "copies": int(u.get("copies", 0)),
        "observedGeneration": generation,
        "conditions": [cond],
    }
