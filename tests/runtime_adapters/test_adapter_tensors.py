"""Pure tensor converters: datatypes, raw <-> list round trips, BYTES and BF16 layouts, strict checks."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime_adapters import (
    DATATYPES,
    InferInput,
    InvalidInput,
    TensorMetadata,
    decode_bytes,
    dtype_size,
    encode_bytes,
    list_to_raw,
    raw_to_list,
)
from runtime_adapters._tensors import InputSpec, decode_input, encode_output

SIZES = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
    "BF16": 2,
}

SAMPLES: dict[str, list[Any]] = {
    "BOOL": [True, False, True],
    "UINT8": [0, 7, 255],
    "UINT16": [0, 300, 65535],
    "UINT32": [0, 70000, 2**32 - 1],
    "UINT64": [0, 2**40, 2**64 - 1],
    "INT8": [-128, 0, 127],
    "INT16": [-32768, 5, 32767],
    "INT32": [-(2**31), 5, 2**31 - 1],
    "INT64": [-(2**63), 5, 2**63 - 1],
    "FP16": [0.5, -2.0, 1024.0],
    "FP32": [0.25, -3.5, 2.0**100],
    "FP64": [0.1, -1e300, 2.5],
    "BF16": [1.0, -2.5, 3.140625],
}


def test_dtype_sizes() -> None:
    assert set(SIZES) | {"BYTES"} == set(DATATYPES)
    for dt, size in SIZES.items():
        assert dtype_size(dt) == size
    assert dtype_size("BYTES") is None
    assert dtype_size("COMPLEX64") is None


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_round_trip_every_datatype(datatype: str) -> None:
    values = SAMPLES[datatype]
    raw = list_to_raw(datatype, values)
    assert len(raw) == len(values) * SIZES[datatype]
    assert raw_to_list(datatype, (len(values),), raw) == values
    assert raw_to_list(datatype, (1, len(values)), raw) == values


def test_raw_layout_is_little_endian() -> None:
    assert list_to_raw("INT32", [1]) == b"\x01\x00\x00\x00"
    assert list_to_raw("FP32", [1.0]) == struct.pack("<f", 1.0)
    assert list_to_raw("BOOL", [True, False]) == b"\x01\x00"
    assert list_to_raw("BF16", [1.0]) == struct.pack("<f", 1.0)[2:]


def test_bf16_rounds_to_nearest_even() -> None:
    # 1 + 2^-8 lies halfway between two bf16 values: ties go to the even one (1.0)
    assert raw_to_list("BF16", (1,), list_to_raw("BF16", [1.00390625])) == [1.0]
    assert raw_to_list("BF16", (1,), list_to_raw("BF16", [1.01171875])) == [1.015625]
    nan = raw_to_list("BF16", (1,), list_to_raw("BF16", [float("nan")]))
    assert np.isnan(nan[0])


def test_bytes_layout_and_round_trip() -> None:
    raw = list_to_raw("BYTES", [b"ab", "é", b""])
    assert raw == b"\x02\x00\x00\x00ab" + b"\x02\x00\x00\x00\xc3\xa9" + b"\x00\x00\x00\x00"
    assert raw_to_list("BYTES", (3,), raw) == [b"ab", "é".encode(), b""]
    assert decode_bytes(encode_bytes([b"\xff\x00", "x"])) == [b"\xff\x00", b"x"]


@given(st.lists(st.binary(max_size=20), max_size=20))
@settings(max_examples=50, deadline=None)
def test_bytes_round_trip_property(items: list[bytes]) -> None:
    assert raw_to_list("BYTES", (len(items),), encode_bytes(items)) == items


@pytest.mark.parametrize("datatype", ["INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"])
@given(data=st.data())
@settings(max_examples=25, deadline=None)
def test_integer_round_trip_property(datatype: str, data: st.DataObject) -> None:
    info = np.iinfo(np.dtype(datatype.lower()))
    values = data.draw(st.lists(st.integers(int(info.min), int(info.max)), max_size=30))
    assert raw_to_list(datatype, (len(values),), list_to_raw(datatype, values)) == values


@given(st.lists(st.floats(allow_nan=False, width=32), max_size=30))
@settings(max_examples=50, deadline=None)
def test_fp32_round_trip_property(values: list[float]) -> None:
    assert raw_to_list("FP32", (len(values),), list_to_raw("FP32", values)) == values


@pytest.mark.parametrize(
    ("datatype", "shape", "raw", "needle"),
    [
        ("FP32", (2,), b"\x00" * 7, "7 raw bytes"),
        ("INT64", (3,), b"\x00" * 16, "expected 24"),
        ("BYTES", (2,), encode_bytes([b"a"]), "1 BYTES elements"),
        ("BYTES", (1,), b"\x05\x00\x00\x00ab", "declares 5 bytes"),
        ("BYTES", (1,), b"\x05\x00", "length prefix"),
        ("FP32", (-1,), b"", "negative"),
        ("NOPE", (1,), b"\x00", "unknown datatype"),
    ],
)
def test_raw_to_list_rejects_mismatches(datatype: str, shape: tuple[int, ...], raw: bytes, needle: str) -> None:
    with pytest.raises(InvalidInput) as err:
        raw_to_list(datatype, shape, raw, name="probs")
    assert err.value.code == "invalid_argument"
    assert needle in err.value.message
    assert "probs" in err.value.message


@pytest.mark.parametrize(
    ("datatype", "values", "needle"),
    [
        ("INT8", [128], "out of range"),
        ("UINT8", [-1], "out of range"),
        ("INT32", [1.5], "must be integers"),
        ("INT64", [True], "must be integers"),
        ("FP32", [True, False], "must be numbers"),
        ("FP32", ["1.0"], "must be numbers"),
        ("FP32", [1.0, None], "must be numbers"),
        ("FP16", [1e6], "out of range"),
        ("BOOL", [1, 0], "must be booleans"),
        ("BYTES", [1], "bytes or str"),
        ("FP32", [[1.0]], "flat"),
    ],
)
def test_list_to_raw_is_strict(datatype: str, values: list[object], needle: str) -> None:
    with pytest.raises(InvalidInput) as err:
        list_to_raw(datatype, values)
    assert needle in err.value.message


def test_ints_are_accepted_as_floats() -> None:
    assert raw_to_list("FP64", (2,), list_to_raw("FP64", [1, 2])) == [1.0, 2.0]


def test_decode_input_without_spec_and_writable_copy() -> None:
    raw = np.arange(6, dtype=np.float32).tobytes()
    d = decode_input(InferInput("x", "FP32", (2, 3), raw=raw), None)
    assert d.array.shape == (2, 3) and not d.array.flags.writeable
    w = decode_input(InferInput("x", "FP32", (2, 3), raw=raw), None, writable=True)
    assert w.array.flags.writeable
    np.testing.assert_array_equal(w.array, np.arange(6, dtype=np.float32).reshape(2, 3))


def test_decode_input_accepts_listed_datatypes_only() -> None:
    spec = InputSpec(TensorMetadata("x", "FP32", (-1, 2)), accepted=frozenset({"FP32", "FP64"}))
    d = decode_input(InferInput("x", "FP64", (1, 2), contents=[1.0, 2.0]), spec)
    assert d.array.dtype == np.float64
    with pytest.raises(InvalidInput, match="'x': datatype INT32 does not match the model's FP32 or FP64"):
        decode_input(InferInput("x", "INT32", (1, 2), contents=[1, 2]), spec)


def test_encode_output_strings_and_numbers() -> None:
    out = encode_output("s", np.array(["a", "bc"], dtype=object))
    assert out.datatype == "BYTES" and out.shape == (2,)
    assert raw_to_list("BYTES", out.shape, out.raw) == [b"a", b"bc"]
    out = encode_output("n", np.array([[1, 2]], dtype=np.int16))
    assert (out.datatype, out.shape, out.raw) == ("INT16", (1, 2), b"\x01\x00\x02\x00")
