"""Existing clients over TLS with a bearer token: tritonclient (gRPC) and the KServe SDK's
InferenceGRPCClient against one ``modelmux serve`` with TLS and an auth file; without the token
the same client is refused."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import ssl
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from mesh.client import DirectRouter
from tests.mesh.cluster import ROOT, wait_until
from tests.mesh.models import add_model, answer, request_bytes
from tests.security.tenancy_help import TOKENS, write_auth_file
from tests.tls_certs import make_ca

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    ca = make_ca(tmp_path / "pki")
    server = ca.issue("server", cn="modelmux", sans=("DNS:localhost", "IP:127.0.0.1"))
    auth = write_auth_file(tmp_path / "auth.yaml")
    rf = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh", "serve", "--grpc-port", "0", "--rest-port", "0", "--store", "memory",
         "--data-dir", str(tmp_path / "d"), "--allowed-root", str(tmp_path), "--ready-file", str(rf),
         "--auth-file", str(auth), "--tls-cert", str(server.cert), "--tls-key", str(server.key),
         "--health-port", "0"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_until(lambda: rf.exists() or proc.poll() is not None, 60, "instance to serve")
        assert rf.exists(), f"serve exited with {proc.returncode}"
        ready = json.loads(rf.read_text())
        model = add_model(tmp_path / "m" / "model.onnx", 5.0)
        ctx = ssl.create_default_context(cafile=str(ca.cert))
        async with httpx.AsyncClient(verify=ctx, headers={"authorization": f"Bearer {TOKENS['b']}"}, timeout=60) as http:
            r = await http.post(f"https://{ready['rest']}/api/v1/models/tls-m",
                                json={"modelInfo": {"type": "onnx", "path": str(model)}, "loadNow": True, "sync": True})
            assert r.status_code == 200 and r.json()["status"] == "LOADED", r.text
        yield {"grpc": ready["grpc"], "ca": ca.cert, "health": ready["health"]}
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)


def _triton(addr: str, ca: Path, token: str | None) -> np.ndarray:
    client = tritonclient_grpc.InferenceServerClient(addr, ssl=True, root_certificates=str(ca))
    x = tritonclient_grpc.InferInput("input", [1, 4], "FP32")
    x.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    headers = {"authorization": f"Bearer {token}"} if token else None
    out = client.infer("tls-m", [x], headers=headers)
    return out.as_numpy("output")


async def test_tritonclient_over_tls_with_a_bearer_token(served: dict[str, Any]) -> None:
    out = await asyncio.to_thread(_triton, served["grpc"], served["ca"], TOKENS["b"])
    assert out.tolist() == [[5.0, 5.0, 5.0, 5.0]]
    with pytest.raises(tritonclient_grpc.InferenceServerException) as refused:
        await asyncio.to_thread(_triton, served["grpc"], served["ca"], None)
    assert "UNAUTHENTICATED" in str(refused.value.status()) or "authentication" in str(refused.value).lower()
    with pytest.raises(tritonclient_grpc.InferenceServerException):  # another tenant: not found
        await asyncio.to_thread(_triton, served["grpc"], served["ca"], TOKENS["a"])


KSERVE_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import numpy as np
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def main(addr, ca, token):
        client = InferenceGRPCClient(addr, use_ssl=True, root_certificates=ca)
        x = InferInput("input", [1, 4], "FP32", data=np.zeros((1, 4), dtype=np.float32))
        headers = [("authorization", "Bearer " + token)] if token else None
        try:
            res = await client.infer(InferRequest("tls-m", [x]), headers=headers)
            print("OK", res.outputs[0].as_numpy().tolist())
        except Exception as exc:
            print("ERR", type(exc).__name__, " ".join(str(exc).split()))
        finally:
            await client.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""))
    """
)


async def test_direct_router_over_tls_with_a_bearer_token(served: dict[str, Any]) -> None:
    """mesh.client.DirectRouter against a TLS instance with an auth file: verified TLS and the token
    on every request, to entries and learnt holders alike; without the token it is refused, and a
    plaintext router cannot talk to the TLS port at all."""
    ca = Path(served["ca"]).read_bytes()
    async with DirectRouter([served["grpc"]], root_certificates=ca, token=TOKENS["b"]) as router:
        for _ in range(3):
            assert answer(await router.infer("tls-m", request_bytes("tls-m"), timeout=30)).tolist() == [[5.0] * 4]
        assert router.holder("tls-m") is not None and router.direct >= 1  # the learnt holder, over TLS too
    async with DirectRouter([served["grpc"]], root_certificates=ca) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await anonymous.infer("tls-m", request_bytes("tls-m"), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with DirectRouter([served["grpc"]], token=TOKENS["b"]) as plaintext:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await plaintext.infer("tls-m", request_bytes("tls-m"), timeout=10)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_kserve_sdk_over_tls_with_a_bearer_token(served: dict[str, Any], tmp_path: Path) -> None:
    if importlib.util.find_spec("kserve") is None:  # not imported here: its protos clash with tritonclient's
        pytest.skip("kserve is not installed")
    script = tmp_path / "kserve_client.py"
    script.write_text(KSERVE_SCRIPT)

    def run(*token: str) -> str:
        p = subprocess.run([sys.executable, str(script), served["grpc"], str(served["ca"]), *token],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
        return p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr[-2000:]

    ok = await asyncio.to_thread(run, TOKENS["b"])
    assert ok == "OK [[5.0, 5.0, 5.0, 5.0]]", ok
    refused = await asyncio.to_thread(run)
    assert refused.startswith("ERR") and ("UNAUTHENTICATED" in refused or "authentication" in refused.lower()), refused


async def test_the_plaintext_health_port_serves_health_only(served: dict[str, Any]) -> None:
    """Kubelet gRPC probes cannot speak TLS: the health port answers them in plaintext, and
    nothing else (no inference, no management) is reachable through it."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.mesh.models import request_bytes

    async with grpc.aio.insecure_channel(served["health"]) as ch:
        for service in ("", "inference.GRPCInferenceService"):
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as infer:
            await ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
                request_bytes("tls-m"), metadata=(("authorization", f"Bearer {TOKENS['b']}"),), timeout=10
            )
        assert infer.value.code() == grpc.StatusCode.UNIMPLEMENTED
