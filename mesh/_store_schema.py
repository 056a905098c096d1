"""Store records and key layout.

All keys live under a configurable prefix ``P`` (``MODELMUX_STORE_PREFIX``,
default ``/modelmux``). Values are JSON documents; every record carries a
``v`` schema version. Records are changed by compare-and-swap on the key's
mod revision only; lease-bound records vanish with their instance.

==================================  =========================  ==================================
key                                 written by                 content
==================================  =========================  ==================================
``P/instances/{instance}``          that instance (lease)      :class:`InstanceRecord`
``P/models/{model}``                management API             :class:`ModelRecord` (spec)
``P/vmodels/{vmodel}``              management API             :class:`VModelRecord`
``P/assignments/{model}``           placement leader           :class:`AssignmentRecord` (desired)
``P/copies/{model}/{instance}``     that instance (lease)      :class:`CopyRecord` (actual state)
``P/misses/{model}``                any router (create-only)   :class:`MissRecord` (load request)
``P/tenants/{tenant}``              management API             :class:`TenantRecord` (byte quota)
``P/leader``                        the leader (lease)         :class:`LeaderRecord`
``P/decisions/{seq}``               placement leader           :class:`DecisionRecord` (log)
==================================  =========================  ==================================

The decision log is written by the leader in the same transaction as the assignment
changes it records (one record per applied decision, ``seq`` zero-padded so that keys sort
in order), and trimmed by the leader to the newest records; every instance mirrors it, so
any instance can show why a model is where it is. A record that removes copies also carries
what the leader remembers of those models' traffic (``usage``): a new leader rebuilds its
history of evicted models from the log instead of starting blind.

Desired state (assignments) and actual state (copies) are separate key families
so that the scheduler and each agent write only their own keys: an agent never
contends with another for a model record, and a dead instance's copies disappear
with its lease. A miss is one create-only key, so concurrent first requests on
every instance collapse into one placement and one load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, TypeVar

SCHEMA_VERSION = 1


class CopyState(StrEnum):
    """Where one copy of a model on one instance is (the values are what the store holds)."""

    LOADING = "loading"
    LOADED = "loaded"
    FAILED = "failed"
    UNLOADING = "unloading"


@dataclass(frozen=True)
class Keys:
    prefix: str = "/modelmux"

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", self.prefix.rstrip("/"))

    @property
    def instances(self) -> str:
        return f"{self.prefix}/instances/"

    @property
    def models(self) -> str:
        return f"{self.prefix}/models/"

    @property
    def vmodels(self) -> str:
        return f"{self.prefix}/vmodels/"

    @property
    def assignments(self) -> str:
        return f"{self.prefix}/assignments/"

    @property
    def copies(self) -> str:
        return f"{self.prefix}/copies/"

    @property
    def misses(self) -> str:
        return f"{self.prefix}/misses/"

    @property
    def tenants(self) -> str:
        return f"{self.prefix}/tenants/"

    @property
    def leader(self) -> str:
        return f"{self.prefix}/leader"

    @property
    def decisions(self) -> str:
        return f"{self.prefix}/decisions/"

    def decision(self, seq: int) -> str:
        return f"{self.decisions}{seq:012d}"

    def instance(self, iid: str) -> str:
        return self.instances + iid

    def model(self, mid: str) -> str:
        return self.models + mid

    def vmodel(self, name: str) -> str:
        return self.vmodels + name

    def assignment(self, mid: str) -> str:
        return self.assignments + mid

    def copy(self, mid: str, iid: str) -> str:
        return f"{self.copies}{mid}/{iid}"

    def miss(self, mid: str) -> str:
        return self.misses + mid

    def tenant(self, name: str) -> str:
        return self.tenants + name


@dataclass(frozen=True)
class InstanceRecord:
    instance_id: str
    address: str  # host:port of the gRPC server
    rest_address: str = ""
    link_address: str = ""  # host:port of the peer link (mesh._peer_link); empty: forward over gRPC
    capacity_bytes: int = 0
    used_bytes: int = 0
    model_count: int = 0
    loading: int = 0
    loading_slots: int = 2
    lru_oldest: float = 0.0  # wall time of the least recently used loaded model
    rpm: float = 0.0
    zone: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    version: str = ""
    shutting_down: bool = False
    started_at: float = 0.0
    requests: int = 0  # requests from clients since start (cumulative)
    misses: int = 0  # loads this instance's router asked for (cumulative)


@dataclass(frozen=True)
class ModelRecord:
    model_id: str
    model_type: str
    path: str = ""  # storage URI or local path
    storage_key: str = ""  # storage-config key
    schema_path: str = ""
    tenant: str = ""
    min_copies: int = 0
    max_copies: int = 0
    pinned: bool = False
    predicted_size_bytes: int = 0
    registered_at: float = 0.0
    last_used: float = 0.0  # initial priority (registration's lastUsedTime)
    auto_delete: bool = False  # delete once no vModel refers to it
    options: dict[str, str] = field(default_factory=dict)
    # the runtime that must serve it, by name (a configured external runtime: a ServingRuntime the
    # controller chose); "": chosen by model type (in process, an isolated worker or an external
    # runtime that lists the type)
    runtime: str = ""


@dataclass(frozen=True)
class VModelRecord:
    name: str
    active: str
    target: str
    owner: str = ""
    failed: bool = False
    failure: str = ""
    updated_at: float = 0.0
    tenant: str = ""  # the tenant of the caller that created it (only that tenant and admins see it)
    # weighted targets and shadow (TrafficSplit.to_json()); None: the vModel serves ``active``.
    # Optional, so records written before splits existed decode unchanged.
    split: dict[str, Any] | None = None

    def referenced(self) -> set[str]:
        """Every model this vModel points at (active, target, split targets and shadow)."""
        out = {self.active, self.target}
        if self.split:
            out |= {t.get("model_id", "") for t in self.split.get("targets") or () if isinstance(t, dict)}
            shadow = self.split.get("shadow")
            if isinstance(shadow, dict) and shadow.get("model_id"):
                out.add(shadow["model_id"])
        out.discard("")
        return out


@dataclass(frozen=True)
class AssignmentRecord:
    model_id: str
    instances: tuple[str, ...] = ()
    reasons: dict[str, str] = field(default_factory=dict)  # instance -> why it was placed
    updated_at: float = 0.0
    # the size placement planned with (its estimate before a copy is measured): the agent reserves
    # this much for the load, so agent and leader agree on what fits; 0 from older leaders
    planned_bytes: int = 0


@dataclass(frozen=True)
class CopyRecord:
    model_id: str
    instance_id: str
    state: CopyState
    since: float  # wall time of the last state change
    size_bytes: int = 0
    size_measured: bool = False
    load_time_s: float = 0.0
    last_used: float = 0.0
    rpm: float = 0.0  # requests per minute now, over the instance's sliding rate window (dashboards)
    # the copy's traffic as placement values it: placement.Usage's rate at ``last_used`` (time constant
    # the instances' usage window: the policy's frequency horizon, hours), changed only by requests;
    # the leader merges the copies' reports
    usage_rpm: float = 0.0
    # the same estimator over the instances' rate_window_s (a minute): the rate ticks add copies by
    recent_rpm: float = 0.0
    error: str = ""
    failed_until: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", CopyState(self.state))  # decoded from the store as a plain string


@dataclass(frozen=True)
class MissRecord:
    model_id: str
    instance_id: str  # who asked
    at: float
    error: str = ""  # set by the leader when the model cannot be placed


@dataclass(frozen=True)
class LeaderRecord:
    instance_id: str
    since: float


@dataclass(frozen=True)
class TenantRecord:
    """A tenant's quota: its models' assigned copies together may hold at most ``max_bytes``
    (0: no byte quota), and each instance admits at most ``max_rps`` of its requests per second
    (0: no rate limit; see :class:`~mesh._admission.TenantRates`)."""

    name: str
    max_bytes: int
    source: str = ""  # who set it: "api", or the Kubernetes object it came from
    updated_at: float = 0.0
    max_rps: float = 0.0


@dataclass(frozen=True)
class DecisionRecord:
    """One decision the placement leader applied: its actions, each a dict with ``kind``
    (``load`` / ``unload`` / ``reject``), ``model_id``, ``instance_id`` and ``reason``."""

    seq: int
    at: float
    leader: str
    actions: tuple[dict[str, str], ...] = ()
    # per model a copy of which the decision removes: what the leader remembers of its traffic once
    # those copies are gone (placement.Remembered: last_used, rate_rpm, load_time_s, size_bytes), so
    # that a new leader rebuilds that history from the log (mesh._placement_view)
    usage: dict[str, list[float]] = field(default_factory=dict)


R = TypeVar("R")

_FIELDS: dict[type, tuple[frozenset[str], tuple[str, ...], frozenset[str]]] = {}


def _fields_of(cls: type) -> tuple[frozenset[str], tuple[str, ...], frozenset[str]]:
    """A record class's field names, in order and as a set, and those typed as tuples (cached:
    ``dataclasses.fields`` walks the class's field objects on every call)."""
    got = _FIELDS.get(cls)
    if got is None:
        fs = fields(cls)  # type: ignore[arg-type]
        got = (frozenset(f.name for f in fs), tuple(f.name for f in fs),
               frozenset(f.name for f in fs if str(f.type).startswith("tuple")))
        _FIELDS[cls] = got
    return got


def encode(record: Any) -> bytes:
    """The record as stored: its fields and the schema version, JSON with sorted keys.

    The fields are read as they are, not through ``dataclasses.asdict``, which deep-copies every
    value (records hold only JSON values: numbers, strings, tuples, dicts), for the same bytes at
    a third of the cost: an instance writes its copies' records every second."""
    data = {name: getattr(record, name) for name in _fields_of(type(record))[1]}
    data["v"] = SCHEMA_VERSION
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def decode(cls: type[R], raw: bytes) -> R:
    data = json.loads(raw)
    data.pop("v", None)
    names, _, tuples = _fields_of(cls)
    kwargs = {k: v for k, v in data.items() if k in names}
    for name in tuples:
        if name in kwargs and isinstance(kwargs[name], list):
            kwargs[name] = tuple(kwargs[name])
    return cls(**kwargs)
