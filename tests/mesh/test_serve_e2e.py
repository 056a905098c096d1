"""``modelmux serve`` end to end: ONNX, TorchScript, torch.export and XGBoost models made here, served over
V2 gRPC (tritonclient, typed and raw contents) and V2 REST (plain HTTP JSON), compared with each framework's
own answers; plus the bad-input cases with their status codes and messages."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from protos import grpc_predict_v2_pb2 as pb
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.mesh.cluster import ServeProcess, serve_process
from tests.model_factory import (
    make_onnx_model,
    make_torch_export_model,
    make_torchscript_model,
    make_xgboost_model,
    onnx_reference,
    torch_reference,
    xgboost_reference,
)

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[ServeProcess]:
    env = dict(os.environ, MODELMUX_INSTANCE_MAX_MESSAGE_BYTES=str(1 << 20))
    async with serve_process(tmp_path, env=env, start_timeout_s=60, stop_timeout_s=30) as served:
        yield served


async def _register(served: ServeProcess, model_id: str, model_type: str, path: Path) -> None:
    async with grpc.aio.insecure_channel(served.grpc) as ch:
        st = await mm_grpc.ModelMeshStub(ch).registerModel(
            mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type=model_type, path=str(path)), loadNow=True, sync=True),
            timeout=60,
        )
    assert st.status == mm.ModelStatusInfo.LOADED, st


def _triton_infer(addr: str, model: str, inputs: dict[str, np.ndarray], dtypes: dict[str, str]) -> dict[str, np.ndarray]:
    client = tritonclient_grpc.InferenceServerClient(addr)
    try:
        meta = client.get_model_metadata(model, as_json=True)
        ins = []
        for name, arr in inputs.items():
            t = tritonclient_grpc.InferInput(name, list(arr.shape), dtypes[name])
            t.set_data_from_numpy(arr)
            ins.append(t)
        result = client.infer(model, ins)
        return {o["name"]: result.as_numpy(o["name"]) for o in meta["outputs"]}
    finally:
        client.close()


def _typed_infer(addr: str, model: str, inputs: dict[str, np.ndarray], dtypes: dict[str, str]) -> dict[str, np.ndarray]:
    from mesh._codec import CONTENTS_FIELD

    req = pb.ModelInferRequest(model_name=model)
    for name, arr in inputs.items():
        t = req.inputs.add(name=name, datatype=dtypes[name], shape=list(arr.shape))
        getattr(t.contents, CONTENTS_FIELD[dtypes[name]]).extend(arr.ravel().tolist())
    with grpc.insecure_channel(addr) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=pb.ModelInferRequest.SerializeToString, response_deserializer=pb.ModelInferResponse.FromString)
        resp = call(req, timeout=30)
    out = {}
    np_types = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_}
    for o, raw in zip(resp.outputs, resp.raw_output_contents, strict=True):
        out[o.name] = np.frombuffer(raw, dtype=np_types[o.datatype]).reshape(tuple(o.shape))
    return out


async def _rest_infer(served: ServeProcess, model: str, inputs: dict[str, np.ndarray], dtypes: dict[str, str]) -> dict[str, np.ndarray]:
    body = {"inputs": [{"name": n, "shape": list(a.shape), "datatype": dtypes[n], "data": a.tolist()} for n, a in inputs.items()]}
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{served.rest}/v2/models/{model}/infer", json=body)
    assert r.status_code == 200, r.text
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in r.json()["outputs"]}



async def test_four_frameworks_over_grpc_and_rest(served: ServeProcess, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x4 = rng.standard_normal((3, 4)).astype(np.float32)
    x8 = rng.standard_normal((5, 8)).astype(np.float32)
    cases: list[tuple[str, str, Path, dict[str, np.ndarray], dict[str, np.ndarray]]] = []
    p = make_onnx_model(tmp_path / "onnx")
    cases.append(("onnx-linear", "onnx", p, {"x": x4}, onnx_reference(p, {"x": x4})))
    p = make_torchscript_model(tmp_path / "ts")
    cases.append(("ts-linear", "pytorch", p, {"x": x4}, {"OUTPUT__0": torch_reference(p, x4)[0]}))  # type: ignore[index]
    p = make_torch_export_model(tmp_path / "pt2")
    cases.append(("export-linear", "pytorch", p, {"x": x4}, {"OUTPUT__0": torch_reference(p, x4)[0]}))  # type: ignore[index]
    p = make_xgboost_model(tmp_path / "xgb", kind="classifier")
    cases.append(("xgb-classifier", "xgboost", p, {"input": x8}, {"predict": xgboost_reference(p, x8)}))
    for model_id, mtype, path, _, _ in cases:
        await _register(served, model_id, mtype, path)
    for model_id, _mtype, _path, inputs, ref in cases:
        async with httpx.AsyncClient(timeout=30) as http:
            meta = (await http.get(f"{served.rest}/v2/models/{model_id}")).json()
        names = [i["name"] for i in meta["inputs"]]
        dtypes = {i["name"]: i["datatype"] for i in meta["inputs"]}
        inputs = dict(zip(names, inputs.values(), strict=True))
        out_names = [o["name"] for o in meta["outputs"]]
        expected = dict(zip(out_names, ref.values(), strict=True))
        for how, got in (
            ("tritonclient raw", await asyncio.to_thread(_triton_infer, served.grpc, model_id, inputs, dtypes)),
            ("typed contents", await asyncio.to_thread(_typed_infer, served.grpc, model_id, inputs, dtypes)),
            ("REST JSON", await _rest_infer(served, model_id, inputs, dtypes)),
        ):
            for name, want in expected.items():
                assert np.allclose(np.asarray(got[name], dtype=np.float64), np.asarray(want, dtype=np.float64), rtol=1e-5, atol=1e-5), (model_id, how, name)


async def _grpc_error(served: ServeProcess, req: pb.ModelInferRequest | bytes, metadata: Any = None) -> grpc.aio.AioRpcError:
    payload = req if isinstance(req, bytes) else req.SerializeToString()
    async with grpc.aio.insecure_channel(served.grpc) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")(payload, timeout=30, metadata=metadata)
    return info.value


async def test_bad_inputs(served: ServeProcess, tmp_path: Path) -> None:
    p = make_onnx_model(tmp_path / "onnx")
    await _register(served, "lin", "onnx", p)

    def req(**kw: Any) -> pb.ModelInferRequest:
        r = pb.ModelInferRequest(model_name="lin")
        t = r.inputs.add(name=kw.get("name", "x"), datatype=kw.get("datatype", "FP32"), shape=kw.get("shape", [1, 4]))
        r.raw_input_contents.append(kw.get("raw", np.zeros((1, 4), np.float32).tobytes()))
        _ = t
        return r

    cases = [
        (req(name="nope"), grpc.StatusCode.INVALID_ARGUMENT, "nope"),
        (req(datatype="INT64", raw=np.zeros((1, 4), np.int64).tobytes()), grpc.StatusCode.INVALID_ARGUMENT, "x"),
        (req(shape=[1, 5], raw=np.zeros((1, 5), np.float32).tobytes()), grpc.StatusCode.INVALID_ARGUMENT, "x"),
        (req(raw=b"\x00" * 7), grpc.StatusCode.INVALID_ARGUMENT, "x"),
        (req(shape=[-1, 4]), grpc.StatusCode.INVALID_ARGUMENT, "x"),
        (pb.ModelInferRequest(model_name="lin"), grpc.StatusCode.INVALID_ARGUMENT, "x"),
        (pb.ModelInferRequest(model_name="unknown-model"), grpc.StatusCode.NOT_FOUND, "unknown-model"),
        (b"\x0a\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
    ]
    for r, code, needle in cases:
        err = await _grpc_error(served, r)
        assert err.code() == code, (r, err)
        assert needle in (err.details() or ""), (needle, err.details())
    # model named by metadata wins over model_name
    err = await _grpc_error(served, req(), metadata=(("mm-vmodel-id", "missing-vm"),))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    # oversized payload (the test server's limit is 1 MiB)
    big = req(shape=[1, 1 << 18], raw=b"\x00" * (4 << 18) + b"\x00" * 64)
    err = await _grpc_error(served, big)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{served.rest}/v2/models/lin/infer", content=b"x" * (2 << 20))
        assert r.status_code == 413, r.text
        r = await http.post(f"{served.rest}/v2/models/lin/infer", content=b"{not json")
        assert r.status_code == 400 and "JSON" in r.json()["error"]
        r = await http.post(f"{served.rest}/v2/models/lin/infer", json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}]})
        assert r.status_code == 400 and "x" in r.json()["error"]
        r = await http.post(f"{served.rest}/v2/models/zzz/infer", json={"inputs": []})
        assert r.status_code in (400, 404)
        r = await http.get(f"{served.rest}/v2/models/zzz")
        assert r.status_code == 404 and "zzz" in r.json()["error"]
        # corrupt artifact: a load failure with the framework's reason; the instance stays healthy
        bad = tmp_path / "corrupt.onnx"
        bad.write_bytes(b"\x08\x01garbage")
        r = await http.post(f"{served.rest}/api/v1/models/corrupt", json={"modelInfo": {"type": "onnx", "path": str(bad)}})
        assert r.status_code == 200
        r = await http.post(f"{served.rest}/v2/models/corrupt/infer", json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
        assert r.status_code == 500 and "corrupt" in r.json()["error"]
        r = await http.get(f"{served.rest}/v2/health/ready")
        assert r.json() == {"ready": True}
    ok = await asyncio.to_thread(_typed_infer, served.grpc, "lin", {"x": np.ones((1, 4), np.float32)}, {"x": "FP32"})
    assert ok
    assert served.proc.poll() is None
