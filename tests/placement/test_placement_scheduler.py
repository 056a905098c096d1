"""Scheduler tests with an in-memory store: lease election, atomic CAS batches, failover, repairs, scaling."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import pytest
from placement_views import GB

from placement import (
    Action,
    ClusterView,
    CopyView,
    DecisionConflict,
    InstanceView,
    ModelView,
    NotLeader,
    Policy,
    PolicySettings,
    Scheduler,
    SoloElection,
)

TTL = 10.0


class ManualClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass(frozen=True)
class VersionedView(ClusterView):
    version: int = 0


class MemStore:
    """Cluster state + one leader lease, on a manual clock; every change bumps ``version`` and wakes waiters."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.instances: dict[str, InstanceView] = {}
        self.models: dict[str, ModelView] = {}
        self.version = 0
        self.commits: list[tuple[str, list[Action]]] = []
        self.holder: str | None = None
        self.expires = 0.0
        self.alive: set[str] = set()
        self._cond = asyncio.Condition()

    async def changed(self) -> None:
        self.version += 1
        async with self._cond:
            self._cond.notify_all()

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        async def _wait() -> None:
            async with self._cond:
                await self._cond.wait_for(pred)

        await asyncio.wait_for(_wait(), timeout)

    async def wait_change(self, timeout: float) -> None:
        async with self._cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._cond.wait(), timeout)

    # -- lease
    def lease_valid(self, name: str) -> bool:
        return self.holder == name and self.clock() < self.expires

    async def advance(self, dt: float) -> None:
        """Time passes; live processes keep their lease alive (keepalive), dead ones do not."""
        self.clock.t += dt
        if self.holder in self.alive and self.clock() < self.expires:
            self.expires = self.clock() + TTL
        await self.changed()

    # -- cluster
    def view(self) -> VersionedView:
        used: dict[str, int] = {}
        loading: dict[str, int] = {}
        for m in self.models.values():
            for iid in m.assigned:
                used[iid] = used.get(iid, 0) + m.size_bytes
                c = m.copy_on(iid)
                if c is None or c.state == "loading":
                    loading[iid] = loading.get(iid, 0) + 1
        insts = {i: replace(v, used_bytes=used.get(i, 0), loading=loading.get(i, 0)) for i, v in self.instances.items()}
        return VersionedView(now=self.clock(), instances=insts, models=dict(self.models), version=self.version)

    def commit(self, actions: Sequence[Action], by: str) -> None:
        for a in actions:
            m = self.models[a.model_id]
            if a.kind == "load":
                assert a.instance_id not in m.assigned, f"duplicate assignment {a}"
                self.models[a.model_id] = replace(
                    m, assigned=m.assigned | {a.instance_id}, copies=(*m.copies, CopyView(a.instance_id, "loading", self.clock()))
                )
            else:
                assert a.instance_id in m.assigned, a
                self.models[a.model_id] = replace(
                    m, assigned=m.assigned - {a.instance_id}, copies=tuple(c for c in m.copies if c.instance_id != a.instance_id)
                )
        v = self.view()
        for i in v.instances.values():
            assert i.used_bytes <= i.capacity_bytes, f"{i.instance_id} over capacity"
        self.commits.append((by, list(actions)))

    async def finish_loads(self) -> None:
        """The agents report every loading copy as loaded."""
        for mid, m in self.models.items():
            if any(c.state == "loading" for c in m.copies):
                self.models[mid] = replace(
                    m, copies=tuple(CopyView(c.instance_id, "loaded", self.clock()) for c in m.copies)
                )
        await self.changed()


class MemBackend:
    def __init__(self, store: MemStore, name: str, before_commit: Callable[[], Awaitable[None]] | None = None) -> None:
        self.store = store
        self.name = name
        self.before_commit = before_commit
        self.conflicts = 0

    async def view(self) -> ClusterView:
        await asyncio.sleep(0)  # a store read is a suspension point
        return self.store.view()

    async def apply(self, actions: Sequence[Action], based_on: ClusterView) -> bool:
        if self.before_commit is not None:
            await self.before_commit()
        # one transaction: compare (leader lease, version) and write, with no suspension point between
        assert isinstance(based_on, VersionedView)
        if self.name not in self.store.alive:
            return False  # a killed process writes nothing more
        if not self.store.lease_valid(self.name) or based_on.version != self.store.version:
            self.conflicts += 1
            return False
        self.store.commit(actions, self.name)
        await self.store.changed()
        return True

    async def wait_change(self, timeout_s: float) -> None:
        await self.store.wait_change(timeout_s)


