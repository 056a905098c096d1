"""The Kubernetes kinds the controller handles, object references and the names derived from them.

Names (modelmesh-serving's scheme, facts taken from its controller):

- vModel id: the object's name (``vmodel_names="name"``, ModelMesh-compatible: one mesh per
  namespace, clients send ``mm-vmodel-id: <name>``) or ``<namespace>.<name>``
  (``vmodel_names="namespace.name"``, one mesh for several namespaces; namespaces are DNS
  labels, so the first dot splits them unambiguously).
- owner: ``<source>/<namespace>``, where source is ``ksp`` (Predictor) or ``isvc``
  (InferenceService), so a Predictor and an InferenceService (or two namespaces) never take
  over each other's vModel: the second one gets an ``InvalidSpec`` status.
- target model id: ``<vmodel>__<source>-<hash>`` (the hash: :func:`controller._mapping.spec_hash`).

The owner string and the model id are enough to find the object behind a store record
(:func:`ref_for_vmodel`, :func:`vmodel_of_model`): store watches need no other index.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

GROUP = "serving.kserve.io"
FINALIZER = "modelmux.io/finalizer"

VModelNaming = Literal["name", "namespace.name"]

# failure reasons (modelmesh-serving's FailureReason values)
MODEL_LOAD_FAILED = "ModelLoadFailed"
RUNTIME_UNHEALTHY = "RuntimeUnhealthy"
NO_SUPPORTING_RUNTIME = "NoSupportingRuntime"
RUNTIME_NOT_RECOGNIZED = "RuntimeNotRecognized"
INVALID_PREDICTOR_SPEC = "InvalidPredictorSpec"
# ours: the object names a storage key its namespace may not use (controller._storage_access)
STORAGE_KEY_NOT_ALLOWED = "StorageKeyNotAllowed"


@dataclass(frozen=True)
class Kind:
    kind: str
    group: str
    version: str
    plural: str
    source: str  # modelmesh-serving's source id ("" for kinds that are not registered)
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


PREDICTOR = Kind("Predictor", GROUP, "v1alpha1", "predictors", "ksp")
INFERENCE_SERVICE = Kind("InferenceService", GROUP, "v1beta1", "inferenceservices", "isvc")
SERVING_RUNTIME = Kind("ServingRuntime", GROUP, "v1alpha1", "servingruntimes", "")
CLUSTER_SERVING_RUNTIME = Kind("ClusterServingRuntime", GROUP, "v1alpha1", "clusterservingruntimes", "", namespaced=False)
CONFIG_MAP = Kind("ConfigMap", "", "v1", "configmaps", "")
MODEL_KINDS: dict[str, Kind] = {k.kind: k for k in (PREDICTOR, INFERENCE_SERVICE)}


@dataclass(frozen=True, order=True)
class ObjectRef:
    """One Kubernetes object: the work-queue key (``Predictor/default/mnist``)."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"

    @staticmethod
    def of(obj: Mapping[str, Any], default_namespace: str = "default") -> ObjectRef:
        meta = obj.get("metadata") or {}
        return ObjectRef(str(obj.get("kind", "")), str(meta.get("namespace") or default_namespace), str(meta.get("name", "")))


def vmodel_name(ref: ObjectRef, naming: VModelNaming) -> str:
    return ref.name if naming == "name" else f"{ref.namespace}.{ref.name}"


def tenant_id(namespace: str, name: str, naming: VModelNaming) -> str:
    """The mesh tenant that tenant name ``name`` (a TenantQuota's ``spec.tenant``, or a
    model's tenant reference) written in ``namespace`` stands for.

    ``name`` naming (one mesh per namespace): ``name`` itself. ``namespace.name`` naming (one
    mesh for every namespace): ``<namespace>`` for the namespace's own quota (``name`` equal
    to the namespace, every model's default) and ``<namespace>.<name>`` otherwise, so an
    object can only ever count against a quota of its own namespace (namespaces are DNS
    labels, without dots: the ids never collide).
    """
    if naming == "name" or name == namespace:
        return name
    return f"{namespace}.{name}"


def owner_for(ref: ObjectRef) -> str:
    kind = MODEL_KINDS.get(ref.kind)
    return f"{kind.source if kind else ref.kind.lower()}/{ref.namespace}"

def model_id_for(vmodel: str, source: str, digest: str) -> str:
    return f"{vmodel}__{source}-{digest}"


_SOURCES = {k.source: k for k in MODEL_KINDS.values()}


def ref_for_vmodel(vmodel: str, owner: str, naming: VModelNaming) -> ObjectRef | None:
    """The object that owns a vModel, from its owner string (None: not the controller's)."""
    source, sep, namespace = owner.partition("/")
    kind = _SOURCES.get(source)
    if not sep or kind is None or not namespace:
        return None
    if naming == "name":
        name = vmodel
    else:
        prefix = f"{namespace}."
        if not vmodel.startswith(prefix):
            return None
        name = vmodel[len(prefix) :]
    return ObjectRef(kind.kind, namespace, name)


def vmodel_of_model(model_id: str) -> str | None:
    """``<vmodel>__<source>-<hash>`` -> vmodel (None for ids of another shape)."""
    head, sep, tail = model_id.rpartition("__")
    source, dash, _digest = tail.partition("-")
    if not sep or not dash or source not in _SOURCES:
        return None
    return head
