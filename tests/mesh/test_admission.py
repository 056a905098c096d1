"""Admission limits: immediate runs, per-tenant queues, fair hand-over, refusals, deadlines."""

from __future__ import annotations

import asyncio

import pytest

from mesh._admission import Admission, AdmissionLimits, TenantRates
from mesh._errors import DeadlineExceeded, TooManyRequests, status_for


async def _hold(adm: Admission, tenant: str, started: list[str], release: asyncio.Event, timeout_s: float | None = 10) -> None:
    async with adm.slot(tenant, timeout_s=timeout_s):
        started.append(tenant)
        await release.wait()


async def _until(cond, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(10_000):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never: {what}")


async def test_a_flooding_tenant_waits_in_its_own_queue_and_others_go_first() -> None:
    adm = Admission(AdmissionLimits(instance_inflight=4, instance_queued=100, tenant_inflight=3, tenant_queued=50))
    started: list[str] = []
    release_a = asyncio.Event()
    release_b = asyncio.Event()
    flood = [asyncio.create_task(_hold(adm, "a", started, release_a)) for _ in range(20)]
    await _until(lambda: adm.queued == 17, "a's flood queued")
    assert started == ["a"] * 3 and adm.tenant_inflight("a") == 3  # its own cap, one instance slot left
    b = asyncio.create_task(_hold(adm, "b", started, release_b))
    await _until(lambda: "b" in started, "b runs at once in the free slot")
    assert adm.queued == 17
    # a full instance: b's next request queues, and gets the next free slot before a's queue
    b2 = asyncio.create_task(_hold(adm, "b", started, release_b))
    await _until(lambda: adm.queued == 18, "b2 queued")
    release_a.set()
    await _until(lambda: started.count("b") == 2, "b2 ran")
    release_b.set()
    await asyncio.gather(*flood, b, b2)
    assert started.count("a") == 20 and adm.inflight == 0 and adm.queued == 0


async def test_full_queues_are_refused_with_a_retry_hint() -> None:
    adm = Admission(
        AdmissionLimits(instance_inflight=1, instance_queued=2, tenant_inflight=1, tenant_queued=1, retry_after_s=2.5, refusal_hold_s=0)
    )
    started: list[str] = []
    release = asyncio.Event()
    t1 = asyncio.create_task(_hold(adm, "a", started, release))
    t2 = asyncio.create_task(_hold(adm, "a", started, release))
    await _until(lambda: adm.queued == 1, "one queued")
    with pytest.raises(TooManyRequests, match="tenant 'a'") as err:
        async with adm.slot("a", timeout_s=5):
            pass
    assert err.value.retry_after_s == 2.5
    status, _ = status_for(err.value)
    assert (status.http, status.grpc.name) == (429, "RESOURCE_EXHAUSTED")
    t3 = asyncio.create_task(_hold(adm, "b", started, release))
    await _until(lambda: adm.queued == 2, "b queued")
    with pytest.raises(TooManyRequests, match="this instance"):
        async with adm.slot("c", timeout_s=5):
            pass
    assert adm.refused == 2
    release.set()
    await asyncio.gather(t1, t2, t3)
    assert adm.inflight == 0 and adm.queued == 0


async def test_a_refusal_is_held_before_it_is_answered_within_bounds() -> None:
    """A flooder that retries at once must not keep calls cycling: its refusal comes after the
    hold; the hold never outlasts half the caller's deadline; past the cap refusals are at once;
    and nobody else waits for a held refusal."""
    adm = Admission(
        AdmissionLimits(instance_inflight=1, instance_queued=10, tenant_inflight=1, tenant_queued=1, refusal_hold_s=30, refusals_held_max=1)
    )
    started: list[str] = []
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(adm, "a", started, release))
    await _until(lambda: adm.inflight == 1, "holder runs")
    queued = asyncio.create_task(_hold(adm, "a", started, release))
    await _until(lambda: adm.queued == 1, "a's queue is full")

    async def refused(timeout_s: float | None) -> None:
        async with adm.slot("a", timeout_s=timeout_s):
            raise AssertionError("admitted past a full queue")

    held = asyncio.create_task(refused(None))
    await _until(lambda: adm.held == 1, "the refusal is held")
    # the cap is reached: the next refusal is answered at once, not held
    with pytest.raises(TooManyRequests):
        await refused(None)
    assert adm.held == 1 and not held.done() and adm.refused == 2
    # a short deadline: held at most half of it, so the caller sees the refusal, not a timeout
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held
    assert adm.held == 0
    with pytest.raises(TooManyRequests):
        await asyncio.wait_for(refused(0.02), 5)
    # other tenants never wait on held refusals
    b = asyncio.create_task(_hold(adm, "b", started, release))
    held2 = asyncio.create_task(refused(None))
    await _until(lambda: adm.held == 1 and adm.queued == 2, "b queued behind the holder, a's refusal held")
    release.set()
    await _until(lambda: "b" in started, "b ran while a's refusal was still held")
    assert not held2.done()
    held2.cancel()
    await asyncio.gather(holder, queued, b)
    assert adm.inflight == 0 and adm.queued == 0


