"""V2 REST inference answered in front of FastAPI (mesh._rest_fast): the same answers, errors,
headers and metrics as the FastAPI route it stands in front of."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as th

from mesh import ModelInfoSpec
from mesh._rest_edge import build_rest_app
from mesh._rest_fast import V2InferFastPath, infer_name
from tests.mesh.cluster import MemoryCluster
from tests.mesh.models import add_model

LIMIT = 4096


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v2/models/m/infer", "m"),
        ("/v2/models/a.b-c_d/infer", "a.b-c_d"),
        ("/v2/models/m/versions/7/infer", "m"),
        ("/v2/models//infer", None),
        ("/v2/models/infer", None),
        ("/v2/models/m/versions//infer", None),
        ("/v2/models/m/x/infer", None),
        ("/v2/models/m/versions/7/8/infer", None),
        ("/v2/models/m/ready", None),
        ("/v1/models/m/infer", None),
    ],
)
def test_infer_name_matches_what_the_routes_take(path: str, name: str | None) -> None:
    assert infer_name(path) == name


def _binary_body() -> tuple[bytes, dict[str, str]]:
    i = th.InferInput("input", [2, 4], "FP32")
    i.set_data_from_numpy(np.arange(8, dtype=np.float32).reshape(2, 4), binary_data=True)
    body, json_size = th.InferenceServerClient.generate_request_body([i], request_id="b1")
    assert json_size is not None
    return body, {"inference-header-content-length": str(json_size), "content-type": "application/octet-stream"}


def _cases() -> list[tuple[str, str, bytes, dict[str, str]]]:
    ok = json.dumps({"id": "r1", "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).encode()
    binary, binary_headers = _binary_body()
    return [
        ("json", "/v2/models/m/infer", ok, {"content-type": "application/json"}),
        ("version path", "/v2/models/m/versions/1/infer", ok, {}),
        ("binary extension", "/v2/models/m/infer", binary, binary_headers),
        ("unknown model", "/v2/models/nope/infer", ok, {}),
        ("not json", "/v2/models/m/infer", b"{nope", {}),
        ("wrong input", "/v2/models/m/infer", ok.replace(b'"input"', b'"other"'), {}),
        ("empty body", "/v2/models/m/infer", b"", {}),
        ("body over the limit", "/v2/models/m/infer", b"[" + b"1," * LIMIT + b"1]", {}),
        ("bad timeout", "/v2/models/m/infer", ok, {"x-request-timeout": "-1"}),
        ("timeout", "/v2/models/m/infer", ok, {"grpc-timeout": "30"}),
    ]


async def test_fast_path_answers_as_the_fastapi_route(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[str] = []
    original = V2InferFastPath._infer

    async def spy(self: V2InferFastPath, name: str, *args: Any) -> None:
        taken.append(name)
        await original(self, name, *args)

    monkeypatch.setattr(V2InferFastPath, "_infer", spy)
    cluster = MemoryCluster(1, tmp_path, capacity_bytes=64 << 20)
    await cluster.start()
    try:
        assert cluster.mesh is not None
        inst = cluster.mesh.instances[0]
        model = add_model(tmp_path / "m" / "model.onnx", 0.5, table_bytes=4096)
        await inst.management.register_model("m", ModelInfoSpec(type="onnx", path=str(model)), load_now=True, sync=True)
        answers: dict[bool, list[tuple[Any, ...]]] = {}
        counted: dict[bool, float] = {}
        for fast in (True, False):
            app = build_rest_app(inst.dataplane, inst.management, inst.state, max_message_bytes=LIMIT, version="test", fast_v2_infer=fast)
            before = _requests_counted(inst)
            got = []
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mesh") as c:
                for what, path, body, headers in _cases():
                    r = await c.post(path, content=body, headers=headers)
                    kind = r.headers.get("content-type", "")
                    payload = r.json() if kind.startswith("application/json") else r.content
                    got.append((what, r.status_code, kind, r.headers.get("content-length"), r.headers.get("inference-header-content-length"), payload))
            answers[fast] = got
            assert len(taken) == (len(_cases()) if fast else 0)  # the fast app took every request, the other none
            taken.clear()
            counted[fast] = _requests_counted(inst) - before
        assert answers[True] == answers[False]
        # every request timed, errors too, but for the bad timeout header: refused before timing starts
        assert counted[True] == counted[False] == len(_cases()) - 1
        by = {a[0]: a for a in answers[True]}
        assert by["json"][1] == 200 and by["json"][5]["id"] == "r1"
        assert by["json"][5]["outputs"][0]["data"] == [1.5, 2.5, 3.5, 4.5]
        assert by["binary extension"][1] == 200 and by["binary extension"][4] is not None
        assert [by[w][1] for w in ("unknown model", "not json", "empty body", "body over the limit", "bad timeout")] == [404, 400, 400, 413, 400]
        assert "error" in by["wrong input"][5] and by["wrong input"][1] == 400
    finally:
        await cluster.close()


def _requests_counted(inst: Any) -> float:
    total = 0.0
    for metric in inst.metrics.registry.collect():
        if metric.name == "modelmesh_api_request_milliseconds":
            total += sum(s.value for s in metric.samples if s.name.endswith("_count"))
    return total
