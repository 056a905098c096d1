"""Live parity: a trace replayed against a live in-process mesh decides as the simulator does.

The mesh is the real thing on a memory store: a router that serves requests and asks for loads,
an agent that loads and unloads copies (a fake adapter that answers in process, with the trace's
sizes, and whose loads take the trace's load time on the agent's monotonic clock), and the
placement leader, all on an injected wall clock set to each request's trace time. The simulator
replays the same trace with the same policy and settings, each at its default rate window (the
instances' placement meter and the simulator's both use the policy's horizon). Both meter traffic with
placement.Usage (the instances per copy, merged by the leader; the simulator per model), and the
leader remembers gone copies as the simulator's model views do, so every miss sees the same view:
the decision log must equal the simulator's decisions, one by one (which model loads where, which
copies are evicted for it, and why).

The replay is sequential: before the next request the test waits (polling the mirror with a
deadline) until the cluster has settled - the decision applied, loads done, victims unloaded and
every copy's traffic published - which is what the simulator assumes (loads complete at once).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from mesh._agent import Agent
from mesh._cluster_mirror import ClusterMirror
from mesh._leader import Leader
from mesh._loaded_copies import LoadedCopies
from mesh._router import MODEL_ID_HEADER, Router
from mesh._settings import InstanceSettings
from mesh._store_schema import CopyState
from placement import Policy, PolicySettings, Trace, TraceSpec, build_policy, generate, simulate
from runtime_adapters import AdapterRegistry, AdapterSettings, LoadedModel, ModelSpec
from tests.mesh.cluster import wait_until
from tests.mesh.fakes import FakeAdapter, FakePuller, ManualClock, World, request, world

INSTANCES = 2
SPEC = TraceSpec(
    models=30,
    requests=300,
    rate_per_s=0.5,  # ten minutes of trace: recency, residency (60 s) and rates all vary
    alpha=0.9,
    size_median_bytes=1 << 20,
    size_sigma=0.6,
    size_min_bytes=256 << 10,
    size_max_bytes=3 << 20,
    shift_period_s=150,
    scan_every_s=200,
    scan_length=8,
    scan_rate_per_s=1.0,
    seed=18,
)


def small_trace() -> Trace:
    """The trace, with load times as an agent reports them (to 0.1 ms)."""
    t = generate(SPEC)
    return replace(t, load_times=np.array([round(float(x), 4) for x in t.load_times]))


class PeerEdge:
    """A node's V2 endpoint for forwarded calls (what the gRPC edge does for them): the node's router serves
    the bytes locally. Real ``grpc.aio`` on ``127.0.0.1:0``."""

    def __init__(self) -> None:
        self.router: Router | None = None
        self.server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(self._infer)}
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    async def _infer(self, payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
        md = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        assert self.router is not None
        return await self.router.infer_bytes(md[MODEL_ID_HEADER], payload, timeout_s=30, forwarded=True)


class MonotonicClock:
    """The agents' monotonic clock: it moves only while a (fake) load runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TimedAdapter(FakeAdapter):
    """Loads take the trace's load time on the monotonic clock (no real waiting), measure the trace's size."""

    def __init__(self, mono: MonotonicClock, load_times: dict[str, float]) -> None:
        super().__init__()
        self.mono = mono
        self.load_times = load_times

    async def load(self, spec: ModelSpec, local_path: Path) -> LoadedModel:
        model = await super().load(spec, local_path)
        self.mono.now += self.load_times[spec.model_id]
        return model


@dataclass
class Node:
    iid: str
    router: Router
    agent: Agent
    leader: Leader