async def test_a_tenant_with_no_queue_is_refused_not_queued() -> None:
    adm = Admission(AdmissionLimits(instance_inflight=4, tenant_inflight=1, tenant_queued=0, refusal_hold_s=0))
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(adm, "a", [], release))
    await _until(lambda: adm.inflight == 1, "holder runs")
    with pytest.raises(TooManyRequests):
        async with adm.slot("a", timeout_s=5):
            pass
    assert adm.queued == 0
    release.set()
    await holder


async def test_a_queued_request_gives_up_at_its_deadline_and_frees_its_place() -> None:
    adm = Admission(AdmissionLimits(instance_inflight=1, instance_queued=5, tenant_inflight=1, tenant_queued=5))
    started: list[str] = []
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(adm, "a", started, release))
    await _until(lambda: adm.inflight == 1, "holder runs")
    with pytest.raises(DeadlineExceeded):
        async with adm.slot("a", timeout_s=0.01):
            pass
    assert adm.queued == 0
    waiter = asyncio.create_task(_hold(adm, "a", started, release))
    await _until(lambda: adm.queued == 1, "waiter queued")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert adm.queued == 0
    release.set()
    await holder
    async with adm.slot("a", timeout_s=1):
        assert adm.inflight == 1
    assert adm.inflight == 0


def test_tenant_rates_admit_a_burst_then_the_rate_and_say_when_to_retry() -> None:
    now = [100.0]
    rates = TenantRates(clock=lambda: now[0])
    # a full bucket: one second's worth at once, then refused with the time to the next token
    assert [rates.take("a", 4) for _ in range(4)] == [0.0] * 4
    assert rates.take("a", 4) == pytest.approx(0.25)
    now[0] += 0.1
    assert rates.take("a", 4) == pytest.approx(0.15)  # 0.4 of a token so far
    now[0] += 0.15
    assert rates.take("a", 4) == 0.0  # one token refilled: it goes, the next waits again
    assert rates.take("a", 4) == pytest.approx(0.25)
    # other tenants have buckets of their own; no rate is no limit
    assert rates.take("b", 4) == 0.0
    assert all(rates.take("c", 0) == 0.0 for _ in range(1000))
    # a long idle time refills only up to the burst
    now[0] += 3600
    assert [rates.take("a", 4) == 0.0 for _ in range(5)] == [True] * 4 + [False]
    # under one request per second: a burst of one, then one each 1/rps seconds
    assert rates.take("slow", 0.5) == 0.0
    assert rates.take("slow", 0.5) == pytest.approx(2.0)
    now[0] += 2.0
    assert rates.take("slow", 0.5) == 0.0
    # a clock that steps back refills nothing and refuses nothing it would not have
    now[0] -= 50
    assert rates.take("b", 4) == 0.0


async def test_a_rate_refusal_is_held_and_counted_like_the_others() -> None:
    adm = Admission(AdmissionLimits(refusal_hold_s=0.02, rate_refusal_hold_s=0.2))
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TooManyRequests) as err:
        await adm.refuse("over its rate", reason="tenant_rate", retry_after_s=0.4, timeout_s=None, hold_s=adm.limits.rate_refusal_hold_s)
    assert loop.time() - start >= 0.095 and adm.refused == 1 and adm.held == 0  # half the hold, at least
    assert err.value.retry_after_s == 0.4
    assert status_for(err.value)[0].http == 429
    start = loop.time()
    with pytest.raises(TooManyRequests):  # bounded by half the caller's deadline all the same
        await adm.refuse("over its rate", reason="tenant_rate", retry_after_s=0.4, timeout_s=0.02, hold_s=adm.limits.rate_refusal_hold_s)
    assert loop.time() - start < 0.09 and adm.refused == 2


async def test_refusals_made_together_are_answered_spread_out() -> None:
    """A flooder's calls refused in one burst must not come back as one burst: each hold is
    jittered between half and one and a half times ``refusal_hold_s``."""
    adm = Admission(AdmissionLimits(refusal_hold_s=0.2))
    loop = asyncio.get_running_loop()
    start = loop.time()
    done: list[float] = []

    async def one() -> None:
        with pytest.raises(TooManyRequests):
            await adm.refuse("over", reason="test", retry_after_s=1.0, timeout_s=None)
        done.append(loop.time() - start)

    await asyncio.gather(*(one() for _ in range(40)))
    assert min(done) >= 0.095, done  # at least half the hold
    assert max(done) - min(done) >= 0.08, done  # spread over (most of) the 0.2 s window
    # a deadline still bounds the jittered hold to half of it
    start = loop.time()
    with pytest.raises(TooManyRequests):
        await adm.refuse("over", reason="test", retry_after_s=1.0, timeout_s=0.05)
    assert loop.time() - start < 0.2
