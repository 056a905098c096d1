"""Tiny, deterministic, real models for tests (ONNX, TorchScript, torch.export, XGBoost).

Every ``make_*`` function writes one model file under ``dir`` and returns its path; the
same arguments always give the same weights (fixed seeds). ``*_reference`` functions run
a model file with its own framework, for comparing an adapter's answers against.
Frameworks are imported inside the functions, so importing this module is cheap.

ONNX kinds (``make_onnx_model``):
  ``linear``  x FP32 [batch, in] -> y = x @ W + b, FP32 [batch, out]
  ``multi``   a FP32 [batch, 4], b INT64 [batch, 4], m BOOL [batch, 4]
              -> sum = a + float(b) FP32, doubled = b + b INT64, inverted = not m BOOL
  ``strings`` s BYTES(string) [batch] -> same = s (BYTES), length = shape(s) INT64 [1]
  ``dtypes``  one input per numeric datatype (``in_<dt>``, [n]) -> ``out_<dt>`` = identity
  ``seq``     x FP32 [batch, 4] -> y = x, plus a non-tensor output (a sequence)
TorchScript kinds (``make_torchscript_model``):
  ``linear``  forward(x) -> linear(x)
  ``multi``   forward(x, idx, bias: Optional[Tensor] = None) -> (linear(x) [+ bias], idx * 2)
  ``dict``    forward(x) -> {"double": x * 2, "bf16": x.to(bfloat16)}
torch.export kinds (``make_torch_export_model``, dynamic batch):
  ``linear``  forward(x) -> linear(x)
  ``multi``   forward(x, idx) -> (linear(x), idx * 2)
  ``bf16``    forward(x BF16 [batch, 4]) -> x * 2 (BF16)
XGBoost kinds (``make_xgboost_model``): ``regressor`` (reg:squarederror), ``binary``
(binary:logistic), ``classifier`` (multi:softprob, 3 classes), trained on
``xgboost_data(n_features)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ONNX_DTYPES: dict[str, Any] = {
    # V2 datatype -> (numpy dtype, ONNX TensorProto name)
    "BOOL": (np.bool_, "BOOL"),
    "UINT8": (np.uint8, "UINT8"),
    "UINT16": (np.uint16, "UINT16"),
    "UINT32": (np.uint32, "UINT32"),
    "UINT64": (np.uint64, "UINT64"),
    "INT8": (np.int8, "INT8"),
    "INT16": (np.int16, "INT16"),
    "INT32": (np.int32, "INT32"),
    "INT64": (np.int64, "INT64"),
    "FP16": (np.float16, "FLOAT16"),
    "FP32": (np.float32, "FLOAT"),
    "FP64": (np.float64, "DOUBLE"),
}


def _weights(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.RandomState(seed).uniform(-1.0, 1.0, size=shape).astype(np.float32)


def _save_onnx(graph: Any, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_onnx_model(
    dir: Path,
    *,
    kind: str = "linear",
    in_features: int = 4,
    out_features: int = 3,
    weight_bytes: int | None = None,
    filename: str = "model.onnx",
    seed: int = 0,
) -> Path:
    """Write an ONNX model (see the module docstring for kinds); ``weight_bytes`` sizes W."""
    from onnx import TensorProto, helper, numpy_helper

    path = Path(dir) / filename
    if kind == "linear":
        if weight_bytes is not None:
            in_features = max(1, weight_bytes // (4 * out_features))
        w = _weights((in_features, out_features), seed)
        b = _weights((out_features,), seed + 1)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])],
            "linear",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_features])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out_features])],
            [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
        )
    elif kind == "multi":
        graph = helper.make_graph(
            [
                helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
                helper.make_node("Add", ["a", "bf"], ["sum"]),
                helper.make_node("Add", ["b", "b"], ["doubled"]),
                helper.make_node("Not", ["m"], ["inverted"]),
            ],
            "multi",
            [
                helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
                helper.make_tensor_value_info("b", TensorProto.INT64, ["batch", 4]),
                helper.make_tensor_value_info("m", TensorProto.BOOL, ["batch", 4]),
            ],
            [
                helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 4]),
                helper.make_tensor_value_info("doubled", TensorProto.INT64, ["batch", 4]),
                helper.make_tensor_value_info("inverted", TensorProto.BOOL, ["batch", 4]),
            ],
        )
    elif kind == "strings":
        graph = helper.make_graph(
            [helper.make_node("Identity", ["s"], ["same"]), helper.make_node("Shape", ["s"], ["length"])],
            "strings",
            [helper.make_tensor_value_info("s", TensorProto.STRING, ["batch"])],
            [
                helper.make_tensor_value_info("same", TensorProto.STRING, ["batch"]),
                helper.make_tensor_value_info("length", TensorProto.INT64, [1]),
            ],
        )
    elif kind == "dtypes":
        nodes, ins, outs = [], [], []
        for v2, (_, onnx_name) in ONNX_DTYPES.items():
            elem = getattr(TensorProto, onnx_name)
            low = v2.lower()
            nodes.append(helper.make_node("Identity", [f"in_{low}"], [f"out_{low}"]))
            ins.append(helper.make_tensor_value_info(f"in_{low}", elem, ["n"]))
            outs.append(helper.make_tensor_value_info(f"out_{low}", elem, ["n"]))
        graph = helper.make_graph(nodes, "dtypes", ins, outs)
    elif kind == "seq":
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("SequenceConstruct", ["x"], ["seq"])],
            "seq",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
            [
                helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
                helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None),
            ],
        )
    else:
        raise ValueError(f"unknown ONNX kind {kind!r}")
    return _save_onnx(graph, path)


def onnx_reference(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of an ONNX model run directly with onnxruntime (strings decoded to str)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs() if o.type.startswith("tensor(")]
    return dict(zip(names, sess.run(names, feeds), strict=True))


# ---------------------------------------------------------------- torch


def _torch_modules(kind: str, in_features: int, out_features: int, seed: int) -> Any:
    import torch
    from torch import nn

    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(in_features, out_features)
            with torch.no_grad():
                self.lin.weight.copy_(torch.from_numpy(_weights((out_features, in_features), seed)))
                self.lin.bias.copy_(torch.from_numpy(_weights((out_features,), seed + 1)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    class Multi(Linear):
        def forward(  # type: ignore[override]
            self, x: torch.Tensor, idx: torch.Tensor, bias: torch.Tensor | None = None
        ) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.lin(x)
            if bias is not None:
                y = y + bias
            return y, idx * 2

    class MultiExport(Linear):
        def forward(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
            return self.lin(x), idx * 2

    class Dict(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"double": x * 2, "bf16": x.to(torch.bfloat16)}

    class BF16(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    return {"linear": Linear, "multi": Multi, "multi_export": MultiExport, "dict": Dict, "bf16": BF16}


def make_torchscript_model(
    dir: Path,
    *,
    kind: str = "linear",
    in_features: int = 4,
    out_features: int = 3,
    weight_bytes: int | None = None,
    method: str = "script",
    filename: str = "model.pt",
    seed: int = 0,
) -> Path:
    """Write a TorchScript model (``torch.jit.script`` or ``trace``; kinds in the module docstring)."""
    import torch

    if weight_bytes is not None:
        in_features = max(1, weight_bytes // (4 * out_features))
    module = _torch_modules(kind, in_features, out_features, seed)[kind]().eval()
    if method == "script":
        compiled = torch.jit.script(module)
    elif method == "trace":
        if kind != "linear":
            raise ValueError("trace is only wired up for the linear kind")
        compiled = torch.jit.trace(module, (torch.zeros(2, in_features),))
    else:
        raise ValueError(f"unknown method {method!r}")
    path = Path(dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    compiled.save(str(path))
    return path


def make_torch_export_model(
    dir: Path,
    *,
    kind: str = "linear",
    in_features: int = 4,
    out_features: int = 3,
    weight_bytes: int | None = None,
    filename: str = "model.pt2",
    seed: int = 0,
) -> Path:
    """Write a torch.export program with a dynamic batch dimension (kinds in the module docstring)."""
    import torch

    if weight_bytes is not None:
        in_features = max(1, weight_bytes // (4 * out_features))
    batch = torch.export.Dim("batch", min=1)
    mods = _torch_modules(kind, in_features, out_features, seed)
    if kind == "linear":
        module = mods["linear"]().eval()
        args: tuple[Any, ...] = (torch.zeros(2, in_features),)
        dynamic: Any = ({0: batch},)
    elif kind == "multi":
        module = mods["multi_export"]().eval()
        args = (torch.zeros(2, in_features), torch.zeros(2, dtype=torch.int64))
        dynamic = ({0: batch}, {0: batch})
    elif kind == "bf16":
        module = mods["bf16"]().eval()
        args = (torch.zeros(2, 4, dtype=torch.bfloat16),)
        dynamic = ({0: batch},)
    else:
        raise ValueError(f"unknown torch.export kind {kind!r}")
    program = torch.export.export(module, args, dynamic_shapes=dynamic)
    path = Path(dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


def torch_reference(path: Path, *args: np.ndarray, **kwargs: np.ndarray) -> Any:
    """Run a TorchScript (.pt) or torch.export (.pt2) file directly; outputs as numpy (BF16 -> float32)."""
    import torch

    path = Path(path)
    module = torch.export.load(str(path)).module() if path.suffix == ".pt2" else torch.jit.load(str(path))

    def to_np(t: torch.Tensor) -> np.ndarray:
        t = t.detach()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()

    def to_t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(a))

    with torch.inference_mode():
        out = module(*[to_t(a) for a in args], **{k: to_t(v) for k, v in kwargs.items()})
    if isinstance(out, dict):
        return {k: to_np(v) for k, v in out.items()}
    if isinstance(out, torch.Tensor):
        return [to_np(out)]
    return [to_np(t) for t in out]


# ---------------------------------------------------------------- xgboost


def xgboost_data(n_features: int = 8, rows: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic training data: X FP32 [rows, n_features] in [0, 1); y in {0, 1, 2}."""
    rs = np.random.RandomState(seed)
    x = rs.rand(rows, n_features).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    return x, y


