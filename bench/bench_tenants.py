"""Tenant isolation under a flood: tenant B's p99 latency with tenant A flooding vs without, same run.

One in-process instance (memory store) serves two small ONNX models, one per tenant, with a
per-tenant in-flight limit. B sends steady sequential requests over gRPC; A keeps ``flood``
requests in flight (each answered or refused, then sent again). Ratio = B's p99 with the flood /
B's p99 without it (target <= 2).

    python -m bench.bench_tenants [--seconds 5] [--flood 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx
import numpy as np

from tests.mesh.cluster import ROOT, MemoryCluster
from tests.mesh.models import add_model, request_bytes

INFER = "/inference.GRPCInferenceService/ModelInfer"


async def _steady(call: grpc.aio.UnaryUnaryMultiCallable, msg: bytes, seconds: float) -> list[float]:
    lat: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        await call(msg, timeout=30)
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


async def run(seconds: float, flood: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = MemoryCluster(1, Path(tmp), capacity_bytes=64 << 20, overrides={"tenant_inflight": 2, "tenant_queued": 16})
        await cluster.start()
        try:
            async with httpx.AsyncClient(base_url=cluster.rest[0], timeout=60) as c:
                for mid, tenant in (("a", "alpha"), ("b", "beta")):
                    p = add_model(Path(tmp) / mid / "model.onnx", 1.0)
                    body = {"modelInfo": {"type": "onnx", "path": str(p), "key": {"tenant": tenant}}, "loadNow": True, "sync": True}
                    (await c.post(f"/v1/models/{mid}", json=body)).raise_for_status()
            ch_a = grpc.aio.insecure_channel(cluster.grpc[0])
            ch_b = grpc.aio.insecure_channel(cluster.grpc[0])
            call_a, call_b = ch_a.unary_unary(INFER), ch_b.unary_unary(INFER)
            msg_a, msg_b = request_bytes("a"), request_bytes("b")
            await _steady(call_b, msg_b, 0.5)  # warm up
            quiet = await _steady(call_b, msg_b, seconds)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _FLOOD, cluster.grpc[0], str(flood), str(seconds + 1.5),
                stdout=asyncio.subprocess.PIPE, cwd=str(ROOT),
            )
            await _steady(call_a, msg_a, 1.0)  # the flood process starts meanwhile
            loud = await _steady(call_b, msg_b, seconds)
            out, _ = await proc.communicate()
            counts = json.loads(out)
            await ch_a.close()
            await ch_b.close()
        finally:
            await cluster.close()
    p99q, p99l = float(np.percentile(quiet, 99)) * 1e3, float(np.percentile(loud, 99)) * 1e3
    return {
        "b_p99_ms_quiet": round(p99q, 2),
        "b_p99_ms_flood": round(p99l, 2),
        "ratio": round(p99l / p99q, 2),
        "b_requests_quiet": len(quiet),
        "b_requests_flood": len(loud),
        "a_ok": counts["ok"],
        "a_refused": counts.get("RESOURCE_EXHAUSTED", 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--flood", type=int, default=64)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.seconds, args.flood)), indent=2))


if __name__ == "__main__":
    main()
