"""The request-rate estimator the simulator and the mesh share, and the bounded history of gone copies."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement import (
    ClusterView,
    CopyView,
    InstanceView,
    ModelView,
    Policy,
    PolicySettings,
    Remembered,
    TraceSpec,
    Usage,
    UsageHistory,
    generate,
    merge_usage,
    simulate,
)

W = 60.0


def test_a_request_adds_60_over_the_window_to_the_decayed_rate() -> None:
    u = Usage().record(100.0, W)
    assert u == Usage(100.0, 1.0)
    u = u.record(160.0, W)
    assert u.last_used == 160.0 and u.rate_rpm == pytest.approx(math.exp(-1) + 1.0)
    # the rate is as of the last use; at() decays it, and never raises it for an earlier time
    assert u.at(220.0, W) == pytest.approx(u.rate_rpm * math.exp(-1))
    assert u.at(100.0, W) == u.rate_rpm
    assert Usage().record(5.0, W, requests=3) == Usage(5.0, 3.0)


def test_copies_merged_say_what_one_meter_over_all_requests_says() -> None:
    times = [10.0, 25.0, 31.0, 70.0, 71.0, 200.0]
    one = Usage()
    for t in times:
        one = one.record(t, W)
    a, b = Usage(), Usage()  # two copies, each serving every other request
    for k, t in enumerate(times):
        if k % 2:
            b = b.record(t, W)
        else:
            a = a.record(t, W)
    merged = merge_usage([a, Usage(), b], W)
    assert merged.last_used == one.last_used and merged.rate_rpm == pytest.approx(one.rate_rpm, rel=1e-12)
    assert a.merge(b, W) == b.merge(a, W)


def test_history_folds_gone_copies_and_keeps_cost_and_size() -> None:
    h = UsageHistory()
    h.fold("m", Usage(10.0, 2.0), W, load_time_s=1.5, size_bytes=1000)
    e = h.fold("m", Usage(70.0, 1.0), W)  # a second copy's traffic, no new measurement
    assert e == Remembered(70.0, 2.0 * math.exp(-1) + 1.0, 1.5, 1000)
    assert h.get("m") == e and "m" in h and len(h) == 1
    h.forget("m")
    assert h.get("m") is None and len(h) == 0


def test_history_is_bounded_and_drops_the_least_recently_used_first() -> None:
    h = UsageHistory(max_models=3)
    for k, t in enumerate([5.0, 1.0, 9.0, 3.0]):  # written out of order of last use
        h.put(f"m{k}", Remembered(t, 1.0))
    assert len(h) == 3 and h.dropped == 1
    assert [mid for mid, _ in h.items()] == ["m3", "m0", "m2"]  # m1 (last used at 1.0) went
    h.put("m3", Remembered(20.0, 1.0))  # rewritten: newest now
    h.put("m4", Remembered(8.0, 1.0))
    assert [mid for mid, _ in h.items()] == ["m4", "m2", "m3"]
    with pytest.raises(ValueError):
        UsageHistory(max_models=0)


_OPS = st.lists(
    st.tuples(st.sampled_from(["put", "put", "put", "forget"]), st.integers(0, 11), st.integers(0, 6)), max_size=80
)


@settings(max_examples=300, deadline=None)
@given(ops=_OPS, bound=st.integers(1, 6))
def test_history_keeps_the_most_recently_used_models_whatever_order_they_are_written_in(
    ops: list[tuple[str, int, int]], bound: int
) -> None:
    """Against a plain reference: after any sequence of writes (last uses out of order, ties,
    rewrites) and forgets, the history holds what the reference holds, in its order, and dropped
    as many: the oldest last use goes first, among equal last uses the entry written first."""
    h = UsageHistory(max_models=bound)
    ref: dict[str, tuple[float, int]] = {}  # model -> (last_used, write number)
    dropped = 0
    for n, (op, k, t) in enumerate(ops):
        mid = f"m{k}"
        if op == "forget":
            h.forget(mid)
            ref.pop(mid, None)
            continue
        h.put(mid, Remembered(float(t), float(n)))
        ref[mid] = (float(t), n)
        while len(ref) > bound:
            del ref[min(ref, key=lambda m: ref[m])]
            dropped += 1
    expected = sorted(ref, key=lambda m: ref[m])
    assert [mid for mid, _ in h.items()] == expected
    assert {mid: e.rate_rpm for mid, e in h.items()} == {mid: float(ref[mid][1]) for mid in expected}
    assert len(h) == len(ref) and h.dropped == dropped
    assert all((f"m{k}" in h) == (f"m{k}" in ref) for k in range(12))


def test_a_tick_decays_rates_to_now_with_the_view_window() -> None:
    """Rates are as of the last use: two copies of a model whose traffic stopped go back to one
    once the decayed rate is low, while a view without a window reads the rate as it is."""
    s = PolicySettings(min_residency_s=0)
    m = ModelView(
        "m", 1000, True, copies=(CopyView("i0", "loaded", 0.0), CopyView("i1", "loaded", 0.0)),
        assigned=frozenset({"i0", "i1"}), last_used=100.0, rate_rpm=400.0,
    )
    insts = {i: InstanceView(i, 10_000, 1000) for i in ("i0", "i1")}
    policy = Policy(s)
    busy = ClusterView(now=110.0, instances=insts, models={"m": m})
    assert policy.on_tick(busy) == []  # 400 rpm over one copy: above scale-in (150)
    idle = ClusterView(now=100.0 + 6 * W, instances=insts, models={"m": m}, rate_window_s=W)
    (a,) = policy.on_tick(idle)  # 400 x e^-6: below second_copy_off_rpm
    assert (a.kind, a.reason_word) == ("unload", "scale_in")


def test_simulate_records_each_decision() -> None:
    trace = generate(TraceSpec(models=20, requests=200, size_median_bytes=1 << 20, size_min_bytes=1 << 18,
                               size_max_bytes=4 << 20, seed=3))
    res = simulate(trace, "ours", instances=1, capacity_bytes=6 << 20, record_decisions=True, time_decisions=False)
    misses = [d for d in res.decisions if d[1] is not None]
    assert len(misses) == res.requests - res.hits
    assert sum(1 for _, _, acts in res.decisions for a in acts if a.kind == "unload") == res.evictions > 0
    assert not simulate(trace, "ours", instances=1, capacity_bytes=6 << 20, time_decisions=False).decisions
