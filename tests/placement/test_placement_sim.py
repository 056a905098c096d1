"""Simulator, traces, index and CLI tests (small traces: the whole file runs in seconds)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from placement import (
    Action,
    InstanceView,
    InvalidTrace,
    LruPolicy,
    ModelView,
    PlacementIndex,
    Policy,
    PolicySettings,
    RateOraclePolicy,
    SimulationError,
    Trace,
    TraceSpec,
    VirtualCluster,
    generate,
    read_csv,
    simulate,
    write_csv,
)
from placement._cli import app
from tests.placement.placement_views import GB, model

ROOT = Path(__file__).resolve().parents[2]
SMALL = TraceSpec(models=400, requests=12_000, alpha=1.0, scan_length=60, scan_every_s=120, shift_period_s=200)


@pytest.fixture(scope="module")
def trace() -> Trace:
    return generate(SMALL)


def test_generated_trace_shape(trace: Trace) -> None:
    assert len(trace) == SMALL.requests
    assert np.all(np.diff(trace.times) >= 0)
    assert trace.models.min() >= 0 and trace.models.max() < SMALL.models
    assert trace.sizes.min() >= SMALL.size_min_bytes and trace.sizes.max() <= SMALL.size_max_bytes
    assert np.all(trace.load_times > SMALL.load_overhead_s)
    # skewed: the most requested model gets far more than an even share
    counts = np.bincount(trace.models, minlength=SMALL.models)
    assert counts.max() > 20 * len(trace) / SMALL.models
    # same spec, same trace; another seed, another trace
    again = generate(SMALL)
    assert np.array_equal(again.models, trace.models) and np.array_equal(again.times, trace.times)
    assert not np.array_equal(generate(SMALL.model_copy(update={"seed": 1})).models, trace.models)


def test_next_use() -> None:
    t = Trace(
        np.array([0.0, 1.0, 2.0, 3.0, 4.0]), np.array([0, 1, 0, 2, 1]), ["a", "b", "c"],
        np.array([1, 1, 1]), np.array([1.0, 1.0, 1.0]), ["", "", ""],
    )
    assert t.next_use().tolist() == [2.0, 4.0, np.inf, np.inf, np.inf]


def test_csv_round_trip_and_errors(tmp_path: Path, trace: Trace) -> None:
    p = tmp_path / "t.csv"
    write_csv(trace, p)
    back = read_csv(p)
    assert len(back) == len(trace)
    assert np.allclose(back.times, trace.times, atol=1e-6)
    assert [back.names[i] for i in back.models[:50]] == [trace.names[i] for i in trace.models[:50]]
    i = back.names.index(trace.names[int(trace.models[0])])
    assert back.sizes[i] == trace.sizes[int(trace.models[0])]
    # minimal columns: load time derived from size
    q = tmp_path / "min.csv"
    q.write_text("time,model,size\n0,a,200000000\n1.5,b,100\n2,a,200000000\n")
    m = read_csv(q, load_bytes_per_s=100e6, load_overhead_s=0.5)
    assert m.names == ["a", "b"] and m.models.tolist() == [0, 1, 0] and m.load_times[0] == pytest.approx(2.5)
    for body, msg in [
        ("time,model\n0,a\n", "size"),
        ("time,model,size\n0,a,x\n", ":2:"),
        ("time,model,size\n5,a,1\n1,b,1\n", ":3: time 1.0 is before"),
        ("time,model,size\n", "no requests"),
    ]:
        bad = tmp_path / "bad.csv"
        bad.write_text(body)
        with pytest.raises(InvalidTrace, match=msg) as ei:
            read_csv(bad)
        assert ei.value.code == "invalid_argument" and "bad.csv" in str(ei.value)
    with pytest.raises(InvalidTrace, match="cannot read"):
        read_csv(tmp_path / "missing.csv")


def test_policies_side_by_side(trace: Trace) -> None:
    cap = int(trace.total_bytes * 0.1)
    res = {p: simulate(trace, p, instances=4, capacity_bytes=cap) for p in ("lru", "ours", "oracle")}
    too_large = int((trace.sizes[trace.models] > cap // 4).sum())  # larger than one instance: refused, never placed
    for r in res.values():
        assert r.requests == len(trace) and r.refused == too_large
        assert 0 < r.hit_ratio < 1 and 0 < r.byte_hit_ratio < 1
        assert r.peak_used_bytes <= cap
        assert r.loads == r.requests - r.hits - r.refused  # no ticks: one load per placeable miss
    assert res["ours"].load_time_s < 0.9 * res["lru"].load_time_s
    assert res["oracle"].load_time_s < res["ours"].load_time_s
    assert res["ours"].decision_us and res["ours"].decision_percentile_us(99) > 0


def test_oracle_beats_all_on_equal_sizes() -> None:
    """One instance, equal sizes and load times: furthest-next-use is optimal for hits."""
    tr = generate(SMALL.model_copy(update={"size_sigma": 0.0, "load_factor_sigma": 0.0, "requests": 5000}))
    cap = int(tr.sizes[0]) * 30
    hits = {p: simulate(tr, p, instances=1, capacity_bytes=cap).hits for p in ("lru", "ours", "oracle")}
    assert hits["oracle"] >= hits["ours"] and hits["oracle"] >= hits["lru"]


def test_ticks_in_simulation(trace: Trace) -> None:
    cap = int(trace.total_bytes * 0.3)
    s = PolicySettings(second_copy_rpm=0.5, second_copy_off_rpm=0.1)
    r = simulate(trace, "ours", instances=4, capacity_bytes=cap, settings=s, tick_s=30)
    assert r.loads > r.requests - r.hits  # second copies were added by ticks
    assert r.peak_used_bytes <= cap


def test_virtual_cluster_rejects_overfill() -> None:
    class Greedy(LruPolicy):
        def on_miss(self, view, model_id):  # type: ignore[no-untyped-def]
            return [Action("load", model_id, "i0", "miss: ignores capacity")]

    c = VirtualCluster(Greedy(PolicySettings()), [InstanceView("i0", GB, 0)], [model("a", GB), model("b", GB)])
    c.apply(c.policy.on_miss(c.view(0), "a"), 0)
    with pytest.raises(SimulationError, match="i0"):
        c.apply(c.policy.on_miss(c.view(1), "b"), 1)
    with pytest.raises(SimulationError, match="reason"):
        c.apply([Action("unload", "a", "i0", "")], 2)


def test_index_order_updates_and_scan_restores() -> None:
    p = Policy(PolicySettings())
    idx = p.new_index()
    ms = {f"m{i}": model(f"m{i}", GB, ["a", "b"][: 1 + i % 2], last_used=1000.0 + i, tenant=f"t{i % 2}") for i in range(6)}
    for m in ms.values():
        idx.update(m)
    assert len(idx) == sum(len(m.assigned) for m in ms.values())
    assert idx.tenant_bytes("t0") == 3 * GB and idx.tenant_bytes("t1") == 6 * GB
    with idx.scan() as scan:
        got = [(c.model_id, c.instance_id) for c in scan]
    keys = [p.evict_key(ms[mid]) or 0.0 for mid, _ in got]
    assert keys == sorted(keys) and len(got) == len(idx)
    with idx.scan() as scan:  # restored: a second scan reads the same
        assert [(c.model_id, c.instance_id) for c in scan] == got
    with idx.scan(["t1"], ["b"]) as scan:
        assert {(c.model_id, c.instance_id) for c in scan} == {(f"m{i}", "b") for i in (1, 3, 5)}
    # an update moves the model; a removal drops it; many updates stay compact
    from dataclasses import replace

    for k in range(2000):
        ms["m0"] = replace(ms["m0"], last_used=5000.0 + k)
        idx.update(ms["m0"])
    with idx.scan() as scan:
        assert [c.model_id for c in scan][-1] == "m0"
    assert idx._entries < 3 * len(idx) + 300
    idx.remove("m0")
    idx.update(replace(ms["m1"], assigned=frozenset()))
    with idx.scan() as scan:
        assert {c.model_id for c in scan} == {"m2", "m3", "m4", "m5"}
    assert idx.tenant_bytes("t0") == 2 * GB and idx.tenant_bytes("t1") == 4 * GB
    rebuilt = PlacementIndex.build(p.evict_key, p.key_id, [m for k, m in ms.items() if k not in ("m0", "m1")])
    with rebuilt.scan() as a, idx.scan() as b:
        assert list(a) == list(b)


def test_cli_simulate_table_json_and_png(tmp_path: Path) -> None:
    png, js = tmp_path / "p.png", tmp_path / "r.json"
    res = CliRunner().invoke(
        app,
        ["simulate", "--models", "300", "--requests", "4000", "--alpha", "0.8", "--alpha", "1.2", "--capacity", "0.1",
         "--capacity", "0.3", "--instances", "2", "--scan-length", "40", "--plot", str(png), "--json", str(js)],
    )
    assert res.exit_code == 0, res.output
    assert "oracle" in res.output and "x LRU" in res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads(js.read_text())
    assert len(rows) == 2 * 2 * 3 and {r["policy"] for r in rows} == {"lru", "ours", "oracle"}
    assert all(r["x_lru"] == 1.0 for r in rows if r["policy"] == "lru")


def test_cli_trace_file_latency_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    csv = tmp_path / "t.csv"
    assert runner.invoke(app, ["gen-trace", str(csv), "--models", "200", "--requests", "3000"]).exit_code == 0
    res = runner.invoke(app, ["simulate", "--trace", str(csv), "--capacity", "0.2", "--instances", "2", "--markdown"])
    assert res.exit_code == 0, res.output
    assert "| t.csv | 20% | ours |" in res.output
    res = runner.invoke(app, ["latency", "--instances", "10", "--models", "2000", "--requests", "3000"])
    assert res.exit_code == 0 and "p99" in res.output, res.output
    bad = tmp_path / "bad.csv"
    bad.write_text("time,model\n")
    res = runner.invoke(app, ["simulate", "--trace", str(bad)])
    assert res.exit_code == 2 and "size" in res.output
    res = runner.invoke(app, ["simulate", "--policies", "ours,mru", "--requests", "10"])
    assert res.exit_code == 2 and "mru" in res.output


def test_module_entry_point() -> None:
    out = subprocess.run([sys.executable, "-m", "placement", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "simulate" in out.stdout


def test_placement_imports_no_other_package() -> None:
    """placement knows nothing of mesh, puller or runtime_adapters."""
    for f in (ROOT / "placement").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in ("mesh", "puller", "runtime_adapters", "bench"), f"{f.name} imports {n}"


def test_model_views_are_plain_data() -> None:
    m = ModelView("m", GB)
    assert m.copy_on("x") is None and m.assigned == frozenset()


def _scan_trace() -> Trace:
    """20 hot models, each requested every 10 s for 1000 s; at t=500 a one-off scan of 100 other models."""
    hot_t = [(k * 0.5, k % 20) for k in range(2000)]
    scan_t = [(500.0 + i * 0.02, 20 + i) for i in range(100)]
    reqs = sorted(hot_t + scan_t)
    n = 120
    return Trace(
        np.array([t for t, _ in reqs]), np.array([m for _, m in reqs], dtype=np.int64), [f"m{i:03d}" for i in range(n)],
        np.full(n, GB, dtype=np.int64), np.full(n, 5.0), [""] * n,
    )


def test_scan_does_not_flush_the_hot_set() -> None:
    tr = _scan_trace()
    res = {p: simulate(tr, p, instances=1, capacity_bytes=25 * GB) for p in ("ours", "lru")}
    compulsory = 20 + 100  # every model's first request must load: a serving system cannot bypass
    assert res["ours"].loads == compulsory  # the scan evicted only scanned models
    assert res["lru"].loads >= compulsory + 20  # LRU reloaded the whole hot set after the scan
    assert res["ours"].peak_used_bytes <= 25 * GB


def test_window_rates_reference_follows_phases(trace: Trace) -> None:
    cap = int(trace.total_bytes * 0.1)
    w = simulate(trace, "wrates", instances=4, capacity_bytes=cap, window_s=SMALL.shift_period_s)
    static = simulate(trace, "rates", instances=4, capacity_bytes=cap)
    lru = simulate(trace, "lru", instances=4, capacity_bytes=cap)
    assert w.policy == "wrates" and static.policy == "rates"
    assert w.peak_used_bytes <= cap and w.requests == len(trace)
    assert w.load_time_s < lru.load_time_s
    # its keys are each window's counts: another window, another order (and the simulator rebuilds the index)
    p = RateOraclePolicy(PolicySettings(), trace, window_s=SMALL.shift_period_s)
    m = ModelView(trace.names[int(trace.models[0])], GB, load_time_s=1.0)
    first = p.evict_key(m)
    assert not p.advance(float(trace.times[0]))
    keys = [first]
    for t in np.arange(SMALL.shift_period_s, float(trace.times[-1]), SMALL.shift_period_s):
        assert p.advance(float(t))
        keys.append(p.evict_key(m))
    assert len(set(keys)) > 1
