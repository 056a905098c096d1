"""Traffic split plumbing without a cluster: the store record (old records decode), the per-request
pick (cached per record, counted per target) and the shadow (fire-and-forget, bounded, errors counted)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from mesh._metrics import Metrics
from mesh._split_routing import SplitRouting
from mesh._store_schema import VModelRecord, decode, encode
from mesh._traffic_split import TrafficSplit, canary


def test_records_written_before_splits_decode_and_splits_round_trip() -> None:
    old = json.dumps({"name": "vm", "active": "a", "target": "a", "owner": "", "failed": False, "failure": "",
                      "updated_at": 1.0, "v": 1}).encode()
    rec = decode(VModelRecord, old)
    assert rec.split is None and rec.referenced() == {"a"}
    split = TrafficSplit(targets=(("a", 90), ("b", 10)), shadow="c", shadow_percent=5)
    new = VModelRecord(name="vm", active="a", target="a", split=split.to_json())
    back = decode(VModelRecord, encode(new))
    assert back == new and TrafficSplit.from_json(back.split or {}) == split
    assert back.referenced() == {"a", "b", "c"}


def _routing(records: dict[str, VModelRecord], max_inflight: int = 64) -> tuple[SplitRouting, Metrics]:
    mirror: Any = SimpleNamespace(vmodels=SimpleNamespace(items=records))
    metrics = Metrics()
    return SplitRouting(mirror, metrics, max_inflight=max_inflight), metrics


def _count(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_pick_is_none_for_plain_vmodels_and_counts_per_target() -> None:
    records = {"plain": VModelRecord(name="plain", active="a", target="a"),
               "vm": VModelRecord(name="vm", active="a", target="a", split=canary("a", "b", 50).to_json())}
    routing, metrics = _routing(records)
    assert routing.pick("plain", None) is None and routing.pick("unknown", None) is None
    picks = [routing.pick("vm", None) for _ in range(400)]
    served = [p[0] for p in picks if p is not None]
    assert set(served) == {"a", "b"} and all(p is not None and p[1] == "" for p in picks)  # no shadow configured
    assert _count(metrics, "modelmux_vmodel_split_requests_total", vmodel="vm", target="b") == served.count("b")
    # sticky: one session, one target, every time
    assert len({routing.pick("vm", "user-1") for _ in range(50)}) == 1
    # the decoded split is cached per record; a new record (the mirror replaces it) is read again
    first = routing.split_of("vm")
    assert routing.split_of("vm") is first
    records["vm"] = VModelRecord(name="vm", active="b", target="b", split=canary("a", "b", 100).to_json())
    assert routing.pick("vm", None) == ("b", "")


def test_an_unreadable_split_serves_the_active_model() -> None:
    routing, _ = _routing({"vm": VModelRecord(name="vm", active="a", target="a", split={"targets": "nonsense"})})
    assert routing.pick("vm", None) is None  # the router then serves vm.active


async def test_shadow_is_fire_and_forget_bounded_and_counted() -> None:
    routing, metrics = _routing({}, max_inflight=2)
    release = asyncio.Event()

    async def slow() -> None:
        await release.wait()

    async def failing() -> None:
        raise RuntimeError("shadow model broke")

    routing.shadow("vm", slow)
    routing.shadow("vm", slow)
    routing.shadow("vm", slow)  # a third while two are in flight: dropped, never queued
    assert _count(metrics, "modelmux_vmodel_shadow_requests_total", vmodel="vm", result="dropped") == 1
    release.set()
    await asyncio.sleep(0)
    while routing._tasks:
        await asyncio.gather(*routing._tasks)
    routing.shadow("vm", failing)  # its error stays in the background, counted
    await asyncio.gather(*routing._tasks)
    assert _count(metrics, "modelmux_vmodel_shadow_requests_total", vmodel="vm", result="ok") == 2
    assert _count(metrics, "modelmux_vmodel_shadow_requests_total", vmodel="vm", result="error") == 1
    routing.shadow("vm", slow)
    await routing.close()  # cancels what is still in flight
    assert not routing._tasks
