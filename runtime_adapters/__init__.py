"""In-process model runtimes: one interface for a loaded model and its ONNX Runtime,
TorchScript / torch.export and XGBoost implementations, plus the ``mmesh.ModelRuntime``
gRPC service that lets another process drive these runtimes.

Entry points: :func:`build_registry` (every installed framework) -> :class:`AdapterRegistry`
-> ``for_type(model_type).load(spec, local_path)`` -> :class:`LoadedModel` (``infer``,
``unload``, measured ``size_bytes``, ``metadata``); :func:`with_batching` wraps a loaded
model so that concurrent requests are merged into one framework call (adaptive batching). Framework imports happen on first load,
in the load pool; importing this package imports no framework.

External runtime: :class:`RuntimeService` + :func:`start_runtime_server` serve
``mmesh.ModelRuntime`` and V2 inference over a registry (``python -m runtime_adapters``);
:func:`start_frame_server` serves inference in length-prefixed frames, read by a
:class:`FrameReader` (the base of any protocol of such frames).
"""

from ._base import LoadedModel, RuntimeAdapter, WorkerPools
from ._batching import (
    BatchingModel,
    BatchingSettings,
    BatchObserver,
    BatchPolicy,
    batch_policy,
    with_batching,
)
from ._errors import (
    AdapterError,
    DeviceUnavailable,
    InferenceFailed,
    InvalidInput,
    ModelLoadError,
    ModelNotLoaded,
    RequestTooLarge,
    UnsupportedModelType,
)
from ._event_loop import EventLoopChoiceError
from ._event_loop import run as run_event_loop
from ._frame_reader import FrameReader
from ._frame_server import ANSWER_HEAD as FRAME_ANSWER_HEAD
from ._frame_server import REQUEST_HEAD as FRAME_REQUEST_HEAD
from ._frame_server import start_frame_server
from ._heap import collect_for_freezing
from ._onnx import OnnxAdapter
from ._registry import AdapterRegistry, build_registry
from ._runtime_server import RuntimeService, default_status_for, start_runtime_server
from ._settings import AdapterSettings, RuntimeServerSettings
from ._tensors import (
    DATATYPES,
    decode_bytes,
    dtype_size,
    encode_bytes,
    list_to_raw,
    numpy_dtype,
    raw_to_list,
)
from ._torch import TorchAdapter
from ._types import (
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelSpec,
    ModelState,
    RequestedOutput,
    RuntimeStatus,
    TensorMetadata,
)
from ._v2 import CONTENTS_FIELD as V2_CONTENTS_FIELD
from ._v2 import params_from_pb as v2_params_from_pb
from ._v2 import request_from_pb as v2_request_from_pb
from ._v2 import response_to_pb as v2_response_to_pb
from ._xgboost import XGBoostAdapter

__all__ = [
    "DATATYPES",
    "FRAME_ANSWER_HEAD",
    "FRAME_REQUEST_HEAD",
    "V2_CONTENTS_FIELD",
    "AdapterError",
    "AdapterRegistry",
    "AdapterSettings",
    "BatchObserver",
    "BatchPolicy",
    "BatchingModel",
    "BatchingSettings",
    "DeviceUnavailable",
    "EventLoopChoiceError",
    "FrameReader",
    "InferInput",
    "InferOutput",
    "InferRequest",
    "InferResponse",
    "InferenceFailed",
    "InvalidInput",
    "LoadedModel",
    "ModelLoadError",
    "ModelMetadata",
    "ModelNotLoaded",
    "ModelSpec",
    "ModelState",
    "OnnxAdapter",
    "RequestTooLarge",
    "RequestedOutput",
    "RuntimeAdapter",
    "RuntimeServerSettings",
    "RuntimeService",
    "RuntimeStatus",
    "TensorMetadata",
    "TorchAdapter",
    "UnsupportedModelType",
    "WorkerPools",
    "XGBoostAdapter",
    "batch_policy",
    "build_registry",
    "collect_for_freezing",
    "decode_bytes",
    "default_status_for",
    "dtype_size",
    "encode_bytes",
    "list_to_raw",
    "numpy_dtype",
    "raw_to_list",
    "run_event_loop",
    "start_frame_server",
    "start_runtime_server",
    "v2_params_from_pb",
    "v2_request_from_pb",
    "v2_response_to_pb",
    "with_batching",
]
