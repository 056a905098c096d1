"""Traffic splits are scoped like every management call: tenant A cannot read, change, promote or
roll back tenant B's vModel split, nor point a vModel of its own at B's model (which would let it
run B's model); and nothing of B's changes while A tries."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from tests.mesh.cluster import MemoryCluster
from tests.mesh.models import add_model
from tests.security.tenancy_help import TOKENS, write_auth_file


def _h(who: str) -> dict[str, str]:
    return {"authorization": f"Bearer {TOKENS[who]}"}


async def test_another_tenants_split_does_not_exist_and_cannot_route_to_its_models(tmp_path: Path) -> None:
    auth = write_auth_file(tmp_path / "auth.yaml")
    cluster = MemoryCluster(1, tmp_path, capacity_bytes=64 << 20, overrides={"auth_file": auth})
    await cluster.start()
    try:
        async with httpx.AsyncClient(base_url=cluster.rest[0], timeout=30) as c:
            for mid, value in (("b-stable", 1.0), ("b-canary", 2.0)):
                path = add_model(tmp_path / mid / "model.onnx", value)
                r = await c.post(f"/api/v1/models/{mid}", json={"modelInfo": {"type": "onnx", "path": str(path)}}, headers=_h("b"))
                assert r.status_code == 200, r.text
            path = add_model(tmp_path / "a-own" / "model.onnx", 5.0)
            r = await c.post("/api/v1/models/a-own", json={"modelInfo": {"type": "onnx", "path": str(path)}}, headers=_h("a"))
            assert r.status_code == 200, r.text
            split = {"targets": [{"model_id": "b-stable", "weight": 90}, {"model_id": "b-canary", "weight": 10}]}
            r = await c.put("/api/v1/vmodels/b-v/split", json=split, headers=_h("b"))
            assert r.status_code == 200, r.text
            before = (await c.get("/api/v1/vmodels/b-v/split", headers=_h("b"))).json()

            # A: B's split does not exist (the answer a missing vModel gets), and cannot be changed
            missing = await c.get("/api/v1/vmodels/nope/split", headers=_h("a"))
            other = await c.get("/api/v1/vmodels/b-v/split", headers=_h("a"))
            assert other.status_code == missing.status_code == 404
            assert other.json()["error"].replace("b-v", "X") == missing.json()["error"].replace("nope", "X")
            hijack = {"targets": [{"model_id": "a-own", "weight": 100}]}
            assert (await c.put("/api/v1/vmodels/b-v/split", json=hijack, headers=_h("a"))).status_code == 404
            assert (await c.post("/api/v1/vmodels/b-v/split/promote", headers=_h("a"))).status_code == 404
            assert (await c.post("/api/v1/vmodels/b-v/split/rollback", headers=_h("a"))).status_code == 404
            # A's own vModel may not route to B's models: they do not exist for A
            steal = {"targets": [{"model_id": "a-own", "weight": 50}, {"model_id": "b-stable", "weight": 50}]}
            r = await c.put("/api/v1/vmodels/a-v/split", json=steal, headers=_h("a"))
            assert r.status_code == 404 and "b-stable" in r.json()["error"]
            shadow = {"targets": [{"model_id": "a-own", "weight": 100}], "shadow": {"model_id": "b-canary", "percent": 50}}
            assert (await c.put("/api/v1/vmodels/a-v/split", json=shadow, headers=_h("a"))).status_code == 404
            assert (await c.get("/api/v1/vmodels/a-v/split", headers=_h("a"))).status_code == 404  # nothing was created

            # nothing of B's changed, and B's vModel still serves through its split
            assert (await c.get("/api/v1/vmodels/b-v/split", headers=_h("b"))).json() == before
            body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}]}
            for _ in range(5):
                r = await c.post("/v2/models/b-v/infer", json=body, headers=_h("b"))
                assert r.status_code == 200, r.text
                assert float(np.asarray(r.json()["outputs"][0]["data"]).ravel()[0]) in (1.0, 2.0)
            # A's own split on its own model works
            r = await c.put("/api/v1/vmodels/a-v/split", json={"targets": [{"model_id": "a-own", "weight": 100}]}, headers=_h("a"))
            assert r.status_code == 200, r.text
    finally:
        await cluster.close()
