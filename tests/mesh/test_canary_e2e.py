"""Canary and shadow traffic on a vModel under steady traffic, on two instances (requests enter both,
so split choices are made on both and half the traffic is forwarded)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from mesh.cli import app
from tests import model_factory as mf
from tests.mesh.cluster import MemoryCluster, wait_until

VM = "prod"
X = [[0.25, -1.0, 2.0, 0.5]]
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": X[0]}]})


BUDGET_S = 2.0  # latency budget of one request (generous: the machine running the suite is shared)


def _p99(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.99)]


@pytest.fixture(autouse=True)
def _one_copy_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELMUX_PLACEMENT_SECOND_COPY_RPM", "1000000")


class Canary:
    def __init__(self, cluster: MemoryCluster, refs: dict[str, np.ndarray]) -> None:
        self.cluster = cluster
        self.refs = refs
        assert cluster.mesh is not None
        self.instances = list(cluster.mesh.instances)
        self.runner = CliRunner()

    def source(self, y: list[list[float]]) -> str:
        found = [m for m, ref in self.refs.items() if np.allclose(np.array(y, dtype=np.float32), ref, rtol=1e-5)]
        assert len(found) == 1, y
        return found[0]

    async def cli(self, *argv: str) -> Any:
        res = await asyncio.to_thread(self.runner.invoke, app, [*argv, "-a", self.cluster.rest[0]], env={"COLUMNS": "200"})
        assert res.exit_code == 0, res.output
        return json.loads(res.output)

    def counter(self, name: str, labels: dict[str, str]) -> float:
        return sum(i.metrics.registry.get_sample_value(name, labels) or 0.0 for i in self.instances)

    async def visible(self, check: Any) -> None:
        await wait_until(lambda: all(check(i.state.vmodels.items.get(VM)) for i in self.instances), 10, "vmodel change in every view")


async def _start(tmp_path: Path, extra: dict[str, str] | None = None) -> tuple[MemoryCluster, Canary]:
    cluster = MemoryCluster(2, tmp_path, capacity_bytes=64 << 20)
    await cluster.start()
    refs: dict[str, np.ndarray] = {}
    async with httpx.AsyncClient(base_url=cluster.rest[0], timeout=60) as c:
        for seed, mid in enumerate(("stable", "candidate", "mirror")):
            (tmp_path / mid).mkdir()
            path = mf.make_onnx_model(tmp_path / mid, kind="linear", seed=10 * seed)
            refs[mid] = mf.onnx_reference(path, {"x": np.array(X, dtype=np.float32)})["y"]
            body = {"modelInfo": {"type": "onnx", "path": str(path)}, "loadNow": True, "sync": True}
            assert (await c.post(f"/api/v1/models/{mid}", json=body)).json()["status"] == "LOADED"
        for mid, path in (extra or {}).items():  # registered, not loaded
            assert (await c.post(f"/api/v1/models/{mid}", json={"modelInfo": {"type": "onnx", "path": path}})).status_code == 200
        assert (await c.put(f"/api/v1/vmodels/{VM}", json={"targetModelId": "stable"})).status_code == 200
    canary = Canary(cluster, refs)
    await canary.visible(lambda vm: vm is not None)
    return cluster, canary


class Traffic:
    """``workers`` clients sending to both instances in turn; every answer's source and latency recorded."""

    def __init__(self, canary: Canary, workers: int = 12) -> None:
        self.canary = canary
        self.workers = workers
        self.answers: list[tuple[float, str, float]] = []  # (start time, source, latency s)
        self.failures: list[str] = []
        self.stop = asyncio.Event()
        self.sent = 0

    async def run(self, total: int | None = None, session: str | None = None) -> None:
        rest = self.canary.cluster.rest
        async with httpx.AsyncClient(timeout=30) as c:
            async def worker(k: int) -> None:
                n = k
                while not self.stop.is_set() and (total is None or self.sent < total):
                    self.sent += 1
                    headers = {"content-type": "application/json", "x-request-timeout": "10"}
                    if session:
                        headers["mm-session"] = session
                    t0 = time.monotonic()
                    try:
                        r = await c.post(f"{rest[n % len(rest)]}/v2/models/{VM}/infer", content=BODY, headers=headers)
                    except httpx.HTTPError as exc:
                        self.failures.append(repr(exc))
                        continue
                    n += 1
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text}")
                        continue
                    out = r.json()["outputs"][0]
                    self.answers.append((t0, self.canary.source(np.array(out["data"]).reshape(out["shape"]).tolist()),
                                         time.monotonic() - t0))

            await asyncio.gather(*(worker(k) for k in range(self.workers)))


