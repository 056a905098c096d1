"""Hostile tenants against a real mesh: 2 ``modelmux serve`` processes over etcd, mutual TLS on
every port, callers identified by the auth file (docs/security.md).

Tenant A attacks tenant B's models every way the API offers (see, infer, infer, unregister,
re-point, delete, load, quota games, pinned, stolen forward header); anonymous callers try
too. Each attack is refused with the status the rules give, and after each one B's models are
still registered, loaded and answering as before, while a canary of B's traffic to both
instances (forwarded over mutual TLS between them) sees no error at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import struct
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.mesh.cluster import ProcessCluster, wait_until
from tests.mesh.models import add_model, request_bytes
from tests.security.tenancy_help import (
    INFER,
    TOKENS,
    Caller,
    grpc_error,
    instance_env,
    make_pki,
    write_auth_file,
)

pytestmark = pytest.mark.etcd

TABLE = 256 << 10
NF = grpc.StatusCode.NOT_FOUND


def same_answer(msg_hidden: str, hidden: str, msg_missing: str, missing: str) -> bool:
    """Whether two NOT_FOUND messages are the same but for the name asked about."""
    return msg_hidden.replace(hidden, "<id>") == msg_missing.replace(missing, "<id>")


class Canary:
    """Tenant B's good traffic to both instances for the whole test; every error is kept."""

    def __init__(self, caller: Caller, models: dict[str, float]) -> None:
        self.caller = caller
        self.models = models  # name -> the constant its answer carries
        self.ok = 0
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            for name, c in self.models.items():
                try:
                    out = await self.caller.infer(i, name)
                    if float(out[0, 0]) != c:
                        self.errors.append(f"{name}: wrong answer {out[0, 0]}")
                    else:
                        self.ok += 1
                except grpc.aio.AioRpcError as exc:
                    self.errors.append(f"{name} via {i % 2}: {exc.code()} {exc.details()}")
                i += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.02)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


async def b_state(admin: Caller) -> dict[str, Any]:
    """What tenant B owns, read by the admin: registrations, load state, vModel, quota."""
    models = (await admin.get("/api/v1/models")).json()["models"]
    vb = (await admin.get("/api/v1/vmodels/vb")).json()
    tenant = (await admin.get("/api/v1/tenants/team-b")).json()
    return {
        "models": sorted((m["model_id"], m["status"]) for m in models if m["model_id"].startswith("b")),
        "vb": (vb["status"], vb["activeModelId"], vb["targetModelId"]),
        "quota": tenant["max_bytes"],
        "holders": sorted(
            (m["model_id"], tuple(sorted(k for k, v in m["copies"].items() if v == "LOADED")))
            for m in models
            if m["model_id"].startswith("b")
        ),
    }


@pytest.fixture
async def secured(tmp_path: Path, etcd_server: Any, key_prefix: str) -> Any:
    pki = make_pki(tmp_path / "pki")
    auth = write_auth_file(tmp_path / "auth.yaml")
    cluster = ProcessCluster(
        2, tmp_path, etcd_server.endpoint, key_prefix, capacity_bytes=64 << 20,
        # one copy per model whatever the canary's rate: where B's copies are is part of what must not change
        env={**instance_env(pki, auth), "MODELMUX_PLACEMENT_SECOND_COPY_RPM": "1e9", "MODELMUX_PLACEMENT_SCALE_OUT_RPM_PER_COPY": "1e9"},
    )
    await cluster.start()
    rest = [r.removeprefix("http://") for r in cluster.rest]
    callers = {
        "admin": Caller(pki, cluster.grpc, rest, token=TOKENS["admin"], cert=None),
        "a": Caller(pki, cluster.grpc, rest, token=TOKENS["a"], cert=None),
        "b": Caller(pki, cluster.grpc, rest, token=TOKENS["b"], cert=None),
        "reader_b": Caller(pki, cluster.grpc, rest, token=None, cert=pki.reader_b),
        "anon": Caller(pki, cluster.grpc, rest, token=None, cert=None),
    }
    try:
        yield cluster, pki, callers
    finally:
        for c in callers.values():
            await c.close()
        await cluster.close()


