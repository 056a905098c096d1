"""The records as stored: the bytes every instance writes and every mirror reads back."""

from __future__ import annotations

import json

import pytest

from mesh._store_schema import (
    SCHEMA_VERSION,
    AssignmentRecord,
    CopyRecord,
    CopyState,
    DecisionRecord,
    InstanceRecord,
    ModelRecord,
    VModelRecord,
    decode,
    encode,
)

RECORDS = [
    CopyRecord(model_id="m1", instance_id="i-0", state=CopyState.LOADED, since=1.5, size_bytes=3, size_measured=True,
               load_time_s=0.25, rpm=2.0, error="", failed_until=0.0),
    AssignmentRecord(model_id="m1", instances=("i-0", "i-1"), reasons={"i-0": "miss"}, planned_bytes=10),
    VModelRecord(name="v", active="a", target="b",
                 split={"targets": [{"model_id": "a", "weight": 3}, {"model_id": "b", "weight": 1}], "shadow": None}),
    InstanceRecord(instance_id="i-0", address="127.0.0.1:1", labels={"zone": "z1"}, capacity_bytes=1 << 20),
    ModelRecord(model_id="m1", model_type="onnx", path="s3://b/m1", options={"max_batch_size": "8"}),
    DecisionRecord(seq=4, at=2.0, leader="i-0", actions=({"kind": "load", "model_id": "m1"},), usage={"m1": [1.0, 2.0]}),
]


@pytest.mark.parametrize("rec", RECORDS, ids=lambda r: type(r).__name__)
def test_a_record_is_stored_as_its_fields_and_the_schema_version_and_reads_back_equal(rec: object) -> None:
    raw = encode(rec)
    data = json.loads(raw)
    assert data.pop("v") == SCHEMA_VERSION
    assert data == {name: (list(v) if isinstance(v, tuple) else v) for name, v in vars(rec).items()}
    assert list(json.loads(raw)) == sorted(json.loads(raw)), "keys sorted: the same record, the same bytes"
    assert decode(type(rec), raw) == rec


def test_a_stored_value_is_not_shared_with_the_record_it_came_from() -> None:
    rec = InstanceRecord(instance_id="i-0", address="a", labels={"zone": "z1"})
    raw = encode(rec)
    back = decode(InstanceRecord, raw)
    back.labels["zone"] = "z2"
    assert rec.labels == {"zone": "z1"} and decode(InstanceRecord, raw).labels == {"zone": "z1"}


def test_fields_unknown_to_this_version_are_ignored_and_missing_ones_take_their_defaults() -> None:
    raw = json.dumps({"model_id": "m1", "instance_id": "i-0", "state": "loading", "since": 1.0, "from_the_future": 1,
                      "v": SCHEMA_VERSION}).encode()
    rec = decode(CopyRecord, raw)
    assert rec == CopyRecord(model_id="m1", instance_id="i-0", state=CopyState.LOADING, since=1.0)
    assert rec.state is CopyState.LOADING
