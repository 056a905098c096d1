"""The placement leader killed (SIGKILL) during a storm of first requests for many models.

- a new leader holds the leader key within the lease TTL (+ slack);
- every request of the storm ends: answered, or failed with a retryable status (counted);
  with a deadline longer than the TTL + a load none fails;
- afterwards every model is assigned exactly once, to a live instance, and loaded exactly
  there: no duplicate placement by two leaders, no assignment lost with the old one;
- concurrent first requests for one model still cause one load on the survivors.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tests.faults.faulthelp import LEASE_TTL_S, NO_RATE_COPIES, SLACK_S, Mgmt
from tests.mesh.cluster import wait_until
from tests.mesh.models import add_model, answer, request_bytes

pytestmark = pytest.mark.etcd

N_MODELS = 40
PER_MODEL = 3  # concurrent first requests per model
DEADLINE_S = 20.0


async def test_leader_killed_during_a_miss_storm(make_cluster: Any, tmp_path: Path) -> None:
    cluster = await make_cluster(3, env=NO_RATE_COPIES, loading_slots=2)
    mgmt = Mgmt(cluster.grpc)
    ids = [f"s{k:02d}" for k in range(N_MODELS)]
    try:
        for k, mid in enumerate(ids):
            await mgmt.register(mid, add_model(tmp_path / "models" / mid / "model.onnx", float(k), table_bytes=64 << 10), i=k)
        leader_id = await wait_until(cluster.leader_id, 30, "a leader")
        leader = cluster.index_of(leader_id)
        entries = [i for i in range(3) if i != leader]
        channels = [grpc.aio.insecure_channel(cluster.grpc[i]) for i in entries]
        calls = [ch.unary_unary("/inference.GRPCInferenceService/ModelInfer") for ch in channels]
        outcomes: Counter[str] = Counter()

        async def first(n: int, k: int) -> None:
            try:
                raw = await calls[n % len(calls)](request_bytes(ids[k]), timeout=DEADLINE_S)
                outcomes["OK" if np.allclose(answer(raw), float(k)) else "WRONG"] += 1
            except grpc.aio.AioRpcError as exc:
                outcomes[exc.code().name] += 1

        try:
            storm = [asyncio.create_task(first(n, k)) for k in range(N_MODELS) for n in range(PER_MODEL)]

            async def some_placed() -> bool:
                return len((await cluster.snapshot())["assignments"]) >= N_MODELS // 4

            await wait_until(some_placed, 30, "the storm to be under way")
            placed_before = len((await cluster.snapshot())["assignments"])
            t_kill = time.monotonic()
            cluster.kill(leader)

            async def new_leader() -> str | None:
                lid = await cluster.leader_id()
                return lid if lid not in (None, leader_id) else None

            successor = await wait_until(new_leader, LEASE_TTL_S + SLACK_S + 10, "a new leader")
            t_elected = time.monotonic() - t_kill
            await asyncio.gather(*storm)
            t_storm = time.monotonic() - t_kill

            # a second pass: every model served (those lost with the old leader's instance are placed again)
            for k in range(N_MODELS):
                await first(k, k)
        finally:
            for ch in channels:
                await ch.close()

        snap = await cluster.snapshot()
        live = {cluster.instance_id(i) for i in entries}
        loads = [c.get("loads", 0) for c in await cluster.counters()]
        print(
            f"\nleader {leader_id} killed with {placed_before}/{N_MODELS} models placed: new leader {successor} "
            f"after {t_elected:.2f}s; storm of {N_MODELS * PER_MODEL} first requests ended {t_storm:.2f}s after the kill; "
            f"outcomes (storm + second pass) {dict(outcomes)}; loads on the survivors {sum(loads)}"
        )
        assert successor in live
        assert t_elected <= LEASE_TTL_S + SLACK_S, t_elected
        assert set(outcomes) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}, outcomes  # nothing else, ever
        assert outcomes["OK"] == N_MODELS * (PER_MODEL + 1), outcomes  # and with this deadline, none lost
        assert snap["instances"] == live
        for mid in ids:  # exactly one assignment each, live, and loaded exactly there
            assigned = snap["assignments"].get(mid, [])
            assert len(assigned) == 1 and assigned[0] in live, (mid, assigned)
            copies = snap["copies"].get(mid, {})
            assert copies == {assigned[0]: "loaded"}, (mid, copies)
        assert sum(loads) <= N_MODELS, loads  # one load per model on the survivors, never two
    finally:
        await mgmt.close()
