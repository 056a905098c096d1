"""Tenant isolation under a flood: tenant B's p99 latency with tenant A flooding vs without, same run.

One ``modelmux serve`` process (memory store) serves two small ONNX models, one per tenant, with
a per-tenant in-flight limit. B sends steady sequential requests over gRPC from this process; A
keeps ``flood`` requests in flight on one connection from a process of its own (each answered or
refused, then sent again). Ratio = B's p99 with the flood / B's p99 without it (target <= 2).

The flooding client is h2load (C; ``--client h2load``, the default) or a grpc.aio client
(``--client python``). On a 2-core machine the Python client burns a core of its own, so B's own
client and the server then share one core: that measures the box's CPU, not the server's
fairness. h2load puts the same 64 streams on the server for a fraction of the CPU.

``--a-rps N`` gives tenant A a rate (``maxRps`` of its quota, set through the management API before
B's quiet phase): past N requests per second A's calls are refused (held, then RESOURCE_EXHAUSTED),
which bounds the share of the server A's flood takes however cheap each of its calls is.

With ``--rounds N`` the quiet and flood phases alternate N times against one server; the ratio of
the pooled p99s and the median of the per-round ratios are both reported.

    python -m bench.bench_tenants [--seconds 5] [--flood 64] [--client h2load|python] [--a-rps N] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np

from tests.mesh.cluster import ROOT, wait_until
from tests.mesh.models import add_model, request_bytes

INFER = "/inference.GRPCInferenceService/ModelInfer"


async def _steady(call: grpc.aio.UnaryUnaryMultiCallable, msg: bytes, seconds: float, *, refusals_ok: bool = False) -> list[float]:
    lat: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        try:
            await call(msg, timeout=30)
        except grpc.aio.AioRpcError as exc:  # A's own calls share its tenant's limit with the flood
            if not (refusals_ok and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED):
                raise
            continue
        lat.append(time.perf_counter() - t)
    return lat


# tenant A's flood runs in its own process, so that its client work does not share the server's event loop
_FLOOD = r"""
import asyncio, json, sys, time
import grpc
from tests.mesh.models import request_bytes
async def main(addr, n, seconds):
    ch = grpc.aio.insecure_channel(addr)
    call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    msg = request_bytes("a")
    counts = {"ok": 0}
    end = time.monotonic() + seconds
    async def one():
        while time.monotonic() < end:
            try:
                await call(msg, timeout=30)
                counts["ok"] += 1
            except grpc.aio.AioRpcError as exc:
                counts[exc.code().name] = counts.get(exc.code().name, 0) + 1
    await asyncio.gather(*(one() for _ in range(n)))
    print(json.dumps(counts))
asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
"""


async def _serve(tmp: Path) -> tuple[asyncio.subprocess.Process, dict[str, str]]:
    """``modelmux serve`` (memory store) in its own process: its event loop shares nothing with B's client."""
    rf = tmp / "ready.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MODELMUX_INSTANCE_TENANT_INFLIGHT": "2",
        "MODELMUX_INSTANCE_TENANT_QUEUED": "16",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh", "serve", "--store", "memory", "--grpc-port", "0", "--rest-port", "0",
        "--data-dir", str(tmp / "data"), "--allowed-root", str(tmp), "--ready-file", str(rf),
        env=env, cwd=str(ROOT), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not rf.exists():
        if proc.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError("modelmux serve did not start")
        await asyncio.sleep(0.05)
    return proc, json.loads(rf.read_text())


def _h2load_flood(addr: str, flood: int, seconds: float) -> list[str]:
    from bench._tools import grpc_frame

    body = Path(tempfile.mkdtemp(prefix="mm-flood-")) / "body.bin"
    body.write_bytes(grpc_frame(request_bytes("a")))
    return ["h2load", "-c", "1", "-m", str(flood), "-t", "1", "-D", f"{int(seconds * 1000)}ms", "-d", str(body),
            "-H", "content-type: application/grpc", "-H", "te: trailers", f"http://{addr}{INFER}"]  # fmt: skip


