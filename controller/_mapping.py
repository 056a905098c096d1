"""Kubernetes objects -> desired registrations (pure: no I/O, no clock, never raises).

The controller (``_controller``) and ``modelmux apply`` (``_apply``) feed it plain JSON objects.
Names (vModel id, owner, model id) follow :mod:`controller._kinds`. The model id's hash is
the first 10 hex digits of SHA-1 over the canonical JSON (sorted keys) of the normalised
registration (type, path and the key object with storage and modelmux extras). A changed
spec gives a new model id, which the mesh loads before it moves the vModel (zero-downtime
transition); a cosmetic change that normalises to the same registration (key order,
``storage.path`` vs ``path``) keeps the id.

ModelInfo: ``type`` = the model format name (lower case), ``path`` = the storage path or
URI, ``key`` = JSON with ``storage_key``, ``storage_params``, ``schema_path``,
``model_type`` {name, version} (as modelmesh-serving sends) plus ours: ``tenant`` (the
namespace, or ``spec.tenant`` / the ``modelmux.io/tenant-quota`` annotation, resolved by
:func:`controller._kinds.tenant_id`), ``min_copies``, ``max_copies``, ``pinned``,
``runtime`` (the one named, or the ServingRuntime chosen: :mod:`controller._runtimes`; the
built-in runtime when chosen is left out), ``protocol_version`` and ``options.device``
(``gpu: required`` -> ``cuda``). A storage key the namespace may not name is refused
(:mod:`controller._storage_access`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from mesh import InvalidRequest, ModelInfoSpec, validate_id

from ._kinds import (
    INFERENCE_SERVICE,
    INVALID_PREDICTOR_SPEC,
    MODEL_KINDS,
    PREDICTOR,
    STORAGE_KEY_NOT_ALLOWED,
    ObjectRef,
    VModelNaming,
    model_id_for,
    owner_for,
    tenant_id,
    vmodel_name,
)
from ._runtimes import Runtime, RuntimeCatalog
from ._storage_access import StorageAccess

DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
MODELMESH_MODE = "ModelMesh"
SECRET_KEY_ANNOTATION = "serving.kserve.io/secretKey"
SCHEMA_PATH_ANNOTATION = "serving.kserve.io/schemaPath"
RUNTIME_ANNOTATION = "serving.kserve.io/servingRuntime"
MIN_COPIES_ANNOTATION = "modelmux.io/min-copies"
MAX_COPIES_ANNOTATION = "modelmux.io/max-copies"
PINNED_ANNOTATION = "modelmux.io/pinned"
TENANT_ANNOTATION = "modelmux.io/tenant-quota"
BATCHING_ANNOTATION = "modelmux.io/batching"
MAX_BATCH_SIZE_ANNOTATION = "modelmux.io/max-batch-size"
MAX_BATCH_DELAY_ANNOTATION = "modelmux.io/max-batch-delay-s"

# ---------------------------------------------------------------- context


_BUILTIN_TYPES = frozenset({"onnx", "pytorch", "torchscript", "torch_export", "xgboost"})


@dataclass(frozen=True)
class ReconcileContext:
    """What the pure mapping needs to know about the cluster.

    ``builtin`` is the mesh's own in-process runtime (every adapter type); ``runtimes`` maps a
    namespace to the ServingRuntimes declared there, ``cluster_runtimes`` the
    ClusterServingRuntimes (:mod:`controller._runtimes`). ``storage_access``: which storage keys
    each namespace may name (None: any key, :mod:`controller._storage_access`).
    """

    builtin: Runtime = field(default_factory=lambda: Runtime("modelmux", _BUILTIN_TYPES, _BUILTIN_TYPES))
    runtimes: Mapping[str, Mapping[str, Runtime]] = field(default_factory=dict)
    naming: VModelNaming = "name"
    service_name: str = "modelmux"
    service_namespace: str = ""  # "" = the object's namespace
    grpc_port: int = 8033
    rest_port: int = 8008
    cluster_runtimes: Mapping[str, Runtime] = field(default_factory=dict)
    storage_access: StorageAccess | None = None

    @property
    def catalog(self) -> RuntimeCatalog:
        return RuntimeCatalog(self.builtin, self.runtimes, self.cluster_runtimes)

    def endpoints(self, namespace: str) -> tuple[str, str]:
        host = f"{self.service_name}.{self.service_namespace or namespace}"
        return f"grpc://{host}:{self.grpc_port}", f"http://{host}:{self.rest_port}"


# ---------------------------------------------------------------- desired state


@dataclass(frozen=True)
class Registration:
    """A valid object: register ``model_id`` with ``info`` and point ``vmodel`` at it."""

    ref: ObjectRef
    vmodel: str
    owner: str
    model_id: str
    info: ModelInfoSpec
    spec_hash: str
    generation: int = 0
    runtime: str = ""  # the runtime that serves it (controller._runtimes)
    # KServe's canaryTrafficPercent: this share of the traffic to the new model, the rest to the
    # model the vModel served before (None: all of it, at once, as before)
    canary_percent: int | None = None



@dataclass(frozen=True)
class Rejection:
    """An object that cannot be registered: reported as ``InvalidSpec`` with ``message``.

    ``model_id`` is the id the spec would have had ("" when the spec is too broken to hash).
    """

    ref: ObjectRef
    vmodel: str
    owner: str
    reason: str
    message: str
    model_id: str = ""
    generation: int = 0


Desired = Registration | Rejection


class _Invalid(Exception):
    def __init__(self, message: str, reason: str = INVALID_PREDICTOR_SPEC) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


_URI_SCHEMES = {"s3", "gs", "gcs", "azure", "http", "https", "pvc", "file"}
_PROTOCOLS = {"v2", "grpc-v2"}


def _obj(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Invalid(f"{where} must be an object, not {type(value).__name__}")
    return dict(value)


def _str(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _Invalid(f"{where} must be a string")
    return str(value)


def check_uri(uri: str, where: str) -> None:
    """A storage URI the puller can resolve: known scheme, a bucket / host / claim, a path."""
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise _Invalid(f"{where} {uri!r} is not a valid URI: {exc}") from None
    scheme = parts.scheme.lower()
    if not scheme:
        raise _Invalid(f"{where} {uri!r} has no scheme (expected one of {', '.join(sorted(_URI_SCHEMES))})")
    if scheme not in _URI_SCHEMES:
        raise _Invalid(f"{where} {uri!r}: unsupported scheme '{scheme}' (supported: {', '.join(sorted(_URI_SCHEMES))})")
    if any(c.isspace() for c in uri):
        raise _Invalid(f"{where} {uri!r} contains white space")
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.strip("/"):
            raise _Invalid(f"{where} {uri!r}: a file URI needs a local path (file:///dir/model)")
        return
    if not parts.netloc:
        what = {"pvc": "claim name", "http": "host", "https": "host"}.get(scheme, "bucket")
        raise _Invalid(f"{where} {uri!r} has no {what}")
    if scheme not in ("http", "https") and not parts.path.strip("/"):
        raise _Invalid(f"{where} {uri!r} has no object path after the {'claim name' if scheme == 'pvc' else 'bucket'}")


def _params(value: Any, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in _obj(value, where).items():
        s = _str(v, f"{where}.{k}")
        if s is not None:
            out[str(k)] = s
    return out


def _int_extra(value: Any, where: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _Invalid(f"{where} must be a non-negative integer, not {value!r}")
    try:
        n = int(str(value).strip())
    except ValueError:
        raise _Invalid(f"{where} must be a non-negative integer, not {value!r}") from None
    if n < 0:
        raise _Invalid(f"{where} must be a non-negative integer, not {value!r}")
    return n


def _bool_extra(value: Any, where: str) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise _Invalid(f"{where} must be true or false, not {value!r}")


@dataclass(frozen=True)
class _Model:
    """The normalised model of either kind (modelmesh-serving's PredictorSpec)."""

    type_name: str
    type_version: str | None
    runtime: str | None
    path: str
    schema_path: str | None
    storage_key: str | None
    params: dict[str, str]
    protocol: str | None
    gpu: str | None


def _predictor_model(spec: dict[str, Any]) -> _Model:
    mtype = _obj(spec.get("modelType"), "spec.modelType")
    name = _str(mtype.get("name"), "spec.modelType.name")
    if not name:
        raise _Invalid("spec.modelType.name is required")
    runtime = _str(_obj(spec.get("runtime"), "spec.runtime").get("name"), "spec.runtime.name") or None
    storage = _obj(spec.get("storage"), "spec.storage")
    path = _str(spec.get("path"), "spec.path") or ""
    schema_path = _str(spec.get("schemaPath"), "spec.schemaPath")
    storage_key: str | None = None
    params: dict[str, str] = {}
    if storage:
        # modelmesh-serving's validatePredictor rules
        if storage.get("path") is not None and path:
            raise _Invalid("only one of spec.path and spec.storage.path can be specified")
        if storage.get("schemaPath") is not None and schema_path is not None:
            raise _Invalid("only one of spec.schemaPath and spec.storage.schemaPath can be specified")
        if storage.get("persistentVolumeClaim") is not None:
            raise _Invalid("spec.storage.persistentVolumeClaim is not supported (use a pvc:// path)")
        s3 = storage.get("s3")
        if s3 is not None and any(storage.get(k) is not None for k in ("path", "schemaPath", "parameters", "key")):
            raise _Invalid("spec.storage.s3 cannot be specified with any other keys in spec.storage")
        if storage.get("path") is not None:
            path = _str(storage.get("path"), "spec.storage.path") or ""
        if storage.get("schemaPath") is not None:
            schema_path = _str(storage.get("schemaPath"), "spec.storage.schemaPath")
        storage_key = _str(storage.get("key"), "spec.storage.key")
        params = _params(storage.get("parameters"), "spec.storage.parameters")
        if s3 is not None:
            s3d = _obj(s3, "spec.storage.s3")
            storage_key = _str(s3d.get("secretKey"), "spec.storage.s3.secretKey")
            if not storage_key:
                raise _Invalid("spec.storage.s3.secretKey is required")
            bucket = _str(s3d.get("bucket"), "spec.storage.s3.bucket")
            if bucket:
                params = {"bucket": bucket}
    if not path:
        raise _Invalid("the model's storage is missing: set spec.path or spec.storage.path")
    if "://" in path:
        check_uri(path, "spec.path")
    return _Model(
        type_name=name,
        type_version=_str(mtype.get("version"), "spec.modelType.version") or None,
        runtime=runtime,
        path=path,
        schema_path=schema_path or None,
        storage_key=storage_key or None,
        params=params,
        protocol=_str(spec.get("protocolVersion"), "spec.protocolVersion") or None,
        gpu=_str(spec.get("gpu"), "spec.gpu") or None,
    )


# InferenceService predictor framework fields (the older, pre-``model`` form)
_FRAMEWORKS = ("xgboost", "lightgbm", "sklearn", "tensorflow", "onnx", "pytorch", "triton", "pmml", "paddle")


def _isvc_model(spec: dict[str, Any], annotations: Mapping[str, str]) -> _Model:
    predictor = _obj(spec.get("predictor"), "spec.predictor")
    if not predictor:
        raise _Invalid("spec.predictor is required")
    frameworks = [f for f in _FRAMEWORKS if predictor.get(f) is not None]
    model = predictor.get("model")
    runtime_annotation = annotations.get(RUNTIME_ANNOTATION)
    if model is not None:
        if frameworks:
            raise _Invalid(f"spec.predictor cannot have both model and a framework spec ({frameworks[0]})")
        if runtime_annotation:
            raise _Invalid(f"spec.predictor.model cannot be combined with the {RUNTIME_ANNOTATION} annotation")
        ext = _obj(model, "spec.predictor.model")
        fmt = _obj(ext.get("modelFormat"), "spec.predictor.model.modelFormat")
        name = _str(fmt.get("name"), "spec.predictor.model.modelFormat.name")
        if not name:
            raise _Invalid("spec.predictor.model.modelFormat.name is required")
        version = _str(fmt.get("version"), "spec.predictor.model.modelFormat.version")
        runtime = _str(ext.get("runtime"), "spec.predictor.model.runtime")
        where = "spec.predictor.model"
    else:
        if not frameworks:
            raise _Invalid("spec.predictor needs a model (modelFormat + storage) or a framework spec")
        if len(frameworks) > 1:
            raise _Invalid(f"spec.predictor has several framework specs: {', '.join(frameworks)}")
        name = frameworks[0]
        ext = _obj(predictor.get(name), f"spec.predictor.{name}")
        version = None
        runtime = runtime_annotation
        where = f"spec.predictor.{name}"
    uri = _str(ext.get("storageUri"), f"{where}.storageUri")
    storage = _obj(ext.get("storage"), f"{where}.storage")
    storage_path = _str(storage.get("path"), f"{where}.storage.path")
    if uri and storage_path:
        raise _Invalid(f"{where} cannot have both storageUri and storage.path")
    if not uri and not storage_path:
        raise _Invalid(f"the model's storage is missing: set {where}.storageUri or {where}.storage.path")
    path = uri or storage_path or ""
    if "://" in path:
        check_uri(path, f"{where}.storageUri" if uri else f"{where}.storage.path")
    storage_key = _str(storage.get("key"), f"{where}.storage.key") or annotations.get(SECRET_KEY_ANNOTATION)
    schema_path = _str(storage.get("schemaPath"), f"{where}.storage.schemaPath") or annotations.get(SCHEMA_PATH_ANNOTATION)
    return _Model(
        type_name=name,
        type_version=version or None,
        runtime=runtime or None,
        path=path,
        schema_path=schema_path or None,
        storage_key=storage_key or None,
        params=_params(storage.get("parameters"), f"{where}.storage.parameters"),
        protocol=_str(ext.get("protocolVersion"), f"{where}.protocolVersion") or None,
        gpu=None,
    )


def _choose_runtime(model: _Model, namespace: str, ctx: ReconcileContext) -> Runtime:
    choice = ctx.catalog.choose(namespace, model.type_name, model.type_version, model.runtime)
    if choice.runtime is None:
        raise _Invalid(choice.message, choice.reason)
    return choice.runtime


def _check_storage_key(model: _Model, namespace: str, access: StorageAccess | None) -> None:
    if access is not None and model.storage_key and not access.allows(namespace, model.storage_key):
        raise _Invalid(access.refusal(namespace, model.storage_key), STORAGE_KEY_NOT_ALLOWED)


def _extras(spec: Mapping[str, Any], annotations: Mapping[str, str], namespace: str, naming: VModelNaming) -> dict[str, Any]:
    """modelmux extras: CRD fields (Predictor) win over annotations."""
    out: dict[str, Any] = {}
    min_c = _int_extra(spec.get("minCopies"), "spec.minCopies")
    if min_c is None:
        min_c = _int_extra(annotations.get(MIN_COPIES_ANNOTATION), f"annotation {MIN_COPIES_ANNOTATION}")
    max_c = _int_extra(spec.get("maxCopies"), "spec.maxCopies")
    if max_c is None:
        max_c = _int_extra(annotations.get(MAX_COPIES_ANNOTATION), f"annotation {MAX_COPIES_ANNOTATION}")
    if min_c and max_c and min_c > max_c:
        raise _Invalid(f"min copies ({min_c}) exceed max copies ({max_c})")
    pinned = _bool_extra(spec.get("pinned"), "spec.pinned")
    if pinned is None:
        pinned = _bool_extra(annotations.get(PINNED_ANNOTATION), f"annotation {PINNED_ANNOTATION}")
    tenant = _str(spec.get("tenant"), "spec.tenant") or annotations.get(TENANT_ANNOTATION) or namespace
    if min_c:
        out["min_copies"] = min_c
    if max_c:
        out["max_copies"] = max_c
    if pinned:
        out["pinned"] = True
    batching = _batching_options(spec, annotations)
    if batching:
        out["options"] = batching
    tenant = tenant_id(namespace, str(tenant).strip(), naming)
    try:
        validate_id("tenant", tenant)
    except InvalidRequest:
        raise _Invalid(f"tenant {tenant!r} (spec.tenant or annotation {TENANT_ANNOTATION}) is not a valid name") from None
    out["tenant"] = tenant
    return out


def _batching_options(spec: Mapping[str, Any], annotations: Mapping[str, str]) -> dict[str, str]:
    """Adaptive batching model options (runtime_adapters' ``batching`` / ``max_batch_size`` /
    ``max_batch_delay_s``): Predictor fields win over annotations; checked here so that a bad
    value is an InvalidSpec rather than a load failure."""
    out: dict[str, str] = {}
    on = _bool_extra(spec.get("batching"), "spec.batching")
    if on is None:
        on = _bool_extra(annotations.get(BATCHING_ANNOTATION), f"annotation {BATCHING_ANNOTATION}")
    if on is not None:
        out["batching"] = "true" if on else "false"
    size = _int_extra(spec.get("maxBatchSize"), "spec.maxBatchSize")
    if size is None:
        size = _int_extra(annotations.get(MAX_BATCH_SIZE_ANNOTATION), f"annotation {MAX_BATCH_SIZE_ANNOTATION}")
    if size is not None:
        if size < 1:
            raise _Invalid(f"max batch size must be at least 1, not {size}")
        out["max_batch_size"] = str(size)
    delay = spec.get("maxBatchDelaySeconds")
    where = "spec.maxBatchDelaySeconds"
    if delay is None or delay == "":
        delay, where = annotations.get(MAX_BATCH_DELAY_ANNOTATION), f"annotation {MAX_BATCH_DELAY_ANNOTATION}"
    if delay is not None and delay != "":
        try:
            seconds = float(str(delay).strip()) if not isinstance(delay, bool) else math.nan
        except ValueError:
            seconds = math.nan
        if not (0.0 <= seconds <= 10.0):  # nan fails too
            raise _Invalid(f"{where} must be a number of seconds in [0, 10], not {delay!r}")
        out["max_batch_delay_s"] = repr(seconds)
    return out


def spec_hash(info: ModelInfoSpec) -> str:
    """10 hex digits of SHA-1 over the canonical registration (modelmesh-serving's length)."""
    canonical = json.dumps(
        {"type": info.type, "path": info.path, "key": json.loads(info.key) if info.key else {}},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha1(canonical.encode(), usedforsecurity=False).hexdigest()[:10]


def _build(model: _Model, extras: dict[str, Any], runtime: Runtime, builtin: str) -> ModelInfoSpec:
    mtype = model.type_name.strip().lower()
    if model.protocol and model.protocol.lower() not in _PROTOCOLS:
        raise _Invalid(f"protocolVersion '{model.protocol}' is not supported: modelmux serves the V2 protocol (v2, grpc-v2)")
    if model.gpu not in (None, "required", "preferred"):
        raise _Invalid(f"spec.gpu must be 'required' or 'preferred', not {model.gpu!r}")
    key: dict[str, Any] = dict(extras)
    mt: dict[str, str] = {"name": model.type_name}
    if model.type_version:
        mt["version"] = model.type_version
    key["model_type"] = mt
    if model.storage_key:
        key["storage_key"] = model.storage_key
    if model.params:
        key["storage_params"] = dict(sorted(model.params.items()))
    if model.schema_path:
        key["schema_path"] = model.schema_path
    if model.runtime:
        key["runtime"] = model.runtime
    elif runtime.name != builtin:
        # chosen among ServingRuntimes: part of the registration, so that a model moves (a new
        # model id, loaded before traffic moves) when another runtime is chosen for it
        key["runtime"] = runtime.name
    if model.protocol:
        key["protocol_version"] = model.protocol.lower()
    if model.gpu == "required":
        key["options"] = {**key.get("options", {}), "device": "cuda"}
    return ModelInfoSpec(type=mtype, path=model.path, key=json.dumps(key, sort_keys=True, separators=(",", ":")))


def is_managed(obj: Mapping[str, Any]) -> bool:
    """Whether the controller handles this object (InferenceServices need the ModelMesh mode)."""
    if obj.get("kind") == INFERENCE_SERVICE.kind:
        meta = obj.get("metadata")
        annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
        return isinstance(annotations, Mapping) and annotations.get(DEPLOYMENT_MODE_ANNOTATION) == MODELMESH_MODE
    return obj.get("kind") == PREDICTOR.kind


def desired_state(obj: Mapping[str, Any], ctx: ReconcileContext, *, default_namespace: str = "default") -> Desired | None:
    """The registration an object asks for, a :class:`Rejection` explaining why it cannot be
    registered, or None when the object is not ours (an InferenceService without the
    ModelMesh deployment mode). Never raises."""
    if not isinstance(obj, Mapping) or not is_managed(obj):
        return None
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    ref = ObjectRef(str(obj.get("kind")), str(meta.get("namespace") or default_namespace), str(meta.get("name") or ""))
    vmodel = vmodel_name(ref, ctx.naming)
    owner = owner_for(ref)
    kind = MODEL_KINDS[ref.kind]
    gen = meta.get("generation")
    generation = gen if isinstance(gen, int) and not isinstance(gen, bool) else 0
    try:
        if not ref.name:
            raise _Invalid("metadata.name is required")
        annotations = {str(k): str(v) for k, v in _obj(meta.get("annotations"), "metadata.annotations").items()}
        spec = _obj(obj.get("spec"), "spec")
        if not spec:
            raise _Invalid("spec is required")
        model = _predictor_model(spec) if kind is PREDICTOR else _isvc_model(spec, annotations)
        extras = _extras(spec if kind is PREDICTOR else {}, annotations, ref.namespace, ctx.naming)
        _check_storage_key(model, ref.namespace, ctx.storage_access)
        runtime = _choose_runtime(model, ref.namespace, ctx)
        info = _build(model, extras, runtime, ctx.builtin.name)
        canary_percent = _canary_percent(spec if kind is PREDICTOR else _obj(spec.get("predictor"), "spec.predictor"),
                                         "spec" if kind is PREDICTOR else "spec.predictor")
    except _Invalid as exc:
        return Rejection(ref, vmodel, owner, exc.reason, exc.message, generation=generation)
    except Exception as exc:
        return Rejection(ref, vmodel, owner, INVALID_PREDICTOR_SPEC, f"malformed spec: {exc}", generation=generation)
    digest = spec_hash(info)
    model_id = model_id_for(vmodel, kind.source, digest)
    try:
        validate_id("vmodel id", vmodel)
        validate_id("model id", model_id)
    except Exception as exc:
        return Rejection(ref, vmodel, owner, INVALID_PREDICTOR_SPEC, str(exc), generation=generation)
    return Registration(ref, vmodel, owner, model_id, info, digest, generation, runtime.name, canary_percent)


def _canary_percent(spec: Mapping[str, Any], where: str) -> int | None:
    value = spec.get("canaryTrafficPercent")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
        raise _Invalid(f"{where}.canaryTrafficPercent must be a whole number from 0 to 100, got {value!r}")
    return value


def canary_targets(desired: Registration, active: str, split_targets: tuple[str, ...] = ()) -> tuple[str, str, int] | None:
    """(stable, candidate, percent) when ``desired`` rolls out as a canary beside the model the vModel
    serves now (``active``, or the stable model of the split it has, ``split_targets[0]``); None:
    point the vModel at the new model as usual (no canary percent, 100, nothing served before, or
    the new model is the stable one: a rollback)."""
    pct = desired.canary_percent
    if pct is None or pct >= 100 or not active:
        return None
    stable = split_targets[0] if split_targets else active
    if stable == desired.model_id:
        return None
    return stable, desired.model_id, pct
