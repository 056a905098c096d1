"""Local meshes in several processes share one store when their instance ids differ
(``LocalMeshConfig.id_prefix``): the density bench's process mesh is built this way."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from mesh import LocalMesh, LocalMeshConfig, ModelInfoSpec, StoreSettings
from mesh._demo import make_onnx
from mesh._store import MemoryStore
from tests.mesh.cluster import wait_until

pytestmark = pytest.mark.asyncio


async def test_two_local_meshes_with_their_own_prefixes_form_one_cluster(tmp_path: Path) -> None:
    model = tmp_path / "arts" / "m" / "model.onnx"
    make_onnx(model, 64, seed=3)
    store = MemoryStore()

    def config(prefix: str) -> LocalMeshConfig:
        return LocalMeshConfig(instances=1, capacity_bytes=64 << 20, data_dir=tmp_path / prefix, store=StoreSettings(kind="memory"),
                               allowed_roots=[tmp_path / "arts"], id_prefix=prefix)

    east, west = LocalMesh(config("east"), store=store), LocalMesh(config("west"), store=store)
    await east.start()
    await west.start()
    try:
        assert [i.instance_id for i in east.instances + west.instances] == ["east-0", "west-0"]
        # each one's mirror lists both instances: one cluster, not two that overwrite one record
        for mesh in (east, west):
            await wait_until(lambda m=mesh: set(m.instances[0].state.instances.items) == {"east-0", "west-0"}, 10, "both instances mirrored")

        await east.instances[0].management.register_model("m", ModelInfoSpec(type="onnx", path=str(model)), load_now=True, sync=True)
        body = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
        answers = []
        async with httpx.AsyncClient(timeout=30) as client:
            for mesh in (east, west):  # the model answers through either mesh's instance
                rest = mesh.instances[0].endpoints
                assert rest is not None
                r = await client.post(f"http://{rest.rest}/v2/models/m/infer", content=json.dumps(body))
                assert r.status_code == 200, r.text
                answers.append(r.json()["outputs"][0]["data"])
        assert answers[0] == answers[1]
        holders = east.instances[0].state.holders("m")
        assert holders and set(holders) <= {"east-0", "west-0"}
    finally:
        await west.stop()
        await east.stop()
