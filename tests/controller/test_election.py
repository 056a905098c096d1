"""Controller replicas elect one leader through a coordination.k8s.io/v1 Lease on the API-server stand-in."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from controller import (
    LEASE,
    Controller,
    ControllerSettings,
    ElectedController,
    KubeClient,
    LeaderElector,
    build_api_client,
)
from mesh import ClusterMirror, Keys, Management
from tests.controller.k8s_env import ControllerEnv
from tests.controller.test_controller import TABLE, loaded, predictor
from tests.mesh.cluster import wait_until
from tests.mesh.models import add_model

memory_only = pytest.mark.parametrize("cluster_kind", ["memory"])

FAST = {"lease_duration_s": 2.0, "renew_deadline_s": 1.5, "retry_period_s": 0.2}


def _settings(env: ControllerEnv, identity: str) -> ControllerSettings:
    return ControllerSettings(
        kube_host=env.api.url, health_port=-1, retry_initial_s=0.05, retry_max_s=0.5,
        watch_timeout_s=30, request_timeout_s=10, identity=identity, lease_namespace="modelmux", **FAST,
    )


class Replica:
    """One controller replica: its own API client, store view and elected controller."""

    def __init__(self, env: ControllerEnv, identity: str) -> None:
        self.settings = _settings(env, identity)
        self.kube = KubeClient(build_api_client(self.settings), self.settings)
        self.store = env.store
        self.state = ClusterMirror(env.store, Keys(env.prefix))
        self.controllers: list[Controller] = []
        self.runner = ElectedController(self.settings, self.kube, self._make)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def _make(self) -> Controller:
        ctl = Controller(self.settings, self.kube, self.state, Management(self.state, self.settings.identity, store=self.store))
        self.controllers.append(ctl)
        return ctl

    async def start(self) -> None:
        await self.state.start()
        self.task = asyncio.create_task(self.runner.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, 30)
        await self.kube.close()
        await self.state.stop()

    @property
    def status_writes(self) -> int:
        return sum(c.status_writes for c in self.controllers)


def _lease(env: ControllerEnv) -> dict[str, Any]:
    return (env.obj("leases", "modelmux-controller", "modelmux") or {}).get("spec") or {}


@memory_only
async def test_one_replica_reconciles_and_the_other_takes_over(k8s_env: ControllerEnv, tmp_path: Path) -> None:
    env = k8s_env
    a, b = Replica(env, "ctl-a"), Replica(env, "ctl-b")
    try:
        await a.start()
        await wait_until(lambda: a.runner.leading, 20, "a leads")
        await b.start()
        m1 = add_model(tmp_path / "m1" / "model.onnx", 1.0, table_bytes=TABLE)
        env.api.create(predictor("one", m1))
        await env.wait(loaded(env, "one"), what="one Loaded")
        # b campaigned all along but never led: it wrote nothing
        assert not b.runner.leading and b.controllers == [] and b.status_writes == 0
        assert a.status_writes > 0
        lease = await asyncio.to_thread(lambda: _lease(env))
        assert lease["holderIdentity"] == "ctl-a" and lease["leaseDurationSeconds"] == 2

        # the leader stops (a rolling update): it releases the Lease and b takes over at once
        await a.close()
        await wait_until(lambda: b.runner.leading, 10, "b leads")
        lease = await asyncio.to_thread(lambda: _lease(env))
        assert lease["holderIdentity"] == "ctl-b" and lease["leaseTransitions"] == 0  # released, not taken over
        m2 = add_model(tmp_path / "m2" / "model.onnx", 2.0, table_bytes=TABLE)
        env.api.create(predictor("two", m2))
        await env.wait(loaded(env, "two"), what="two Loaded by the new leader")
        assert b.status_writes > 0
    finally:
        await a.close()
        await b.close()


@memory_only
async def test_a_crashed_leader_is_replaced_after_the_lease_expires(k8s_env: ControllerEnv) -> None:
    env = k8s_env
    s = _settings(env, "x")
    kubes = [KubeClient(build_api_client(s), s) for _ in range(2)]
    try:
        a = LeaderElector(kubes[0], "modelmux", "lease-1", "a", **FAST)
        b = LeaderElector(kubes[1], "modelmux", "lease-1", "b", **FAST)
        stop = asyncio.Event()
        assert await a.acquire(stop)
        assert not await b.try_acquire_or_renew()  # held, and renewed
        # a "crashes": it stops renewing without releasing
        assert a._task is not None
        a._task.cancel()
        t0 = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(b.acquire(stop), 10)
        waited = asyncio.get_running_loop().time() - t0
        assert 1.0 <= waited <= 6.0, waited  # about one lease duration as b observed it
        spec = env.api.get("leases", "modelmux", "lease-1")["spec"]  # type: ignore[index]
        assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
        await b.release()
        assert env.api.get("leases", "modelmux", "lease-1")["spec"]["holderIdentity"] == ""  # type: ignore[index]
    finally:
        for k in kubes:
            await k.close()


@memory_only
async def test_a_leader_that_cannot_renew_stops_reconciling(k8s_env: ControllerEnv, tmp_path: Path) -> None:
    env = k8s_env
    a = Replica(env, "ctl-a")
    try:
        await a.start()
        await wait_until(lambda: a.runner.leading, 20, "a leads")
        ctl = a.controllers[0]
        # the API server refuses every Lease write from now on
        refusals = [0]

        def lease_write(method: str, path: str) -> bool:
            if method == "PUT" and "/leases/" in path:
                refusals[0] += 1
                return True
            return False

        env.api.fail(lease_write, times=10_000)
        t0 = asyncio.get_running_loop().time()
        # it stops leading, and its controller (informers, workers) is stopped
        await wait_until(lambda: not a.runner.leading and not ctl.started, 10, "a stops leading")
        assert asyncio.get_running_loop().time() - t0 <= FAST["renew_deadline_s"] + 2.0
        # nothing reconciles while it cannot lead: a new object gets no status
        m1 = add_model(tmp_path / "m1" / "model.onnx", 1.0, table_bytes=TABLE)
        env.api.create(predictor("orphan", m1))
        writes = a.status_writes
        # the replica keeps campaigning (two more refused Lease writes after the object came),
        # and meanwhile nothing reconciled it
        refused = refusals[0]
        await wait_until(lambda: refusals[0] >= refused + 2, 10, "two more campaign attempts")
        assert not a.runner.leading and a.status_writes == writes
        orphan = env.api.get("predictors", "default", "orphan") or {}
        assert "status" not in orphan and not (orphan.get("metadata") or {}).get("finalizers")
        env.api.clear_faults()
        # once the API server answers again it leads again and catches up
        await wait_until(lambda: a.runner.leading, 20, "a leads again")
        await env.wait(loaded(env, "orphan"), what="orphan Loaded after re-election")
        assert a.status_writes > writes and len(a.controllers) == 2
    finally:
        await a.close()


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class _StaleKube(KubeClient):
    """Answers ``get`` of the Lease with a snapshot taken earlier (a replica that read before another wrote)."""

    stale: dict[str, Any] | None = None

    async def get(self, kind: Any, namespace: str, name: str) -> dict[str, Any] | None:
        return self.stale if self.stale is not None else await super().get(kind, namespace, name)


@memory_only
async def test_expiry_on_the_candidates_own_clock_and_conflicting_writes(k8s_env: ControllerEnv) -> None:
    """client-go semantics with injected clocks: a held Lease is taken only after a whole lease
    duration without change as the candidate saw it; a write based on a stale read gets 409 and loses."""
    env = k8s_env
    s = _settings(env, "x")
    ka, kb = KubeClient(build_api_client(s), s), KubeClient(build_api_client(s), s)
    kc = _StaleKube(build_api_client(s), s)
    ca, cb, cc = _Clock(), _Clock(), _Clock()
    cb.t = 5.0  # clocks of different replicas need not agree
    try:
        a = LeaderElector(ka, "modelmux", "l", "a", clock=ca, **FAST)
        b = LeaderElector(kb, "modelmux", "l", "b", clock=cb, **FAST)
        c = LeaderElector(kc, "modelmux", "l", "c", clock=cc, **FAST)
        assert await a.try_acquire_or_renew()
        first = env.api.get("leases", "modelmux", "l")["spec"]  # type: ignore[index]
        assert first["holderIdentity"] == "a" and first["leaseTransitions"] == 0 and first["acquireTime"]
        assert not await b.try_acquire_or_renew()  # b starts observing
        cb.t += 1.9
        assert not await b.try_acquire_or_renew()  # not yet a lease duration (2 s) on b's clock
        # a renews: b's observation restarts, so a full duration is needed again
        ca.t += 1.0
        assert await a.try_acquire_or_renew()
        cb.t += 0.2
        assert not await b.try_acquire_or_renew()
        cb.t += 1.9
        assert not await b.try_acquire_or_renew()
        # a stops renewing: 2 s after b last saw a change, b takes over
        kc.stale = await kb.get(LEASE, "modelmux", "l")  # c reads now ...
        cb.t += 0.2
        assert await b.try_acquire_or_renew()
        taken = env.api.get("leases", "modelmux", "l")["spec"]  # type: ignore[index]
        assert taken["holderIdentity"] == "b" and taken["leaseTransitions"] == 1
        assert taken["acquireTime"] != first["acquireTime"]
        # ... first only observes it; once that stale record looks expired on c's clock, c writes
        # on it: the resourceVersion moved, 409, and c does not lead
        assert not await c.try_acquire_or_renew()
        updates = env.api.stats["update leases"]
        cc.t += 10.0
        assert not await c.try_acquire_or_renew()
        assert env.api.stats["update leases"] == updates + 1  # it did try
        assert env.api.get("leases", "modelmux", "l")["spec"]["holderIdentity"] == "b"  # type: ignore[index]
        # the old leader sees b's record as fresh: it does not take it back
        ca.t += 100.0
        assert not await a.try_acquire_or_renew()
    finally:
        for k in (ka, kb, kc):
            await k.close()
