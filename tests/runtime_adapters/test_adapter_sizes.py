"""Measured sizes: positive, at least the framework's own bytes, and scaling with the model;
the load meter's rules for trusting an RSS delta; the first-load warm-up."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runtime_adapters import (
    AdapterRegistry,
    AdapterSettings,
    ModelSpec,
    OnnxAdapter,
    build_registry,
)
from runtime_adapters._memory import LoadMeter

Built = Callable[..., Path]

MB = 1 << 20

CASES: list[tuple[str, str, dict[str, Any], dict[str, Any], int]] = [
    # (model type, maker, small kwargs, big kwargs, weight bytes of the big one)
    ("onnx", "make_onnx_model", {"weight_bytes": MB}, {"weight_bytes": 10 * MB}, 10 * MB),
    ("torchscript", "make_torchscript_model", {"weight_bytes": MB}, {"weight_bytes": 10 * MB}, 10 * MB),
    ("torch_export", "make_torch_export_model", {"weight_bytes": MB}, {"weight_bytes": 10 * MB}, 10 * MB),
    (
        "xgboost",
        "make_xgboost_model",
        {"kind": "regressor", "n_rounds": 10, "max_depth": 3},
        {"kind": "regressor", "n_rounds": 100, "max_depth": 3},
        0,
    ),
]


@pytest.mark.parametrize(("mtype", "maker", "small_kw", "big_kw", "big_weights"), CASES, ids=[c[0] for c in CASES])
async def test_size_is_measured_and_scales_with_the_model(
    registry: AdapterRegistry,
    built: Built,
    mtype: str,
    maker: str,
    small_kw: dict[str, Any],
    big_kw: dict[str, Any],
    big_weights: int,
) -> None:
    adapter = registry.for_type(mtype)
    small_path, big_path = built(maker, **small_kw), built(maker, **big_kw)
    small = await adapter.load(ModelSpec("small", mtype), small_path)
    big = await adapter.load(ModelSpec("big", mtype), big_path)
    assert small.size_bytes > 0
    assert big.size_bytes >= big_weights
    assert big.size_bytes > 4 * small.size_bytes, (small.size_bytes, big.size_bytes)
    st = await adapter.status()
    assert st.used_bytes == small.size_bytes + big.size_bytes
    # predictions come from file bytes, before any load, and scale the same way
    p_small = adapter.predict_size(ModelSpec("small", mtype), small_path)
    p_big = adapter.predict_size(ModelSpec("big", mtype), big_path)
    assert 0 < p_small and p_big > 4 * p_small
    await small.unload()
    await big.unload()


def test_meter_trusts_only_solitary_loads() -> None:
    meter = LoadMeter()
    t = meter.begin()
    block = bytearray(8 * MB)  # touched memory that stays alive across the "load"
    block[:: 4096] = b"\x01" * len(block[:: 4096])
    delta = meter.end(t)
    assert delta is not None and delta >= 4 * MB
    # overlapping loads: neither delta is trusted
    a = meter.begin()
    b = meter.begin()
    assert meter.end(b) is None
    assert meter.end(a) is None
    # a load that started and finished inside another one spoils the outer delta
    outer = meter.begin()
    inner = meter.begin()
    meter.end(inner)
    assert meter.end(outer) is None
    # alone again: trusted
    t = meter.begin()
    assert meter.end(t) is not None
    del block


def test_meter_distrusts_a_load_measured_while_memory_is_freed() -> None:
    """An unload frees memory through the meter: a load in flight meanwhile would see its
    delta shrink by the freed bytes, and a load that starts meanwhile is not alone."""
    meter = LoadMeter()
    victim = [bytearray(16 * MB)]
    victim[0][:: 4096] = b"\x01" * len(victim[0][:: 4096])
    t = meter.begin()
    kept = bytearray(4 * MB)
    kept[:: 4096] = b"\x01" * len(kept[:: 4096])
    started: list[Any] = []

    def drop() -> None:
        victim.clear()
        started.append(meter.begin())  # a load that starts while the free runs

    meter.free(drop)
    assert victim == []
    assert meter.end(t) is None
    assert not started[0].solitary and meter.end(started[0]) is None
    # the free is over: the next load is trusted again
    t = meter.begin()
    assert meter.end(t) is not None
    del kept


def test_meter_counts_a_load_that_reuses_memory_freed_before_it() -> None:
    """After unloads the heap holds freed chunks on pages it cannot give back (their neighbours
    are still in use). A load that reuses them costs real bytes but does not raise RSS; the
    meter's heap reading still counts them."""
    meter = LoadMeter()
    if meter.heap_in_use() == 0:
        pytest.skip("the C library does not report heap use (not glibc >= 2.33)")
    chunk = 2000  # above pymalloc's 512 bytes: from the C heap
    kept: list[bytes] = []
    freed: list[bytes] = []
    for i in range(8 * MB // chunk):
        (kept if i % 2 else freed).append(bytes([i & 0xFF]) * chunk)  # interleaved on the same pages
    freed.clear()  # an "unload": half of every page is free, no page is
    meter.settle()
    t = meter.begin()
    loaded = [bytes([i & 0xFF]) * chunk for i in range(3 * MB // chunk)]  # fits in the holes
    delta = meter.end(t)
    assert delta is not None and delta >= 2 * MB, delta
    del kept, loaded


async def test_first_load_of_a_format_is_warmed_up_once(built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    adapter_cls = OnnxAdapter
    original = adapter_cls._load_model

    def spy(self: OnnxAdapter, spec: ModelSpec, model_file: Path) -> Any:
        calls.append(spec.model_id)
        return original(self, spec, model_file)

    monkeypatch.setattr(adapter_cls, "_load_model", spy)
    for warm, expected in ((True, ["a", "a", "b"]), (False, ["a", "b"])):
        calls.clear()
        registry = build_registry(AdapterSettings(warm_up_first_load=warm))
        try:
            path = built("make_onnx_model")
            await registry.for_type("onnx").load(ModelSpec("a", "onnx"), path)
            await registry.for_type("onnx").load(ModelSpec("b", "onnx"), path)
        finally:
            await registry.close()
        assert calls == expected


async def test_a_load_measured_while_another_model_unloads_is_sized_by_the_calibration(
    tmp_path: Path, built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under churn, evictions run beside loads. A load whose measurement overlapped an unload
    must not be sized (nor teach the calibration) by a delta the freed bytes shrank: here
    64 MiB freed during the load would leave it its bare file bytes, about half of what an MLP
    costs in ONNX Runtime (pre-packed weights)."""
    from mesh._demo import make_onnx

    mlp = make_onnx(tmp_path / "mlp" / "model.onnx", 3072, seed=1)
    registry = build_registry(AdapterSettings(load_workers=2))
    adapter = registry.for_type("onnx")
    try:
        victim = await adapter.load(ModelSpec("victim", "onnx"), built("make_onnx_model", weight_bytes=32 * MB))
        alone = await adapter.load(ModelSpec("alone", "onnx"), mlp)
        taught: list[tuple[int, int]] = []
        monkeypatch.setattr(adapter.pools.calibration, "learn", lambda key, floor, measured: taught.append((floor, measured)))
        inside, release = threading.Event(), threading.Event()
        original = OnnxAdapter._load_model

        def held(self: OnnxAdapter, spec: ModelSpec, model_file: Path) -> Any:
            result = original(self, spec, model_file)
            if spec.model_id == "overlapped":
                inside.set()
                release.wait(60)
            return result

        monkeypatch.setattr(OnnxAdapter, "_load_model", held)
        loading = asyncio.create_task(adapter.load(ModelSpec("overlapped", "onnx"), mlp))
        assert await asyncio.to_thread(inside.wait, 60)
        await victim.unload()  # its memory is freed while the other load is measured
        release.set()
        overlapped = await loading
        assert taught == []
        assert overlapped.size_bytes >= 0.8 * alone.size_bytes, (overlapped.size_bytes, alone.size_bytes)
        assert alone.size_bytes > 1.5 * mlp.stat().st_size  # the pre-packed weights: a floor would be far below
        await overlapped.unload()
        await alone.unload()
    finally:
        await registry.close()


@pytest.mark.parametrize(
    ("mtype", "maker", "kwargs"),
    [
        ("onnx", "make_onnx_model", {}),
        ("torchscript", "make_torchscript_model", {}),
        ("torch_export", "make_torch_export_model", {}),
        ("xgboost", "make_xgboost_model", {"kind": "classifier"}),
    ],
)
async def test_unload_frees_the_framework_objects(
    registry: AdapterRegistry, built: Built, mtype: str, maker: str, kwargs: dict[str, Any]
) -> None:
    model = await registry.for_type(mtype).load(ModelSpec("m", mtype), built(maker, **kwargs))
    handle = weakref.ref(model._handle)  # type: ignore[attr-defined]
    assert handle() is not None
    await model.unload()
    # no gc.collect here: unload collected what it had to (torch.export modules hold cycles)
    assert handle() is None


async def test_unload_gives_the_memory_back(registry: AdapterRegistry, built: Built) -> None:
    """RSS view of an unload (ONNX: pre-packed weights make the footprint large and clear)."""
    path = built("make_onnx_model", weight_bytes=32 * MB)
    adapter = registry.for_type("onnx")
    first = await adapter.load(ModelSpec("first", "onnx"), path)  # pays one-time costs
    meter = LoadMeter()
    before = meter.settle(full=True)
    model = await adapter.load(ModelSpec("m", "onnx"), path)
    loaded = meter.settle(full=True)
    await model.unload()
    after = meter.settle()
    sizes = (before >> 20, loaded >> 20, after >> 20)
    assert loaded - before >= 32 * MB, sizes
    assert loaded - after >= 32 * MB, sizes
    assert after - before < 8 * MB, sizes
    await first.unload()


def test_measured_sizes_cover_the_rss_the_loads_cost_even_when_loads_overlap(tmp_path: Path) -> None:
    """Tolerance: the sum of measured sizes >= 0.9 x the RSS growth the loads and one request each
    caused (settled: young-generation gc and malloc_trim before each reading). Loads that overlap
    cannot trust their RSS delta; they must not fall back to the bare file bytes (about half the
    real cost of an MLP in ONNX Runtime, whose pre-packed weights double it). Measured in a fresh
    process (tests/runtime_adapters/memprobe.py): in this one, memory freed by earlier tests is
    reused by the loads and hides their growth."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-m", "tests.runtime_adapters.memprobe", str(tmp_path)],
        capture_output=True, text=True, timeout=240, cwd=root, env=dict(os.environ, PYTHONPATH=str(root)),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    sizes, growth = got["sizes"], got["growth"]
    assert growth > got["files"]  # the weights at least: the measurement itself is meaningful
    assert sizes >= 0.9 * growth, (sizes, growth, got["each"])


async def test_rss_measurement_off_sizes_a_model_by_its_framework_floor(built: Built) -> None:
    """``measure_load_rss=False``: the size is the framework's own bytes, the same on every load
    (no RSS delta, so nothing else the process allocates meanwhile can enter it); on, ONNX
    Runtime's pre-packed weights make it larger."""
    path = built("make_onnx_model", weight_bytes=8 * MB)
    sizes: dict[bool, list[int]] = {}
    for measure in (True, False):
        registry = build_registry(AdapterSettings(measure_load_rss=measure))
        try:
            adapter = registry.for_type("onnx")
            models = [await adapter.load(ModelSpec(f"m{k}", "onnx"), path) for k in range(3)]
            sizes[measure] = [m.size_bytes for m in models]
            for m in models:
                await m.unload()
        finally:
            await registry.close()
    floor = path.stat().st_size if path.is_file() else next(path.glob("*.onnx")).stat().st_size
    assert sizes[False] == [sizes[False][0]] * 3, sizes  # the same on every load
    assert 8 * MB <= sizes[False][0] <= floor, sizes  # the weights, at most the file's bytes
    assert min(sizes[True]) > sizes[False][0], sizes  # measured: more than the floor