@dataclass
class LiveMesh:
    w: World
    nodes: list[Node]
    trace: Trace

    @property
    def mirror(self) -> ClusterMirror:
        return self.w.mirror

    def leader(self) -> Leader:
        (lead,) = [n.leader for n in self.nodes if n.leader.is_leader]
        return lead

    def settled(self) -> bool:
        """No miss waiting, every assigned copy loaded, nothing unassigned still held, traffic and bytes published."""
        m = self.mirror
        if m.misses.items:
            return False
        held: dict[str, int] = {}
        for mid, arec in m.assignments.items.items():
            copies = m.copies_of(mid)
            for iid in arec.instances:
                c = copies.get(iid)
                if c is None or c.state != CopyState.LOADED:
                    return False
                held[iid] = held.get(iid, 0) + c.size_bytes
        for mid, copies in m.copies_by_model().items():
            if set(copies) - set(m.assigned(mid)):
                return False
        for n in self.nodes:
            rec = m.instances.items.get(n.iid)
            if rec is None or rec.used_bytes != held.get(n.iid, 0) or rec.loading:
                return False
            for mid, st in n.router.usage.items():
                c = m.copies_of(mid).get(n.iid)
                if c is None or c.last_used != st.last_used:
                    return False
        return True

    def decisions(self) -> list[tuple[tuple[str, str, str, str], ...]]:
        recs = list(self.mirror.decisions.records())
        return [tuple((a["kind"], a["model_id"], a["instance_id"], a["reason"]) for a in r.actions) for r in recs]

    async def replay(self, clock: ManualClock, start: int, stop: int, on_request: Callable[[int], Any] | None = None) -> int:
        """Requests ``start`` to ``stop`` of the trace, each at its time, all sent to the first node; returns hits."""
        hits = 0
        names = self.trace.names
        for k in range(start, stop):
            clock.now = float(self.trace.times[k])
            mid = names[int(self.trace.models[k])]
            hits += bool(self.mirror.assigned(mid))
            out = await self.nodes[0].router.infer(mid, request(mid, f"r{k}"), timeout_s=30)
            assert out.model_name == mid
            await wait_until(self.settled, 30, f"the cluster settled after request {k} ({mid})")
        return hits


@asynccontextmanager
async def live_mesh(trace: Trace, settings: PolicySettings, clock: ManualClock) -> AsyncIterator[LiveMesh]:
    mono = MonotonicClock()
    per = int(trace.sizes.sum()) // 4 // INSTANCES  # a quarter of the models fit: misses evict
    load_times = dict(zip(trace.names, trace.load_times.tolist(), strict=True))
    async with world(clock) as w:
        for k, mid in enumerate(trace.names):
            await w.model(mid, predicted_size_bytes=int(trace.sizes[k]), tenant=trace.tenants[k])
        nodes: list[Node] = []
        edges: list[PeerEdge] = []
        try:
            for k in range(INSTANCES):
                edge = PeerEdge()
                await edge.server.start()
                edges.append(edge)
                iid = f"i{k:03d}"  # the simulator's instance names and zones
                st = InstanceSettings(
                    instance_id=iid, capacity_bytes=per, zone="z0", publish_interval_s=0.005, lease_ttl_s=30,
                )
                loaded = LoadedCopies()
                router = edge.router = Router(iid, w.mirror, w.store, loaded, clock=clock)
                adapter = TimedAdapter(mono, load_times)
                adapter.sizes = {mid: int(trace.sizes[i]) for i, mid in enumerate(trace.names)}
                registry = AdapterRegistry(AdapterSettings(), adapters=[adapter])
                agent = Agent(st, iid, edge.address, w.store, w.mirror, router, registry, FakePuller(),  # type: ignore[arg-type]
                              loaded=loaded, clock=clock, monotonic=mono)
                await agent.start()
                # ticks off (the simulator replays misses only): one tick at start, then none within the test
                # rate windows as a `modelmux serve` instance has them by default: the placement
                # meter's is the policy's horizon (rate_tau_s), as the simulator's default
                leader = Leader(iid, w.store, w.mirror, build_policy(settings), lambda a=agent: a.lease, tick_s=3600,
                                clock=clock)
                nodes.append(Node(iid, router, agent, leader))
            await w.settle(lambda: len(w.mirror.instances.items) == INSTANCES, "both instances")
            await nodes[0].leader.start()  # the first node leads; the other campaigns once it stops
            await wait_until(lambda: nodes[0].leader.is_leader, 10, "leadership")
            yield LiveMesh(w, nodes, trace)
        finally:
            for n in nodes:
                await n.leader.stop()
            for n in nodes:
                await n.agent.stop()
                await n.router.close()
            for e in edges:
                await e.server.stop(None)


