"""The operator CLI against a known cluster state: ``-o json|yaml`` parsed and asserted, ``describe
model`` history and last failure, ``logs``, ``top --once``; and the decision log it reads."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from typer.testing import CliRunner

from mesh.cli import app
from tests.mesh.cluster import MemoryCluster, wait_until
from tests.mesh.models import WIDTH, add_model, request_bytes

INFER = "/inference.GRPCInferenceService/ModelInfer"
TABLE = 256 << 10
MODEL_BYTES = TABLE + (16 << 10)


@pytest.fixture(autouse=True)
def _one_copy_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # keep placement to one copy per model (no second copy for a model used a few times), so
    # which instance holds what follows from the requests alone
    monkeypatch.setenv("MODELMUX_PLACEMENT_SECOND_COPY_RPM", "1000000")
    # size copies by their file (the framework floor), not by the process RSS around the load:
    # with both instances and the test's clients in one process a delta can double a small
    # model, past the room of either instance
    monkeypatch.setenv("MODELMUX_ADAPTER_MEASURE_LOAD_RSS", "false")


class Cli:
    """Runs ``modelmux`` commands in a worker thread (the mesh keeps serving on the event loop)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.runner = CliRunner()

    async def __call__(self, *args: str, code: int = 0, env: dict[str, str] | None = None, address: bool = True) -> str:
        argv = [*args, "--address", self.address] if address else list(args)
        res = await asyncio.to_thread(self.runner.invoke, app, argv, env={"COLUMNS": "200", **(env or {})})
        assert res.exit_code == code, (argv, res.exit_code, res.output, res.exception)
        return res.stdout

    async def json(self, *args: str) -> Any:
        return json.loads(await self(*args, "-o", "json"))


@pytest.fixture
async def mesh2(tmp_path: Path) -> Any:
    # two instances with room for one test model each: a third model evicts one of them
    c = MemoryCluster(2, tmp_path, capacity_bytes=int(MODEL_BYTES * 1.6))
    await c.start()
    yield c
    await c.close()


async def _infer(cluster: MemoryCluster, model: str) -> bytes:
    async with grpc.aio.insecure_channel(cluster.grpc[0]) as ch:
        return await ch.unary_unary(INFER)(request_bytes(model), timeout=30)  # type: ignore[no-any-return]


