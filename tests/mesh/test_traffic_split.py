"""Traffic split of a vModel: weights, stickiness, shadow share, validation (pure)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from mesh._errors import InvalidRequest
from mesh._traffic_split import TrafficSplit, canary


def test_weights_are_honoured_within_three_percent_over_5000_requests() -> None:
    split = TrafficSplit(targets=(("stable", 90), ("canary", 10)), shadow="shadow", shadow_percent=20)
    rng = random.Random(7)
    picks = Counter(split.choose("vm", None, rng.random) for _ in range(5000))
    assert abs(picks["canary"] / 5000 - 0.10) <= 0.03 and abs(picks["stable"] / 5000 - 0.90) <= 0.03
    mirrored = sum(split.mirror(rng.random) for _ in range(5000))
    assert abs(mirrored / 5000 - 0.20) <= 0.03


def test_sessions_are_sticky_and_spread() -> None:
    split = canary("v1", "v2", 30)
    assert all(split.choose("vm", "user-42") == split.choose("vm", "user-42") for _ in range(20))
    by_session = Counter(split.choose("vm", f"user-{k}") for k in range(5000))
    assert abs(by_session["v2"] / 5000 - 0.30) <= 0.03
    # another vModel hashes the same session elsewhere (independent experiments)
    assert {canary("v1", "v2", 50).choose(f"vm{k}", "same") for k in range(50)} == {"v1", "v2"}


def test_promotion_and_rollback_are_single_targets() -> None:
    assert canary("v1", "v2", 100).targets == (("v2", 100),)
    assert canary("v1", "v2", 0).targets == (("v1", 100),)
    assert canary("v1", "v2", 10).primary == "v1"
    assert TrafficSplit(targets=(("only", 100),)).choose("vm", None, lambda: 0.99) == "only"


def test_json_round_trip() -> None:
    split = TrafficSplit(targets=(("a", 60), ("b", 40)), shadow="c", shadow_percent=5)
    assert TrafficSplit.from_json(split.to_json()) == split


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"targets": []}, "at least one target"),
        ({"targets": [{"model_id": "a", "weight": 60}]}, "sum to 100"),
        ({"targets": [{"model_id": "a", "weight": 50}, {"model_id": "a", "weight": 50}]}, "named twice"),
        ({"targets": [{"model_id": "a", "weight": 150}, {"model_id": "b", "weight": -50}]}, "whole percent"),
        ({"targets": [{"model_id": "a", "weight": 100.0}]}, "whole percent"),
        ({"targets": [{"model_id": "a", "weight": 100}], "shadow": {"model_id": "a", "percent": 5}}, "also a target"),
        ({"targets": [{"model_id": "a", "weight": 100}], "shadow": {"model_id": "s", "percent": 101}}, "0 to 100"),
        ({"targets": [{"model_id": "a", "weight": 100}], "shadow": {"model_id": "s", "percent": "5"}}, "whole number"),
        ({"targets": "a"}, "must be a list"),
        ({"targets": [{"weight": 100}]}, "model_id"),
    ],
)
def test_bad_splits_are_refused(doc: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        TrafficSplit.from_json(doc)