class LeaseElection:
    def __init__(self, store: MemStore, name: str) -> None:
        self.store = store
        self.name = name
        store.alive.add(name)

    async def campaign(self) -> None:
        def free() -> bool:
            s = self.store
            return s.holder is None or s.holder == self.name or s.clock() >= s.expires

        await self.store.wait_for(free, timeout=3600)
        self.store.holder = self.name
        self.store.expires = self.store.clock() + TTL
        await self.store.changed()

    @property
    def is_leader(self) -> bool:
        return self.store.lease_valid(self.name)

    async def wait_lost(self) -> None:
        await self.store.wait_for(lambda: not self.is_leader, timeout=3600)

    async def resign(self) -> None:
        if self.name not in self.store.alive:
            return  # a killed process says nothing more
        if self.store.holder == self.name:
            self.store.holder = None
            await self.store.changed()


SETTINGS = PolicySettings(min_residency_s=30, scale_out_rpm_per_copy=100, scale_in_rpm_per_copy=20)


def setup_store(clock: ManualClock, n_inst: int = 3, cap: int = 10 * GB) -> MemStore:
    s = MemStore(clock)
    for k in range(n_inst):
        s.instances[f"i{k}"] = InstanceView(f"i{k}", cap, 0, loading_slots=4, zone=f"z{k % 2}")
    return s


def start(store: MemStore, name: str, **kw: object) -> tuple[Scheduler, asyncio.Task[None]]:
    sched = Scheduler(Policy(SETTINGS), MemBackend(store, name, **kw), LeaseElection(store, name), tick_s=3600, clock=store.clock)  # type: ignore[arg-type]
    return sched, asyncio.create_task(sched.run(), name=f"sched-{name}")


async def kill(task: asyncio.Task[None], store: MemStore, name: str) -> None:
    """kill -9: the process's tasks vanish, its lease is no longer kept alive."""
    store.alive.discard(name)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def assigned_count(store: MemStore) -> dict[str, int]:
    return {mid: len(m.assigned) for mid, m in store.models.items()}


# ------------------------------------------------------------------ tests


async def test_follower_refuses_and_leader_places() -> None:
    clock = ManualClock()
    store = setup_store(clock)
    store.models["m"] = ModelView("m", GB)
    a, ta = start(store, "a")
    await store.wait_for(lambda: store.holder == "a")
    b, tb = start(store, "b")
    with pytest.raises(NotLeader):
        await b.place("m")
    got = await asyncio.gather(*(a.place("m") for _ in range(5)))  # single-flight: one decision
    assert all(g == got[0] for g in got) and len(got[0]) == 1
    assert assigned_count(store) == {"m": 1}
    assert await a.place("m") == []  # already assigned
    await a.stop()
    await b.stop()
    await asyncio.wait_for(asyncio.gather(ta, tb), 5)
    assert store.holder is None  # resigned on the way out


