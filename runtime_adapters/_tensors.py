"""V2 tensors <-> numpy: datatypes, raw bytes, typed contents, and request validation.

Raw layout (as in V2 ``raw_input_contents`` / ``raw_output_contents``): row-major,
little-endian; BOOL is one byte per element (0 or 1); BF16 is the upper 16 bits of an
IEEE float32; BYTES is a sequence of elements, each a 4-byte little-endian unsigned length
followed by that many bytes.

Typed contents (gRPC typed fields, or REST JSON ``data`` flattened by the mesh) are
checked by the numpy kind numpy infers for them, not element by element: BOOL needs
bools, integer types need integers within the type's range (no floats, no bools), float
types take integers or floats (no bools), BYTES takes ``bytes`` (``str`` is UTF-8
encoded). FP16 and BF16 are accepted as numbers in typed contents: V2 gRPC has no typed
field for them (the gRPC codec rejects them there), but REST JSON carries them as numbers.

:func:`raw_to_list` returns BYTES elements as ``bytes``; rendering them for JSON (UTF-8
text or base64) is the REST edge's decision.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import InvalidInput
from ._types import InferInput, InferOutput, TensorMetadata

DATATYPES: tuple[str, ...] = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
)

MAX_RANK = 64  # numpy's limit on dimensions
_MAX_ELEMENTS = 1 << 59  # the product of a shape's non-zero dimensions must stay below this (bytes fit int64)

# Storage dtype of each fixed-size datatype (BF16 is stored as its 16 raw bits).
_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
}

_FROM_NUMPY: dict[str, str] = {
    "b": "BOOL",
    "u1": "UINT8",
    "u2": "UINT16",
    "u4": "UINT32",
    "u8": "UINT64",
    "i1": "INT8",
    "i2": "INT16",
    "i4": "INT32",
    "i8": "INT64",
    "f2": "FP16",
    "f4": "FP32",
    "f8": "FP64",
}

_LEN = struct.Struct("<I")


def dtype_size(datatype: str) -> int | None:
    """Bytes per element of a V2 datatype; ``None`` for BYTES (variable) and unknown names."""
    dt = _NUMPY.get(datatype)
    return None if dt is None else dt.itemsize


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy storage dtype of a fixed-size datatype (BF16 -> uint16 bits)."""
    try:
        return _NUMPY[datatype]
    except KeyError:
        raise InvalidInput(f"datatype '{datatype}' has no fixed-size numpy form") from None


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The V2 datatype of a numpy dtype (strings and objects -> BYTES)."""
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    key = "b" if dtype.kind == "b" else f"{dtype.kind}{dtype.itemsize}"
    try:
        return _FROM_NUMPY[key]
    except KeyError:
        raise InvalidInput(f"numpy dtype {dtype} has no V2 datatype") from None


def element_count(shape: Sequence[int], *, name: str = "tensor") -> int:
    for d in shape:
        if d < 0:
            raise InvalidInput(f"'{name}': shape {list(shape)} has a negative dimension")
    return math.prod(shape)


# ---------------------------------------------------------------- BYTES


def encode_bytes(items: Iterable[bytes | str]) -> bytes:
    """Length-prefixed BYTES encoding; ``str`` items are UTF-8 encoded."""
    parts: list[bytes] = []
    for item in items:
        b = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LEN.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def decode_bytes(raw: bytes, *, name: str = "tensor") -> list[bytes]:
    """Split length-prefixed BYTES elements; truncated data is an error naming the tensor."""
    out: list[bytes] = []
    view = memoryview(raw)
    pos, end = 0, len(raw)
    while pos < end:
        if pos + 4 > end:
            raise InvalidInput(f"'{name}': BYTES data ends inside a 4-byte length prefix at offset {pos}")
        (n,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + n > end:
            raise InvalidInput(
                f"'{name}': BYTES element {len(out)} declares {n} bytes but only {end - pos} remain"
            )
        out.append(bytes(view[pos : pos + n]))
        pos += n
    return out


# ---------------------------------------------------------------- BF16


def _bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype("<u4") << 16).view("<f4")


def _f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even to bfloat16; NaNs stay NaN."""
    f = np.ascontiguousarray(values, dtype="<f4")
    u = f.view("<u4")
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
    nan = np.isnan(f)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x0040).astype("<u2")
    return rounded


