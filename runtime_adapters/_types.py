"""Domain types of the runtime adapters: model specs, V2 tensors, metadata and states.

These are plain frozen dataclasses with no framework or numpy objects in them, so the
mesh (and any wire codec) can build and read them without importing a framework.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """What to load.

    ``model_type`` is case-insensitive: ``onnx``, ``pytorch`` (TorchScript for ``.pt``/``.pth``,
    torch.export for ``.pt2``), ``torchscript``, ``torch_export`` or ``xgboost``.
    ``schema_path`` names an optional JSON schema (absolute, or relative to the model's
    directory); without it a ``schema.json`` beside the model is used when present.
    ``options`` are adapter options, e.g. ``{"device": "cuda"}``.
    """

    model_id: str
    model_type: str
    schema_path: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TensorMetadata:
    """One input or output of a model; ``-1`` in ``shape`` is a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    platform: str
    versions: tuple[str, ...]
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]


@dataclass(frozen=True)
class InferInput:
    """One V2 input tensor.

    Exactly one of ``raw`` (little-endian bytes as in ``raw_input_contents``; BYTES elements
    are 4-byte little-endian length-prefixed) and ``contents`` (the flat typed contents of a
    gRPC request, or the flattened ``data`` of a REST request) is set.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | None = None
    contents: Sequence[Any] | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferRequest:
    """A V2 inference request; ``outputs == ()`` asks for every output of the model."""

    model_name: str
    inputs: tuple[InferInput, ...]
    outputs: tuple[RequestedOutput, ...] = ()
    id: str = ""
    model_version: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferOutput:
    """One output tensor, always as raw little-endian bytes (BYTES: length-prefixed)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    outputs: tuple[InferOutput, ...]
    id: str = ""
    model_version: str = ""


class ModelState(enum.Enum):
    LOADING = "LOADING"
    LOADED = "LOADED"
    UNLOADED = "UNLOADED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class RuntimeStatus:
    """One adapter's state: whether it can load models and what it holds now."""

    name: str
    ready: bool
    loaded_models: int
    used_bytes: int