async def test_split_90_10_with_shadow_sticky_sessions_and_metrics(tmp_path: Path) -> None:
    cluster, canary = await _start(tmp_path)
    try:
        out = await canary.cli("vmodel", "split", VM, "--target", "stable=90", "--target", "candidate=10", "--shadow", "mirror=10")
        assert out["split"]["targets"] == [{"model_id": "stable", "weight": 90}, {"model_id": "candidate", "weight": 10}]
        await canary.visible(lambda vm: vm is not None and vm.split)
        traffic = Traffic(canary)
        await traffic.run(total=5000)
        assert traffic.failures == []
        sources = Counter(s for _, s, _ in traffic.answers)
        assert sum(sources.values()) == 5000
        assert "mirror" not in sources  # the shadow never answers
        assert abs(sources["candidate"] / 5000 - 0.10) <= 0.03, sources
        assert _p99([lat for _, _, lat in traffic.answers]) < BUDGET_S
        # per-target metrics count exactly what was served
        for target in ("stable", "candidate"):
            assert canary.counter("modelmux_vmodel_split_requests_total", {"vmodel": VM, "target": target}) == sources[target]
        # the shadow got its ~10% (answers discarded), none failed
        def shadowed() -> float:
            return sum(canary.counter("modelmux_vmodel_shadow_requests_total", {"vmodel": VM, "result": r})
                       for r in ("ok", "error", "dropped"))
        await wait_until(lambda: shadowed() >= 350, 30, "shadow requests finished")
        ok = canary.counter("modelmux_vmodel_shadow_requests_total", {"vmodel": VM, "result": "ok"})
        assert 350 <= shadowed() <= 650 and ok >= 0.9 * shadowed()
        assert canary.counter("modelmux_vmodel_shadow_requests_total", {"vmodel": VM, "result": "error"}) == 0
        # sticky sessions: one session always lands on the same target; sessions spread over both
        per_session: dict[str, set[str]] = {}
        async with httpx.AsyncClient(timeout=30) as c:
            for k in range(100):
                for n in range(3):
                    r = await c.post(f"{cluster.rest[n % 2]}/v2/models/{VM}/infer", content=BODY,
                                     headers={"content-type": "application/json", "mm-session": f"user-{k}"})
                    out = r.json()["outputs"][0]
                    per_session.setdefault(f"user-{k}", set()).add(canary.source(np.array(out["data"]).reshape(out["shape"]).tolist()))
        assert all(len(s) == 1 for s in per_session.values()), per_session
        assert {next(iter(s)) for s in per_session.values()} == {"stable", "candidate"}
        # the vModel's status still reads as one defined vModel on its primary
        async with httpx.AsyncClient(base_url=cluster.rest[1]) as c:
            st = (await c.get(f"/api/v1/vmodels/{VM}")).json()
            assert st["status"] == "DEFINED" and st["activeModelId"] == "stable"
            # models in a split cannot be unregistered
            assert (await c.delete("/api/v1/models/candidate")).status_code == 412
            assert (await c.delete("/api/v1/models/mirror")).status_code == 412
    finally:
        await cluster.close()


async def test_promote_and_rollback_under_traffic_with_a_failing_shadow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    cluster, canary = await _start(tmp_path, extra={"broken": str(broken)})
    try:
        async with httpx.AsyncClient(base_url=cluster.rest[0], timeout=30) as c:
            r = await c.put(f"/api/v1/vmodels/{VM}/split", json={
                "targets": [{"model_id": "stable", "weight": 80}, {"model_id": "candidate", "weight": 20}],
                "shadow": {"model_id": "broken", "percent": 50}})
            assert r.status_code == 200, r.text
        await canary.visible(lambda vm: vm is not None and vm.split)
        traffic = Traffic(canary, workers=8)
        running = asyncio.create_task(traffic.run())
        try:
            await wait_until(lambda: len(traffic.answers) >= 300, 60, "traffic before promotion")
            # a shadow that cannot even load: its copies fail, the answers do not
            await wait_until(lambda: canary.counter("modelmux_vmodel_shadow_requests_total",
                                                    {"vmodel": VM, "result": "error"}) > 0, 30, "shadow errors counted")
            assert {s for _, s, _ in traffic.answers} == {"stable", "candidate"}

            out = await canary.cli("vmodel", "promote", VM)
            assert out["split"] is None and out["activeModelId"] == "candidate"
            await canary.visible(lambda vm: vm is not None and not vm.split and vm.active == "candidate")
            promoted_at = time.monotonic()
            await wait_until(lambda: sum(1 for t, _, _ in traffic.answers if t > promoted_at) >= 200, 60, "traffic after promotion")
            assert {s for t, s, _ in traffic.answers if t > promoted_at} == {"candidate"}

            out = await canary.cli("vmodel", "split", VM, "--target", "stable=50", "--target", "candidate=50")
            await canary.visible(lambda vm: vm is not None and vm.split)
            out = await canary.cli("vmodel", "rollback", VM)
            assert out["activeModelId"] == "stable"
            await canary.visible(lambda vm: vm is not None and not vm.split and vm.active == "stable")
            rolled_at = time.monotonic()
            await wait_until(lambda: sum(1 for t, _, _ in traffic.answers if t > rolled_at) >= 200, 60, "traffic after rollback")
            assert {s for t, s, _ in traffic.answers if t > rolled_at} == {"stable"}
        finally:
            traffic.stop.set()
            await running
        assert traffic.failures == []  # zero failed requests through promotion and rollback
        assert _p99([lat for _, _, lat in traffic.answers]) < BUDGET_S  # the failing shadow never held an answer up
        # rollback / promote on a vModel without a split is refused, clearly
        async with httpx.AsyncClient(base_url=cluster.rest[1], timeout=30) as c:
            r = await c.post(f"/api/v1/vmodels/{VM}/split/promote")
            assert r.status_code == 412 and "no traffic split" in r.json()["error"]
            r = await c.put(f"/api/v1/vmodels/{VM}/split", json={"targets": [{"model_id": "stable", "weight": 60}]})
            assert r.status_code == 400 and "sum to 100" in r.json()["error"]
            r = await c.put(f"/api/v1/vmodels/{VM}/split", json={"targets": [{"model_id": "ghost", "weight": 100}]})
            assert r.status_code == 404
    finally:
        await cluster.close()