async def test_cli_shows_a_known_cluster(mesh2: MemoryCluster, tmp_path: Path) -> None:
    cli = Cli(mesh2.rest[0])
    paths = {name: add_model(tmp_path / name / "model.onnx", float(k), table_bytes=TABLE) for k, name in enumerate(("alpha", "beta", "gamma"))}
    broken = tmp_path / "broken" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not an onnx model")

    out = await cli("register", "alpha", "-t", "onnx", "-p", str(paths["alpha"]), "--load-now")
    assert "alpha: LOADED" in out
    for name in ("beta", "gamma"):
        assert f"{name}: NOT_LOADED" in await cli("register", name, "-t", "onnx", "-p", str(paths[name]))
    out = await cli("register", "broken", "-t", "onnx", "-p", str(broken), "--load-now", code=1)
    assert "broken: LOADING_FAILED" in out
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, WIDTH], "datatype": "FP32", "data": [0.0] * WIDTH}]})
    answer = json.loads(await cli("infer", "beta", "--json", body))  # loads beta (the other instance has room)
    assert answer["model_name"] == "beta" and answer["outputs"][0]["data"] == [1.0] * WIDTH
    await cli("infer", "alpha", "--json", body)
    r = await asyncio.to_thread(CliRunner().invoke, app, ["put-vmodel-is-not-a-command"])
    assert r.exit_code != 0

    # get models: state, copies, size, where (the address may also come from the environment);
    # last use reaches the store with the agents' next usage report
    async def rows_once_used() -> dict[str, Any] | None:
        rows = json.loads(await cli("get", "models", "-o", "json", env={"MODELMUX_ADDRESS": mesh2.rest[1]}, address=False))
        by_id = {m["model_id"]: m for m in rows}
        return by_id if by_id.get("alpha", {}).get("last_used", 0) > 0 else None

    by_id = await wait_until(rows_once_used, 10, "alpha's last use reported")
    assert sorted(by_id) == ["alpha", "beta", "broken", "gamma"]
    assert by_id["alpha"]["state"] == "LOADED" and by_id["alpha"]["copies"] == {"loaded": 1, "loading": 0, "failed": 0}
    assert by_id["beta"]["state"] == "LOADED" and len(by_id["beta"]["where"]) == 1
    assert set(by_id["alpha"]["where"] + by_id["beta"]["where"]) == {"local-0", "local-1"}  # one each: room for one
    assert by_id["alpha"]["size_bytes"] > TABLE and by_id["alpha"]["last_used"] > 0
    assert by_id["gamma"]["state"] == "NOT_LOADED" and by_id["gamma"]["where"] == []
    assert by_id["broken"]["state"] == "LOADING_FAILED" and by_id["broken"]["copies"]["failed"] == 1
    assert [m["model_id"] for m in await cli.json("get", "models", "-q", "ETA")] == ["beta"]
    assert [m["model_id"] for m in await cli.json("get", "models", "--state", "NOT_LOADED")] == ["gamma"]
    assert len(await cli.json("get", "models", "--limit", "2")) == 2
    table = await cli("get", "models")
    assert "alpha" in table and "LOADING_FAILED" in table

    # instances: both, with their copies and bytes
    insts = await cli.json("get", "instances")
    assert [i["instance_id"] for i in insts] == ["local-0", "local-1"]
    assert all(i["models"] == 1 and 0 < i["used_bytes"] <= i["capacity_bytes"] for i in insts)
    held = {c["model_id"] for i in insts for c in i["copies"] if c["state"] == "loaded"}
    assert held == {"alpha", "beta"}

    # vModels, as YAML
    async with __import__("httpx").AsyncClient(base_url=mesh2.rest[0]) as rest:
        assert (await rest.put("/api/v1/vmodels/prod", json={"targetModelId": "alpha"})).status_code == 200
    [vm] = yaml.safe_load(await cli("get", "vmodels", "-o", "yaml"))
    assert vm["name"] == "prod" and vm["active_model_id"] == "alpha" and vm["status"] == "DEFINED"

    # gamma needs room: one of alpha / beta is evicted (the policy picks which)
    await _infer(mesh2, "gamma")
    rows = await cli.json("get", "models")
    by_id = {m["model_id"]: m for m in rows}

    async def one_evicted() -> bool:
        states = {m["model_id"]: m["state"] for m in await cli.json("get", "models")}
        return states["gamma"] == "LOADED" and sorted([states["alpha"], states["beta"]]) == ["LOADED", "NOT_LOADED"]

    await wait_until(one_evicted, what="an eviction")
    states = {m["model_id"]: m["state"] for m in await cli.json("get", "models")}
    evicted = "alpha" if states["alpha"] == "NOT_LOADED" else "beta"

    # describe: history of the evicted model, newest first: unloaded (with a reason) after it was loaded
    d = await cli.json("describe", "model", evicted)
    kinds = [h["kind"] for h in d["history"]]
    assert kinds[:2] == ["unload", "load"], d["history"]
    assert d["history"][0]["reason"] and d["history"][0]["instance_id"] in ("local-0", "local-1")
    assert d["copies"] == [] and d["status"]["state"] == "NOT_LOADED" and d["last_failure"] is None
    g = await cli.json("describe", "model", "gamma")
    assert [c["state"] for c in g["copies"]] == ["loaded"]
    assert g["assignment"]["reasons"][g["copies"][0]["instance_id"]].startswith("miss")
    # describe: the failed model's last failure, from its copy record
    b = await cli.json("describe", "model", "broken")
    assert b["last_failure"] is not None and b["last_failure"]["error"]
    assert any(h["kind"] == "unload" and h["reason"].startswith("load_failed") for h in b["history"])
    text = await cli("describe", "model", "broken")
    assert "Last failure" in text
    out = await cli("describe", "model", "no-such-model", code=1)
    assert "404" in out

    # logs: the decision log, oldest first; filtered by model; as table lines
    entries = await cli.json("logs", "--model", "gamma")
    assert [e["kind"] for e in entries] == ["load"] and entries[0]["model_id"] == "gamma"
    everything = await cli.json("logs", "-n", "100")
    assert [e["seq"] for e in everything] == sorted(e["seq"] for e in everything)
    loads = [e["model_id"] for e in everything if e["kind"] == "load"]
    assert {"alpha", "beta", "gamma", "broken"} <= set(loads)
    assert "gamma" in await cli("logs", "--kind", "load")

    # top: one frame, with both instances, and the same data as JSON
    frame = await cli("top", "--once")
    assert "local-0" in frame and "local-1" in frame and "Hottest models" in frame
    o = await cli.json("top")
    assert o["totals"]["models"] == 4 and o["states"]["LOADED"] == 2


async def test_decision_log_is_bounded_and_continues_across_records(mesh2: MemoryCluster, tmp_path: Path) -> None:
    assert mesh2.mesh is not None
    leader = next(i.leader for i in mesh2.mesh.instances if i.leader and i.leader.is_leader)
    assert leader is not None
    leader.decision_log_size = 4  # keep only the 4 newest decision records
    names = []
    for k in range(3):
        p = add_model(tmp_path / f"m{k}" / "model.onnx", float(k), table_bytes=TABLE)
        names.append(f"m{k}")
        async with __import__("httpx").AsyncClient(base_url=mesh2.rest[0]) as rest:
            r = await rest.post(f"/api/v1/models/m{k}", json={"modelInfo": {"type": "onnx", "path": str(p)}})
            assert r.status_code == 200
    # 3 models over room for 2: each round of the 3 misses at least once, and the first
    # round 3 times, whichever copies placement chooses to evict
    for name in names * 4:
        await _infer(mesh2, name)
    state = mesh2.mesh.instances[1].state  # any instance mirrors the log
    await wait_until(lambda: max((r.seq for r in state.decisions.records()), default=0) >= 5, what="decisions logged")
    seqs = [r.seq for r in state.decisions.records()]
    assert len(seqs) <= 4 + 1  # trimmed (one record over at most, before the next trim)
    assert seqs == list(range(seqs[0], seqs[-1] + 1)) and seqs[0] > 1  # the newest, contiguous; the oldest gone
    flat = mesh2.mesh.instances[1].views.decisions(limit=100)["decisions"]
    assert flat and all(d["leader"] == leader.instance_id for d in flat)
