from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh._wire import WireError, read_string_field
from protos import grpc_predict_v2_pb2 as pb


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(max_size=50),
    rid=st.text(max_size=10),
    raws=st.lists(st.binary(max_size=64), max_size=4),
    shape=st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=4),
)
def test_reads_model_name_like_the_parser(name: str, rid: str, raws: list[bytes], shape: list[int]) -> None:
    msg = pb.ModelInferRequest(model_name=name, id=rid)
    t = msg.inputs.add(name="x", datatype="FP32", shape=shape)
    t.parameters["k"].double_param = 1.5
    msg.raw_input_contents.extend(raws)
    data = msg.SerializeToString()
    got = read_string_field(data, 1)
    assert (got or "") == pb.ModelInferRequest.FromString(data).model_name


def test_last_value_wins_like_protobuf() -> None:
    a = pb.ModelInferRequest(model_name="first").SerializeToString()
    b = pb.ModelInferRequest(model_name="second").SerializeToString()
    assert read_string_field(a + b, 1) == "second"
    assert pb.ModelInferRequest.FromString(a + b).model_name == "second"


@pytest.mark.parametrize(
    "data",
    [b"\x0a\x05abc", b"\x0a", b"\x0f", b"\x00", b"\x0a\x02\xff\xfe", b"\x80" * 11],
    ids=["truncated", "no-length", "bad-wiretype", "field-zero", "not-utf8", "long-varint"],
)
def test_malformed_input_is_rejected(data: bytes) -> None:
    with pytest.raises(WireError):
        read_string_field(data, 1)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        read_string_field(data, 1)
    except WireError:
        pass