def simulated(trace: Trace, settings: PolicySettings, policy: str, live: LiveMesh) -> tuple[list[tuple[tuple[str, str, str, str], ...]], int]:
    per = live.nodes[0].agent.settings.capacity_bytes
    res = simulate(trace, policy, instances=INSTANCES, capacity_bytes=per * INSTANCES, settings=settings,
                   record_decisions=True, time_decisions=False)
    out = [tuple((a.kind, a.model_id, a.instance_id, a.reason) for a in acts) for _, _, acts in res.decisions if acts]
    return out, res.hits


@pytest.mark.parametrize("kind", ["ours", "adaptive"])
async def test_a_live_mesh_decides_as_the_simulator_does(kind: str) -> None:
    trace = small_trace()
    settings = PolicySettings(kind=kind)  # type: ignore[arg-type]
    clock = ManualClock(0.0)
    async with live_mesh(trace, settings, clock) as live:
        hits = await live.replay(clock, 0, len(trace))
        got = live.decisions()
        want, sim_hits = simulated(trace, settings, kind, live)
    evictions = sum(1 for d in want for a in d if a[0] == "unload")
    assert evictions >= 20 and len(want) >= 40, "the trace must force evictions"
    for k, (g, s) in enumerate(zip(got, want, strict=False)):
        assert g == s, f"decision {k} differs:\nlive {g}\nsim  {s}"
    assert len(got) == len(want)
    assert hits == sim_hits
    # the decision log still says why each copy was evicted
    assert all(a[3].startswith("evict: ") for d in got for a in d if a[0] == "unload")


async def test_a_new_leader_rebuilds_the_history_and_decides_as_the_old_one_would() -> None:
    """Half the trace under the first leader, which then stops; the second node's leader, with its own
    policy and view, takes over, rebuilds the history of evicted models from the decision log, and the
    rest of the trace still decides as the simulator does (which never changed leader)."""
    trace = small_trace()
    settings = PolicySettings()
    clock = ManualClock(0.0)
    half = len(trace) // 2
    async with live_mesh(trace, settings, clock) as live:
        await live.replay(clock, 0, half)
        old = live.nodes[0].leader
        before = old.view()
        # the old leader's view outlives it
        snapshot = replace(before, models=dict(before.models), index=None,
                           evicted_for={mid: dict(seen) for mid, seen in before.evicted_for.items()})
        assert snapshot.evicted_for, "recent evictions for the swap guard"
        gone = {mid: mv for mid, mv in snapshot.models.items() if not mv.assigned and mv.last_used > 0}
        assert len(gone) >= 5, "evicted models with history"
        remembered = {mid: old._views.remembered(mid) for mid in gone}
        # the next miss as the old leader would decide it (on a copy of its policy: ours keeps no state)
        nxt = next(k for k in range(half, len(trace)) if trace.names[int(trace.models[k])] in gone)

        await old.stop()
        new = live.nodes[1].leader
        await new.start()
        await wait_until(lambda: new.is_leader, 10, "the second node leading")
        after = new.view()
        assert new.policy is not old.policy
        for mid, mv in gone.items():
            # the same traffic, reload cost and size for every evicted model: not blind (a model the new
            # leader knew nothing of would show last use 0, rate 0, a 1 s reload and its predicted size)
            assert after.models[mid] == mv, mid
            assert new._views.remembered(mid) == remembered[mid], mid
        # and the evictions of the last swap_guard_s with the model each made room for (from the log)
        assert {mid: dict(seen) for mid, seen in after.evicted_for.items()} == snapshot.evicted_for
        clock.now = float(trace.times[nxt])
        probe = trace.names[int(trace.models[nxt])]
        decided = new.policy.on_miss(new.view(), probe)
        assert decided and decided == Policy(settings).on_miss(replace(snapshot, now=clock.now), probe)

        await live.replay(clock, half, len(trace))
        got = live.decisions()
        want, _ = simulated(trace, settings, "ours", live)
    for k, (g, s) in enumerate(zip(got, want, strict=False)):
        assert g == s, f"decision {k} differs:\nlive {g}\nsim  {s}"
    assert len(got) == len(want)
    assert {r.leader for r in live.mirror.decisions.records()} == {"i000", "i001"}
