"""Memory of one ``modelmux serve`` process (RSS, read with psutil) while models cycle through it.

- loading beyond capacity never happens: cycling 10x its capacity of models (40 MiB capacity,
  ~4 MiB models), the instance's used bytes never exceed the capacity and its RSS stays under
  the RSS it had with one model loaded + capacity + ``LOAD_OVERHEAD_BYTES`` (stated bound: a
  load transiently holds the artifact bytes and the runtime's copy of the weights, allocator
  slack, the gRPC and store buffers of a busy process);
- unloading returns memory: after load/unload cycles of 1,000 distinct models (hardly any loaded
  twice: a copy is not evicted before it served its request while anything else can go), RSS is back
  within ``CYCLE_GROWTH_BYTES`` of what it was after the first 100 cycles (a leak of even
  40 KiB per model would show as 36 MiB).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest

from tests.faults.faulthelp import NO_RATE_COPIES, Mgmt
from tests.mesh.cluster import ProcessCluster, wait_until
from tests.mesh.models import add_model, answer, request_bytes

pytestmark = pytest.mark.etcd

MiB = 1 << 20
CAPACITY_BYTES = 40 * MiB
MODEL_TABLE_BYTES = 4 * MiB
LOAD_OVERHEAD_BYTES = 48 * MiB
CYCLE_GROWTH_BYTES = 24 * MiB


class RssSampler:
    """Samples a process's RSS every ``interval_s`` in a thread (so that peaks between requests count)."""

    def __init__(self, pid: int, interval_s: float = 0.01) -> None:
        self.proc = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> RssSampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


async def _cycle(cluster: ProcessCluster, mgmt: Mgmt, models: dict[str, float], *, concurrency: int = 4) -> int:
    """Request every model once (each a miss that evicts older ones); returns the largest used_bytes seen."""
    channel = mgmt.channels[0]
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    used_max = 0
    names = list(models)
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=10) as http:

        async def one(k: int, name: str) -> None:
            nonlocal used_max
            async with sem:
                out = answer(await call(request_bytes(name), timeout=60))
                assert np.allclose(out, models[name]), (name, out)
                if k % 10 == 0:
                    me = (await http.get(f"{cluster.rest[0]}/api/v1/cluster")).json()["self"]
                    used_max = max(used_max, me["used_bytes"])

        await asyncio.gather(*(one(k, n) for k, n in enumerate(names)))
    return used_max


async def _register(mgmt: Mgmt, tmp_path: Path, prefix: str, n: int, table_bytes: int) -> dict[str, float]:
    models = {}
    sem = asyncio.Semaphore(16)

    async def one(k: int) -> None:
        name = f"{prefix}{k:04d}"
        p = add_model(tmp_path / "models" / name / "model.onnx", float(k % 1000), table_bytes=table_bytes)
        async with sem:
            await mgmt.register(name, p)
        models[name] = float(k % 1000)

    await asyncio.gather(*(one(k) for k in range(n)))
    return dict(sorted(models.items()))


async def test_rss_bounded_by_capacity_while_cycling_10x(make_cluster: Any, tmp_path: Path) -> None:
    cluster = await make_cluster(1, capacity_bytes=CAPACITY_BYTES, env=NO_RATE_COPIES)
    mgmt = Mgmt(cluster.grpc)
    try:
        models = await _register(mgmt, tmp_path, "big", 10 * CAPACITY_BYTES // MODEL_TABLE_BYTES, MODEL_TABLE_BYTES)
        first = dict(list(models.items())[:1])
        await _cycle(cluster, mgmt, first)  # one model loaded: the runtime is initialised
        with RssSampler(cluster.pid(0)) as rss:
            base = rss.rss()
            used_max = await _cycle(cluster, mgmt, models, concurrency=2)
            await wait_until(lambda: rss.peak > 0, 5, "a sample")
        counters = (await cluster.counters())[0]
        print(
            f"\n{len(models)} models of {MODEL_TABLE_BYTES // MiB} MiB through {CAPACITY_BYTES // MiB} MiB: "
            f"{counters['loads']} loads, {counters['unloads']} unloads; used bytes max {used_max / MiB:.1f} MiB; "
            f"RSS {base / MiB:.0f} MiB with one model, peak {rss.peak / MiB:.0f} MiB "
            f"(bound {(base + CAPACITY_BYTES + LOAD_OVERHEAD_BYTES) / MiB:.0f} MiB)"
        )
        assert counters["loads"] >= len(models) and counters["unloads"] >= len(models) - CAPACITY_BYTES // MODEL_TABLE_BYTES
        assert 0 < used_max <= CAPACITY_BYTES
        assert counters["used_bytes"] <= CAPACITY_BYTES
        assert rss.peak <= base + CAPACITY_BYTES + LOAD_OVERHEAD_BYTES
    finally:
        await mgmt.close()


async def test_rss_returns_after_1000_load_unload_cycles(make_cluster: Any, tmp_path: Path) -> None:
    table = 256 << 10
    cluster = await make_cluster(1, capacity_bytes=8 * (table + (64 << 10)), env=NO_RATE_COPIES)
    mgmt = Mgmt(cluster.grpc)
    try:
        models = await _register(mgmt, tmp_path, "c", 1000, table)
        names = list(models)
        warm = {n: models[n] for n in names[:100]}
        await _cycle(cluster, mgmt, warm)
        proc = psutil.Process(cluster.pid(0))
        after_100 = proc.memory_info().rss
        await _cycle(cluster, mgmt, {n: models[n] for n in names[100:]})
        after_1000 = proc.memory_info().rss
        counters = (await cluster.counters())[0]
        print(
            f"\n1000 models cycled through room for 8: {counters['loads']} loads, {counters['unloads']} unloads; "
            f"RSS {after_100 / MiB:.0f} MiB after 100, {after_1000 / MiB:.0f} MiB after 1000 "
            f"(growth {(after_1000 - after_100) / MiB:+.1f} MiB, bound {CYCLE_GROWTH_BYTES / MiB:.0f} MiB)"
        )
        held = sum(1 for st in counters["copies"].values() if st == "loaded")
        # every model loaded, hardly any twice (a copy is evicted before it served the request it
        # was loaded for only when nothing else could go: 1,024-1,031 loads before that rule, 1,000-1,002
        # after), and every load beyond what fits unloaded another: only what fits stays
        assert 1000 <= counters["loads"] <= 1010 and counters["loads"] - counters["unloads"] == held
        assert counters["used_bytes"] <= 8 * (table + (64 << 10)) and held <= 8 * (table + (64 << 10)) // table
        assert after_1000 - after_100 <= CYCLE_GROWTH_BYTES
    finally:
        await mgmt.close()
