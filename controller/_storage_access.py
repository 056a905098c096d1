"""Which storage keys each namespace's models may name (pure: no I/O).

The credentials live in the instances' storage-config Secret (ModelMesh's format: one JSON
entry per key), which the controller never reads. With one mesh for several namespaces, a
platform team says which of those keys each namespace may name in one ConfigMap in the
controller's namespace (tenants cannot write there)::

    apiVersion: v1
    kind: ConfigMap
    metadata: {name: modelmux-storage-access, namespace: modelmux}
    data:
      team-a: "team-a-s3, shared-http"   # namespace -> keys (commas or white space)
      team-b: "team-b-s3"
      _all: "public-models"             # keys every namespace may name

(``_all`` cannot be a namespace: namespaces are DNS labels, without underscores.)

A Predictor or InferenceService naming a key its namespace is not allowed is refused with
reason ``StorageKeyNotAllowed``: nothing is registered, and a model it registered before is
unregistered (access revoked). Models that name no key use the storage config's defaults,
which the instances bind to tenants themselves (a key's ``tenants`` list).

Off (``storage_access_configmap`` empty): every key may be named, as for one mesh per
namespace. On and the ConfigMap missing: no key may be named (fail closed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ALL_NAMESPACES = "_all"
_SPLIT = re.compile(r"[\s,]+")


@dataclass(frozen=True)
class StorageAccess:
    """namespace -> the storage keys its models may name (``everyone``: keys for all)."""

    by_namespace: Mapping[str, frozenset[str]] = field(default_factory=dict)
    everyone: frozenset[str] = frozenset()

    def allowed(self, namespace: str) -> frozenset[str]:
        return self.by_namespace.get(namespace, frozenset()) | self.everyone

    def allows(self, namespace: str, key: str) -> bool:
        return key in self.allowed(namespace)

    def refusal(self, namespace: str, key: str) -> str:
        """Why ``key`` is refused in ``namespace`` (names only that namespace's own keys)."""
        own = sorted(self.allowed(namespace))
        return (
            f"storage key '{key}' is not allowed in namespace '{namespace}' "
            f"(allowed there: {', '.join(own) or 'none'}; the platform team grants keys in the storage-access ConfigMap)"
        )


def storage_access_from_configmap(obj: Mapping[str, Any] | None) -> StorageAccess:
    """The ConfigMap's ``data`` -> :class:`StorageAccess` (None, the ConfigMap missing: nothing allowed)."""
    data = (obj or {}).get("data") or {}
    if not isinstance(data, Mapping):
        return StorageAccess()
    by_ns: dict[str, frozenset[str]] = {}
    everyone: frozenset[str] = frozenset()
    for ns, value in data.items():
        keys = frozenset(k for k in _SPLIT.split(str(value or "")) if k)
        if str(ns) == ALL_NAMESPACES:
            everyone = keys
        else:
            by_ns[str(ns)] = keys
    return StorageAccess(by_ns, everyone)
