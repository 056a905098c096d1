"""SIGSTOP of one instance in three under steady traffic: a hung holder whose lease is still alive.

- models with 2 copies: a forward to the hung holder is abandoned after
  ``forward_attempt_timeout_s`` and the request goes to the other copy; the hung holder is
  then avoided (``suspect_holder_s``): no request fails, none waits anywhere near its deadline;
- single-copy models on the hung instance: requests wait at most their deadline (never past
  it) until its lease runs out, then the model is placed elsewhere and served again;
- after SIGCONT the instance re-registers (its lease had expired), drops the copies that
  moved away, and the mesh converges: every entry serves every model again.
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

FORWARD_ATTEMPT_TIMEOUT_S = 1.5
DEADLINE_S = 6.0


async def test_sigstop_one_of_three_under_traffic(make_cluster: Any, tmp_path: Path) -> None:
    cluster = await make_cluster(
        3, env=NO_RATE_COPIES, forward_attempt_timeout_s=FORWARD_ATTEMPT_TIMEOUT_S, suspect_holder_s=30
    )
    mgmt = Mgmt(cluster.grpc)
    try:
        answers, dups = await register_pairs_and_singles(mgmt, tmp_path / "models")

        async def placed() -> dict[str, set[str]] | None:
            snap = await cluster.snapshot()
            loaded = {m: {i for i, s in snap["copies"].get(m, {}).items() if s == "loaded"} for m in answers}
            return loaded if all(len(loaded[m]) == (2 if m in dups else 1) for m in answers) else None

        loaded = await wait_until(placed, 30, "two copies of each dup model, one of each other")
        by_instance = {cluster.instance_id(i): {m for m, hs in loaded.items() if cluster.instance_id(i) in hs} for i in range(3)}
        victim_id = max((iid for iid, ms in by_instance.items() if ms - dups), key=lambda iid: (len(by_instance[iid] & dups), iid))
        victim = cluster.index_of(victim_id)
        hung_singles = by_instance[victim_id] - dups
        assert by_instance[victim_id] & dups and hung_singles, by_instance
        survivors = [i for i in range(3) if i != victim]

        traffic = Traffic(cluster.grpc, answers, rate_hz=5.0, deadline_s=DEADLINE_S, max_s=90)
        traffic.entries = survivors
        async with traffic:
            await wait_until(lambda: all(traffic.ok_count(m) >= 5 for m in answers), 30, "steady traffic")
            t_pause = time.monotonic()
            cluster.pause(victim)
            try:
                # the hung instance's lease runs out; its single-copy models are placed elsewhere
                await wait_until(
                    lambda: all(traffic.first_ok_after(m, t_pause) for m in hung_singles),
                    LEASE_TTL_S + DEADLINE_S + 30,
                    "single-copy models of the hung instance served elsewhere",
                )
                recovery = {m: traffic.first_ok_after(m, t_pause) - t_pause for m in hung_singles}  # type: ignore[operator]
                # stay hung until the requests sent to it in its first second have met their deadline
                await wait_until(lambda: traffic.settled(t_pause + 1.0), DEADLINE_S + 30, "requests to the hung instance to end")
            finally:
                t_resume = time.monotonic()
                cluster.resume(victim)

            # it comes back: re-registers, drops what moved away; all three entries serve again
            async def converged() -> bool:
                snap = await cluster.snapshot()
                if victim_id not in snap["instances"]:
                    return False
                for m in answers:
                    copies = snap["copies"].get(m, {})
                    if sorted(i for i, s in copies.items() if s == "loaded") != sorted(snap["assignments"].get(m, [])):
                        return False
                return True

            await wait_until(converged, LEASE_TTL_S + 30, "copies to match assignments again")
            t_converged = time.monotonic() - t_resume
            traffic.entries = [0, 1, 2]
            t_all = time.monotonic()
            await wait_until(lambda: len([r for r in traffic.records if r.t0 >= t_all]) >= 60, 30, "traffic through all entries")

        stats = traffic.stats()
        hung_window = traffic.stats(t_pause, t_resume)
        after = traffic.stats(t_all)
        dup_max = max(r.latency_s for r in traffic.records if r.model in dups)
        print(
            f"\nSIGSTOP {victim_id} for {t_resume - t_pause:.1f}s: {traffic.summary()}; "
            f"dup models' slowest request {dup_max:.2f}s; single-copy models back after "
            f"{', '.join(f'{m} {s:.2f}s' for m, s in sorted(recovery.items()))}; "
            f"failures of its single-copy models: {sum(sum(hung_window[m].failed.values()) for m in hung_singles)}; "
            f"converged {t_converged:.2f}s after SIGCONT"
        )
        for m in dups:  # routed around the hung holder: nothing failed, nothing waited for the deadline
            assert stats[m].failed == {}, (m, stats[m], traffic.failures({m})[:3])
        assert dup_max < DEADLINE_S - 1.0, dup_max
        for m in set(answers) - dups - hung_singles:
            assert stats[m].failed == {}, (m, stats[m], traffic.failures({m})[:3])
        for m in hung_singles:  # failed at their deadline, only while the hung instance still held the model
            assert recovery[m] <= LEASE_TTL_S + SLACK_S, recovery
            for r in traffic.failures({m}):
                assert r.outcome == "DEADLINE_EXCEEDED" and t_pause - DEADLINE_S <= r.t0 <= t_pause + recovery[m], r
                assert r.latency_s >= DEADLINE_S - 0.5, r  # waited for the deadline, as the client asked
        assert traffic.max_overrun_s() <= 1.0  # no request waited past its deadline
        for m in answers:  # after SIGCONT, through every entry
            assert after[m].failed == {} and after[m].ok >= 5, (m, after[m], traffic.failures({m})[-3:])
    finally:
        await mgmt.close()
