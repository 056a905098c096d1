"""Fixed-width typed contents (fp32 / fp64) read from their packed encoding: the same values, the
same errors, whatever else the message carries and however the client encoded it."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from protos import grpc_predict_v2_pb2 as v2
from runtime_adapters import InvalidInput, TensorMetadata
from runtime_adapters._tensors import InputSpec, decode_input
from runtime_adapters._v2 import packed_contents, request_from_pb


@pytest.mark.parametrize(("field", "dtype"), [("fp32_contents", "<f4"), ("fp64_contents", "<f8")])
def test_packed_values_equal_the_field_values(field: str, dtype: str) -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(size=1000).astype(dtype)
    values[:4] = [np.nan, np.inf, -np.inf, -0.0]
    c = v2.InferTensorContents()
    getattr(c, field).extend(values.tolist())
    c.int_contents.extend([1, -2, 3])  # other fields around it are skipped
    c.bytes_contents.append(b"x" * 300)
    got = packed_contents(c, field)
    assert got is not None and got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, np.array(list(getattr(c, field)), dtype=dtype))
    assert packed_contents(v2.InferTensorContents(), field) is not None
    assert len(packed_contents(v2.InferTensorContents(), field)) == 0  # type: ignore[arg-type]
    assert packed_contents(c, "int_contents") is None  # varints: the plain path


def test_a_client_that_sends_unpacked_floats_is_read_alike() -> None:
    # field 6 (fp32_contents) as one fixed32 record per value, as a non-packing encoder may write
    values = [1.5, -2.25, 3e38]
    wire = b"".join(bytes([(6 << 3) | 5]) + struct.pack("<f", x) for x in values)
    c = v2.InferTensorContents.FromString(wire)
    got = packed_contents(c, "fp32_contents")
    assert got is not None
    assert got.tolist() == pytest.approx(values)


def _request(values: list[float], shape: list[int]) -> v2.ModelInferRequest:
    msg = v2.ModelInferRequest(model_name="m")
    t = msg.inputs.add(name="x", datatype="FP32", shape=shape)
    t.contents.fp32_contents.extend(values)
    return msg


def test_decoded_tensor_and_errors_are_unchanged() -> None:
    spec = InputSpec.strict(TensorMetadata("x", "FP32", (-1, 3)))
    req = request_from_pb(_request([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]))
    decoded = decode_input(req.inputs[0], spec)
    assert decoded.array.dtype == np.float32 and decoded.array.tolist() == [[1, 2, 3], [4, 5, 6]]
    decoded.array[0, 0] = 9  # the model may write into its input: not the message's buffer
    with pytest.raises(InvalidInput, match="5 values but shape \\[2, 3\\] needs 6"):
        decode_input(request_from_pb(_request([1.0] * 5, [2, 3])).inputs[0], spec)
