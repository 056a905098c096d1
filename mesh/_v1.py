"""KServe V1 data plane ⇄ V2 domain requests (pure converters).

V1 (``POST /v1/models/{name}:predict``) sends ``{"instances": [...]}`` (or ``"inputs"``) and gets
``{"predictions": [...]}``; readiness is ``GET /v1/models/{name}`` → ``{"name", "ready"}``; errors
are ``{"error": "..."}``. V1 has no tensor names or types, so the model's V2 metadata decides:

* one input: every instance is one row of that input (a number, or nested lists of one shape);
  the tensor is ``[len(instances), *row shape]`` of the input's datatype;
* several inputs: every instance is an object keyed by input name (each name the model declares,
  no others); each input is stacked the same way;
* one output: ``predictions`` is that output split by its first dimension (one entry per instance);
  several outputs: one object per instance keyed by output name.

Anything the metadata does not make unambiguous is INVALID_ARGUMENT with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runtime_adapters import InferInput, InferRequest, InferResponse, ModelMetadata, raw_to_list

from ._errors import InvalidRequest

MAX_DEPTH = 32


def _shape_of(value: Any, where: str, depth: int = 0) -> tuple[int, ...]:
    if depth > MAX_DEPTH:
        raise InvalidRequest(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if not isinstance(value, list):
        return ()
    if not value:
        return (0,)
    first = _shape_of(value[0], where, depth + 1)
    for item in value[1:]:
        if _shape_of(item, where, depth + 1) != first:
            raise InvalidRequest(f"{where}: ragged nested lists (every row must have the same shape)")
    return (len(value), *first)


def _flatten(value: Any, out: list[Any]) -> None:
    if isinstance(value, list):
        for v in value:
            _flatten(v, out)
    else:
        out.append(value)


def _stack(rows: Sequence[Any], name: str, datatype: str) -> InferInput:
    shape = _shape_of(list(rows), f"input '{name}'")
    flat: list[Any] = []
    _flatten(list(rows), flat)
    if datatype == "BYTES":
        flat = [v.encode() if isinstance(v, str) else v for v in flat]
    elif any(isinstance(v, str | dict) for v in flat):
        raise InvalidRequest(f"input '{name}' is {datatype}: instances must hold numbers")
    return InferInput(name=name, datatype=datatype, shape=shape, contents=flat)


def request_from_v1(model_name: str, body: Any, meta: ModelMetadata) -> InferRequest:
    """A V1 ``:predict`` body → V2 request for the model described by ``meta``."""
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object with 'instances'")
    instances = body.get("instances", body.get("inputs"))
    if not isinstance(instances, list) or not instances:
        raise InvalidRequest("'instances' must be a non-empty list")
    if not meta.inputs:
        raise InvalidRequest(f"model '{model_name}' declares no inputs: V1 requests cannot be mapped to it")
    if len(meta.inputs) == 1:
        spec = meta.inputs[0]
        if all(isinstance(i, dict) for i in instances):
            if any(set(i) != {spec.name} for i in instances):
                raise InvalidRequest(f"instances must be values (or objects with the one key '{spec.name}')")
            instances = [i[spec.name] for i in instances]
        inputs: tuple[InferInput, ...] = (_stack(instances, spec.name, spec.datatype),)
    else:
        names = [t.name for t in meta.inputs]
        if not all(isinstance(i, dict) for i in instances):
            raise InvalidRequest(f"model '{model_name}' has inputs {names}: every instance must be an object keyed by them")
        for k, i in enumerate(instances):
            if set(i) != set(names):
                missing, extra = sorted(set(names) - set(i)), sorted(set(i) - set(names))
                raise InvalidRequest(f"instances[{k}]: missing inputs {missing}, unknown inputs {extra}")
        inputs = tuple(_stack([i[t.name] for i in instances], t.name, t.datatype) for t in meta.inputs)
    return InferRequest(model_name=model_name, inputs=inputs)


def _nest(flat: list[Any], shape: tuple[int, ...]) -> Any:
    if not shape:
        return flat[0] if flat else None
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[k * step : (k + 1) * step], shape[1:]) for k in range(shape[0])]


def _json_scalar(v: Any) -> Any:
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return v.hex()
    return v


def response_to_v1(resp: InferResponse) -> dict[str, Any]:
    """A V2 answer → ``{"predictions": [...]}`` (one entry per instance)."""
    per_output: dict[str, list[Any]] = {}
    for o in resp.outputs:
        flat = [_json_scalar(v) for v in raw_to_list(o.datatype, o.shape, o.raw)]
        nested = _nest(flat, o.shape)
        per_output[o.name] = nested if isinstance(nested, list) and o.shape else [nested]
    if len(per_output) == 1:
        return {"predictions": next(iter(per_output.values()))}
    rows = max((len(v) for v in per_output.values()), default=0)
    return {"predictions": [{name: v[k] if k < len(v) else None for name, v in per_output.items()} for k in range(rows)]}


def error_body(message: str) -> dict[str, str]:
    return {"error": message}
