"""Fakes for building a Router, an Agent or a Leader directly: a store with a mirror over it, peers
that answer forwarded calls, a manual clock, a model that answers in process, an adapter and a puller.

Peers are real ``grpc.aio`` servers on ``127.0.0.1:0`` (the router's channels and forwarding run
for real); what they answer is up to the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from mesh._cluster_mirror import ClusterMirror
from mesh._store import MemoryStore
from mesh._store_schema import (
    AssignmentRecord,
    CopyRecord,
    CopyState,
    InstanceRecord,
    Keys,
    ModelRecord,
    VModelRecord,
    encode,
)
from protos import grpc_predict_v2_pb2 as pb
from puller import StagedArtifact
from runtime_adapters import (
    InferOutput,
    InferRequest,
    InferResponse,
    LoadedModel,
    ModelMetadata,
    ModelNotLoaded,
    ModelSpec,
    RuntimeAdapter,
    RuntimeStatus,
)
from runtime_adapters._types import ModelState


class ManualClock:
    """Wall time that moves only when a test says so."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ---------------------------------------------------------------- store + mirror


class World:
    """A memory store, the mirror of it an instance would keep, and writers for the records."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.store = MemoryStore()
        self.keys = Keys("/t")
        self.mirror = ClusterMirror(self.store, self.keys, clock=clock)

    async def model(self, mid: str, **kw: Any) -> None:
        await self.store.put(self.keys.model(mid), encode(ModelRecord(model_id=mid, model_type="fake", path=f"/m/{mid}", **kw)))

    async def vmodel(self, name: str, active: str, target: str | None = None) -> None:
        rec = VModelRecord(name=name, active=active, target=target or active)
        await self.store.put(self.keys.vmodel(name), encode(rec))

    async def instance(self, iid: str, address: str, *, shutting_down: bool = False) -> None:
        rec = InstanceRecord(instance_id=iid, address=address, capacity_bytes=1 << 30, shutting_down=shutting_down)
        await self.store.put(self.keys.instance(iid), encode(rec))

    async def copy(self, mid: str, iid: str, state: CopyState = CopyState.LOADED, **kw: Any) -> None:
        rec = CopyRecord(model_id=mid, instance_id=iid, state=state, since=self.clock(), **kw)
        await self.store.put(self.keys.copy(mid, iid), encode(rec))

    async def assign(self, mid: str, *iids: str) -> None:
        await self.store.put(self.keys.assignment(mid), encode(AssignmentRecord(mid, tuple(iids))))

    async def settle(self, predicate: Callable[[], bool], what: str = "mirror") -> None:
        assert await self.mirror.wait_for(predicate, 5.0), f"the mirror never showed {what}"


@asynccontextmanager
async def world(clock: ManualClock | None = None) -> AsyncIterator[World]:
    w = World(clock or ManualClock())
    await w.mirror.start()
    try:
        yield w
    finally:
        await w.mirror.stop()
        await w.store.close()


# ---------------------------------------------------------------- peers


@dataclass
class PeerCall:
    payload: bytes
    metadata: dict[str, str]


@dataclass
class FakePeer:
    """A peer instance's V2 endpoint: records each forwarded call, then runs ``behaviour`` (which may
    abort with a status) or answers ``reply``."""

    reply: bytes = b"peer-answer"
    calls: list[PeerCall] = field(default_factory=list)
    behaviour: Callable[[PeerCall, grpc.aio.ServicerContext], Any] | None = None
    address: str = ""
    server: grpc.aio.Server | None = None

    async def _infer(self, payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
        md = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        call = PeerCall(payload, md)
        self.calls.append(call)
        if self.behaviour is not None:
            out = self.behaviour(call, context)
            if asyncio.iscoroutine(out):
                await out
        return self.reply

    async def start(self) -> FakePeer:
        self.server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(self._infer)}
        )
        self.server.add_generic_rpc_handlers((handler,))
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.address = f"127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)


def abort_with(code: grpc.StatusCode) -> Callable[[PeerCall, grpc.aio.ServicerContext], Any]:
    async def behaviour(_call: PeerCall, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, f"fake peer: {code.name}")

    return behaviour


# ---------------------------------------------------------------- models, adapter, puller

META = ModelMetadata(name="fake", platform="fake", versions=("1",), inputs=(), outputs=())


class FakeModel(LoadedModel):
    """Answers in process with one output named after the model; ``evicted`` makes the next call
    fail as a copy unloaded between the router's look-up and the call would."""

    def __init__(self, model_id: str, size_bytes: int = 1000) -> None:
        self.spec = ModelSpec(model_id=model_id, model_type="fake")
        self.size_bytes = size_bytes
        self.metadata = META
        self.evicted = False
        self.unloaded = False
        self.calls = 0

    async def infer(self, request: InferRequest) -> InferResponse:
        self.calls += 1
        if self.evicted or self.unloaded:
            raise ModelNotLoaded(f"{self.spec.model_id} is not loaded")
        out = InferOutput(name=self.spec.model_id, datatype="FP32", shape=(1,), raw=b"\x00\x00\x80\x3f")
        return InferResponse(model_name=self.spec.model_id, outputs=(out,), id=request.id)

    async def unload(self) -> None:
        self.unloaded = True

    @property
    def status(self) -> ModelState:
        return ModelState.UNLOADED if self.unloaded else ModelState.LOADED


class FakeAdapter(RuntimeAdapter):
    name = "fake"
    model_types = ("fake",)

    def __init__(self) -> None:
        self.fail: dict[str, str] = {}  # model id -> error its load raises
        self.gate: asyncio.Event | None = None  # loads wait for it when set
        self.loaded: dict[str, FakeModel] = {}
        self.sizes: dict[str, int] = {}  # model id -> its measured size (default 2000)
        self.calls: list[str] = []  # model ids, in the order their loads started

    async def load(self, spec: ModelSpec, local_path: Path) -> LoadedModel:
        self.calls.append(spec.model_id)
        if self.gate is not None:
            await self.gate.wait()
        if spec.model_id in self.fail:
            raise RuntimeError(self.fail[spec.model_id])
        model = self.loaded[spec.model_id] = FakeModel(spec.model_id, self.sizes.get(spec.model_id, 2000))
        return model

    def predict_size(self, spec: ModelSpec, local_path: Path) -> int:
        return 1500

    async def status(self) -> RuntimeStatus:
        return RuntimeStatus(name="fake", ready=True, loaded_models=len(self.loaded), used_bytes=0)


class FakePuller:
    """Serves every artifact in place; counts what is staged and released."""

    def __init__(self) -> None:
        self.staged: list[str] = []
        self.tenants: list[str | None] = []  # the tenant each stage was asked for
        self.released: list[str] = []

    async def stage(self, ref: Any, *, tenant: str | None = None) -> StagedArtifact:
        key = str(ref.storage_uri or ref.path)
        self.staged.append(key)
        self.tenants.append(tenant)
        await asyncio.sleep(0)  # staging yields, as a real one does (other loads run meanwhile)
        return StagedArtifact(key=key, local_path=Path(key), size_bytes=0, in_place=True)

    async def release(self, key: str) -> None:
        self.released.append(key)


def request(name: str = "m", rid: str = "r1") -> InferRequest:
    return InferRequest(model_name=name, inputs=(), id=rid)


def request_bytes(name: str = "m") -> bytes:
    return pb.ModelInferRequest(model_name=name, id="r1").SerializeToString()