def make_xgboost_model(
    dir: Path,
    kind: str = "regressor",
    *,
    n_features: int = 8,
    n_rounds: int = 10,
    max_depth: int = 4,
    fmt: str = "json",
    filename: str | None = None,
    seed: int = 0,
) -> Path:
    """Train and save a small booster (``regressor``, ``binary`` or ``classifier``) as json or ubj."""
    import xgboost as xgb

    x, y = xgboost_data(n_features, seed=seed)
    params: dict[str, Any] = {"max_depth": max_depth, "nthread": 1, "seed": seed, "eta": 0.3}
    if kind == "regressor":
        params["objective"] = "reg:squarederror"
        label = y.astype(np.float32) + x[:, 2]
    elif kind == "binary":
        params["objective"] = "binary:logistic"
        label = (y > 0).astype(np.float32)
    elif kind == "classifier":
        params["objective"] = "multi:softprob"
        params["num_class"] = 3
        label = y.astype(np.float32)
    else:
        raise ValueError(f"unknown xgboost kind {kind!r}")
    booster = xgb.train(params, xgb.DMatrix(x, label=label), num_boost_round=n_rounds)
    path = Path(dir) / (filename or f"model.{fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(path))
    return path


def xgboost_reference(path: Path, x: np.ndarray) -> np.ndarray:
    import xgboost as xgb

    booster = xgb.Booster(model_file=str(path))
    return np.asarray(booster.predict(xgb.DMatrix(x)), dtype=np.float32)


# ---------------------------------------------------------------- V2 tensors


_V2_OF_NUMPY = {np.dtype(v[0]): k for k, v in ONNX_DTYPES.items()}


def v2_input(name: str, arr: Any, *, typed: bool = False, datatype: str | None = None) -> Any:
    """A ``runtime_adapters.InferInput`` from a numpy array: raw bytes, or typed contents.

    Object/str arrays become BYTES; ``datatype`` overrides the inferred V2 datatype.
    """
    from runtime_adapters import InferInput, encode_bytes

    arr = np.asarray(arr)
    if arr.dtype.kind in ("U", "S", "O"):
        dt = datatype or "BYTES"
        items = [x.encode() if isinstance(x, str) else bytes(x) for x in arr.reshape(-1).tolist()]
        if typed:
            return InferInput(name, dt, tuple(arr.shape), contents=items)
        return InferInput(name, dt, tuple(arr.shape), raw=encode_bytes(items))
    dt = datatype or _V2_OF_NUMPY[arr.dtype]
    if typed:
        return InferInput(name, dt, tuple(arr.shape), contents=arr.reshape(-1).tolist())
    return InferInput(name, dt, tuple(arr.shape), raw=np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())


def output_array(out: Any) -> np.ndarray:
    """A ``runtime_adapters.InferOutput`` as numpy (BYTES -> object array of bytes, BF16 -> float32)."""
    from runtime_adapters import raw_to_list

    if out.datatype in ("BYTES", "BF16"):
        values = raw_to_list(out.datatype, out.shape, out.raw)
        arr = np.empty(len(values), dtype=object if out.datatype == "BYTES" else np.float32)
        arr[:] = values
        return arr.reshape(out.shape)
    inverse = {v: k for k, v in _V2_OF_NUMPY.items()}
    return np.frombuffer(out.raw, dtype=inverse[out.datatype].newbyteorder("<")).reshape(out.shape)


# ---------------------------------------------------------------- schema


def write_schema(
    dir: Path,
    inputs: Sequence[tuple[str, str, Sequence[int] | None]],
    outputs: Sequence[tuple[str, str, Sequence[int] | None]] = (),
    *,
    filename: str = "schema.json",
) -> Path:
    """Write a ModelMesh-style schema file: (name, datatype, shape or None) per tensor."""

    def entry(t: tuple[str, str, Sequence[int] | None]) -> dict[str, Any]:
        name, datatype, shape = t
        out: dict[str, Any] = {"name": name, "datatype": datatype}
        if shape is not None:
            out["shape"] = list(shape)
        return out

    path = Path(dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"inputs": [entry(t) for t in inputs], "outputs": [entry(t) for t in outputs]}))
    return path