async def run(seconds: float, flood: int, client: str = "h2load", a_rps: float = 0.0, rounds: int = 1) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        proc_server, ready = await _serve(tmp)
        try:
            async with httpx.AsyncClient(base_url=f"http://{ready['rest']}", timeout=60) as c:
                for mid, tenant in (("a", "alpha"), ("b", "beta")):
                    p = add_model(tmp / mid / "model.onnx", 1.0)
                    body = {"modelInfo": {"type": "onnx", "path": str(p), "key": {"tenant": tenant}}, "loadNow": True, "sync": True}
                    (await c.post(f"/api/v1/models/{mid}", json=body)).raise_for_status()
                if a_rps:
                    (await c.put("/api/v1/tenants/alpha", json={"maxRps": a_rps})).raise_for_status()
                    # every instance reads the rate from its mirror: wait until this one has it
                    async def mirrored() -> bool:
                        return bool((await c.get("/api/v1/tenants/alpha")).json().get("max_rps") == a_rps)

                    await wait_until(mirrored, 30, "tenant A's rate mirrored")
            ch_a = grpc.aio.insecure_channel(ready["grpc"])
            ch_b = grpc.aio.insecure_channel(ready["grpc"])
            call_a, call_b = ch_a.unary_unary(INFER), ch_b.unary_unary(INFER)
            msg_a, msg_b = request_bytes("a"), request_bytes("b")
            await _steady(call_b, msg_b, 0.5)  # warm up
            quiet: list[float] = []
            loud: list[float] = []
            ratios: list[float] = []
            counts: dict[str, int] = {}
            for _ in range(rounds):  # quiet, then flood, per round: the VM's swings hit both alike
                q = await _steady(call_b, msg_b, seconds)
                if client == "h2load":
                    cmd = _h2load_flood(ready["grpc"], flood, seconds + 1.5)
                else:
                    cmd = [sys.executable, "-c", _FLOOD, ready["grpc"], str(flood), str(seconds + 1.5)]
                proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, cwd=str(ROOT))
                await _steady(call_a, msg_a, 1.0, refusals_ok=True)  # the flood process starts meanwhile
                f = await _steady(call_b, msg_b, seconds)
                out, _ = await proc.communicate()
                if client == "h2load":  # h2load cannot tell an answer from a refusal (both HTTP 200)
                    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done", out.decode())
                    counts["ok"] = counts.get("ok", 0) + (int(m.group(1)) if m else 0)
                else:
                    for k, v in json.loads(out).items():
                        counts[k] = counts.get(k, 0) + v
                quiet += q
                loud += f
                ratios.append(float(np.percentile(f, 99) / np.percentile(q, 99)))
            await ch_a.close()
            await ch_b.close()
        finally:
            proc_server.terminate()
            await proc_server.wait()
    p99q, p99l = float(np.percentile(quiet, 99)) * 1e3, float(np.percentile(loud, 99)) * 1e3
    return {
        "b_p99_ms_quiet": round(p99q, 2),
        "b_p99_ms_flood": round(p99l, 2),
        "ratio": round(p99l / p99q, 2),  # of the p99s over every round's calls
        "ratio_per_round": [round(r, 2) for r in ratios],
        "ratio_median": round(float(np.median(ratios)), 2),
        "b_requests_quiet": len(quiet),
        "b_requests_flood": len(loud),
        "client": client,
        "a_rps": a_rps,
        "a_answered_or_refused" if client == "h2load" else "a_ok": counts.get("ok", 0),
        "a_refused": counts.get("RESOURCE_EXHAUSTED", 0) if client != "h2load" else -1,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--flood", type=int, default=64)
    ap.add_argument("--client", choices=("h2load", "python"), default="h2load")
    ap.add_argument("--a-rps", type=float, default=0.0, help="tenant A's rate, requests per second (0: none)")
    ap.add_argument("--rounds", type=int, default=1, help="quiet + flood phases, one after the other")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.seconds, args.flood, args.client, args.a_rps, args.rounds)), indent=2))


if __name__ == "__main__":
    main()
