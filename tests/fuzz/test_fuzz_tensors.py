"""Property: validating and decoding any V2 input, with or without a model's spec, only ever refuses with InvalidInput.

Schema-less models (TorchScript without a schema) skip the shape check, so every shape a
client can send reaches :func:`runtime_adapters._tensors.decode_inputs`: more dimensions than
numpy allows, or dimensions whose product overflows even when another one is 0, must be
INVALID_ARGUMENT like any other bad tensor, not an unexpected numpy error (INTERNAL).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime_adapters import InferInput, InvalidInput, TensorMetadata
from runtime_adapters._tensors import DATATYPES, InputSpec, decode_inputs

DIMS = st.one_of(st.integers(0, 4), st.integers(0, (1 << 63) - 1), st.sampled_from([1 << 31, 1 << 40, 1 << 62]))
SHAPES = st.one_of(st.lists(DIMS, max_size=6), st.lists(st.integers(0, 1), min_size=60, max_size=70))
CONTENTS = st.one_of(
    st.lists(st.integers(-(1 << 70), 1 << 70), max_size=8), st.lists(st.floats(), max_size=8),
    st.lists(st.booleans(), max_size=8), st.lists(st.binary(max_size=6), max_size=8), st.lists(st.text(max_size=4), max_size=8),
)


@settings(max_examples=300, deadline=None, derandomize=bool(os.environ.get("CI")), database=None)
@given(
    datatype=st.sampled_from(DATATYPES),
    shape=SHAPES,
    raw=st.one_of(st.none(), st.binary(max_size=64)),
    contents=CONTENTS,
    schemaless=st.booleans(),
)
def test_decoding_refuses_only_with_invalid_input(datatype: str, shape: list[int], raw: bytes | None, contents: list[Any], schemaless: bool) -> None:
    inp = InferInput("x", datatype, tuple(shape), raw=raw, contents=None if raw is not None else contents)
    meta = TensorMetadata("x", datatype, () if schemaless else (-1,) * len(shape))
    spec = InputSpec(meta=meta, accepted=frozenset({datatype}), check_shape=not schemaless)
    try:
        decoded = decode_inputs([inp], {"x": spec}, model_id="m")
    except InvalidInput:
        return
    assert decoded["x"].array.shape == tuple(shape)


@pytest.mark.parametrize("shape", [(1,) * 65, (0, 1 << 62), (0, (1 << 63) - 1), (0, 1 << 40, 1 << 40)])
def test_shapes_numpy_cannot_hold_are_invalid_input(shape: tuple[int, ...]) -> None:
    spec = InputSpec(meta=TensorMetadata("x", "FP32", ()), accepted=frozenset({"FP32"}), check_shape=False)
    raw = b"\x00" * 4 if len(shape) == 65 else b""
    with pytest.raises(InvalidInput, match=r"dimensions|too large"):
        decode_inputs([InferInput("x", "FP32", shape, raw=raw)], {"x": spec}, model_id="m")
