"""ONNX Runtime adapter.

Artifact: a ``.onnx`` file, or a directory with ``model.onnx`` or exactly one ``.onnx``
file (external data files beside it are read by ONNX Runtime).

Metadata comes from the session: input/output names, ONNX element types mapped to V2
datatypes (``tensor(string)`` -> BYTES), and symbolic or unknown dimensions as ``-1``.
Outputs that are not tensors (sequences, maps: e.g. a ZipMap) cannot travel as V2 tensors
and are left out of the metadata and of every response. An input that is not a tensor,
or of an element type V2 cannot carry (bfloat16 in numpy, complex), fails the load.

Size (see ``_memory``): the floor is the model file's bytes (its serialized initializers
dominate it); the measured RSS delta adds ONNX Runtime's own copies (pre-packed weights,
arena). ``predict_size`` is file bytes x 1.25. The one-time cost of the first session in a
process (ONNX Runtime's environment, thread pools, kernel registry: about 10 MB) is paid by
a warm-up session over a one-node identity model built with ``onnx.helper`` when ``onnx``
is installed.

Session options: ``intra_op_num_threads`` / ``inter_op_num_threads`` from the settings.
Device: CPU; ``{"device": "cuda[:N]"}`` uses the CUDA execution provider when this
onnxruntime build has it, else the load fails with ``DeviceUnavailable``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ._base import FrameworkAdapter, FrameworkModel, LoadResult, cuda_index, requested_device
from ._errors import DeviceUnavailable, InferenceFailed, InvalidInput, ModelLoadError
from ._tensors import Decoded, InputSpec, encode_output, numpy_dtype
from ._types import InferOutput, ModelMetadata, ModelSpec, TensorMetadata

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"

_ONNX_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _dims(shape: Any) -> tuple[int, ...]:
    if shape is None:
        return (-1,)
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


class OnnxModel(FrameworkModel):
    def _run(
        self, handle: Any, extra: Any, inputs: dict[str, Decoded], wanted: Sequence[str] | None
    ) -> list[InferOutput]:
        ort_errors = extra
        feeds: dict[str, np.ndarray] = {}
        for name, d in inputs.items():
            if d.datatype == "BYTES":
                feeds[name] = _to_str_array(name, d.array)
            else:
                feeds[name] = d.array
        names = list(wanted) if wanted else [t.name for t in self.metadata.outputs]
        try:
            results = handle.run(names, feeds)
        except ort_errors.InvalidArgument as exc:
            raise InvalidInput(f"model '{self.spec.model_id}': {exc}") from exc
        except Exception as exc:
            raise InferenceFailed(f"model '{self.spec.model_id}': onnxruntime failed: {exc}") from exc
        return [encode_output(n, np.asarray(r)) for n, r in zip(names, results, strict=True)]


def _to_str_array(name: str, arr: np.ndarray) -> np.ndarray:
    out = np.empty(arr.shape, dtype=object)
    flat_in = arr.reshape(-1)
    flat_out = out.reshape(-1)
    for i, b in enumerate(flat_in):
        try:
            flat_out[i] = b.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"input '{name}': element {i} is not UTF-8 text (ONNX strings are text)") from exc
    return out


def _first_run(spec: ModelSpec, session: Any, inputs: dict[str, InputSpec]) -> None:
    """One run on zeros (dynamic dimensions = 1), so that what a first request allocates for good
    (kernels' caches, an arena's first chunk) is measured with the load; a model that refuses
    such an input is simply not warmed."""
    feeds: dict[str, np.ndarray] = {}
    for name, s in inputs.items():
        shape = tuple(1 if d < 0 else d for d in s.meta.shape)
        if s.meta.datatype == "BYTES":
            feeds[name] = np.full(shape, "", dtype=object)
        else:
            feeds[name] = np.zeros(shape, dtype=numpy_dtype(s.meta.datatype))
    try:
        session.run(None, feeds)
    except Exception as exc:  # the model's own business: requests will tell
        log.debug("model %s: first run at load skipped: %s", spec.model_id, exc)


class OnnxAdapter(FrameworkAdapter):
    name = "onnx"
    model_types = ("onnx",)
    module: ClassVar[str] = "onnxruntime"
    extensions: ClassVar[tuple[str, ...]] = (".onnx",)
    size_factor: ClassVar[float] = 1.25

    _ort: Any = None
    _ort_errors: Any = None

    def _model_class(self) -> type[FrameworkModel]:
        return OnnxModel

    def _initialise(self) -> None:
        import onnxruntime
        from onnxruntime.capi import onnxruntime_pybind11_state

        self._ort = onnxruntime
        self._ort_errors = onnxruntime_pybind11_state
        self._warm_up()

    def _session_options(self) -> Any:
        so = self._ort.SessionOptions()
        so.intra_op_num_threads = self.settings.onnx_intra_op_threads
        so.inter_op_num_threads = self.settings.onnx_inter_op_threads
        so.enable_cpu_mem_arena = self.settings.onnx_cpu_mem_arena
        so.enable_mem_pattern = self.settings.onnx_mem_pattern
        so.log_severity_level = 3  # errors only; warnings about unused initializers are noise here
        return so

    def _warm_up(self) -> None:
        try:
            from onnx import TensorProto, helper
        except ImportError:
            log.debug("onnx is not installed: no warm-up, the first ONNX load also pays runtime start-up")
            return
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "warmup",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        session = self._ort.InferenceSession(
            model.SerializeToString(), sess_options=self._session_options(), providers=["CPUExecutionProvider"]
        )
        session.run(None, {"x": np.zeros((1,), dtype=np.float32)})

    def _providers(self, spec: ModelSpec) -> list[Any]:
        device = requested_device(spec)
        if device == "cpu":
            return ["CPUExecutionProvider"]
        index = cuda_index(device)
        if "CUDAExecutionProvider" not in self._ort.get_available_providers():
            raise DeviceUnavailable(
                f"model '{spec.model_id}' asks for device '{device}' but this onnxruntime has no "
                "CUDAExecutionProvider"
            )
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]

    def _load_model(self, spec: ModelSpec, model_file: Path) -> LoadResult:
        providers = self._providers(spec)
        session = self._ort.InferenceSession(
            str(model_file), sess_options=self._session_options(), providers=providers
        )
        inputs: dict[str, InputSpec] = {}
        for i in session.get_inputs():
            dt = _ONNX_TYPES.get(i.type)
            if dt is None:
                raise ModelLoadError(
                    f"model '{spec.model_id}': input '{i.name}' has type {i.type}, which V2 tensors cannot carry"
                )
            inputs[i.name] = InputSpec.strict(TensorMetadata(i.name, dt, _dims(i.shape)))
        outputs: list[TensorMetadata] = []
        for o in session.get_outputs():
            dt = _ONNX_TYPES.get(o.type)
            if dt is None:
                log.info("model %s: output '%s' of type %s is not served", spec.model_id, o.name, o.type)
                continue
            outputs.append(TensorMetadata(o.name, dt, _dims(o.shape)))
        metadata = ModelMetadata(
            name=spec.model_id,
            platform=PLATFORM,
            versions=(),
            inputs=tuple(s.meta for s in inputs.values()),
            outputs=tuple(outputs),
        )
        if self.settings.onnx_first_run_at_load:
            _first_run(spec, session, inputs)
        return LoadResult(
            handle=session,
            metadata=metadata,
            inputs=inputs,
            framework_bytes=model_file.stat().st_size,
            extra=self._ort_errors,
        )
