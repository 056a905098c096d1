"""ServingRuntime / ClusterServingRuntime objects -> the runtimes a model may be served by, and
which one serves a model (pure: no I/O).

KServe's rules (facts from its ServingRuntime API; the choice itself is ours to code):

- ``spec.supportedModelFormats[]``: ``{name, version, autoSelect, priority}``. A model matches an
  entry when the format names are equal (case-insensitive) and the versions agree: the model
  names none, the entry names none, or they are equal.
- ModelMesh serves only multi-model runtimes: ``spec.multiModel: true``. ``spec.disabled:
  true`` takes a runtime out of use.
- A model that names a runtime (Predictor ``spec.runtime.name``, InferenceService
  ``spec.predictor.model.runtime`` or the ``serving.kserve.io/servingRuntime`` annotation) is
  served by that runtime: a ServingRuntime of its namespace, else a ClusterServingRuntime of
  that name, else the built-in one; ``autoSelect`` does not matter then.
- A model that names none gets one chosen among the entries with ``autoSelect: true``:
  ServingRuntimes of its namespace first, then ClusterServingRuntimes, then the built-in
  runtime; within each group the highest ``priority`` wins (an entry without one counts as
  0), ties by name, so the choice is the same on every controller replica.

The built-in runtime (``modelmux``: the instances' own adapters) is known without an object;
a ServingRuntime of the same name replaces it in its namespace (``deploy/runtimes``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._kinds import NO_SUPPORTING_RUNTIME, RUNTIME_NOT_RECOGNIZED


@dataclass(frozen=True)
class ModelFormat:
    """One ``supportedModelFormats`` entry (``name`` in lower case)."""

    name: str
    version: str | None = None
    auto_select: bool = True
    priority: int = 0

    def matches(self, name: str, version: str | None) -> bool:
        return self.name == name and (not version or not self.version or self.version == version)


@dataclass(frozen=True)
class Runtime:
    """A runtime that may serve models: the model formats it serves.

    ``model_types``: every format name; ``auto_select``: the formats a model that names no
    runtime may be given it for. ``formats`` carries versions and priorities (when empty, it is
    derived from the two sets, priority 0). ``kind``: ``builtin``, ``ServingRuntime`` or
    ``ClusterServingRuntime``. A disabled or single-model runtime is kept (so that naming it
    gets a clear reason) but never serves.
    """

    name: str
    model_types: frozenset[str]
    auto_select: frozenset[str]
    formats: tuple[ModelFormat, ...] = ()
    kind: str = "builtin"
    multi_model: bool = True
    disabled: bool = False
    grpc_data_endpoint: str = ""
    protocols: tuple[str, ...] = ()

    def entries(self) -> tuple[ModelFormat, ...]:
        if self.formats:
            return self.formats
        return tuple(ModelFormat(t, None, t in self.auto_select, 0) for t in sorted(self.model_types))

    def entry_for(self, name: str, version: str | None, *, auto: bool) -> ModelFormat | None:
        """The best entry serving format ``name`` (and ``version``); ``auto``: autoSelect ones only."""
        found = [f for f in self.entries() if f.matches(name, version) and (f.auto_select or not auto)]
        return max(found, key=lambda f: f.priority) if found else None

    @property
    def usable(self) -> bool:
        return self.multi_model and not self.disabled


@dataclass(frozen=True)
class RuntimeChoice:
    """The runtime that serves a model, or why none does (``reason``: a FailureReason)."""

    runtime: Runtime | None
    reason: str = ""
    message: str = ""


def _int(value: Any) -> int:
    if isinstance(value, bool) or value is None:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def runtime_from_object(obj: Mapping[str, Any]) -> Runtime | None:
    """A ServingRuntime or ClusterServingRuntime object -> :class:`Runtime` (None when malformed)."""
    try:
        spec = obj.get("spec") or {}
        name = str((obj.get("metadata") or {}).get("name", ""))
        if not name or not isinstance(spec, Mapping):
            return None
        formats: list[ModelFormat] = []
        for fmt in spec.get("supportedModelFormats") or ():
            fname = str(fmt.get("name", "")).strip().lower()
            if not fname:
                continue
            version = fmt.get("version")
            formats.append(ModelFormat(
                fname,
                str(version) if version not in (None, "") else None,
                bool(fmt.get("autoSelect", True)),
                _int(fmt.get("priority")),
            ))
        protocols = tuple(str(p).lower() for p in spec.get("protocolVersions") or ())
        return Runtime(
            name,
            frozenset(f.name for f in formats),
            frozenset(f.name for f in formats if f.auto_select),
            tuple(formats),
            kind=str(obj.get("kind") or "ServingRuntime"),
            multi_model=bool(spec.get("multiModel", False)),
            disabled=bool(spec.get("disabled", False)),
            grpc_data_endpoint=str(spec.get("grpcDataEndpoint") or spec.get("grpcEndpoint") or ""),
            protocols=protocols,
        )
    except (AttributeError, TypeError):
        return None


def runtimes_by_namespace(objects: Iterable[Mapping[str, Any]], default_namespace: str = "default") -> dict[str, dict[str, Runtime]]:
    """ServingRuntime objects -> namespace -> name -> runtime."""
    out: dict[str, dict[str, Runtime]] = {}
    for obj in objects:
        rt = runtime_from_object(obj)
        if rt is not None:
            ns = str((obj.get("metadata") or {}).get("namespace") or default_namespace)
            out.setdefault(ns, {})[rt.name] = rt
    return out


def cluster_runtimes(objects: Iterable[Mapping[str, Any]]) -> dict[str, Runtime]:
    """ClusterServingRuntime objects -> name -> runtime."""
    out: dict[str, Runtime] = {}
    for obj in objects:
        rt = runtime_from_object({**obj, "kind": "ClusterServingRuntime"})
        if rt is not None:
            out[rt.name] = rt
    return out


@dataclass(frozen=True)
class RuntimeCatalog:
    """Every runtime the controller knows: the built-in one, ClusterServingRuntimes and the
    ServingRuntimes of each namespace."""

    builtin: Runtime
    namespaced: Mapping[str, Mapping[str, Runtime]] = field(default_factory=dict)
    cluster: Mapping[str, Runtime] = field(default_factory=dict)

    def groups(self, namespace: str) -> list[list[Runtime]]:
        """The runtimes a model of ``namespace`` may use, in the order they are looked at."""
        own = dict(self.namespaced.get(namespace, {}))
        cluster = [rt for name, rt in self.cluster.items() if name not in own]
        builtin = [] if self.builtin.name in own or self.builtin.name in self.cluster else [self.builtin]
        return [list(own.values()), cluster, builtin]

    def known(self, namespace: str) -> list[str]:
        return sorted({rt.name for group in self.groups(namespace) for rt in group})

    def choose(self, namespace: str, type_name: str, version: str | None, named: str | None) -> RuntimeChoice:
        """The runtime that serves a model of format ``type_name`` (see the module doc)."""
        mtype = type_name.strip().lower()
        label = f"{type_name}" + (f" version {version}" if version else "")
        if named:
            rt = next((r for group in self.groups(namespace) for r in group if r.name == named), None)
            if rt is None:
                return RuntimeChoice(None, RUNTIME_NOT_RECOGNIZED,
                                     f"runtime '{named}' is not recognized (known: {', '.join(self.known(namespace))})")
            if rt.disabled:
                return RuntimeChoice(None, NO_SUPPORTING_RUNTIME, f"runtime '{named}' is disabled")
            if not rt.multi_model:
                return RuntimeChoice(None, NO_SUPPORTING_RUNTIME,
                                     f"runtime '{named}' is not a multi-model runtime (spec.multiModel: true is needed)")
            if rt.entry_for(mtype, version, auto=False) is None:
                served = ", ".join(f.name + (f":{f.version}" if f.version else "") for f in rt.entries()) or "none"
                return RuntimeChoice(None, NO_SUPPORTING_RUNTIME,
                                     f"runtime '{named}' does not support model type '{label}' (it supports: {served})")
            return RuntimeChoice(rt)
        for group in self.groups(namespace):
            ranked = sorted(
                ((entry.priority, rt.name, rt) for rt in group if rt.usable
                 if (entry := rt.entry_for(mtype, version, auto=True)) is not None),
                key=lambda t: (-t[0], t[1]),
            )
            if ranked:
                return RuntimeChoice(ranked[0][2])
        supported = sorted({f.name for group in self.groups(namespace) for rt in group if rt.usable
                            for f in rt.entries() if f.auto_select})
        return RuntimeChoice(None, NO_SUPPORTING_RUNTIME,
                             f"model type '{label}' is not supported by any runtime (supported: {', '.join(supported) or 'none'})")
