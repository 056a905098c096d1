"""``modelmux serve`` keeps what it is given: the default (sqlite) store across SIGTERM and a
restart, the data-dir lock against a second server, and the start-up line naming the store."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from mesh.cli import app
from tests.mesh.cluster import wait_until
from tests.mesh.models import add_model

ROOT = Path(__file__).resolve().parents[2]
INPUT = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}]}


class Serve:
    def __init__(self, tmp: Path, data_dir: Path, name: str, *extra: str) -> None:
        self.ready = tmp / f"{name}.ready.json"
        self.log = tmp / f"{name}.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("MODELMUX_STORE_KIND", None)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mesh", "serve", "--grpc-port", "0", "--rest-port", "0",
                 "--data-dir", str(data_dir), "--allowed-root", str(tmp), "--ready-file", str(self.ready),
                 "--log-level", "warning", *extra],
                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.rest = ""

    async def started(self) -> Serve:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(self.log.read_text())
            return self.ready.exists()

        await wait_until(up, 90, "modelmux serve to start")
        self.rest = "http://" + json.loads(self.ready.read_text())["rest"]
        return self

    async def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(self.proc.wait, 60)
        assert self.proc.returncode == 0, self.log.read_text()[-2000:]


async def _infer(rest: str, model: str) -> list[float]:
    async with httpx.AsyncClient(base_url=rest, timeout=60) as c:
        r = await c.post(f"/v2/models/{model}/infer", json=INPUT)
        assert r.status_code == 200, r.text
        return [float(x) for x in r.json()["outputs"][0]["data"]]


async def _cli(*args: str) -> Any:
    r = await asyncio.to_thread(
        CliRunner().invoke, app, list(args), env={"MODELMUX_STORE_KIND": None}
    )
    assert r.exit_code == 0, r.output
    return r


@pytest.mark.slow
async def test_serve_keeps_registrations_across_sigterm_and_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    add_model(tmp_path / "m" / "keep.onnx", 5.0)
    add_model(tmp_path / "m" / "other.onnx", 7.0)
    first = await Serve(tmp_path, data, "first").started()
    try:
        assert (
            "store: sqlite" in first.log.read_text() and "survive restarts" in first.log.read_text()
        )
        async with httpx.AsyncClient(base_url=first.rest, timeout=60) as c:
            for mid, path in (("keep-me", "keep.onnx"), ("other", "other.onnx")):
                body = {
                    "modelInfo": {"type": "onnx", "path": str(tmp_path / "m" / path)},
                    "loadNow": True,
                    "sync": True,
                }
                assert (await c.post(f"/api/v1/models/{mid}", json=body)).status_code == 200
            assert (
                await c.put("/api/v1/vmodels/prod", json={"targetModelId": "keep-me"})
            ).status_code == 200
            assert (await c.put("/api/v1/tenants/team-a", json={"maxBytes": "8Gi"})).status_code == 200
        assert await _infer(first.rest, "keep-me") == [6.0] * 4

        # one owner: a second server on the same data directory refuses, and says why
        second = Serve(tmp_path, data, "second")
        rc = await asyncio.to_thread(second.proc.wait, 90)
        assert rc == 2 and "in use by another modelmux process" in second.log.read_text()
        assert await _infer(first.rest, "keep-me") == [6.0] * 4  # the owner did not notice
    finally:
        await first.stop()

    exported = yaml.safe_load((await _cli("store", "export", "--data-dir", str(data))).stdout)
    assert [m["model_id"] for m in exported["models"]] == ["keep-me", "other"]

    again = await Serve(tmp_path, data, "again").started()
    try:
        async with httpx.AsyncClient(base_url=again.rest, timeout=60) as c:
            models = sorted(m["model_id"] for m in (await c.get("/api/v1/models")).json()["models"])
            assert models == ["keep-me", "other"]
            vm = (await c.get("/api/v1/vmodels/prod")).json()
            assert vm["activeModelId"] == "keep-me" and vm["status"] == "DEFINED"
            assert (await c.get("/api/v1/tenants/team-a")).json()["max_bytes"] == 8 << 30
            insts = (await c.get("/api/v1/instances")).json()["instances"]
            assert len(insts) == 1  # the dead instance's lease-bound record did not come back
        assert await _infer(again.rest, "keep-me") == [6.0] * 4  # and it serves them
        assert await _infer(again.rest, "prod") == [6.0] * 4
        assert await _infer(again.rest, "other") == [8.0] * 4
    finally:
        await again.stop()


@pytest.mark.slow
async def test_memory_store_says_nothing_is_kept(tmp_path: Path) -> None:
    s = await Serve(tmp_path, tmp_path / "data", "mem", "--store", "memory").started()
    try:
        assert "store: memory (nothing survives a restart" in s.log.read_text()
        assert not (tmp_path / "data" / "store.sqlite").exists()
    finally:
        await s.stop()
