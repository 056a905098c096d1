"""The mmesh.ModelRuntime + V2 inference server, over a real grpc.aio server and channel on loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from protos import grpc_predict_v2_pb2 as v2
from protos import grpc_predict_v2_pb2_grpc as v2_grpc
from protos import model_runtime_pb2 as mr
from protos import model_runtime_pb2_grpc as mr_grpc
from runtime_adapters import (
    AdapterRegistry,
    OnnxAdapter,
    RuntimeServerSettings,
    RuntimeService,
    start_runtime_server,
)
from tests import model_factory as mf

Built = Callable[..., Path]
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Runtime:
    service: RuntimeService
    mgmt: Any
    infer: Any


@pytest.fixture
async def runtime(registry: AdapterRegistry) -> AsyncIterator[Runtime]:
    service = RuntimeService(
        registry, RuntimeServerSettings(capacity_bytes=1 << 30, purge_on_status=False, max_loading_concurrency=2)
    )
    server, port = await start_runtime_server(service, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Runtime(service, mr_grpc.ModelRuntimeStub(channel), v2_grpc.GRPCInferenceServiceStub(channel))
    finally:
        await channel.close()
        await server.stop(grace=None)
        await service.unload_all()


def onnx_key() -> str:
    return json.dumps({"model_type": {"name": "onnx", "version": "1"}, "future_field": 1})


def infer_msg(name: str, x: np.ndarray) -> v2.ModelInferRequest:
    msg = v2.ModelInferRequest(model_name=name, id="req-1")
    msg.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    msg.raw_input_contents.append(x.astype(np.float32).tobytes())
    return msg


def answer(resp: v2.ModelInferResponse) -> np.ndarray:
    return np.frombuffer(resp.raw_output_contents[0], dtype=np.float32).reshape(tuple(resp.outputs[0].shape))


X = np.random.RandomState(11).rand(3, 4).astype(np.float32)


async def test_runtime_status(runtime: Runtime) -> None:
    st = await runtime.mgmt.runtimeStatus(mr.RuntimeStatusRequest())
    assert st.status == mr.RuntimeStatusResponse.READY
    assert st.capacityInBytes == 1 << 30
    assert st.maxLoadingConcurrency == 2
    assert st.modelLoadingTimeoutMs == 90_000
    assert st.defaultModelSizeInBytes > 0
    assert list(st.methodInfos["inference.GRPCInferenceService/ModelInfer"].idInjectionPath) == [1]
    assert list(st.methodInfos["inference.GRPCInferenceService/ModelMetadata"].idInjectionPath) == [1]
    live = await runtime.infer.ServerLive(v2.ServerLiveRequest())
    ready = await runtime.infer.ServerReady(v2.ServerReadyRequest())
    assert live.live and ready.ready


async def test_load_infer_size_unload(runtime: Runtime, built: Built) -> None:
    path = built("make_onnx_model")
    predicted = await runtime.mgmt.predictModelSize(
        mr.PredictModelSizeRequest(modelId="m1", modelPath=str(path), modelKey=onnx_key())
    )
    assert predicted.sizeInBytes > 0
    # modelType is ignored in favour of modelKey's model_type, as ModelMesh asks
    loaded = await runtime.mgmt.loadModel(
        mr.LoadModelRequest(modelId="m1", modelType="rt:whatever", modelPath=str(path.parent), modelKey=onnx_key())
    )
    assert loaded.sizeInBytes > 0
    size = await runtime.mgmt.modelSize(mr.ModelSizeRequest(modelId="m1"))
    assert size.sizeInBytes == loaded.sizeInBytes

    expected = mf.onnx_reference(path, {"x": X})["y"]
    resp = await runtime.infer.ModelInfer(infer_msg("m1", X))
    assert (resp.model_name, resp.id, resp.outputs[0].name) == ("m1", "req-1", "y")
    np.testing.assert_array_equal(answer(resp), expected)
    # the id can come from the mm-model-id header instead of model_name
    resp = await runtime.infer.ModelInfer(infer_msg("vmodel-name", X), metadata=(("mm-model-id", "m1"),))
    np.testing.assert_array_equal(answer(resp), expected)
    resp = await runtime.infer.ModelInfer(infer_msg("", X), metadata=(("mm-model-id-bin", b"m1"),))
    np.testing.assert_array_equal(answer(resp), expected)
    # typed contents
    typed = v2.ModelInferRequest(model_name="m1")
    t = typed.inputs.add(name="x", datatype="FP32", shape=[3, 4])
    t.contents.fp32_contents.extend(X.reshape(-1).tolist())
    np.testing.assert_array_equal(answer(await runtime.infer.ModelInfer(typed)), expected)

    meta = await runtime.infer.ModelMetadata(v2.ModelMetadataRequest(name="m1"))
    assert (meta.platform, meta.inputs[0].name, list(meta.inputs[0].shape)) == ("onnxruntime_onnx", "x", [-1, 4])
    assert (await runtime.infer.ModelReady(v2.ModelReadyRequest(name="m1"))).ready

    await runtime.mgmt.unloadModel(mr.UnloadModelRequest(modelId="m1"))
    assert not (await runtime.infer.ModelReady(v2.ModelReadyRequest(name="m1"))).ready
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await runtime.infer.ModelInfer(infer_msg("m1", X))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "'m1'" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await runtime.mgmt.modelSize(mr.ModelSizeRequest(modelId="m1"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # unloading an unknown model is not an error
    await runtime.mgmt.unloadModel(mr.UnloadModelRequest(modelId="never-loaded"))


async def test_errors_map_to_grpc_statuses(runtime: Runtime, built: Built, tmp_path: Path) -> None:
    path = built("make_onnx_model")
    await runtime.mgmt.loadModel(mr.LoadModelRequest(modelId="m", modelPath=str(path), modelKey=onnx_key()))

    async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        return err.value.code(), err.value.details() or ""

    bad = v2.ModelInferRequest(model_name="m")
    bad.inputs.add(name="x", datatype="FP32", shape=[2, 5])
    bad.raw_input_contents.append(b"\0" * 40)
    code, details = await code_of(runtime.infer.ModelInfer(bad))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "input 'x'" in details

    fp16 = v2.ModelInferRequest(model_name="m")
    fp16.inputs.add(name="x", datatype="FP16", shape=[1, 4])
    code, details = await code_of(runtime.infer.ModelInfer(fp16))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "FP16" in details and "raw_input_contents" in details

    code, details = await code_of(runtime.infer.ModelMetadata(v2.ModelMetadataRequest(name="nope")))
    assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in details

    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"not an onnx model at all")
    code, details = await code_of(
        runtime.mgmt.loadModel(mr.LoadModelRequest(modelId="bad", modelPath=str(garbage), modelKey=onnx_key()))
    )
    assert code == grpc.StatusCode.INTERNAL and "'bad'" in details and "protobuf" in details.lower()
    # a failed load is not kept: the id can be loaded again (from a good file)
    loaded = await runtime.mgmt.loadModel(mr.LoadModelRequest(modelId="bad", modelPath=str(path), modelKey=onnx_key()))
    assert loaded.sizeInBytes > 0

    code, details = await code_of(
        runtime.mgmt.loadModel(mr.LoadModelRequest(modelId="t", modelType="sklearn", modelPath=str(path)))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'sklearn'" in details

    code, details = await code_of(
        runtime.mgmt.loadModel(mr.LoadModelRequest(modelId="k", modelPath=str(path), modelKey="{oops"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "modelKey" in details

    code, details = await code_of(
        runtime.mgmt.loadModel(mr.LoadModelRequest(modelId="p", modelPath=str(tmp_path / "missing"), modelKey=onnx_key()))
    )
    assert code == grpc.StatusCode.INTERNAL and "does not exist" in details


async def test_concurrent_loads_of_one_id_share_one_load(
    runtime: Runtime, built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    original = OnnxAdapter.load

    async def spy(self: OnnxAdapter, spec: Any, local_path: Path) -> Any:
        calls.append(spec.model_id)
        return await original(self, spec, local_path)

    monkeypatch.setattr(OnnxAdapter, "load", spy)
    path = built("make_onnx_model")
    reqs = [mr.LoadModelRequest(modelId="same", modelPath=str(path), modelKey=onnx_key()) for _ in range(6)]
    answers = await asyncio.gather(*(runtime.mgmt.loadModel(r) for r in reqs))
    assert calls == ["same"]
    assert len({a.sizeInBytes for a in answers}) == 1
    # loading a loaded id again answers at once, with the same size
    again = await runtime.mgmt.loadModel(reqs[0])
    assert calls == ["same"] and again.sizeInBytes == answers[0].sizeInBytes
    # many concurrent inferences through the runtime
    xs = [np.full((i % 3 + 1, 4), i, np.float32) for i in range(30)]
    resps = await asyncio.gather(*(runtime.infer.ModelInfer(infer_msg("same", x)) for x in xs))
    for x, resp in zip(xs, resps, strict=True):
        np.testing.assert_array_equal(answer(resp), mf.onnx_reference(path, {"x": x})["y"])


async def test_runtime_status_purges_when_configured(registry: AdapterRegistry, built: Built) -> None:
    service = RuntimeService(registry, RuntimeServerSettings(purge_on_status=True))
    server, port = await start_runtime_server(service)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = mr_grpc.ModelRuntimeStub(channel)
            path = built("make_onnx_model")
            await stub.loadModel(mr.LoadModelRequest(modelId="a", modelPath=str(path), modelKey=onnx_key()))
            model = service.models["a"]
            await stub.runtimeStatus(mr.RuntimeStatusRequest())
            assert dict(service.models) == {}
            assert model.status.value == "UNLOADED"
    finally:
        await server.stop(grace=None)


def test_python_m_runtime_adapters_serves(tmp_path: Path) -> None:
    """The standalone entry point starts, prints its port and answers runtimeStatus."""
    with subprocess.Popen(
        [sys.executable, "-m", "runtime_adapters", "--address", "127.0.0.1:0", "--log-level", "WARNING"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            line = proc.stdout.readline()
            assert line.startswith("listening on "), (line, proc.stderr.read() if proc.poll() is not None else "")
            port = int(line.split()[-1])

            async def check() -> mr.RuntimeStatusResponse:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    stub = mr_grpc.ModelRuntimeStub(channel)
                    return await stub.runtimeStatus(mr.RuntimeStatusRequest(), timeout=30)

            st = asyncio.run(check())
            assert st.status == mr.RuntimeStatusResponse.READY
        finally:
            proc.terminate()
            assert proc.wait(timeout=30) == 0


async def test_a_model_option_turns_adaptive_batching_on(runtime: Runtime, built: Built) -> None:
    from runtime_adapters import BatchingModel

    path = built("make_onnx_model")
    key = json.dumps({"model_type": {"name": "onnx"}, "options": {"batching": "true", "max_batch_size": "8"}})
    await runtime.mgmt.loadModel(mr.LoadModelRequest(modelId="b1", modelPath=str(path), modelKey=onnx_key()))
    await runtime.mgmt.loadModel(mr.LoadModelRequest(modelId="b2", modelPath=str(path), modelKey=key))
    off = json.dumps({"model_type": {"name": "onnx"}, "options": {"batching": "false"}})
    await runtime.mgmt.loadModel(mr.LoadModelRequest(modelId="b0", modelPath=str(path), modelKey=off))
    default = runtime.service.models["b1"]  # on by default (a batch dimension on every input and output)
    assert isinstance(default, BatchingModel) and default.policy.max_batch_size == 16
    assert not isinstance(runtime.service.models["b0"], BatchingModel)  # off by option
    batched = runtime.service.models["b2"]
    assert isinstance(batched, BatchingModel) and batched.policy.max_batch_size == 8
    xs = [np.random.RandomState(i).rand(1 + i % 2, 4).astype(np.float32) for i in range(12)]
    got = await asyncio.gather(*(runtime.infer.ModelInfer(infer_msg("b2", x)) for x in xs))
    for x, resp in zip(xs, got, strict=True):
        np.testing.assert_allclose(answer(resp), mf.onnx_reference(path, {"x": x})["y"], rtol=1e-6)
    bad = json.dumps({"model_type": {"name": "onnx"}, "options": {"max_batch_size": "zero"}})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await runtime.mgmt.loadModel(mr.LoadModelRequest(modelId="b3", modelPath=str(path), modelKey=bad))
    assert "max_batch_size" in (err.value.details() or "")
    assert "b3" not in runtime.service.models