# ---------------------------------------------------------------- typed contents


def _contents_to_array(datatype: str, values: Sequence[Any], *, name: str) -> np.ndarray:
    """Typed contents -> a flat array of ``datatype`` (BF16: float32 values), strictly checked."""
    if isinstance(values, np.ndarray):
        arr = values.reshape(-1)
    else:
        if not isinstance(values, Sequence) or isinstance(values, str | bytes):
            raise InvalidInput(f"input '{name}': contents must be a flat sequence of values")
        try:
            arr = np.asarray(values) if len(values) else np.zeros((0,), dtype=np.int64)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidInput(f"input '{name}': contents are not {datatype} values: {exc}") from exc
    if arr.ndim != 1:
        raise InvalidInput(f"input '{name}': contents must be flat, got nested values")
    kind = arr.dtype.kind
    if len(arr) == 0:
        kind = "empty"
    if datatype == "BOOL":
        if kind not in ("b", "empty"):
            raise InvalidInput(f"input '{name}': BOOL contents must be booleans, got {_kind_name(arr)}")
        return arr.astype(np.bool_)
    if datatype in ("FP16", "FP32", "FP64", "BF16"):
        if kind not in ("f", "i", "u", "empty"):
            raise InvalidInput(f"input '{name}': {datatype} contents must be numbers, got {_kind_name(arr)}")
        target = np.dtype("<f4") if datatype == "BF16" else _NUMPY[datatype]
        if kind == "f" and target.itemsize < arr.dtype.itemsize:
            finite = arr[np.isfinite(arr)]
            if finite.size and float(np.abs(finite).max()) > float(np.finfo(target).max):
                raise InvalidInput(f"input '{name}': value out of range for {datatype}")
        return arr.astype(target)
    if datatype in _NUMPY:  # integers
        if kind in ("f", "O") and not isinstance(values, np.ndarray):
            # numpy turns ints that fit no single integer dtype (e.g. 0 and 2**64-1) into
            # floats or objects: check those element by element instead
            if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
                try:
                    return np.array([int(v) for v in values], dtype=_NUMPY[datatype])
                except OverflowError as exc:
                    raise InvalidInput(f"input '{name}': value out of range for {datatype}") from exc
        if kind not in ("i", "u", "empty"):
            raise InvalidInput(f"input '{name}': {datatype} contents must be integers, got {_kind_name(arr)}")
        target = _NUMPY[datatype]
        if kind != "empty":
            info = np.iinfo(target)
            lo, hi = arr.min(), arr.max()
            if lo < info.min or hi > info.max:
                raise InvalidInput(
                    f"input '{name}': value out of range for {datatype} [{info.min}, {info.max}]"
                )
        return arr.astype(target)
    raise InvalidInput(f"input '{name}': unknown datatype '{datatype}'")


def _kind_name(arr: np.ndarray) -> str:
    return {
        "b": "booleans",
        "i": "integers",
        "u": "integers",
        "f": "floats",
        "U": "strings",
        "S": "bytes",
        "O": "mixed or non-numeric values",
    }.get(arr.dtype.kind, str(arr.dtype))


def _bytes_contents(values: Sequence[Any], *, name: str) -> list[bytes]:
    out: list[bytes] = []
    for v in values:
        if isinstance(v, bytes | bytearray | memoryview):
            out.append(bytes(v))
        elif isinstance(v, str):
            out.append(v.encode("utf-8"))
        else:
            raise InvalidInput(f"input '{name}': BYTES contents must be bytes or str, got {type(v).__name__}")
    return out


