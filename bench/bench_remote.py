"""Remote hit across processes: two ``modelmux serve`` instances over a real etcd, vs the bare adapter.

Run: ``python -m bench.bench_remote [--duration 5] [--rounds 3] [--concurrency 1 16]``. A local
etcd (``mesh._launcher.LocalEtcd``), two instance processes (``python -m mesh serve``, store kind
etcd) and the bare adapter (``bench._servers bare``) serve the tiny ONNX MLP of the routing
bench. The model is registered with ``max_copies: 1`` so it stays on one instance (the copy is
pinned to a single holder whatever the traffic). Setups, measured in turn, ``rounds`` times
(median), gRPC via h2load (the Python load generator when it is missing):

* ``bare adapter``: the adapter behind a bare grpc.aio handler (baseline);
* ``remote hit``: the requests enter the instance without the copy and are forwarded over the
  holder's peer link (``mesh._peer_link``);
* ``remote hit, gRPC forward``: the same through a third instance that forwards over gRPC
  (``MODELMUX_INSTANCE_FORWARD_OVER_LINK=false``), what every forward did before the link;
* ``direct routing``: the requests go to the address the first answer named in its ``mm-holder``
  trailer -- what :class:`mesh.client.DirectRouter` does after one request (checked: a
  DirectRouter given only the other instance learns the same address).

Targets (issue 16): remote hit >= 0.75x bare at 16 in flight, direct routing >= 0.9x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc

from bench import _tools
from bench.bench_routing import INFER, onnx_request, start_server, stop_server

ROOT = Path(__file__).resolve().parents[1]
NAME = "bench"
TARGETS = {"remote hit": 0.75, "direct routing": 0.9}


def _serve(i: int, tmp: Path, etcd: str, prefix: str, root: Path, *, link: bool = True) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    ready = tmp / f"ready-{i}.json"
    env = dict(
        os.environ,
        MODELMUX_INSTANCE_FORWARD_OVER_LINK=str(link).lower(),
        PYTHONPATH=str(ROOT),
        MODELMUX_STORE_KIND="etcd",
        MODELMUX_STORE_ENDPOINTS=json.dumps([etcd]),
        MODELMUX_STORE_PREFIX=prefix,
        MODELMUX_INSTANCE_CAPACITY_BYTES=str(256 << 20),
    )
    log = open(tmp / f"instance-{i}.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh", "serve", "--grpc-port", "0", "--rest-port", "0", "--instance-id", f"bench-{i}",
         "--data-dir", str(tmp / f"instance-{i}"), "--allowed-root", str(root), "--ready-file", str(ready),
         "--log-level", "warning"],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    _tools.wait_file(ready, proc, 120, f"instance {i}")
    return proc, json.loads(ready.read_text())


async def _register_and_find_holder(entry: str, model: Path, message: bytes) -> tuple[str, str]:
    """Register the model (one copy at most), load it; returns (holder address from mm-holder, what DirectRouter learnt)."""
    from mesh.client import DirectRouter
    from protos import model_mesh_pb2 as mm
    from protos import model_mesh_pb2_grpc as mm_grpc

    async with grpc.aio.insecure_channel(entry) as ch:
        info = mm.ModelInfo(type="onnx", path=str(model), key=json.dumps({"max_copies": 1}))
        await mm_grpc.ModelMeshStub(ch).registerModel(
            mm.RegisterModelRequest(modelId=NAME, modelInfo=info, loadNow=True, sync=True), timeout=120
        )
        call = ch.unary_unary(INFER)(message, timeout=60)
        await call
        holder = dict(await call.trailing_metadata() or ()).get("mm-holder", "")
    learnt = ""
    if holder:
        other = entry if holder != entry else ""
        async with DirectRouter([other or entry]) as router:
            await router.infer(NAME, message, timeout=60)
            learnt = router.holder(NAME) or ""
    return str(holder), learnt


def run(duration: float = 5.0, rounds: int = 3, concurrency: tuple[int, ...] = (1, 16)) -> dict[str, Any]:
    """{"results": {conc: {setup: {"grpc": {rps, p50_ms, p99_ms, errors, n}}}}, "holder_check": bool}."""
    from mesh._demo import make_onnx
    from mesh._launcher import LocalEtcd

    message, _ = onnx_request(NAME)
    runs: dict[int, dict[str, list[dict[str, float]]]] = {}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        model = make_onnx(tmp / "m" / "model.onnx", 64, seed=1)
        etcd = LocalEtcd(tmp / "etcd").start()
        try:
            bare, bare_eps = start_server(["bare", "--type", "onnx", "--model", str(model), "--name", NAME], tmp / "bare.json")
            procs.append(bare)
            infos = []
            for i in range(2):
                proc, info = _serve(i, tmp, etcd.endpoint, f"/bench-remote-{os.getpid()}", tmp)
                procs.append(proc)
                infos.append(info)
            addrs = [x["grpc"] for x in infos]
            holder, learnt = asyncio.run(_register_and_find_holder(addrs[0], model, message))
            if holder not in addrs:
                raise RuntimeError(f"mm-holder {holder!r} is not one of the instances {addrs}")
            other = addrs[1] if holder == addrs[0] else addrs[0]
            # joins after the copy is placed (max_copies 1: it stays where it is); never a holder
            proc, grpc_fwd = _serve(2, tmp, etcd.endpoint, f"/bench-remote-{os.getpid()}", tmp, link=False)
            procs.append(proc)
            targets = {"bare adapter": bare_eps["grpc"][0], "remote hit": other, "remote hit, gRPC forward": grpc_fwd["grpc"],
                       "direct routing": holder}
            reply = None
            for _ in range(rounds):
                for conc in concurrency:
                    connections = min(4, conc)
                    streams = max(1, conc // connections)
                    for setup, addr in targets.items():
                        reply = reply or len(grpc.insecure_channel(addr).unary_unary(INFER)(message, timeout=30))
                        if _tools.have("h2load"):
                            res = _tools.h2load(addr, INFER, message, connections=connections, streams=streams,
                                                duration_s=duration, reply_bytes=reply)
                        else:
                            from bench._load import run_load

                            res = asyncio.run(run_load(addr, message, concurrency=conc, duration_s=duration))
                        runs.setdefault(conc, {}).setdefault(setup, []).append(res)
            linked = _linked(infos, holder)
        finally:
            for proc in reversed(procs):
                stop_server(proc)
            etcd.stop()
    results = {c: {s: {"grpc": _tools.median_of(rs)} for s, rs in by.items()} for c, by in runs.items()}
    return {"results": results, "holder_check": learnt == holder, "linked": linked}


def _linked(infos: list[dict[str, Any]], holder: str) -> dict[str, int]:
    """The forwarding instance's own counters: how its forwards went (link or gRPC)."""
    import httpx

    entry = next(x for x in infos if x["grpc"] != holder)
    me = httpx.get(f"http://{entry['rest']}/api/v1/cluster", timeout=30).json()["self"]
    return {k: int(me[k]) for k in ("forwarded", "linked", "link_fallbacks")}


HEADER = ["in flight", "setup", "req/s", "p50 ms", "p99 ms", "x bare", "target", "errors"]


def rows(results: dict[int, dict[str, dict[str, dict[str, float]]]]) -> list[list[str]]:
    out = []
    for conc, by in results.items():
        base = by["bare adapter"]["grpc"]["rps"]
        for setup, r in by.items():
            g = r["grpc"]
            ratio = g["rps"] / base if base else 0.0
            t = TARGETS.get(setup) if conc >= 16 else None
            target = f">= {t} " + ("met" if ratio >= t else "missed") if t else ""
            out.append([str(conc), setup, f"{g['rps']:.0f}", f"{g['p50_ms']:.2f}", f"{g['p99_ms']:.2f}", f"{ratio:.2f}", target,
                        str(int(g["errors"]))])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    a = ap.parse_args()
    out = run(a.duration, a.rounds, tuple(a.concurrency))
    print(f"DirectRouter learnt the mm-holder address: {out['holder_check']}")
    print(f"forwarding instance: {out['linked']}")
    print("  ".join(HEADER))
    for row in rows(out["results"]):
        print("  ".join(row))


if __name__ == "__main__":
    main()
