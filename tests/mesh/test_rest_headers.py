"""REST request timeout headers: a bad value is the client's mistake (400), not a 504 or a 500."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.mesh.cluster import MemoryCluster

BODY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}]}


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0"])
async def test_a_bad_timeout_header_is_a_400(tmp_path: Path, value: str) -> None:
    cluster = MemoryCluster(1, tmp_path, capacity_bytes=16 << 20)
    await cluster.start()
    try:
        async with httpx.AsyncClient(base_url=cluster.rest[0], timeout=30) as c:
            r = await c.post("/v2/models/nope/infer", json=BODY, headers={"x-request-timeout": value})
            assert r.status_code == 400, r.text
            assert "timeout" in r.json()["error"]
            # a sane (or huge, clamped) timeout reaches routing: the model is unknown
            for ok in ("5", "1e300"):
                r = await c.post("/v2/models/nope/infer", json=BODY, headers={"x-request-timeout": ok})
                assert r.status_code == 404, r.text
    finally:
        await cluster.close()