# ---------------------------------------------------------------- public converters


def raw_to_list(datatype: str, shape: tuple[int, ...], raw: bytes, *, name: str = "tensor") -> list[Any]:
    """Raw V2 bytes -> a flat Python list (for REST JSON).

    BOOL -> bool, integers -> int, FP16/FP32/FP64/BF16 -> float, BYTES -> ``bytes``.
    Raises :class:`InvalidInput` when the bytes do not match ``shape``.
    """
    count = element_count(shape, name=name)
    if datatype == "BYTES":
        items = decode_bytes(raw, name=name)
        if len(items) != count:
            raise InvalidInput(f"'{name}': {len(items)} BYTES elements for shape {list(shape)} ({count})")
        return items
    dt = _NUMPY.get(datatype)
    if dt is None:
        raise InvalidInput(f"'{name}': unknown datatype '{datatype}'")
    if len(raw) != count * dt.itemsize:
        raise InvalidInput(
            f"'{name}': {len(raw)} raw bytes for {datatype} shape {list(shape)} "
            f"(expected {count * dt.itemsize})"
        )
    arr = np.frombuffer(raw, dtype=dt)
    if datatype == "BF16":
        arr = _bf16_bits_to_f32(arr)
    return arr.tolist()  # type: ignore[no-any-return]


def list_to_raw(datatype: str, values: Sequence[Any]) -> bytes:
    """Flat values -> raw V2 bytes (inverse of :func:`raw_to_list`; same type checks)."""
    if datatype == "BYTES":
        return encode_bytes(_bytes_contents(values, name="tensor"))
    arr = _contents_to_array(datatype, values, name="tensor")
    if datatype == "BF16":
        arr = _f32_to_bf16_bits(arr)
    return arr.tobytes()


# ---------------------------------------------------------------- model-side decoding


@dataclass(frozen=True)
class InputSpec:
    """How a model checks one input.

    ``accepted`` lists the datatypes it takes (normally just ``meta.datatype``);
    ``check_shape`` is False when the rank is unknown (schema-less TorchScript).
    """

    meta: TensorMetadata
    accepted: frozenset[str]
    check_shape: bool = True
    required: bool = True

    @classmethod
    def strict(cls, meta: TensorMetadata, *, required: bool = True) -> InputSpec:
        return cls(meta=meta, accepted=frozenset({meta.datatype}), required=required)


@dataclass(frozen=True)
class Decoded:
    """A validated input: its datatype and its array (BYTES: object array of ``bytes``)."""

    datatype: str
    array: np.ndarray


def shape_matches(expected: tuple[int, ...], actual: tuple[int, ...]) -> bool:
    return len(expected) == len(actual) and all(e == -1 or e == a for e, a in zip(expected, actual, strict=True))


