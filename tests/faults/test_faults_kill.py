"""kill -9 of one instance in three under steady traffic (real etcd, ``modelmux serve`` processes).

- models with >= 2 copies (min_copies=2) lose no request, and get their second copy back on
  a survivor (min copies restored);
- single-copy models held by the dead instance are served again within the lease TTL plus
  their load time (plus slack for a loaded machine); as the clients' deadline is longer than
  that, their requests wait for the new copy (the router waits for the view to change when
  every holder failed) and none fails either;
- single-copy models elsewhere lose nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.faulthelp import (
    LEASE_TTL_S,
    NO_RATE_COPIES,
    SLACK_S,
    Mgmt,
    register_pairs_and_singles,
)
from tests.faults.traffic import Traffic
from tests.mesh.cluster import wait_until

pytestmark = pytest.mark.etcd

DEADLINE_S = 15.0  # of every request: longer than the lease TTL + a load + slack


async def test_kill9_one_of_three_under_traffic(make_cluster: Any, tmp_path: Path) -> None:
    cluster = await make_cluster(3, env=NO_RATE_COPIES)
    mgmt = Mgmt(cluster.grpc)
    try:
        answers, dups = await register_pairs_and_singles(mgmt, tmp_path / "models")

        async def placed() -> dict[str, Any] | None:
            snap = await cluster.snapshot()
            loaded = {m: {i for i, s in snap["copies"].get(m, {}).items() if s == "loaded"} for m in answers}
            ok = all(len(loaded[m]) == (2 if m in dups else 1) for m in answers)
            return loaded if ok else None

        loaded = await wait_until(placed, 30, "two copies of each dup model, one of each other")
        by_instance = {cluster.instance_id(i): {m for m, hs in loaded.items() if cluster.instance_id(i) in hs} for i in range(3)}
        # the victim: most dup copies among those holding a single-copy model too
        victim_id = max(
            (iid for iid, ms in by_instance.items() if ms - dups),
            key=lambda iid: (len(by_instance[iid] & dups), iid),
        )
        victim = cluster.index_of(victim_id)
        lost_dups = by_instance[victim_id] & dups
        lost_singles = by_instance[victim_id] - dups
        assert lost_dups and lost_singles, by_instance
        survivors = [i for i in range(3) if i != victim]

        traffic = Traffic(cluster.grpc, answers, rate_hz=5.0, deadline_s=DEADLINE_S, max_s=90)
        traffic.entries = survivors  # clients reach the mesh through the survivors (a Service drops the dead pod)
        async with traffic:
            await wait_until(lambda: all(traffic.ok_count(m) >= 5 for m in answers), 30, "steady traffic")
            was_leader = (await cluster.leader_id()) == victim_id
            t_kill = time.monotonic()
            cluster.kill(victim)

            # single-copy models of the victim: served again within the lease TTL + load time
            await wait_until(
                lambda: all(traffic.first_ok_after(m, t_kill) for m in lost_singles), LEASE_TTL_S + 30, "single-copy models back"
            )
            recovery = {m: traffic.first_ok_after(m, t_kill) - t_kill for m in lost_singles}  # type: ignore[operator]

            # min copies restored on the survivors
            async def restored() -> bool:
                snap = await cluster.snapshot()
                return all(
                    sorted(i for i, s in snap["copies"].get(m, {}).items() if s == "loaded")
                    == sorted(cluster.instance_id(i) for i in survivors)
                    for m in dups
                )

            await wait_until(restored, LEASE_TTL_S + 30, "two copies of each dup model on the survivors")
            t_restored = time.monotonic() - t_kill
            n_at_restore = len(traffic.records)
            await wait_until(lambda: len(traffic.records) >= n_at_restore + 60, 30, "traffic after recovery")

        stats = traffic.stats()
        print(
            f"\nkill -9 {victim_id} (leader: {was_leader}): {traffic.summary()}; "
            f"single-copy models back after {', '.join(f'{m} {s:.2f}s' for m, s in sorted(recovery.items()))}; "
            f"min copies restored after {t_restored:.2f}s; "
            f"failures of lost single-copy models: {sum(sum(stats[m].failed.values()) for m in lost_singles)}"
        )
        # no failed request for models with >= 2 copies
        for m in dups:
            assert stats[m].failed == {}, (m, stats[m], traffic.failures({m})[:3])
            assert stats[m].ok >= 20
        # single-copy models held elsewhere: untouched
        for m in set(answers) - dups - lost_singles:
            assert stats[m].failed == {}, (m, stats[m], traffic.failures({m})[:3])
        # the victim's single-copy models: back within the TTL + load time (+ slack), no request lost either
        for m in lost_singles:
            assert recovery[m] <= LEASE_TTL_S + SLACK_S, recovery
            assert stats[m].failed == {}, (m, stats[m], traffic.failures({m})[:3])
        assert traffic.max_overrun_s() <= 1.0  # nobody waited (much) past the deadline
        assert all(s.ok >= 15 for s in stats.values()), stats
    finally:
        await mgmt.close()
