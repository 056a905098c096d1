"""PyTorch adapter: TorchScript (``.pt``/``.pth``, ``torch.jit.load``) and torch.export
programs (``.pt2``, ``torch.export.load``).

Model types: ``torchscript`` and ``torch_export`` name the format; ``pytorch`` picks it by
extension (``.pt2`` -> torch.export, else TorchScript). A directory holds ``model.<ext>`` or
exactly one file of a matching extension.

Metadata:

* torch.export: exact. Inputs are the graph signature's user inputs (placeholder names,
  i.e. ``forward``'s argument names), with dtype and shape from the placeholders' fake
  tensors; symbolic (dynamic) dimensions are ``-1``. Outputs are the user outputs, named
  ``OUTPUT__0``, ``OUTPUT__1``... (the graph's node names mean nothing to a client), or by
  the schema file when it lists as many outputs.
* TorchScript: a scripted or traced module records argument names and whether arguments
  are tensors, but not dtypes or shapes. With a schema file (``schema.json`` beside the
  model, or ``ModelSpec.schema_path``) inputs and outputs are named, typed and shaped by it
  and checked strictly; inputs are passed in ``forward``'s order when the schema names
  are ``forward``'s argument names, else in the schema's order. Without one, inputs are
  ``forward``'s tensor arguments (``Optional[Tensor]`` ones are optional; non-tensor
  arguments must have defaults), reported as FP32 with shape ``[-1]`` as a hint only: any
  numeric datatype and any shape is accepted and the framework checks the rest. Outputs
  are ``OUTPUT__<i>`` when the return type is a tensor or a tuple of tensors; a
  ``Dict[str, Tensor]`` return names its outputs by key (not listed in the metadata).

Inference runs under ``torch.inference_mode()`` in the infer pool; outputs (a tensor, a
tuple/list of tensors, or a dict of tensors) are copied to CPU and returned raw.

Size: floor = bytes of the module's unique parameter and buffer storages (on CUDA these
are device bytes, which host RSS does not see: the floor then is the measurement);
measured RSS delta over it (see ``_memory``). ``predict_size`` = file bytes x 1.2
(torch.export keeps the graph as well). Initialisation imports torch, sets
``torch.set_num_threads`` and runs one tiny op (the import alone is ~0.5 GB of RSS that no
model should be charged); the first load of each format is repeated (see ``_base``).
A torch.export graph module holds reference cycles: its unload runs a full garbage
collection (in the load pool; ~100 ms of GIL time once torch is imported).

Device: CPU unless the spec's ``device`` option or ``AdapterSettings.torch_device`` asks
for ``cuda[:N]`` and that device exists; otherwise ``DeviceUnavailable``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ._base import (
    FrameworkAdapter,
    FrameworkModel,
    LoadResult,
    cuda_index,
    requested_device,
    schema_inputs,
)
from ._errors import DeviceUnavailable, InferenceFailed, ModelLoadError
from ._schema import Schema, load_schema
from ._tensors import DATATYPES, Decoded, InputSpec, encode_output
from ._types import InferOutput, ModelMetadata, ModelSpec, TensorMetadata

log = logging.getLogger(__name__)

TORCHSCRIPT_PLATFORM = "pytorch_libtorch"
EXPORT_PLATFORM = "pytorch_torch_export"

_TORCH_TO_V2: dict[str, str] = {
    "torch.bool": "BOOL",
    "torch.uint8": "UINT8",
    "torch.uint16": "UINT16",
    "torch.uint32": "UINT32",
    "torch.uint64": "UINT64",
    "torch.int8": "INT8",
    "torch.int16": "INT16",
    "torch.int32": "INT32",
    "torch.int64": "INT64",
    "torch.float16": "FP16",
    "torch.bfloat16": "BF16",
    "torch.float32": "FP32",
    "torch.float64": "FP64",
}

_NUMERIC = frozenset(DATATYPES) - {"BYTES"}


@dataclass(frozen=True)
class _CallPlan:
    """How request inputs become a call: positional names, optional keyword names, device."""

    positional: tuple[str, ...]
    keyword: tuple[str, ...] = ()
    device: str = "cpu"
    output_names: tuple[str, ...] = field(default=())


def output_name(i: int) -> str:
    return f"OUTPUT__{i}"


class TorchModel(FrameworkModel):
    writable_inputs: ClassVar[bool] = True  # torch.from_numpy needs writable memory

    def _run(
        self, handle: Any, extra: Any, inputs: dict[str, Decoded], wanted: Sequence[str] | None
    ) -> list[InferOutput]:
        import torch

        plan: _CallPlan = extra

        def tensor(d: Decoded) -> Any:
            if d.datatype == "BF16":
                t = torch.from_numpy(d.array.view(np.int16)).view(torch.bfloat16)
            else:
                t = torch.from_numpy(d.array)
            return t if plan.device == "cpu" else t.to(plan.device)

        args = [tensor(inputs[n]) for n in plan.positional]
        kwargs = {n: tensor(inputs[n]) for n in plan.keyword if n in inputs}
        try:
            with torch.inference_mode():
                result = handle(*args, **kwargs)
        except Exception as exc:
            raise InferenceFailed(
                f"model '{self.spec.model_id}': torch raised {type(exc).__name__}: {exc}"
            ) from exc
        named = self._name_outputs(plan, result)
        return [self._encode(n, t) for n, t in named if wanted is None or n in wanted]

    def _name_outputs(self, plan: _CallPlan, result: Any) -> list[tuple[str, Any]]:
        import torch

        if isinstance(result, torch.Tensor):
            tensors: list[Any] = [result]
        elif isinstance(result, tuple | list) and all(isinstance(t, torch.Tensor) for t in result):
            tensors = list(result)
        elif isinstance(result, dict) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in result.items()
        ):
            return list(result.items())
        else:
            raise InferenceFailed(
                f"model '{self.spec.model_id}' returned {type(result).__name__}; outputs must be a tensor, "
                "a tuple or list of tensors, or a dict of str to tensor"
            )
        names = plan.output_names
        if names and len(names) != len(tensors):
            raise InferenceFailed(
                f"model '{self.spec.model_id}' returned {len(tensors)} outputs but its metadata lists {len(names)}"
            )
        return [(names[i] if names else output_name(i), t) for i, t in enumerate(tensors)]

    def _encode(self, name: str, t: Any) -> InferOutput:
        import torch

        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype == torch.bfloat16:
            return encode_output(name, t.contiguous().view(torch.int16).numpy().view("<u2"), datatype="BF16")
        if str(t.dtype) not in _TORCH_TO_V2:
            raise InferenceFailed(f"model '{self.spec.model_id}': output '{name}' has dtype {t.dtype}, not a V2 datatype")
        return encode_output(name, t.numpy())


def _v2(dtype: Any, what: str) -> str:
    dt = _TORCH_TO_V2.get(str(dtype))
    if dt is None:
        raise ModelLoadError(f"{what} has dtype {dtype}, which has no V2 datatype")
    return dt


def _dims(shape: Any) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else -1 for d in shape)


def _storage_bytes(module: Any) -> int:
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        total += storage.nbytes()
    return total


class TorchAdapter(FrameworkAdapter):
    name = "torch"
    model_types = ("pytorch", "torchscript", "torch_export")
    module: ClassVar[str] = "torch"
    extensions: ClassVar[tuple[str, ...]] = (".pt", ".pt2", ".pth")
    size_factor: ClassVar[float] = 1.2

    def _model_class(self) -> type[FrameworkModel]:
        return TorchModel

    def _extensions_for(self, mtype: str) -> tuple[str, ...]:
        if mtype == "torchscript":
            return (".pt", ".pth")
        if mtype == "torch_export":
            return (".pt2",)
        return self.extensions

    def _format_key(self, spec: ModelSpec, model_file: Path) -> str:
        return "export" if self._is_export(spec, model_file) else "script"

    @staticmethod
    def _is_export(spec: ModelSpec, model_file: Path) -> bool:
        mtype = spec.model_type.strip().lower()
        return mtype == "torch_export" or (mtype == "pytorch" and model_file.suffix.lower() == ".pt2")

    def _initialise(self) -> None:
        import torch

        torch.set_num_threads(self.settings.torch_threads)
        with torch.inference_mode():
            (torch.ones(8) * 2).sum().item()

    def _device(self, spec: ModelSpec) -> str:
        import torch

        device = requested_device(spec, self.settings.torch_device)
        if device == "cpu":
            return device
        index = cuda_index(device)
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"model '{spec.model_id}' asks for device '{device}' but CUDA is not available")
        if index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"model '{spec.model_id}' asks for device '{device}' but there are "
                f"{torch.cuda.device_count()} CUDA devices"
            )
        return f"cuda:{index}"

    def _load_model(self, spec: ModelSpec, model_file: Path) -> LoadResult:
        device = self._device(spec)
        schema = load_schema(spec, model_file)
        if self._is_export(spec, model_file):
            return self._load_export(spec, model_file, device, schema)
        return self._load_script(spec, model_file, device, schema)

    # -- torch.export

    def _load_export(self, spec: ModelSpec, model_file: Path, device: str, schema: Schema | None) -> LoadResult:
        import torch
        from torch.export.graph_signature import InputKind, OutputKind

        program = torch.export.load(str(model_file))
        module = program.module()
        if device != "cpu":
            module = module.to(device)
        placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        inputs: dict[str, InputSpec] = {}
        for s in program.graph_signature.input_specs:
            if s.kind != InputKind.USER_INPUT:
                continue
            arg_name = getattr(s.arg, "name", None)
            val = placeholders[arg_name].meta.get("val") if arg_name in placeholders else None
            if arg_name is None or not isinstance(val, torch.Tensor):
                raise ModelLoadError(
                    f"model '{spec.model_id}': exported input '{arg_name}' is not a tensor; only tensor inputs are served"
                )
            meta = TensorMetadata(arg_name, _v2(val.dtype, f"input '{arg_name}'"), _dims(val.shape))
            inputs[arg_name] = InputSpec.strict(meta)
        out_node = next(n for n in program.graph.nodes if n.op == "output")
        out_args = out_node.args[0]
        out_args = out_args if isinstance(out_args, tuple | list) else (out_args,)
        out_vals = [
            a.meta.get("val") if hasattr(a, "meta") else None
            for a, s in zip(out_args, program.graph_signature.output_specs, strict=False)
            if s.kind == OutputKind.USER_OUTPUT
        ]
        names = [output_name(i) for i in range(len(out_vals))]
        if schema is not None and len(schema.outputs) == len(out_vals):
            names = [t.name for t in schema.outputs]
        outputs = []
        for name, val in zip(names, out_vals, strict=True):
            if isinstance(val, torch.Tensor):
                outputs.append(TensorMetadata(name, _v2(val.dtype, f"output '{name}'"), _dims(val.shape)))
            else:
                outputs.append(TensorMetadata(name, "FP32", (-1,)))
        metadata = ModelMetadata(
            name=spec.model_id,
            platform=EXPORT_PLATFORM,
            versions=(),
            inputs=tuple(s.meta for s in inputs.values()),
            outputs=tuple(outputs),
        )
        plan = _CallPlan(positional=tuple(inputs), device=device, output_names=tuple(names))
        return LoadResult(
            handle=module,
            metadata=metadata,
            inputs=inputs,
            framework_bytes=_storage_bytes(module),
            extra=plan,
            cyclic=True,
        )

    # -- TorchScript

    def _load_script(self, spec: ModelSpec, model_file: Path, device: str, schema: Schema | None) -> LoadResult:
        import torch

        module = torch.jit.load(str(model_file), map_location=device)
        module.eval()
        args = list(module.forward.schema.arguments)[1:]  # drop the module itself
        required: list[str] = []
        optional: list[str] = []
        for a in args:
            type_name = str(a.type)
            if type_name == "Tensor" and not a.has_default_value():
                required.append(a.name)
            elif type_name in ("Tensor", "Optional[Tensor]"):
                optional.append(a.name)
            elif not a.has_default_value():
                raise ModelLoadError(
                    f"model '{spec.model_id}': forward argument '{a.name}' is {type_name} without a default; "
                    "only tensor arguments can be fed"
                )
        returns = module.forward.schema.returns
        n_outputs: int | None = None
        if len(returns) == 1:
            rtype = returns[0].type
            if str(rtype) == "Tensor":
                n_outputs = 1
            elif isinstance(rtype, torch.TupleType) and all(str(e) == "Tensor" for e in rtype.elements()):
                n_outputs = len(rtype.elements())
        if schema is not None:
            inputs = schema_inputs(schema.inputs, schema.shapeless)
            known = set(required) | set(optional)
            names = list(inputs)
            if set(names) <= known:
                order = [a.name for a in args if a.name in inputs]
                positional = tuple(n for n in order if n in required)
                keyword = tuple(n for n in order if n in optional)
                for n in keyword:
                    inputs[n] = InputSpec(
                        meta=inputs[n].meta,
                        accepted=inputs[n].accepted,
                        check_shape=inputs[n].check_shape,
                        required=False,
                    )
                if missing := [n for n in required if n not in inputs]:
                    raise ModelLoadError(
                        f"model '{spec.model_id}': schema does not list forward argument '{missing[0]}'"
                    )
            else:
                if len(names) < len(required):
                    raise ModelLoadError(
                        f"model '{spec.model_id}': schema lists {len(names)} inputs but forward needs {len(required)}"
                    )
                positional, keyword = tuple(names), ()
            outputs = schema.outputs
            out_names = tuple(t.name for t in outputs)
            outputs_known = bool(outputs) or n_outputs is not None
            if not outputs and n_outputs is not None:
                outputs = tuple(TensorMetadata(output_name(i), "FP32", (-1,)) for i in range(n_outputs))
        else:
            inputs = {
                n: InputSpec(
                    meta=TensorMetadata(n, "FP32", (-1,)),
                    accepted=_NUMERIC,
                    check_shape=False,
                    required=n in required,
                )
                for n in [*required, *optional]
            }
            positional, keyword = tuple(required), tuple(optional)
            out_names = ()
            outputs_known = n_outputs is not None
            outputs = tuple(TensorMetadata(output_name(i), "FP32", (-1,)) for i in range(n_outputs or 0))
        metadata = ModelMetadata(
            name=spec.model_id,
            platform=TORCHSCRIPT_PLATFORM,
            versions=(),
            inputs=tuple(s.meta for s in inputs.values()),
            outputs=tuple(outputs),
        )
        plan = _CallPlan(positional=positional, keyword=keyword, device=device, output_names=out_names)
        return LoadResult(
            handle=module,
            metadata=metadata,
            inputs=inputs,
            framework_bytes=_storage_bytes(module),
            outputs_known=outputs_known,
            extra=plan,
        )
