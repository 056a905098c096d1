"""A closed-loop gRPC load generator: C concurrent callers for T seconds against one endpoint."""

from __future__ import annotations

import asyncio
import time

import grpc


async def run_load(endpoint: str, payload: bytes, *, concurrency: int, duration_s: float, warmup_s: float = 1.0) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(endpoint) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        warm_end = time.perf_counter() + warmup_s
        while time.perf_counter() < warm_end:
            await call(payload, timeout=10)
        stop_at = time.perf_counter() + duration_s

        async def worker() -> None:
            nonlocal errors
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    await call(payload, timeout=10)
                    latencies.append(time.perf_counter() - t0)
                except grpc.aio.AioRpcError:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0.0

    return {"rps": len(latencies) / elapsed, "p50_ms": pct(0.50), "p99_ms": pct(0.99), "errors": float(errors), "n": float(len(latencies))}