async def test_hostile_tenant_cannot_touch_another_tenants_models(secured: Any, tmp_path: Path) -> None:
    cluster, pki, who = secured
    admin, a, b, reader_b, anon = who["admin"], who["a"], who["b"], who["reader_b"], who["anon"]
    models = tmp_path / "models"
    paths = {n: add_model(models / n / "model.onnx", c, table_bytes=TABLE) for n, c in
             (("b1", 1.0), ("b2", 2.0), ("a1", 11.0), ("a2", 12.0), ("a3", 13.0), ("a4", 14.0))}

    # the admin sets quotas; B registers its models and a vModel; A registers one
    for tenant, quota in (("team-a", 700_000), ("team-b", 8 << 20)):
        r = await admin.http.put(admin.rest[0] + f"/api/v1/tenants/{tenant}", json={"maxBytes": quota})
        assert r.status_code == 200, r.text
    for n in ("b1", "b2"):
        st = await b.register(n, paths[n], loadNow=True, sync=True)
        assert st.status == mm.ModelStatusInfo.LOADED, st
    await b.mgmt[1].setVModel(mm.SetVModelRequest(vModelId="vb", targetModelId="b1", sync=True), metadata=b.md, timeout=30)
    await a.register("a1", paths["a1"], loadNow=True, sync=True)
    assert (await b.infer(0, "vb"))[0, 0] == 1.0

    canary = Canary(b, {"b1": 1.0, "b2": 2.0, "vb": 1.0})
    canary.start()
    await wait_until(lambda: canary.ok >= 12, 30, "canary traffic")
    before = await b_state(admin)
    assert before["models"] == [("b1", "LOADED"), ("b2", "LOADED")]

    async def unchanged(after: str) -> None:
        assert await b_state(admin) == before, f"tenant B's state changed after: {after}"
        assert not canary.errors, f"canary saw errors after {after}: {canary.errors[:5]}"

    # ---- A cannot see B's models through any door: same answer as for a model that does not exist
    for i in (0, 1):
        code_h, msg_h = await grpc_error(a.infer(i, "b1"))
        code_m, msg_m = await grpc_error(a.infer(i, "nope"))
        assert code_h == code_m == NF and same_answer(msg_h, "b1", msg_m, "nope"), (msg_h, msg_m)
        code_h, msg_h = await grpc_error(a.infer(i, "vb"))
        assert code_h == NF and same_answer(msg_h, "vb", msg_m, "nope")
        code_h, msg_h = await grpc_error(a.v2[i](mm_request_metadata("b1"), metadata=a.md, timeout=10))
        code_m, msg_m = await grpc_error(a.v2[i](mm_request_metadata("nope"), metadata=a.md, timeout=10))
        assert code_h == code_m == NF and same_answer(msg_h, "b1", msg_m, "nope")
    st_h, st_m = await a.status("b1"), await a.status("nope")
    assert st_h.status == st_m.status == mm.ModelStatusInfo.NOT_FOUND and st_h == st_m
    vs = await a.mgmt[0].getVModelStatus(mm.GetVModelStatusRequest(vModelId="vb"), metadata=a.md, timeout=10)
    vs_missing = await a.mgmt[0].getVModelStatus(mm.GetVModelStatusRequest(vModelId="nope"), metadata=a.md, timeout=10)
    assert vs == vs_missing and vs.status == mm.VModelStatusInfo.NOT_FOUND
    for path_h, path_m in (("/api/v1/models/b1", "/api/v1/models/nope"), ("/api/v1/models/b1/describe", "/api/v1/models/nope/describe"),
                           ("/v2/models/b1", "/v2/models/nope"), ("/v2/models/vb/ready", "/v2/models/nope/ready"),
                           ("/api/v1/tenants/team-b", "/api/v1/tenants/team-zzz")):
        rh, rm = await a.get(path_h), await a.get(path_m)
        assert rh.status_code == rm.status_code == 404, (path_h, rh.text)
        assert rh.json()["error"].replace("b1", "x").replace("vb", "x").replace("team-b", "x") == \
            rm.json()["error"].replace("nope", "x").replace("team-zzz", "x")
    rh = await a.http.post(a.rest[1] + "/v2/models/b1/infer", json={"inputs": []})
    rm = await a.http.post(a.rest[1] + "/v2/models/nope/infer", json={"inputs": []})
    assert rh.status_code == rm.status_code == 404 and same_answer(rh.json()["error"], "b1", rm.json()["error"], "nope")
    # lists show A's own only
    listed = {m["model_id"] for m in (await a.get("/api/v1/models")).json()["models"]}
    assert listed == {"a1"}
    assert {m["model_id"] for m in (await a.get("/api/v1/cluster")).json()["models"]} == {"a1"}
    assert "self" not in (await a.get("/api/v1/cluster")).json()  # an instance's copies are every tenant's
    assert (await a.get("/api/v1/vmodels")).json()["vmodels"] == []
    assert [t["tenant"] for t in (await a.get("/api/v1/tenants")).json()["tenants"]] == ["team-a"]
    assert {m["model_id"] for m in (await a.get("/api/v1/cluster/models")).json()["models"]} == {"a1"}
    assert all(d["model_id"] == "a1" for d in (await a.get("/api/v1/decisions?limit=500")).json()["decisions"])
    overview = (await a.get("/api/v1/cluster/overview")).json()
    assert overview["totals"]["models"] == 1 and all(
        c["model_id"] == "a1" for inst in overview["instances"] for c in inst["copies"]
    )
    assert {m["model_id"] for m in (await b.get("/api/v1/models")).json()["models"]} == {"b1", "b2"}
    await unchanged("reads")

    # ---- A cannot change B's models: unregister, re-point, delete, load, register over them
    await a.mgmt[0].unregisterModel(mm.UnregisterModelRequest(modelId="b1"), metadata=a.md, timeout=10)
    r = await a.http.delete(a.rest[1] + "/api/v1/models/b2")
    assert r.status_code == 200  # as for any model that is not registered: nothing to remove
    code, _ = await grpc_error(a.mgmt[0].setVModel(mm.SetVModelRequest(vModelId="vb", targetModelId="a1"), metadata=a.md, timeout=10))
    assert code == grpc.StatusCode.ALREADY_EXISTS  # the name is taken (ids are global: docs/security.md)
    code, msg = await grpc_error(a.mgmt[1].setVModel(mm.SetVModelRequest(vModelId="va", targetModelId="b1"), metadata=a.md, timeout=10))
    assert code == NF and "b1" in msg
    await a.mgmt[0].deleteVModel(mm.DeleteVModelRequest(vModelId="vb"), metadata=a.md, timeout=10)
    code, _ = await grpc_error(a.mgmt[0].ensureLoaded(mm.EnsureLoadedRequest(modelId="b2"), metadata=a.md, timeout=10))
    assert code == NF
    code, _ = await grpc_error(a.register("b1", paths["a2"]))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    await unchanged("writes to B's models")

    # ---- A cannot act for tenant B, hold capacity, or change quotas
    code, msg = await grpc_error(a.register("a-as-b", paths["a2"], key={"tenant": "team-b"}))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "team-b" in msg
    for extra in ({"pinned": True}, {"min_copies": 2}):
        code, _ = await grpc_error(a.register("a-hold", paths["a2"], key=extra))
        assert code == grpc.StatusCode.PERMISSION_DENIED
    for body in ({"maxBytes": 1 << 30}, {"maxRps": 1e6}, {"maxRps": 0}):
        r = await a.http.put(a.rest[0] + "/api/v1/tenants/team-a", json=body)
        assert r.status_code == 403, body
    for body in ({"maxBytes": 1}, {"maxRps": 0.01}):  # B throttled by A: no such tenant, as far as A knows
        r = await a.http.put(a.rest[0] + "/api/v1/tenants/team-b", json=body)
        assert r.status_code == 404, body
    r = await a.http.delete(a.rest[0] + "/api/v1/tenants/team-b")
    assert r.status_code == 404
    await unchanged("quota and rights")

    # ---- quota games: A loads more than its quota; only A's own copies make room
    for n in ("a2", "a3", "a4"):
        await a.register(n, paths[n])
    for n in ("a2", "a3", "a4", "a1", "a2"):
        with contextlib.suppress(grpc.aio.AioRpcError):  # beyond its quota a load may be refused
            await a.infer(0, n)
    a_used = (await admin.get("/api/v1/tenants/team-a")).json()["used_bytes"]
    assert a_used <= 700_000
    await unchanged("quota games")

    # ---- a stolen forward header, a reader, anonymous and unknown callers
    code, msg = await grpc_error(a.infer(0, "a1", extra_md=(("mm-forwarded", "proc-1"),)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "forward" in msg
    code, _ = await grpc_error(a.infer(1, "b1", extra_md=(("mm-forwarded", "proc-0"),)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert (await reader_b.infer(1, "b2"))[0, 0] == 2.0  # identified by its client certificate
    code, _ = await grpc_error(reader_b.register("b3", paths["a2"]))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert (await reader_b.http.delete(reader_b.rest[0] + "/api/v1/models/b1")).status_code == 403
    for i in (0, 1):
        code, _ = await grpc_error(anon.infer(i, "b1"))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = await grpc_error(anon.mgmt[i].unregisterModel(mm.UnregisterModelRequest(modelId="b1"), timeout=10))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        for path in ("/api/v1/models", "/api/v1/cluster", "/api/v1/cluster/overview", "/api/v1/decisions", "/metrics/"):
            r = await anon.get(path, i)
            assert r.status_code == 401, (path, r.status_code)
        assert (await anon.http.delete(anon.rest[i] + "/api/v1/models/b1")).status_code == 401
        # V2 REST inference is answered in front of FastAPI's routes (mesh._rest_fast), still behind authentication
        for headers in ({}, {"authorization": "Bearer not-a-token"}):
            r = await anon.http.post(anon.rest[i] + "/v2/models/b1/infer", json={"inputs": []}, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (headers, r.status_code)
    forged = Caller(pki, cluster.grpc, [r.removeprefix("https://") for r in a.rest], token="not-a-token", cert=None)
    try:
        code, _ = await grpc_error(forged.infer(0, "b1"))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await forged.close()
    await unchanged("anonymous and forged callers")

    # ---- without a client certificate from the mesh's CA nothing gets through TLS at all
    async with grpc.aio.secure_channel(cluster.grpc[0], grpc.ssl_channel_credentials(pki.ca.cert.read_bytes())) as ch:
        code, _ = await grpc_error(ch.unary_unary(INFER)(request_bytes("b1"), metadata=b.md, timeout=10))
        assert code == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(cluster.grpc[1]) as ch:
        code, _ = await grpc_error(ch.unary_unary(INFER)(request_bytes("b1"), timeout=10))
        assert code == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(httpx.HTTPError):
        async with httpx.AsyncClient(verify=False, timeout=10) as plain:
            await plain.get(f"{a.rest[0]}/api/v1/models", headers={"authorization": f"Bearer {TOKENS['b']}"})

    await unchanged("TLS")

    # ---- the peer link (instance-to-instance forwards): mutual TLS, then an instance's identity
    links = [c["link_address"] for c in await counters(admin)]
    assert all(links), links
    refused_before = sum(c["link_refused"] for c in await counters(admin))
    for cert in (None, pki.stranger_ca.issue("stranger", cn="modelmux-instance", server=False)):
        # no certificate, or one from another CA: the handshake fails (TLS 1.3: the holder hangs up after it)
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await link_hello(links[0], pki, cert, "")
    for cert, token in ((pki.reader_b, ""), (pki.client, TOKENS["a"]), (pki.client, TOKENS["b"])):
        status, message = await link_hello(links[1], pki, cert, token)
        assert status == grpc.StatusCode.PERMISSION_DENIED.value[0], (cert.cert.name, message)
        assert "forward" in message
    assert sum(c["link_refused"] for c in await counters(admin)) == refused_before + 3
    await unchanged("peer link")

    await stop_canary(canary)
    after = await counters(admin)
    forwarded = [c["forwarded"] for c in after]
    assert sum(forwarded) > 0, "the canary's traffic was never forwarded between the instances (over mutual TLS)"
    # ... and it went over the peer links (mutual TLS, the instances' certificate), never falling back
    assert sum(c["linked"] for c in after) == sum(forwarded) and sum(c["link_fallbacks"] for c in after) == 0, after


async def link_hello(address: str, pki: Any, cert: Any, token: str) -> tuple[int, str]:
    """Open a peer link as an attacker would (hand-written hello); the holder's answer to it."""
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx, server_hostname="localhost")
    try:
        hello = json.dumps({"authorization": f"Bearer {token}" if token else ""}).encode()
        writer.write(struct.pack("<I", len(hello)) + hello)
        length, call_id, status = struct.unpack("<IIB", await asyncio.wait_for(reader.readexactly(9), 10))
        assert call_id == 0
        message = (await reader.readexactly(length - 5)).decode()
        assert await asyncio.wait_for(reader.read(), 10) == b"", "the holder kept a refused link open"
        return status, message
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def mm_request_metadata(name: str) -> Any:
    from protos import grpc_predict_v2_pb2 as pb

    return pb.ModelMetadataRequest(name=name)


async def stop_canary(canary: Canary) -> None:
    await canary.stop()
    assert canary.ok > 30 and not canary.errors, (canary.ok, canary.errors[:5])


async def counters(admin: Caller) -> list[dict[str, Any]]:
    return [(await admin.get("/api/v1/cluster", i)).json()["self"] for i in (0, 1)]


async def test_a_tenant_flooding_past_its_rate_is_refused_and_the_other_tenant_sees_no_error(secured: Any, tmp_path: Path) -> None:
    """Over mutual TLS with tokens, on two instances over etcd: A floods both instances past the rate the
    admin gave it; A's excess gets RESOURCE_EXHAUSTED with a Retry-After, A cannot lift its own
    rate, B's canary sees no error, and B's registrations, copies and quota stay as they were."""
    _cluster, _pki, who = secured
    admin, a, b = who["admin"], who["a"], who["b"]
    models = tmp_path / "models"
    for n, c in (("b1", 1.0), ("a1", 11.0)):
        caller = b if n.startswith("b") else a
        st = await caller.register(n, add_model(models / n / "model.onnx", c, table_bytes=TABLE), loadNow=True, sync=True)
        assert st.status == mm.ModelStatusInfo.LOADED, st
    for tenant, body in (("team-a", {"maxRps": 5}), ("team-b", {"maxBytes": 8 << 20})):
        r = await admin.http.put(admin.rest[0] + f"/api/v1/tenants/{tenant}", json=body)
        assert r.status_code == 200, r.text

    async def rate_everywhere() -> bool:
        rates = [(await admin.get("/api/v1/tenants/team-a", i)).json().get("max_rps") for i in (0, 1)]
        return rates == [5.0, 5.0]

    await wait_until(rate_everywhere, 30, "A's rate on both instances")
    before = await b_state(admin)
    canary = Canary(b, {"b1": 1.0})
    canary.start()
    try:
        # A's flood: 3 rounds of 40 concurrent calls through each instance
        codes: dict[str, int] = {}
        trailers: set[str] = set()
        for _ in range(3):
            results = await asyncio.gather(*(a.infer_calls[i % 2](request_bytes("a1"), metadata=a.md, timeout=30) for i in range(80)),
                                           return_exceptions=True)
            for res in results:
                if isinstance(res, grpc.aio.AioRpcError):
                    codes[res.code().name] = codes.get(res.code().name, 0) + 1
                    trailers |= {v for k, v in (res.trailing_metadata() or ()) if k == "retry-after"}
                else:
                    codes["OK"] = codes.get("OK", 0) + 1
        assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
        # each instance admits A's burst (5) and then 5 a second; the rounds take a few seconds
        assert 10 <= codes["OK"] <= 60 and codes["RESOURCE_EXHAUSTED"] >= 180, codes
        assert trailers == {"1"}
        # A cannot lift its own rate (or B's)
        r = await a.http.put(a.rest[0] + "/api/v1/tenants/team-a", json={"maxRps": 0})
        assert r.status_code == 403
        start = canary.ok
        await wait_until(lambda: canary.ok >= start + 10, 30, "B served after A's flood")
    finally:
        await stop_canary(canary)
    assert await b_state(admin) == before
    assert (await admin.get("/api/v1/tenants/team-a")).json()["max_rps"] == 5.0


async def test_exposed_bind_refuses_to_start_without_auth_and_tls(tmp_path: Path) -> None:
    """Secure by default: `serve --host 0.0.0.0` without an auth file and TLS exits, unless --insecure."""
    import subprocess
    import sys

    from tests.mesh.cluster import ROOT

    args = [sys.executable, "-m", "mesh", "serve", "--host", "0.0.0.0", "--grpc-port", "0", "--rest-port", "0",
            "--store", "memory", "--data-dir", str(tmp_path / "d")]
    proc = await asyncio.to_thread(subprocess.run, args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "refusing to listen on 0.0.0.0" in proc.stdout + proc.stderr
    rf = tmp_path / "ready.json"
    p = subprocess.Popen([*args, "--insecure", "--ready-file", str(rf)], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        await wait_until(lambda: rf.exists() or p.poll() is not None, 60, "insecure instance to start")
        assert rf.exists(), p.stdout.read() if p.stdout else ""
        ready = json.loads(rf.read_text())
        async with grpc.aio.insecure_channel(ready["grpc"].replace("0.0.0.0", "127.0.0.1")) as ch:
            await mm_grpc.ModelMeshStub(ch).getModelStatus(mm.GetStatusRequest(modelId="x"), timeout=10)
    finally:
        p.terminate()
        out, _ = await asyncio.to_thread(p.communicate, None, 30)
    assert "INSECURE" in out
