"""The inference path to a worker: frames (the default) and V2 gRPC answer the same bytes and
fail with the same statuses, so the edges pass either through unchanged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from mesh._runtimes import RuntimeSettings, RuntimeSupervisor, adapter_env
from protos import grpc_predict_v2_pb2 as pb
from runtime_adapters import AdapterSettings, ModelSpec
from tests import model_factory as mf
from tests.mesh.runtimes.rthelp import fp32_request, open_up, readable_dir


async def _answers(frames: bool, model_dir: Path) -> dict[str, object]:
    sup = RuntimeSupervisor(
        RuntimeSettings(count=1, isolated_types=("onnx",), frames=frames, start_workers="at_start"), worker_env=adapter_env(AdapterSettings())
    )
    await sup.start()
    out: dict[str, object] = {}
    try:
        copy = await sup.load(ModelSpec("ox", "onnx"), model_dir)
        assert (copy._client.frames is not None) == frames
        meta = copy.metadata.inputs[0]
        good = fp32_request("ox", meta.name, [0.5] * int(meta.shape[-1]))
        req = pb.ModelInferRequest.FromString(good)
        req.id = "call-7"
        out["ok"] = pb.ModelInferResponse.FromString(await copy.infer_bytes(req.SerializeToString(), 10))
        # concurrent calls on one connection come back to their own callers
        many = [fp32_request("ox", meta.name, [float(i)] * int(meta.shape[-1])) for i in range(8)]
        answers = await asyncio.gather(*(copy.infer_bytes(p, 10) for p in many))
        out["many"] = [pb.ModelInferResponse.FromString(a).raw_output_contents[0] for a in answers]
        out["many_alone"] = [pb.ModelInferResponse.FromString(await copy.infer_bytes(p, 10)).raw_output_contents[0] for p in many]
        for key, payload in (
            ("bad_input", fp32_request("ox", "no-such-input", [1.0])),
            ("malformed", b"\xff\xff\xff\xff"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await copy.infer_bytes(payload, 10)
            out[key] = err.value.code()
    finally:
        await sup.close()
    return out


async def test_frames_and_grpc_answer_alike() -> None:
    with readable_dir() as d:
        ox = open_up(mf.make_onnx_model(d / "ox"))
        framed = await _answers(True, ox.parent)
        grpc_path = await _answers(False, ox.parent)
    for got in (framed, grpc_path):
        ok = got["ok"]
        assert isinstance(ok, pb.ModelInferResponse)
        assert ok.id == "call-7" and ok.model_name == "ox" and ok.raw_output_contents
        assert got["many"] == got["many_alone"]
        assert len(set(got["many"])) == 8  # type: ignore[arg-type]
        assert got["bad_input"] == grpc.StatusCode.INVALID_ARGUMENT
    # bytes that are no ModelInferRequest (the instance's edges refuse them before forwarding):
    # frames say INVALID_ARGUMENT; grpcio's own deserializer answers UNKNOWN
    assert framed["malformed"] == grpc.StatusCode.INVALID_ARGUMENT
    assert framed["ok"] == grpc_path["ok"]
    assert framed["many"] == grpc_path["many"]

