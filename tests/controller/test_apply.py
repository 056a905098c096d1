"""``modelmux apply -f``: Predictor / InferenceService YAML registered against a running local mesh."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller import ApplyResult, ReconcileContext, Registration, apply_files, desired_state
from mesh import Unavailable
from tests.mesh.cluster import wait_until
from tests.mesh.models import add_model

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
pytestmark = pytest.mark.parametrize("cluster_kind", ["memory"])


async def _apply(paths: list[Path], address: str, **kw: Any) -> list[ApplyResult]:
    return await asyncio.to_thread(apply_files, paths, address, **kw)


def _by_name(results: list[ApplyResult]) -> dict[str, ApplyResult]:
    return {r.name: r for r in results}


async def test_examples_from_modelmesh_docs_apply(make_cluster: Any) -> None:
    cluster = await make_cluster(1)
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) >= 5
    seen: list[tuple[int, int]] = []
    results = await _apply(files, cluster.rest[0], load_now=False, progress=lambda n, total: seen.append((n, total)))
    assert [r.action for r in results] == ["created"] * len(files), results
    assert seen[-1] == (len(files), len(files))
    async with httpx.AsyncClient(base_url=cluster.rest[0]) as client:
        for r in results:
            if r.kind == "TenantQuota":  # a tenant's quota, not a vModel
                assert (await client.get(f"/api/v1/tenants/{r.namespace}")).json()["max_bytes"] == 8 << 30
                continue
            st = (await client.get(f"/api/v1/vmodels/{r.vmodel}")).json()
            assert st["status"] == "DEFINED" and st["targetModelId"] == r.model_id, st
            assert st["owner"] == ("ksp/default" if r.kind == "Predictor" else "isvc/default")
        models = {m["model_id"]: m for m in (await client.get("/api/v1/models")).json()["models"]}
    by = _by_name(results)
    assert models[by["example-onnx-mnist"].model_id]["type"] == "onnx"
    assert models[by["example-xgboost-mushroom"].model_id]["type"] == "xgboost"
    # the same files again (as a directory, like kubectl apply -f dir/) change nothing
    again = await _apply([EXAMPLES], cluster.rest[0], load_now=False)
    assert [r.action for r in again] == ["unchanged"] * len(files)
    assert [r.model_id for r in again] == [r.model_id for r in results]


async def test_apply_loads_serves_transitions_and_deletes(make_cluster: Any, tmp_path: Path) -> None:
    cluster = await make_cluster(2)
    m1 = add_model(tmp_path / "m1" / "model.onnx", 1.0, table_bytes=16 << 10)
    m2 = add_model(tmp_path / "m2" / "model.onnx", 2.0, table_bytes=16 << 10)
    spec: dict[str, Any] = {"modelType": {"name": "onnx"}, "path": str(m1)}
    doc: dict[str, Any] = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "Predictor",
        "metadata": {"name": "tour", "annotations": {"modelmux.io/min-copies": "1"}},
        "spec": spec,
    }
    f = tmp_path / "tour.yaml"
    f.write_text(yaml.safe_dump(doc))
    [r] = await _apply([f], cluster.rest[0])
    assert (r.action, r.vmodel, r.namespace) == ("created", "tour", "default")
    expected = desired_state(doc, ReconcileContext())
    assert isinstance(expected, Registration) and expected.model_id == r.model_id

    async def answer(base: str) -> float:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            resp = await client.post("/v2/models/tour/infer", json={"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]})
            assert resp.status_code == 200, resp.text
            return float(resp.json()["outputs"][0]["data"][0])

    assert await answer(cluster.rest[1]) == 1.0
    spec["path"] = str(m2)
    f.write_text(yaml.safe_dump(doc))
    [r2] = await _apply([f], cluster.rest[1])
    assert r2.action == "configured" and r2.model_id != r.model_id

    async def switched() -> bool:
        async with httpx.AsyncClient(base_url=cluster.rest[0]) as client:
            st = (await client.get("/api/v1/vmodels/tour")).json()
        return bool(st["status"] == "DEFINED" and st["activeModelId"] == r2.model_id)

    await wait_until(switched, 30, "the vModel to move to the new model")
    assert await answer(cluster.rest[0]) == 2.0
    [d] = await _apply([f], cluster.rest[0], delete=True)
    assert d.action == "deleted"
    async with httpx.AsyncClient(base_url=cluster.rest[0]) as client:
        assert (await client.get("/api/v1/vmodels/tour")).json()["status"] == "NOT_FOUND"


async def test_mixed_documents_are_reported_one_by_one(make_cluster: Any, tmp_path: Path) -> None:
    cluster = await make_cluster(1)
    m = add_model(tmp_path / "m" / "model.onnx", 1.0, table_bytes=16 << 10)
    docs = [
        {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime", "metadata": {"name": "mlserver-1.x"},
         "spec": {"supportedModelFormats": [{"name": "sklearn", "autoSelect": True}], "multiModel": True}},
        {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "Predictor", "metadata": {"name": "skl"},
         "spec": {"modelType": {"name": "sklearn"}, "runtime": {"name": "mlserver-1.x"}, "path": "s3://b/skl/model.joblib"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {}},
        {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "serverless"},
         "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": f"file://{m}"}}}},
        {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "Predictor", "metadata": {"name": "bad-uri", "namespace": "team"},
         "spec": {"modelType": {"name": "onnx"}, "path": "ftp://host/model.onnx"}},
        {"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "Predictor", "metadata": {"name": "listed"},
             "spec": {"modelType": {"name": "onnx"}, "path": str(m)}},
        ]},
    ]
    f = tmp_path / "all.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: Predictor\nmetadata: {name: [unclosed\n")
    missing = tmp_path / "missing.yaml"
    results = await _apply([f, broken, missing], cluster.rest[0], load_now=False, namespace="ns1")
    by = {(r.kind, r.name): r for r in results}
    assert by[("Predictor", "skl")].action == "created"
    assert by[("ServingRuntime", "mlserver-1.x")].action == "skipped"
    assert by[("ConfigMap", "cm")].action == "skipped"
    assert "ModelMesh" in by[("InferenceService", "serverless")].message
    bad = by[("Predictor", "bad-uri")]
    assert (bad.action, bad.ok, bad.namespace) == ("invalid", False, "team")
    assert "unsupported scheme 'ftp'" in bad.message and "Predictor/team/bad-uri" in bad.message
    assert by[("Predictor", "listed")].action == "created" and by[("Predictor", "listed")].namespace == "ns1"
    failed = [r for r in results if r.action == "failed"]
    assert {r.source for r in failed} == {str(broken), str(missing)}
    assert any("not valid YAML" in r.message for r in failed) and any("cannot read" in r.message for r in failed)


async def test_mesh_refusal_and_unreachable_mesh(make_cluster: Any, tmp_path: Path) -> None:
    cluster = await make_cluster(1)
    doc = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "Predictor", "metadata": {"name": "taken"},
           "spec": {"modelType": {"name": "onnx"}, "path": "s3://models/a.onnx"}}
    f = tmp_path / "p.yaml"
    f.write_text(json.dumps(doc))
    # someone else owns the vModel name: the mesh refuses, the result says why
    async with httpx.AsyncClient(base_url=cluster.rest[0]) as client:
        resp = await client.put("/api/v1/vmodels/taken", json={"targetModelId": "x", "owner": "someone", "modelInfo": {"type": "onnx", "path": "s3://models/x.onnx"}})
        assert resp.status_code == 200, resp.text
    [r] = await _apply([f], cluster.rest[0], load_now=False)
    assert r.action == "failed" and "someone" in r.message
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unavailable, match="cannot reach"):
        await _apply([f], f"127.0.0.1:{port}", timeout_s=5)


async def test_apply_tenant_quota(make_cluster: Any, tmp_path: Path) -> None:
    cluster = await make_cluster(1)
    doc = {"apiVersion": "modelmux.io/v1alpha1", "kind": "TenantQuota", "metadata": {"name": "q"}, "spec": {"maxBytes": "2Gi"}}
    f = tmp_path / "q.yaml"
    f.write_text(yaml.safe_dump(doc))
    (r,) = await _apply([f], cluster.rest[0], namespace="team-z")
    assert (r.kind, r.namespace, r.action) == ("TenantQuota", "team-z", "created")
    async with httpx.AsyncClient(base_url=cluster.rest[0]) as client:
        assert (await client.get("/api/v1/tenants/team-z")).json()["max_bytes"] == 2 << 30
        doc["spec"] = {"maxBytes": "3Gi", "tenant": "shared"}
        f.write_text(yaml.safe_dump(doc))
        (r,) = await _apply([f], cluster.rest[0], namespace="team-z")
        assert r.action == "created" and (await client.get("/api/v1/tenants/shared")).json()["max_bytes"] == 3 << 30
        (r,) = await _apply([f], cluster.rest[0], namespace="team-z")
        assert r.action == "unchanged"
        (r,) = await _apply([f], cluster.rest[0], namespace="team-z", delete=True)
        assert r.action == "deleted" and (await client.get("/api/v1/tenants/shared")).status_code == 404
        doc["spec"] = {"maxBytes": "lots"}
        f.write_text(yaml.safe_dump(doc))
        (r,) = await _apply([f], cluster.rest[0], namespace="team-z")
        assert r.action == "invalid" and "maxBytes" in r.message
