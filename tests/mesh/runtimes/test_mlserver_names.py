"""MLServer routes by ``model_name``: the name is set by appending field 1 to the request bytes
(protobuf keeps a singular field's last value), and the caller's name is read from the leading
tag without parsing the payload."""

from __future__ import annotations

from mesh._runtimes._mlserver import inject_name, leading_name, mlserver_name
from protos import grpc_predict_v2_pb2 as pb


def test_name_injection_needs_no_parse() -> None:
    long_name = "m" * 300  # a two-byte length
    for asked in ("lin-v", long_name):
        req = pb.ModelInferRequest(model_name=asked, id="x")
        req.inputs.add(name="x", datatype="FP32", shape=[1])
        raw = req.SerializeToString()
        assert leading_name(raw) == asked.encode()
        target = mlserver_name("sk:lin@1")
        assert pb.ModelInferRequest.FromString(inject_name(raw, target)).model_name == target
        assert pb.ModelInferRequest.FromString(inject_name(raw, target)).id == "x"
    assert leading_name(pb.ModelInferRequest(id="no-name").SerializeToString()) is None
    assert mlserver_name("sk:lin@1") != mlserver_name("sk_lin_1")  # folder-safe, still one per id
