"""Hostile tests of exhaustion limits: each flood or oversized input is refused, and nothing else
changes (another tenant's canary traffic sees zero errors, registrations stay as they were,
decoding memory stays bounded)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from protos import model_mesh_pb2 as mm
from tests.mesh.cluster import ROOT, MemoryCluster, wait_until
from tests.mesh.models import add_model
from tests.mesh.test_cluster import Client

pytestmark = pytest.mark.timeout(300)

X = [[0.0, 0.0, 0.0, 0.0]]


def _infer_json(x: Any = X) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": x}]}


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[tuple[MemoryCluster, Client]]:
    cluster = MemoryCluster(
        1,
        tmp_path,
        capacity_bytes=64 << 20,
        overrides={"tenant_inflight": 2, "tenant_queued": 2, "retry_after_s": 3.0, "max_message_bytes": 2 << 20,
                   "max_models_per_tenant": 3},
    )
    await cluster.start()
    client = Client(cluster.grpc)
    try:
        for mid, tenant in (("a1", "alpha"), ("b1", "beta")):
            p = add_model(tmp_path / mid / "model.onnx", 1.0)
            async with httpx.AsyncClient(base_url=cluster.rest[0], timeout=30) as c:
                r = await c.post(f"/api/v1/models/{mid}", json={"modelInfo": {"type": "onnx", "path": str(p), "key": {"tenant": tenant}},
                                                          "loadNow": True, "sync": True})
                assert r.status_code == 200, r.text
        yield cluster, client
    finally:
        await cluster.close()


class _Canary:
    """Steady good traffic of tenant beta over both edges; counts errors."""

    def __init__(self, cluster: MemoryCluster, client: Client) -> None:
        self.cluster, self.client = cluster, client
        self.ok = 0
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.cluster.rest[0], timeout=30) as c:
            while not self._stop.is_set():
                try:
                    r = await c.post("/v2/models/b1/infer", json=_infer_json())
                    if r.status_code != 200:
                        self.errors.append(f"REST {r.status_code} {r.text}")
                    out = await self.client.infer(0, "b1")
                    assert out.shape == (1, 4)
                    self.ok += 1
                except Exception as exc:  # any failure of good traffic is what this test must not see
                    self.errors.append(repr(exc))
                await asyncio.sleep(0.01)

    def __enter__(self) -> _Canary:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    def __exit__(self, *exc: object) -> None:
        pass


def _registrations(cluster: MemoryCluster) -> dict[str, Any]:
    assert cluster.mesh is not None
    return dict(cluster.mesh.instances[0].state.models.items)


async def test_a_tenant_flood_is_refused_with_429_and_resource_exhausted_while_another_tenant_sees_no_error(
    mesh: tuple[MemoryCluster, Client],
) -> None:
    cluster, client = mesh
    assert cluster.mesh is not None
    inst = cluster.mesh.instances[0]
    gate = asyncio.Event()
    copy = inst.router.loaded.get("a1")  # alpha's model, loaded here: its calls wait for the gate
    assert copy is not None
    real_infer = copy.infer

    async def gated(request: Any) -> Any:
        await gate.wait()
        return await real_infer(request)

    copy.infer = gated  # type: ignore[method-assign]
    before = _registrations(cluster)
    with _Canary(cluster, client) as canary:
        # alpha: 2 running + 2 queued fill its share; then every further request is refused at once
        held = [asyncio.create_task(client.infer(0, "a1")) for _ in range(4)]
        adm = inst.dataplane.admission.entry
        await wait_until(lambda: adm.tenant_inflight("alpha") == 2 and adm.queued == 2, 30, "alpha's share full")
        async with httpx.AsyncClient(base_url=cluster.rest[0], timeout=30) as c:
            r = await c.post("/v2/models/a1/infer", json=_infer_json())
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "3"
        assert "tenant 'alpha'" in r.json()["error"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.infer(0, "a1")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ("retry-after", "3") in tuple(err.value.trailing_metadata() or ())
        # beta keeps being served while alpha's flood is held
        start = canary.ok
        await wait_until(lambda: canary.ok >= start + 5, 30, "canary progress during the flood")
        gate.set()
        outs = await asyncio.gather(*held)
        assert all(o.shape == (1, 4) for o in outs)  # the admitted flood completes
        await canary.stop()
    assert canary.errors == []
    assert adm.inflight == 0 and adm.queued == 0
    sample = inst.metrics.registry.get_sample_value
    assert sample("modelmux_admission_refusals_total", {"reason": "tenant_queue"}) == adm.refused >= 2
    assert sample("modelmux_admission_refusals_total", {"reason": "tenant_rate"}) is None
    assert _registrations(cluster) == before


async def test_a_tenant_over_its_rate_is_refused_while_another_tenant_sees_no_error(
    mesh: tuple[MemoryCluster, Client],
) -> None:
    """A rate bounds what a tenant takes of the instance even when each request is quick (its
    in-flight limit is never reached): past ``maxRps`` it gets 429 / RESOURCE_EXHAUSTED with a
    Retry-After, the other tenant's canary sees no error, and the tenant is served again once
    its bucket refills."""
    cluster, client = mesh
    assert cluster.mesh is not None
    inst = cluster.mesh.instances[0]
    before = _registrations(cluster)
    async with httpx.AsyncClient(base_url=cluster.rest[0], timeout=30) as c:
        r = await c.put("/api/v1/tenants/alpha", json={"maxRps": 2})
        assert r.status_code == 200, r.text
        assert r.json()["max_rps"] == 2.0 and r.json()["max_bytes"] == 0
        await wait_until(lambda: "alpha" in inst.state.tenants.items, 30, "the rate mirrored")
        with _Canary(cluster, client) as canary:
            # sequential requests, each well inside the in-flight limit: the burst (2) goes, then
            # one more per half second at most
            loop = asyncio.get_running_loop()
            start, served, refusal = loop.time(), 0, None
            for _ in range(50):
                r = await c.post("/v2/models/a1/infer", json=_infer_json())
                if r.status_code != 200:
                    refusal = r
                    break
                served += 1
            elapsed = loop.time() - start
            assert refusal is not None, f"{served} requests at up to 2/s were never refused"
            assert 2 <= served <= 2 + 2 * elapsed + 1, (served, elapsed)
            assert refusal.status_code == 429, refusal.text
            assert "tenant 'alpha' is over its rate of 2 requests per second" in refusal.json()["error"]
            assert refusal.headers["retry-after"] == "1"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                for _ in range(10):  # the bucket may have refilled a token meanwhile
                    await client.infer(0, "a1")
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "over its rate" in (err.value.details() or "")
            assert ("retry-after", "1") in tuple(err.value.trailing_metadata() or ())
            start_ok = canary.ok
            await wait_until(lambda: canary.ok >= start_ok + 5, 30, "canary progress while alpha is refused")

            # served again once a token is back
            async def alpha_served() -> bool:
                return (await c.post("/v2/models/a1/infer", json=_infer_json())).status_code == 200

            await wait_until(alpha_served, 30, "alpha served again")
            # the rate removed: no refusal however fast
            r = await c.put("/api/v1/tenants/alpha", json={"maxRps": 0, "maxBytes": "1Gi"})
            assert r.status_code == 200 and r.json()["max_rps"] == 0.0, r.text
            await wait_until(lambda: inst.state.tenants.items["alpha"].max_rps == 0, 30, "the rate removal mirrored")
            for _ in range(20):
                assert (await c.post("/v2/models/a1/infer", json=_infer_json())).status_code == 200
            await canary.stop()
    assert canary.errors == []
    adm = inst.dataplane.admission.entry
    assert adm.inflight == 0 and adm.queued == 0 and adm.refused >= 2
    refusals = inst.metrics.registry.get_sample_value
    assert refusals("modelmux_admission_refusals_total", {"reason": "tenant_rate"}) == adm.refused
    assert refusals("modelmux_admission_refusals_total", {"reason": "tenant_queue"}) is None
    assert _registrations(cluster) == before


async def test_the_instance_default_rate_applies_to_tenants_whose_quota_sets_none(tmp_path: Path) -> None:
    cluster = MemoryCluster(1, tmp_path, capacity_bytes=64 << 20, overrides={"tenant_max_rps": 3.0})
    await cluster.start()
    try:
        async with httpx.AsyncClient(base_url=cluster.rest[0], timeout=30) as c:
            for mid, tenant in (("a1", "alpha"), ("b1", "beta")):
                p = add_model(tmp_path / mid / "model.onnx", 1.0)
                body = {"modelInfo": {"type": "onnx", "path": str(p), "key": {"tenant": tenant}}, "loadNow": True, "sync": True}
                assert (await c.post(f"/api/v1/models/{mid}", json=body)).status_code == 200
            # beta's own rate is far above the default: it is not held to 3/s
            assert (await c.put("/api/v1/tenants/beta", json={"maxRps": 10_000})).status_code == 200
            assert cluster.mesh is not None
            inst = cluster.mesh.instances[0]
            await wait_until(lambda: "beta" in inst.state.tenants.items, 30, "beta's rate mirrored")
            loop = asyncio.get_running_loop()
            start, served = loop.time(), 0
            for _ in range(50):
                r = await c.post("/v2/models/a1/infer", json=_infer_json())
                if r.status_code != 200:
                    assert r.status_code == 429 and "rate of 3 requests per second" in r.json()["error"], r.text
                    break
                served += 1
            assert 3 <= served <= 3 + 3 * (loop.time() - start) + 1, served
            for _ in range(20):
                r = await c.post("/v2/models/b1/infer", json=_infer_json())
                assert r.status_code == 200, r.text
    finally:
        await cluster.close()


async def test_unknown_model_is_404_before_the_body_is_read_and_oversize_is_413_while_streaming(
    mesh: tuple[MemoryCluster, Client],
) -> None:
    cluster, client = mesh
    host, port = cluster.rest[0].removeprefix("http://").rsplit(":", 1)

    def raw(path: str, headers: str, body_part: bytes, more: int = 0) -> bytes:
        """Send headers and part of a body; read the answer without sending the rest."""
        with socket.create_connection((host, int(port)), timeout=20) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode() + body_part)
            sent = 0
            chunk = b"5000\r\n" + b"1" * 0x5000 + b"\r\n"
            s.settimeout(0.2)
            answer = b""
            while b"\r\n\r\n" not in answer:
                try:
                    answer += s.recv(65536)
                except TimeoutError:
                    if sent < more:
                        s.sendall(chunk)
                        sent += len(chunk)
                    else:
                        s.settimeout(20)
            return answer

    # declares 1.5 MiB (under the limit) but sends 10 bytes: the answer comes without the rest
    ans = await asyncio.to_thread(raw, "/v2/models/nope/infer", "Content-Type: application/json\r\nContent-Length: 1500000\r\n", b'{"inputs":')
    assert ans.startswith(b"HTTP/1.1 404"), ans[:200]
    # a declared length over the limit: 413 at once
    ans = await asyncio.to_thread(raw, "/v2/models/b1/infer", "Content-Length: 50000000\r\n", b"{")
    assert ans.startswith(b"HTTP/1.1 413"), ans[:200]
    # chunked, no length: refused once the stream passes the limit (well before 64 MiB are sent)
    ans = await asyncio.to_thread(raw, "/v2/models/b1/infer", "Transfer-Encoding: chunked\r\n", b"", 64 << 20)
    assert ans.startswith(b"HTTP/1.1 413"), ans[:200]
    # gRPC: grpc's own receive limit
    big = np.zeros((1, 4), dtype=np.float32)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        from tests.mesh.models import request_bytes

        await client.infer_calls[0](request_bytes("b1", big) + b"\x00" * 0 + _padding(3 << 20), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # and the good path still works
    assert (await client.infer(0, "b1")).shape == (1, 4)


def _padding(n: int) -> bytes:
    """An unknown length-delimited field (number 15) of ``n`` bytes: a valid, oversized message."""
    out = bytearray(b"\x7a")
    v = n
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            break
    return bytes(out) + b"\x00" * n


async def test_oversized_keys_and_too_many_models_are_refused_and_change_nothing(
    mesh: tuple[MemoryCluster, Client], tmp_path: Path
) -> None:
    cluster, client = mesh
    before = _registrations(cluster)
    p = add_model(tmp_path / "x" / "model.onnx", 1.0)
    huge = json.dumps({"tenant": "alpha", "options": {"pad": "x" * (8 << 20)}})
    # gRPC: an 8 MiB key is refused with a clear message (the message fits the 64 MiB channel default here)
    ch = grpc.aio.insecure_channel(cluster.grpc[0], options=[("grpc.max_send_message_length", 16 << 20)])
    from protos import model_mesh_pb2_grpc as mm_grpc

    stub = mm_grpc.ModelMeshStub(ch)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.registerModel(mm.RegisterModelRequest(modelId="huge", modelInfo=mm.ModelInfo(type="onnx", path=str(p), key=huge)))
    # the instance's own receive limit (2 MiB here) or the key cap answers, never INTERNAL
    assert err.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
    await ch.close()
    async with httpx.AsyncClient(base_url=cluster.rest[0], timeout=30) as c:
        r = await c.post("/api/v1/models/huge", json={"modelInfo": {"type": "onnx", "path": str(p), "key": huge}})
        assert r.status_code == 413, r.text
        # under the body limit but over the key cap (64 KiB): the key cap's message
        r = await c.post("/api/v1/models/huge", json={"modelInfo": {"type": "onnx", "path": str(p), "key": "k" * (100 << 10)}})
        assert r.status_code == 400 and "modelInfo.key is 102400 bytes" in r.text, r.text
        # models per tenant (3 here): alpha has a1; two more fit, the next is refused
        for k in range(2):
            r = await c.post(f"/api/v1/models/a-extra{k}", json={"modelInfo": {"type": "onnx", "path": str(p), "key": {"tenant": "alpha"}}})
            assert r.status_code == 200, r.text
        r = await c.post("/api/v1/models/a-extra9", json={"modelInfo": {"type": "onnx", "path": str(p), "key": {"tenant": "alpha"}}})
        assert r.status_code == 429 and "tenant 'alpha' already has 3 models" in r.text, r.text
        # another tenant is not affected by alpha's cap
        r = await c.post("/api/v1/models/b-extra", json={"modelInfo": {"type": "onnx", "path": str(p), "key": {"tenant": "beta"}}})
        assert r.status_code == 200, r.text
    after = _registrations(cluster)
    assert set(after) == set(before) | {"a-extra0", "a-extra1", "b-extra"}
    assert all(after[m] == before[m] for m in before)
    assert (await client.infer(0, "b1")).shape == (1, 4)


_CHILD = r"""
import gc, json, os, resource, sys
import psutil
from mesh._json_tensors import loads_infer_request
path = sys.argv[1]
body = bytearray(os.path.getsize(path))
with open(path, "rb", buffering=0) as f:
    f.readinto(body)
gc.collect()
base = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, psutil.Process().memory_info().rss)
req = loads_infer_request("m", body)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"raise": peak - base, "n": len(req.inputs[0].contents), "dtype": str(req.inputs[0].contents.dtype)}))
"""


@pytest.mark.parametrize("kind", ["realistic", "tiny-numbers"])
def test_a_32_mib_json_body_raises_rss_by_at_most_3x_its_size(tmp_path: Path, kind: str) -> None:
    size = 32 << 20
    if kind == "realistic":
        n = size // 11
        txt = np.char.mod("%.7g", np.random.default_rng(1).random(n).astype(np.float32))
        data = ",".join(txt.tolist()).encode()
    else:  # the worst case for Python objects: a 4-byte float per element
        n = size // 4
        data = b"0.0," * (n - 1) + b"0.0"
    body = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[%d],"data":[' % n + data + b"]}]}"
    path = tmp_path / "body.json"
    path.write_bytes(body)
    del data, body
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=240, check=True)
    got = json.loads(out.stdout)
    assert got["n"] == n and got["dtype"] == "float32"
    assert got["raise"] <= 3 * path.stat().st_size, got
