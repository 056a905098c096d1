"""Tiny real ONNX models for the mesh tests: ``output = input + c``, with a weight table of a chosen size.

The answer identifies the model (``c``), and the table gives each model a real, known
memory footprint (it is used by a Gather, so the runtime cannot drop it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mesh import Instance
    from tests.mesh.cluster import MemoryCluster

WIDTH = 4


def add_model(path: Path, c: float, *, table_bytes: int = 256 << 10) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rows = max(1, table_bytes // (WIDTH * 4))
    table = np.zeros((rows, WIDTH), dtype=np.float32)
    table[0, :] = c
    table[1:, :] = np.arange(1, rows, dtype=np.float32)[:, None]
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "idx"], ["row"], axis=0),
            helper.make_node("Add", ["input", "row"], ["output"]),
        ],
        "add",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", WIDTH])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([0], dtype=np.int64), "idx")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def request_bytes(model: str, x: np.ndarray | None = None) -> bytes:
    from protos import grpc_predict_v2_pb2 as pb

    x = np.zeros((1, WIDTH), dtype=np.float32) if x is None else x.astype(np.float32)
    msg = pb.ModelInferRequest(model_name=model)
    msg.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    msg.raw_input_contents.append(x.tobytes())
    return msg.SerializeToString()


def answer(data: bytes) -> np.ndarray:
    from protos import grpc_predict_v2_pb2 as pb

    msg = pb.ModelInferResponse.FromString(data)
    return np.frombuffer(msg.raw_output_contents[0], dtype=np.float32).reshape(tuple(msg.outputs[0].shape))


async def loaded(c: MemoryCluster, tmp_path: Path, model: str, md: Any = ()) -> tuple[Instance, Instance]:
    """Register and load ``model`` (``output = input + 3``) in a two-instance cluster through its
    first instance, with call metadata ``md``; returns (holder, other)."""
    import grpc

    from protos import model_mesh_pb2 as mm
    from protos import model_mesh_pb2_grpc as mm_grpc

    assert c.mesh is not None
    path = add_model(tmp_path / model / "model.onnx", 3.0, table_bytes=16 << 10)
    async with grpc.aio.insecure_channel(c.grpc[0]) as ch:
        info = mm.ModelInfo(type="onnx", path=str(path))
        st = await mm_grpc.ModelMeshStub(ch).registerModel(
            mm.RegisterModelRequest(modelId=model, modelInfo=info, loadNow=True, sync=True), metadata=md, timeout=30
        )
        assert st.status == mm.ModelStatusInfo.LOADED, st
    a, b = c.mesh.instances
    return (a, b) if model in a.loaded else (b, a)
