"""In-process model runtimes: one interface for a loaded model and its ONNX Runtime,
TorchScript / torch.export and XGBoost implementations, plus the ``mmesh.ModelRuntime``
gRPC service that lets another process drive these runtimes.

Entry points: :func:`build_registry` (every installed framework) -> :class:`AdapterRegistry`
-> ``for_type(model_type).load(spec, local_path)`` -> :class:`LoadedModel` (``infer``,
``unload``, measured ``size_bytes``, ``metadata``). Framework imports happen on first load,
in the load pool; importing this package imports no framework.

External runtime: :class:`RuntimeService` + :func:`start_runtime_server` serve
``mmesh.ModelRuntime`` and V2 inference over a registry (``python -m runtime_adapters``).
"""

from ._base import LoadedModel, RuntimeAdapter, WorkerPools
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
from ._onnx import OnnxAdapter
from ._registry import AdapterRegistry, build_registry
from ._runtime_server import RuntimeService, default_status_for, start_runtime_server
from ._settings import AdapterSettings, RuntimeServerSettings
from ._tensors import DATATYPES, decode_bytes, dtype_size, encode_bytes, list_to_raw, raw_to_list
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
from ._xgboost import XGBoostAdapter

__all__ = [
    "DATATYPES",
    "AdapterError",
    "AdapterRegistry",
    "AdapterSettings",
    "DeviceUnavailable",
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
    "build_registry",
    "decode_bytes",
    "default_status_for",
    "dtype_size",
    "encode_bytes",
    "list_to_raw",
    "raw_to_list",
    "start_runtime_server",
]