def decode_input(inp: InferInput, spec: InputSpec | None, *, writable: bool = False) -> Decoded:
    """Validate one input against its spec and decode it to numpy (see the module docstring)."""
    name = inp.name
    if inp.datatype not in DATATYPES:
        raise InvalidInput(f"input '{name}': unknown datatype '{inp.datatype}'")
    shape = tuple(inp.shape)
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise InvalidInput(f"input '{name}': shape {list(shape)} has an invalid or negative dimension")
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"input '{name}': shape has {len(shape)} dimensions, more than {MAX_RANK}")
    if math.prod(d for d in shape if d) >= _MAX_ELEMENTS:  # numpy refuses such shapes even with a 0 in them
        raise InvalidInput(f"input '{name}': shape {list(shape)} is too large")
    if spec is not None:
        if inp.datatype not in spec.accepted:
            want = " or ".join(sorted(spec.accepted))
            raise InvalidInput(f"input '{name}': datatype {inp.datatype} does not match the model's {want}")
        if spec.check_shape and not shape_matches(spec.meta.shape, shape):
            raise InvalidInput(
                f"input '{name}': shape {list(shape)} does not match the model's {list(spec.meta.shape)} "
                "(-1 = any size)"
            )
    if (inp.raw is None) == (inp.contents is None):
        what = "both raw and typed contents" if inp.raw is not None else "no data"
        raise InvalidInput(f"input '{name}': has {what}; give exactly one of raw bytes or typed contents")
    count = math.prod(shape)
    if inp.datatype == "BYTES":
        if inp.raw is not None:
            items = decode_bytes(inp.raw, name=f"input {name}")
        else:
            assert inp.contents is not None
            items = _bytes_contents(inp.contents, name=name)
        if len(items) != count:
            raise InvalidInput(
                f"input '{name}': {len(items)} BYTES elements but shape {list(shape)} needs {count}"
            )
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return Decoded("BYTES", arr.reshape(shape))
    dt = _NUMPY[inp.datatype]
    if inp.raw is not None:
        expected = count * dt.itemsize
        if len(inp.raw) != expected:
            raise InvalidInput(
                f"input '{name}': {len(inp.raw)} raw bytes but {inp.datatype} shape {list(shape)} "
                f"needs {expected}"
            )
        buf: Any = bytearray(inp.raw) if writable else inp.raw
        arr = np.frombuffer(buf, dtype=dt)
    else:
        assert inp.contents is not None
        if len(inp.contents) != count:
            raise InvalidInput(
                f"input '{name}': {len(inp.contents)} values but shape {list(shape)} needs {count}"
            )
        arr = _contents_to_array(inp.datatype, inp.contents, name=name)
        if inp.datatype == "BF16":
            arr = _f32_to_bf16_bits(arr)
    return Decoded(inp.datatype, arr.reshape(shape))


def input_nbytes(inp: InferInput) -> int:
    """Approximate payload bytes of an input (raw length, or count x item size)."""
    if inp.raw is not None:
        return len(inp.raw)
    contents = () if inp.contents is None else inp.contents
    n = len(contents)
    size = dtype_size(inp.datatype)
    if size is None:
        return sum(len(v) if isinstance(v, bytes | bytearray | str) else 8 for v in contents)
    return n * size


def decode_inputs(
    inputs: Sequence[InferInput],
    specs: Mapping[str, InputSpec],
    *,
    writable: bool = False,
    model_id: str = "",
) -> dict[str, Decoded]:
    """Validate a request's inputs as a set: unknown, duplicate and missing names, then each one."""
    out: dict[str, Decoded] = {}
    for inp in inputs:
        if inp.name not in specs:
            known = ", ".join(sorted(specs)) or "none"
            raise InvalidInput(f"input '{inp.name}' is not an input of model '{model_id}' (inputs: {known})")
        if inp.name in out:
            raise InvalidInput(f"input '{inp.name}' is given more than once")
        out[inp.name] = decode_input(inp, specs[inp.name], writable=writable)
    for name, spec in specs.items():
        if spec.required and name not in out:
            raise InvalidInput(f"input '{name}' of model '{model_id}' is missing from the request")
    return out


def encode_output(name: str, arr: np.ndarray, *, datatype: str | None = None) -> InferOutput:
    """A numpy result -> raw V2 output (strings/objects become BYTES, UTF-8 encoded)."""
    shape = tuple(int(d) for d in arr.shape)
    dtype = datatype or datatype_of(arr.dtype)
    if dtype == "BYTES":
        flat = arr.reshape(-1).tolist()
        return InferOutput(name=name, datatype="BYTES", shape=shape, raw=encode_bytes(_as_bytes_items(name, flat)))
    storage = _NUMPY[dtype]
    return InferOutput(
        name=name, datatype=dtype, shape=shape, raw=np.ascontiguousarray(arr, dtype=storage).tobytes()
    )


def _as_bytes_items(name: str, items: Iterable[Any]) -> Iterable[bytes | str]:
    for v in items:
        if isinstance(v, bytes | str):
            yield v
        else:
            yield str(v)
