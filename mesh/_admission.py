"""Admission: bounded requests in flight and queued, per instance and per tenant, served fairly.

Every data-plane request takes a slot before it runs and gives it back when it ends. A request
runs at once while its tenant is under ``tenant_inflight`` and the instance under
``instance_inflight``; otherwise it queues in its tenant's FIFO, if that tenant has fewer than
``tenant_queued`` waiting and the instance fewer than ``instance_queued``; otherwise it is
refused with RESOURCE_EXHAUSTED / 429 and a ``Retry-After`` hint. A freed slot goes to
the next tenant in round-robin order that may run, so one tenant's flood waits in its own queue
and cannot hold the slots every other tenant needs. A queued request waits at most until its
deadline.

A refusal is answered after ``refusal_hold_s`` (at most half the caller's deadline), not at
once: a flooding client that retries as soon as it is refused would otherwise keep its calls
cycling through the server's queue of received calls, which gRPC fills in arrival order before
any admission runs, and every other tenant's call would wait behind them there. Held refusals
cost a timer each; past ``refusals_held_max`` at once they are answered at once again.

A tenant may also have a rate (``max_rps`` of its quota): :class:`TenantRates` refuses its
requests past that many per second, before they take or wait for a slot; those refusals are
held ``rate_refusal_hold_s`` (1 s, the shortest ``Retry-After`` a client is told).
Concurrency limits bound what a flood holds at once, not how much of the instance's processor
it takes: a flooding tenant kept at its in-flight limit still keeps the one event loop busy,
and every other tenant's call shares it. A rate bounds that share.

No locks: the event loop is the only thread that touches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ._errors import DeadlineExceeded, TooManyRequests


@dataclass(frozen=True)
class AdmissionLimits:
    instance_inflight: int = 512
    instance_queued: int = 2048
    tenant_inflight: int = 128
    tenant_queued: int = 512
    retry_after_s: float = 1.0
    refusal_hold_s: float = 0.25
    rate_refusal_hold_s: float = 1.0
    tenant_max_rps: float = 0.0  # the rate of a tenant whose quota sets none (0: none)
    refusals_held_max: int = 4096


class Admission:
    """``on_refuse(reason)`` is told of every refusal: ``instance_queue``, ``tenant_queue`` or the
    reason the caller of :meth:`refuse` gives."""

    def __init__(self, limits: AdmissionLimits | None = None, *, on_refuse: Callable[[str], None] | None = None) -> None:
        self.limits = limits or AdmissionLimits()
        self.on_refuse = on_refuse
        self.inflight = 0
        self.queued = 0
        self._tenant_inflight: dict[str, int] = {}
        # tenants with waiters, in round-robin order; each with its FIFO of futures
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self.refused = 0
        self.held = 0  # refusals being held right now

    def tenant_inflight(self, tenant: str) -> int:
        return self._tenant_inflight.get(tenant, 0)

    def _may_run(self, tenant: str) -> bool:
        lim = self.limits
        return self.inflight < lim.instance_inflight and self._tenant_inflight.get(tenant, 0) < lim.tenant_inflight

    def _take(self, tenant: str) -> None:
        self.inflight += 1
        self._tenant_inflight[tenant] = self._tenant_inflight.get(tenant, 0) + 1

    def _give_back(self, tenant: str) -> None:
        self.inflight -= 1
        left = self._tenant_inflight[tenant] - 1
        if left:
            self._tenant_inflight[tenant] = left
        else:
            del self._tenant_inflight[tenant]
        if self._waiting:
            self._wake()

    def _wake(self) -> None:
        """Hand free slots to waiting requests: each to the waiting tenant with the fewest requests
        in flight that may run (ties in round-robin order)."""
        while self._waiting and self.inflight < self.limits.instance_inflight:
            best: str | None = None
            for tenant, queue in list(self._waiting.items()):
                while queue and queue[0].done():  # cancelled or timed out while waiting
                    queue.popleft()
                if not queue:
                    del self._waiting[tenant]
                    continue
                if self._may_run(tenant) and (best is None or self.tenant_inflight(tenant) < self.tenant_inflight(best)):
                    best = tenant
            if best is None:
                return
            queue = self._waiting[best]
            fut = queue.popleft()
            if queue:
                self._waiting.move_to_end(best)
            else:
                del self._waiting[best]
            self.queued -= 1
            self._take(best)
            fut.set_result(None)

    async def refuse(
        self, message: str, *, reason: str, retry_after_s: float, timeout_s: float | None, hold_s: float | None = None
    ) -> None:
        """Count a refusal, hold it (``hold_s``, default ``refusal_hold_s``: see the module doc),
        then raise it."""
        self.refused += 1
        if self.on_refuse is not None:
            self.on_refuse(reason)
        refusal = TooManyRequests(message, retry_after_s=retry_after_s)
        await self._hold(timeout_s, self.limits.refusal_hold_s if hold_s is None else hold_s)
        raise refusal

    async def _hold(self, timeout_s: float | None, hold_s: float) -> None:
        # jittered (0.5x to 1.5x): a flooder's calls refused together would otherwise come back
        # together, a burst the event loop works through while everyone else's calls wait
        hold = hold_s * (0.5 + random.random())
        if timeout_s is not None:
            hold = min(hold, timeout_s / 2)
        if hold <= 0 or self.held >= self.limits.refusals_held_max:
            return
        self.held += 1
        try:
            await asyncio.sleep(hold)
        finally:
            self.held -= 1

    @contextlib.asynccontextmanager
    async def slot(self, tenant: str, *, timeout_s: float | None) -> AsyncIterator[None]:
        """Hold a slot for one request of ``tenant`` (see the module doc)."""
        if self._may_run(tenant) and tenant not in self._waiting:
            self._take(tenant)
        else:
            lim = self.limits
            queue = self._waiting.get(tenant)
            if self.queued >= lim.instance_queued or (len(queue) if queue is not None else 0) >= lim.tenant_queued:
                full = self.queued >= lim.instance_queued
                who = "this instance" if full else f"tenant '{tenant}'"
                await self.refuse(
                    f"too many requests in flight for {who}; retry later",
                    reason="instance_queue" if full else "tenant_queue",
                    retry_after_s=lim.retry_after_s,
                    timeout_s=timeout_s,
                )
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if queue is None:
                queue = self._waiting[tenant] = deque()
            queue.append(fut)
            self.queued += 1
            try:
                await asyncio.wait_for(asyncio.shield(fut), timeout_s)
            except (TimeoutError, asyncio.CancelledError) as exc:
                if fut.done() and not fut.cancelled():
                    self._give_back(tenant)  # granted just as we gave up: pass it on
                else:
                    fut.cancel()
                    self.queued -= 1
                    self._wake()
                if isinstance(exc, TimeoutError):
                    raise DeadlineExceeded(f"deadline exceeded while queued behind tenant '{tenant}' requests") from None
                raise
        try:
            yield
        finally:
            self._give_back(tenant)


class TenantRates:
    """Per-tenant token buckets: ``take(tenant, rps)`` lets a request through while the tenant
    has made fewer than ``rps`` per second, with a burst of one second's worth (at least one
    request). A bucket starts full. The state is a float pair per tenant that has had a rate."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, when counted)

    def take(self, tenant: str, rps: float) -> float:
        """0.0 when the request may go; else the seconds until the tenant's next token."""
        if rps <= 0:
            self._buckets.pop(tenant, None)
            return 0.0
        now = self.clock()
        burst = max(1.0, rps)
        tokens, at = self._buckets.get(tenant, (burst, now))
        tokens = min(burst, tokens + max(0.0, now - at) * rps)
        if tokens >= 1.0:
            self._buckets[tenant] = (tokens - 1.0, now)
            return 0.0
        self._buckets[tenant] = (tokens, now)
        return (1.0 - tokens) / rps