async def test_failover_during_load_storm_no_duplicate_or_lost_assignments() -> None:
    clock = ManualClock()
    store = setup_store(clock, n_inst=4, cap=40 * GB)
    names = [f"m{k:03d}" for k in range(120)]
    for mid in names:
        store.models[mid] = ModelView(mid, GB // 4)
    first_budget = 30  # commits the first leader makes; then its decisions hang mid-commit until it dies
    first_holder: list[str] = []
    never = asyncio.Event()

    def hook(name: str) -> Callable[[], Awaitable[None]]:
        async def before_commit() -> None:
            nonlocal first_budget
            if first_holder and name == first_holder[0]:
                if first_budget <= 0:
                    await never.wait()
                first_budget -= 1

        return before_commit

    scheds = {n: start(store, n, before_commit=hook(n)) for n in ("a", "b", "c")}
    procs: dict[str, set[asyncio.Task[list[Action]]]] = {n: set() for n in scheds}
    await store.wait_for(lambda: store.holder is not None)
    first = store.holder
    assert first is not None
    first_holder.append(first)

    async def router(mid: str) -> None:
        """A router's miss: a call to whoever leads; NotLeader or a dying leader: ask again."""
        while True:
            leader = store.holder
            if leader is not None and store.lease_valid(leader) and leader in store.alive:
                call = asyncio.create_task(scheds[leader][0].place(mid))
                procs[leader].add(call)
                try:
                    await call
                    return
                except (NotLeader, DecisionConflict, asyncio.CancelledError):
                    pass
                finally:
                    procs[leader].discard(call)
            await store.wait_change(0.05)

    storm = [asyncio.create_task(router(mid)) for mid in names]
    await store.wait_for(lambda: first_budget <= 0 and len(procs[first]) > 0)
    killed_at = clock()
    in_flight = len(procs[first])
    await kill(scheds[first][1], store, first)
    for call in list(procs[first]):  # its in-flight calls fail with it
        call.cancel()
    # time passes in steps; the dead leader's lease runs out, another takes over within the TTL
    while clock() < store.expires:
        await store.advance(TTL / 4)
    await store.wait_for(lambda: store.holder is not None and store.holder != first and store.lease_valid(store.holder))
    assert clock() - killed_at <= TTL + TTL / 4
    await asyncio.wait_for(asyncio.gather(*storm), 10)
    counts = assigned_count(store)
    assert set(counts.values()) == {1}, {m: c for m, c in counts.items() if c != 1}  # none lost, none twice
    dead_commits = [c for by, c in store.commits if by == first]
    assert len(dead_commits) == 30 and in_flight > 0
    assert sum(len(c) for _, c in store.commits) == 120
    for name, (s, t) in scheds.items():
        if name != first:
            await s.stop()
            await asyncio.wait_for(t, 5)


async def test_leader_loss_mid_decision_applies_nothing() -> None:
    clock = ManualClock()
    store = setup_store(clock)
    store.models["m"] = ModelView("m", GB, min_copies=2)
    gate = asyncio.Event()
    reached = asyncio.Event()

    async def before_commit() -> None:
        reached.set()
        await gate.wait()

    sched, task = start(store, "a", before_commit=before_commit)
    await asyncio.wait_for(reached.wait(), 5)  # the tick decided (2 loads) and is about to commit
    store.alive.discard("a")
    await store.advance(TTL + 1)  # lease expired meanwhile
    assert not sched.is_leader
    gate.set()
    await store.wait_for(lambda: store.holder is None or not store.lease_valid("a"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert store.commits == [] and assigned_count(store) == {"m": 0}
    await sched.stop()
    await asyncio.wait_for(task, 5)


async def test_min_copies_restored_after_instance_dies() -> None:
    clock = ManualClock()
    store = setup_store(clock, n_inst=3)
    store.models["m"] = ModelView("m", GB, min_copies=2)
    sched, task = start(store, "a")
    await store.wait_for(lambda: len(store.models["m"].assigned) == 2)
    await store.finish_loads()
    victim = sorted(store.models["m"].assigned)[0]
    store.instances[victim] = replace(store.instances[victim], state="dead")
    await store.changed()
    await store.wait_for(lambda: len(store.models["m"].assigned) == 2 and victim not in store.models["m"].assigned)
    reasons = [a.reason_word for _, acts in store.commits for a in acts]
    assert "instance_dead" in reasons and reasons.count("min_copies") == 3
    await sched.stop()
    await asyncio.wait_for(task, 5)


async def test_hot_model_scales_out_then_in_when_idle() -> None:
    clock = ManualClock()
    store = setup_store(clock, n_inst=3)
    store.models["hot"] = ModelView("hot", GB, last_used=clock(), rate_rpm=250)
    sched, task = start(store, "a")
    await store.wait_for(lambda: sched.is_leader)
    await sched.place("hot")
    await store.finish_loads()
    # 250 rpm: > 100 per copy with 1 and 2 copies; 3 copies on 3 instances
    for n in (2, 3):
        await store.wait_for(lambda n=n: len(store.models["hot"].assigned) == n)  # type: ignore[misc]
        await store.finish_loads()
    # quiet (5 rpm): one copy goes once past min residency; the regular-use second copy stays until cold
    store.models["hot"] = replace(store.models["hot"], rate_rpm=5.0)
    await store.advance(SETTINGS.min_residency_s + 1)
    await store.wait_for(lambda: len(store.models["hot"].assigned) == 2)
    await store.advance(SETTINGS.cold_idle_s + 1)
    await store.wait_for(lambda: len(store.models["hot"].assigned) == 1)
    words = [a.reason_word for _, acts in store.commits for a in acts]
    assert words == ["miss", "scale_out", "scale_out", "scale_in", "cold"]
    await sched.stop()
    await asyncio.wait_for(task, 5)


async def test_conflicts_are_retried_then_given_up() -> None:
    clock = ManualClock()
    store = setup_store(clock)
    store.models["m"] = ModelView("m", GB)

    class Flaky(MemBackend):
        fail = 2

        async def apply(self, actions: Sequence[Action], based_on: ClusterView) -> bool:
            if self.fail:
                self.fail -= 1
                return False
            return await super().apply(actions, based_on)

    election = SoloElection()
    store.holder, store.expires = "solo", float("inf")
    store.alive.add("solo")
    backend = Flaky(store, "solo")
    sched = Scheduler(Policy(SETTINGS), backend, election, tick_s=3600, clock=clock, max_attempts=3)
    await election.campaign()
    assert len(await sched.place("m")) == 1
    store.models["n"] = ModelView("n", GB)
    backend.fail = 5
    with pytest.raises(DecisionConflict) as ei:
        await sched.place("n")
    assert ei.value.code == "aborted"
    with pytest.raises(ValueError, match="tick_s"):
        Scheduler(Policy(SETTINGS), backend, election, tick_s=0)
