"""etcd stopped under steady traffic, then restarted (``modelmux serve`` processes over a private etcd).

tests/mesh/test_store_outage.py checks the same contract for both store kinds with no traffic;
here the outage lasts longer than the instances' lease TTL and traffic never stops:

- loaded models keep serving: every request during the outage succeeds (100 %);
- management calls fail fast with UNAVAILABLE (well before the client's deadline);
- after etcd is back everything converges: instances and leader registered, copies match
  assignments, a model registered after the outage loads and serves, traffic still all OK.

The outage lasts ``MODELMUX_TEST_STORE_OUTAGE_S`` seconds: the issue's 30 s by default (the
whole fault suite then takes about two minutes on 2 cores); set it lower for quick local runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.faults.faulthelp import LEASE_TTL_S, NO_RATE_COPIES, Mgmt
from tests.faults.traffic import Traffic
from tests.mesh.cluster import wait_until
from tests.mesh.models import add_model

pytestmark = pytest.mark.etcd

OUTAGE_S = float(os.environ.get("MODELMUX_TEST_STORE_OUTAGE_S", "30"))
FAIL_FAST_S = 5.0  # a management call during the outage fails within this (store op timeout is 2 s)


async def test_etcd_down_then_back_under_traffic(make_cluster: Any, etcd_factory: Any, tmp_path: Path) -> None:
    etcd = etcd_factory()
    cluster = await make_cluster(3, etcd=etcd, env=NO_RATE_COPIES)
    mgmt = Mgmt(cluster.grpc)
    answers: dict[str, float] = {}
    try:
        for k in range(6):
            p = add_model(tmp_path / "models" / f"m{k}" / "model.onnx", float(k))
            await mgmt.register(f"m{k}", p, i=k, min_copies=2 if k < 2 else 0, load=True)
            answers[f"m{k}"] = float(k)
        late = add_model(tmp_path / "models" / "late" / "model.onnx", 99.0)

        async def loaded_everywhere() -> bool:
            snap = await cluster.snapshot()
            return all(
                sum(1 for s in snap["copies"].get(m, {}).values() if s == "loaded") == (2 if m in ("m0", "m1") else 1)
                for m in answers
            )

        await wait_until(loaded_everywhere, 30, "every model loaded")
        async with Traffic(cluster.grpc, answers, rate_hz=5.0, deadline_s=10.0, max_s=OUTAGE_S + 90) as traffic:
            await wait_until(lambda: all(traffic.ok_count(m) >= 5 for m in answers), 30, "steady traffic")
            etcd.stop()
            t_down = time.monotonic()
            mgmt_times: list[float] = []
            try:
                while time.monotonic() - t_down < OUTAGE_S:  # management calls all through the outage
                    t0 = time.monotonic()
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await mgmt.register("late", late, i=len(mgmt_times))
                    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
                    mgmt_times.append(time.monotonic() - t0)
                    sent = len(traffic.sent)  # pace the calls by the traffic: about one per second
                    await wait_until(lambda s=sent: len(traffic.sent) >= s + 30, 30, "traffic during the outage")
            finally:
                etcd.restart()
                t_up = time.monotonic()

            async def registered() -> bool:
                try:
                    await mgmt.register("late", late, i=1)
                    return True
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ALREADY_EXISTS), exc
                    return exc.code() == grpc.StatusCode.ALREADY_EXISTS

            await wait_until(registered, 30, "management to recover")
            t_mgmt = time.monotonic() - t_up

            async def converged() -> bool:
                snap = await cluster.snapshot()
                if snap["instances"] != {cluster.instance_id(i) for i in range(3)} or snap["leader"] is None:
                    return False
                return all(
                    sorted(i for i, s in snap["copies"].get(m, {}).items() if s == "loaded") == sorted(snap["assignments"].get(m, []))
                    and snap["assignments"].get(m)
                    for m in answers
                )

            await wait_until(converged, LEASE_TTL_S + 30, "instances, leader and copies to converge")
            t_converged = time.monotonic() - t_up
            from tests.mesh.models import answer, request_bytes

            call = mgmt.channels[2].unary_unary("/inference.GRPCInferenceService/ModelInfer")
            out = answer(await call(request_bytes("late"), timeout=30))
            assert float(out[0, 0]) == 99.0
            n = len(traffic.records)
            await wait_until(lambda: len(traffic.records) >= n + 60, 30, "traffic after the outage")

        during = traffic.stats(t_down, t_up)
        print(
            f"\netcd down {t_up - t_down:.1f}s: {traffic.summary()}; during the outage "
            f"{sum(s.ok for s in during.values())} requests OK, {sum(sum(s.failed.values()) for s in during.values())} failed; "
            f"{len(mgmt_times)} management calls UNAVAILABLE in {min(mgmt_times):.2f}-{max(mgmt_times):.2f}s; "
            f"management back {t_mgmt:.2f}s and converged {t_converged:.2f}s after restart"
        )
        assert traffic.failures() == [], traffic.failures()[:5]  # 100 % served, before, during and after
        assert sum(s.ok for s in during.values()) >= len(answers) * 5 * OUTAGE_S * 0.5
        assert mgmt_times and max(mgmt_times) < FAIL_FAST_S, mgmt_times
    finally:
        await mgmt.close()
