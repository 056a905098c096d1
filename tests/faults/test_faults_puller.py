"""The model source dies mid-download; an instance is killed and restarted with its cache warm.

Two ``modelmux serve`` processes over real etcd; a model served over HTTP by a test file
server (tests/puller/pullhelp.py) that can stall a transfer and die mid-way; steady traffic
on other (local) models all along.

- source down mid-download: the waiting request fails with a clear load error (not a hang,
  well within its deadline); other models keep serving; once the source is back (and the
  failure has expired) the model loads and serves;
- kill -9 of the instance holding it, restarted at once with the same id and data
  directory: it loads the model again from its warm cache (no new download), requests
  through the other instance wait for it (no failure), and requests entering the restarted
  instance do not wait on its previous incarnation's copy record.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tests.faults.faulthelp import NO_RATE_COPIES, Mgmt, holders
from tests.faults.traffic import Traffic
from tests.mesh.cluster import wait_until
from tests.mesh.models import add_model, answer, request_bytes
from tests.puller.pullhelp import FileServer

pytestmark = pytest.mark.etcd

BIG = "/big/model.onnx"
FAILURE_TTL_S = 2


async def test_source_down_mid_download_then_warm_restart(make_cluster: Any, tmp_path: Path) -> None:
    big_file = add_model(tmp_path / "served" / "model.onnx", 42.0, table_bytes=4 << 20)
    server = FileServer({BIG: big_file})
    server.stall_after[BIG] = 1 << 20
    env = {**NO_RATE_COPIES, "MODELMUX_PULLER_RETRIES": "1", "MODELMUX_PULLER_BACKOFF_BASE_S": "0.2",
           "MODELMUX_PULLER_HTTP_ALLOW_PRIVATE": '["127.0.0.1/32"]'}  # the file server is on loopback
    # a lease long enough that the killed instance is back before it runs out
    cluster = await make_cluster(2, env=env, failure_ttl_s=FAILURE_TTL_S, lease_ttl_s=15)
    mgmt = Mgmt(cluster.grpc)
    answers = {}
    calls = [grpc.aio.insecure_channel(e) for e in cluster.grpc]
    try:
        for k in range(2):
            p = add_model(tmp_path / "models" / f"m{k}" / "model.onnx", float(k))
            await mgmt.register(f"m{k}", p, i=k, load=True)
            answers[f"m{k}"] = float(k)
        await mgmt.register("big", server.url(BIG))

        async def infer(i: int, model: str, timeout: float = 30) -> np.ndarray:
            return answer(await calls[i].unary_unary("/inference.GRPCInferenceService/ModelInfer")(request_bytes(model), timeout=timeout))

        async with Traffic(cluster.grpc, answers, rate_hz=5.0, deadline_s=10.0, max_s=120) as traffic:
            await wait_until(lambda: all(traffic.ok_count(m) >= 5 for m in answers), 30, "steady traffic")

            # 1. the source dies with the download a quarter done
            t0 = time.monotonic()
            pending = asyncio.ensure_future(infer(0, "big", timeout=30))
            assert await asyncio.to_thread(server.stalled.wait, 20)
            await asyncio.to_thread(server.kill)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pending
            t_failed = time.monotonic() - t0
            assert info.value.code() == grpc.StatusCode.INTERNAL, info.value
            assert "big" in (info.value.details() or "") and "failed to load" in (info.value.details() or ""), info.value.details()

            # 2. the source is back: after the failure expires the model loads and serves
            del server.stall_after[BIG]
            await asyncio.to_thread(server.restart)
            t_back = time.monotonic()

            async def served() -> bool:
                try:
                    return float((await infer(1, "big", timeout=30))[0, 0]) == 42.0
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.INTERNAL, exc  # the failure, until it expires
                    return False

            await wait_until(served, FAILURE_TTL_S + 30, "the model to load once the source is back")
            t_served = time.monotonic() - t_back
            downloads = server.requests[BIG]

            # 3. kill -9 its holder and restart it at once, same id and data directory
            (holder_id,) = await holders(cluster, "big")
            h = cluster.index_of(holder_id)
            other = 1 - h
            traffic.entries = [other]
            cluster.kill(h)
            t_kill = time.monotonic()
            through_other = asyncio.ensure_future(infer(other, "big", timeout=30))  # waits for the copy to return
            await cluster.restart(h)
            t_restarted = time.monotonic() - t_kill
            await calls[h].close()
            calls[h] = grpc.aio.insecure_channel(cluster.grpc[h])
            traffic.set_endpoint(h, cluster.grpc[h])
            assert float((await infer(h, "big", timeout=30))[0, 0]) == 42.0  # entering the restarted instance
            assert float((await through_other)[0, 0]) == 42.0
            t_again = time.monotonic() - t_kill
            traffic.entries = [0, 1]
            n = len(traffic.records)
            await wait_until(lambda: len(traffic.records) >= n + 30, 30, "traffic through both instances")

        counters = await cluster.counters()
        print(
            f"\nsource killed mid-download: request failed after {t_failed:.2f}s ({info.value.details()!r}); "
            f"served {t_served:.2f}s after the source came back; holder {holder_id} killed, restarted in "
            f"{t_restarted:.2f}s, big served again {t_again:.2f}s after the kill; GETs of the artifact {server.requests[BIG]}; "
            f"traffic {traffic.summary()}"
        )
        assert t_failed < 25.0  # a clear error, not the client's deadline
        assert traffic.failures() == [], traffic.failures()[:5]  # the other models never noticed
        assert server.requests[BIG] == downloads  # the restarted instance loaded from its warm cache
        assert await holders(cluster, "big") == [holder_id]
        assert counters[h]["loads"] >= 1
    finally:
        for ch in calls:
            await ch.close()
        await mgmt.close()
        await asyncio.to_thread(server.kill)
