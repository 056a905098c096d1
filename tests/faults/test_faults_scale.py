"""A hot model scales out under load and back in when idle (live: 3 processes, real etcd).

The thresholds are made small through the placement settings (``MODELMUX_PLACEMENT_*``), the
rate window through ``rate_window_s``: traffic well above ``scale_out_rpm_per_copy`` per copy
adds copies up to one per instance; once traffic stops the rate falls to 0 within two rate
windows and copies go, one per tick, back to one. A model with light traffic keeps one copy
all along; no request fails while copies come and go.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.faulthelp import SLACK_S, Mgmt, holders
from tests.faults.traffic import Traffic
from tests.mesh.cluster import wait_until
from tests.mesh.models import add_model

pytestmark = pytest.mark.etcd

RATE_WINDOW_S = 2.0
SCALE_OUT_RPM = 120.0  # per copy: 2 requests/s
POLICY = {
    "MODELMUX_PLACEMENT_SCALE_OUT_RPM_PER_COPY": str(SCALE_OUT_RPM),
    "MODELMUX_PLACEMENT_SCALE_IN_RPM_PER_COPY": "30",
    "MODELMUX_PLACEMENT_SECOND_COPY_RPM": "1000000000",  # no "second copy for regular use": 1 is the floor
    "MODELMUX_PLACEMENT_SECOND_COPY_OFF_RPM": "100000000",
    "MODELMUX_PLACEMENT_MIN_RESIDENCY_S": "0.5",
}


async def test_hot_model_scales_out_then_in(make_cluster: Any, tmp_path: Path) -> None:
    cluster = await make_cluster(3, env=POLICY, rate_window_s=RATE_WINDOW_S)
    mgmt = Mgmt(cluster.grpc)
    try:
        for k, mid in enumerate(("hot", "calm")):
            await mgmt.register(mid, add_model(tmp_path / "models" / mid / "model.onnx", float(k)), i=k, load=True)
        calm = Traffic(cluster.grpc, {"calm": 1.0}, rate_hz=1.0, deadline_s=10.0, max_s=120)  # 60 rpm: below the threshold
        hot = Traffic(cluster.grpc, {"hot": 0.0}, rate_hz=20.0, deadline_s=10.0, max_s=60)  # 1200 rpm: 10x one copy's share
        async with calm:
            t0 = time.monotonic()
            async with hot:
                await wait_until(lambda: hot.ok_count("hot") >= 10, 30, "hot traffic")

                async def copies(n: int) -> bool:
                    return len(await holders(cluster, "hot")) == n

                await wait_until(lambda: copies(3), 30 + SLACK_S, "the hot model on every instance")
                t_out = time.monotonic() - t0
                n = len(hot.records)
                await wait_until(lambda: len(hot.records) >= n + 40, 30, "traffic over three copies")
            t_idle = time.monotonic()
            await wait_until(lambda: copies(1), 4 * RATE_WINDOW_S + 30 + SLACK_S, "the idle model back to one copy")
            t_in = time.monotonic() - t_idle
            calm_copies = await holders(cluster, "calm")
        counters = await cluster.counters()
        served_by = sum(1 for c in counters if c.get("local", 0) > 0)
        print(
            f"\nhot model: 3 copies {t_out:.2f}s after 20 req/s began, back to 1 copy {t_in:.2f}s after it stopped; "
            f"hot {hot.summary()}; calm {calm.summary()}"
        )
        assert hot.failures() == [] and calm.failures() == [], (hot.failures()[:3], calm.failures()[:3])
        assert len(calm_copies) == 1
        assert served_by == 3  # the copies did serve
    finally:
        await mgmt.close()
