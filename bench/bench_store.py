"""The store kinds side by side: what durability costs the control plane, and that serving does not notice.

Run: ``python -m bench.bench_store [--models 2000] [--duration 5]``. In one run:

1. Control plane, per store kind (memory, sqlite, etcd — a local etcd is started when the
   binary is on PATH): one instance in this process over that store; ``--models`` models
   registered through the management code (32 in flight); registrations/s, the routing view
   per model (deep size of the instance's model / vModel / copy mirrors, as bench_control) and
   the process RSS growth per model (it includes the store's own copy of every record, and for
   sqlite its page cache).
2. Hot path: a loaded model served over gRPC (ModelInfer, tiny ONNX model, 8 callers, the
   Python load generator) by a one-instance mesh in its own process, over memory, sqlite and
   (when etcd is on PATH) etcd, all up at once and measured in turn, the order rotated every
   round; per kind the ratio of its median to memory's, and the median of per-round ratios. Target (issue 17): >= 0.98 (the hot path never touches
   the store); and the SQLite commits (fsyncs) per second while serving.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench import _tools
from bench.bench_control import view_size
from bench.bench_routing import onnx_request, stop_server

ROOT = Path(__file__).resolve().parents[1]


async def control_plane(
    kind: str, tmp: Path, models: int, etcd_endpoint: str = ""
) -> dict[str, float]:
    from mesh import LocalMesh, LocalMeshConfig, ModelInfoSpec
    from mesh._store import StoreSettings, build_store

    overrides: dict[str, Any] = {"kind": kind, "data_dir": tmp / "store"}
    if kind == "etcd":
        overrides.update(endpoints=[etcd_endpoint], prefix=f"/bench-{os.getpid()}-{time.time_ns()}")
    settings = StoreSettings(**overrides)
    art = tmp / "model.onnx"
    art.write_bytes(b"\x00" * 1024)
    store = build_store(settings)
    mesh = LocalMesh(
        LocalMeshConfig(instances=1, data_dir=tmp / "var", allowed_roots=[tmp], store=settings),
        store=store,
    )
    proc = psutil.Process()
    await mesh.start()
    try:
        inst = mesh.instances[0]
        gc.collect()
        base_view, base_rss = view_size(inst.state), proc.memory_info().rss
        sem = asyncio.Semaphore(32)

        async def reg(i: int) -> None:
            async with sem:
                await inst.management.register_model(
                    f"model-{i:06d}", ModelInfoSpec(type="onnx", path=str(art))
                )

        t0 = time.perf_counter()
        await asyncio.gather(*(reg(i) for i in range(models)))
        elapsed = time.perf_counter() - t0
        await inst.state.wait_for(lambda: len(inst.state.models.items) == models, 30.0)
        gc.collect()
        view, rss = view_size(inst.state), proc.memory_info().rss
    finally:
        await mesh.stop()
        await store.close()
    return {
        "rate": models / elapsed,
        "view_b": (view - base_view) / models,
        "rss_b": (rss - base_rss) / models,
    }


def _serve(
    kind: str, tmp: Path, model: Path, etcd_endpoint: str = ""
) -> tuple[subprocess.Popen[bytes], str]:
    ready = tmp / f"{kind}-{time.time_ns()}.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), MODELMUX_STORE_KIND=kind,
               MODELMUX_STORE_DATA_DIR=str(tmp / f"store-{time.time_ns()}"))  # fmt: skip
    if kind == "etcd":
        env.update(MODELMUX_STORE_ENDPOINTS=etcd_endpoint,
                   MODELMUX_STORE_PREFIX=f"/bench-hot-{time.time_ns()}")  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._servers", "mesh", "--type", "onnx", "--model", str(model),
         "--instances", "1", "--ready", str(ready)],
        env=env, cwd=ROOT,
    )  # fmt: skip
    _tools.wait_file(ready, proc, 120, f"mesh over {kind}")
    return proc, json.loads(ready.read_text())["grpc"][0]


def hot_path(
    tmp: Path, duration_s: float, etcd_endpoint: str = "", rounds: int = 3, etcd_pid: int = 0, cpu: dict[str, list[float]] | None = None
) -> dict[str, list[float]]:
    """Every kind's server is started first and all stay up; each round measures them in turn,
    the order rotated one place per round, so every kind takes every position (first, middle,
    last) equally often over ``len(kinds)`` rounds: drift over the run, or a position that
    favours its kind, reaches every kind alike."""
    from bench._load import run_load
    from mesh._demo import make_onnx

    model = make_onnx(tmp / "m" / "model.onnx", 64, seed=1)
    message, _ = onnx_request()
    kinds = ("memory", "sqlite", "etcd") if etcd_endpoint else ("memory", "sqlite")
    out: dict[str, list[float]] = {k: [] for k in kinds}
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for kind in kinds:
            servers[kind] = _serve(kind, tmp, model, etcd_endpoint)
        for r in range(rounds):
            shift = r % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                watched = [psutil.Process(servers[kind][0].pid)] + ([psutil.Process(etcd_pid)] if etcd_pid else [])
                before = [sum(p.cpu_times()[:2]) for p in watched]
                res = asyncio.run(run_load(servers[kind][1], message, concurrency=8, duration_s=duration_s))
                assert res["errors"] == 0, res
                out[kind].append(res["rps"])
                if cpu is not None:  # CPU µs per request: the serving process's, then etcd's (all kinds)
                    spent = [sum(p.cpu_times()[:2]) - b for p, b in zip(watched, before, strict=True)]
                    cpu.setdefault(kind, []).append(spent[0] / res["n"] * 1e6)
                    if etcd_pid:
                        cpu.setdefault(f"etcd daemon during {kind}", []).append(spent[1] / res["n"] * 1e6)
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    return out


def paired_ratios(hot: dict[str, list[float]]) -> dict[str, float]:
    """Per kind, the median over rounds of (its rate / memory's rate in the same round)."""
    base = hot["memory"]
    return {k: statistics.median(x / m for x, m in zip(v, base, strict=True)) for k, v in hot.items() if k != "memory"}


async def commits_while_serving(tmp: Path, duration_s: float) -> dict[str, float]:
    """SQLite commits (one fsync each) while a one-instance mesh over sqlite serves a loaded
    model (in this process): what the store's own writes cost the serving instance's disk."""
    from bench._load import run_load
    from mesh import LocalMesh, LocalMeshConfig, ModelInfoSpec
    from mesh._demo import make_onnx
    from mesh._store import StoreSettings
    from mesh._store._sqlite import _Db

    counts = {"commits": 0, "rows": 0}
    real = _Db.commit

    def commit(self: _Db, revision: int, puts: list[Any], deletes: list[str]) -> None:
        counts["commits"] += 1
        counts["rows"] += len(puts) + len(deletes)
        real(self, revision, puts, deletes)

    model = make_onnx(tmp / "m" / "model.onnx", 64, seed=1)
    settings = StoreSettings(kind="sqlite", data_dir=tmp / "store")
    mesh = LocalMesh(LocalMeshConfig(instances=1, data_dir=tmp / "var", allowed_roots=[tmp], store=settings))
    await mesh.start()
    _Db.commit = commit  # type: ignore[method-assign]
    try:
        inst = mesh.instances[0]
        await inst.management.register_model("bench", ModelInfoSpec(type="onnx", path=str(model)), load_now=True, sync=True)
        assert inst.endpoints is not None
        counts["commits"] = counts["rows"] = 0
        r = await run_load(inst.endpoints.grpc, onnx_request()[0], concurrency=8, duration_s=duration_s)
        seen = dict(counts)
    finally:
        await mesh.stop()
        _Db.commit = real  # type: ignore[method-assign]
    return {"commits_per_s": seen["commits"] / duration_s, "rows_per_s": seen["rows"] / duration_s, "rps": r["rps"]}


def run(models: int = 2000, duration_s: float = 5.0, rounds: int = 3, hot_only: bool = False) -> dict[str, Any]:
    from mesh._launcher import LocalEtcd

    result: dict[str, Any] = {"models": models, "rounds": rounds, "load_start": _tools.loadavg(), "control": {}}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp_s:
        tmp = Path(tmp_s)
        etcd = LocalEtcd(tmp / "etcd").start() if shutil.which("etcd") else None
        try:
            for kind in ("memory", "sqlite", "etcd"):
                if hot_only or (kind == "etcd" and etcd is None):
                    continue
                d = tmp / f"control-{kind}"
                d.mkdir()
                result["control"][kind] = asyncio.run(
                    control_plane(kind, d, models, etcd.endpoint if etcd else "")
                )
            cpu: dict[str, list[float]] = {}
            hp = hot_path(tmp, duration_s, etcd.endpoint if etcd else "", rounds, etcd.proc.pid if etcd and etcd.proc else 0, cpu)
            result["hot_cpu_us"] = {k: statistics.median(v) for k, v in cpu.items()}
            if not hot_only:
                d = tmp / "commits"
                d.mkdir()
                result["commits"] = asyncio.run(commits_while_serving(d, duration_s))
        finally:
            if etcd is not None:
                etcd.stop()
    result["hot"] = hp
    base = statistics.median(hp["memory"])
    result["hot_ratio"] = {k: statistics.median(v) / base for k, v in hp.items() if k != "memory"}
    result["hot_paired"] = paired_ratios(hp)
    result["load_end"] = _tools.loadavg()
    return result


def report(r: dict[str, Any]) -> str:
    lines = [
        f"{r['models']} registrations per store (in process, 32 in flight); load average "
        f"{r['load_start']} at start, {r['load_end']} at end.",
        "",
        "| store | registrations/s | vs memory | routing view B / model | process RSS B / model |",
        "|---|---|---|---|---|",
    ]
    base = r["control"]["memory"]["rate"] if r["control"] else 0.0
    for kind, c in r["control"].items():
        lines.append(
            f"| {kind} | {c['rate']:.0f} | {c['rate'] / base:.2f}x | {c['view_b']:.0f} | {c['rss_b']:.0f} |"
        )
    lines += [
        "",
        f"| hot path (loaded model, gRPC ModelInfer, 8 callers; {r.get('rounds', 3)} rounds, all servers up, order rotated per round) "
        "| req/s per run | median | median / memory's median (target >= 0.98) | median of per-round ratios |",
        "|---|---|---|---|---|",
    ]
    c = r.get("commits")
    tail = [] if c is None else [
        "",
        f"While a one-instance mesh over sqlite serves a loaded model ({c['rps']:.0f} req/s, in process): "
        f"{c['commits_per_s']:.2f} SQLite commits/s (each one fsync), {c['rows_per_s']:.2f} rows/s.",
    ]
    for kind, runs in r["hot"].items():
        ratio = r["hot_ratio"].get(kind)
        verdict = "" if ratio is None else f"{ratio:.3f} ({'met' if ratio >= 0.98 else 'not met'})"
        paired = r.get("hot_paired", {}).get(kind)
        lines.append(
            f"| {kind} | {' / '.join(f'{x:.0f}' for x in runs)} | {statistics.median(runs):.0f} | {verdict} "
            f"| {'' if paired is None else f'{paired:.3f}'} |"
        )
    cpu = r.get("hot_cpu_us") or {}
    if cpu:
        lines += ["", "CPU µs per request (median over rounds): " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()) + "."]
        lines += [
            "Serving cost vs memory (memory's CPU per request / the kind's; >= 0.98 = the store kind costs the "
            "hot path nothing measurable): "
            + ", ".join(f"{k} {cpu['memory'] / cpu[k]:.3f}" for k in r["hot"] if k != "memory" and k in cpu)
            + "."
        ]
    lines += tail
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=int, default=2000)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3, help="hot-path rounds (each runs every store kind once)")
    ap.add_argument("--hot-only", action="store_true", help="only the hot path (no registrations, no commit count)")
    ap.add_argument("--json", type=Path, help="also write the raw result here")
    a = ap.parse_args()
    r = run(a.models, a.duration, a.rounds, a.hot_only)
    if a.json is not None:
        a.json.write_text(json.dumps(r, indent=1))
    print(report(r))


if __name__ == "__main__":
    main()
