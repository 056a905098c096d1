"""The live placement loop: one leader runs the policy on misses and on a tick, the backend applies by CAS.

The scheduler holds no cluster state of its own: each decision reads a fresh view from the
backend, so a new leader starts from what the store says, nothing else. A decision is
applied as one batch, guarded by the view it was made on (``based_on``); the backend
refuses a batch when anything it rewrites changed since (or when this process is no longer
the leader) and the decision is made again on a new view. The batch is all-or-nothing, so
losing leadership mid-decision leaves no model half-assigned.

Leadership: :meth:`Scheduler.run` campaigns, then works until the election reports the
lease lost (or :meth:`Scheduler.stop`); its work is cancelled at once, and it campaigns
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ._errors import NotLeader, PlacementError
from ._policy import BasePolicy
from ._types import Action, ClusterView

log = logging.getLogger(__name__)


class PlacementBackend(Protocol):
    """Where views come from and actions go (the mesh: store mirrors and a store transaction)."""

    async def view(self) -> ClusterView: ...

    async def apply(self, actions: Sequence[Action], based_on: ClusterView) -> bool:
        """Apply every action or none; False when ``based_on`` is stale (conflict: decide again)."""
        ...

    async def wait_change(self, timeout_s: float) -> None:
        """Return when the cluster changed, or after ``timeout_s``."""
        ...


class LeaderElection(Protocol):
    async def campaign(self) -> None:
        """Return once this process is the leader."""
        ...

    @property
    def is_leader(self) -> bool: ...

    async def wait_lost(self) -> None:
        """Return when leadership is lost (lease expired or revoked)."""
        ...

    async def resign(self) -> None: ...


class SoloElection:
    """The election of a single process (embedded mode): leader at once, until it resigns."""

    def __init__(self) -> None:
        self._leader = False
        self._lost = asyncio.Event()

    async def campaign(self) -> None:
        self._lost.clear()
        self._leader = True

    @property
    def is_leader(self) -> bool:
        return self._leader

    async def wait_lost(self) -> None:
        await self._lost.wait()

    async def resign(self) -> None:
        self._leader = False
        self._lost.set()


class DecisionConflict(PlacementError):
    """A decision kept conflicting with concurrent changes and was given up (retried on the next change)."""

    code = "aborted"


Decide = Callable[[ClusterView], list[Action]]


class Scheduler:
    """Runs ``policy`` while ``election`` says this process leads; applies through ``backend``."""

    def __init__(
        self,
        policy: BasePolicy,
        backend: PlacementBackend,
        election: LeaderElection,
        *,
        tick_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_attempts: int = 5,
        retry_delay_s: float = 0.5,
    ) -> None:
        if tick_s <= 0:
            raise ValueError(f"tick_s must be > 0, got {tick_s}")
        self.policy = policy
        self.backend = backend
        self.election = election
        self.tick_s = tick_s
        self.clock = clock
        self.max_attempts = max_attempts
        self.retry_delay_s = retry_delay_s
        self.terms = 0
        """times this scheduler became leader"""
        self.applied: list[Action] = []
        """every action this scheduler applied (bounded: last 10,000)"""
        self._stop = asyncio.Event()
        self._misses: dict[str, asyncio.Future[list[Action]]] = {}

    @property
    def is_leader(self) -> bool:
        return self.election.is_leader

    async def run(self) -> None:
        stop = asyncio.create_task(self._stop.wait())
        try:
            while not self._stop.is_set():
                camp = asyncio.create_task(self.election.campaign())
                await asyncio.wait({camp, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not camp.done():
                    await _cancel(camp)
                    break
                if camp.exception() is not None:
                    log.warning("placement campaign failed: %s", camp.exception())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(stop), self.retry_delay_s)
                    continue
                self.terms += 1
                log.info("placement: leading (term %d)", self.terms)
                lost = asyncio.create_task(self.election.wait_lost())
                work = asyncio.create_task(self._lead())
                await asyncio.wait({lost, work, stop}, return_when=asyncio.FIRST_COMPLETED)
                if lost.done():
                    log.warning("placement: leadership lost; work stopped")
                await _cancel(work)
                await _cancel(lost)
                if work.done() and not work.cancelled() and work.exception() is not None:
                    log.error("placement loop failed", exc_info=work.exception())
        finally:
            await _cancel(stop)
            if self.election.is_leader:
                with contextlib.suppress(Exception):
                    await self.election.resign()

    async def stop(self) -> None:
        """Stop :meth:`run` (it resigns leadership on the way out)."""
        self._stop.set()

    async def _lead(self) -> None:
        next_tick = self.clock()
        while True:
            if self.clock() >= next_tick:
                next_tick = self.clock() + self.tick_s
            try:
                await self._decide(self.policy.on_tick, offload=True)
            except DecisionConflict as exc:
                log.warning("placement tick: %s", exc)
            except NotLeader:
                return
            await self.backend.wait_change(max(next_tick - self.clock(), 0.0))

    async def place(self, model_id: str) -> list[Action]:
        """Answer a miss: place one copy of ``model_id`` now (single-flight per model).

        Raises :class:`NotLeader` on a follower, and the policy's errors (no capacity...).
        """
        fut = self._misses.get(model_id)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._misses[model_id] = fut
            try:
                fut.set_result(await self._decide(lambda v: self.policy.on_miss(v, model_id), offload=False))
            except asyncio.CancelledError:
                fut.cancel()
                raise
            except Exception as exc:
                fut.set_exception(exc)
                fut.exception()  # retrieved here: waiters re-raise it
                raise
            finally:
                del self._misses[model_id]
            return fut.result()
        return await asyncio.shield(fut)

    async def _decide(self, decide: Decide, *, offload: bool) -> list[Action]:
        for _attempt in range(self.max_attempts):
            if not self.election.is_leader:
                raise NotLeader("not the placement leader")
            view = await self.backend.view()
            # on_tick walks every model (tens of ms at 100k): off the event loop
            actions = await asyncio.to_thread(decide, view) if offload else decide(view)
            if not actions:
                return []
            if not self.election.is_leader:
                raise NotLeader("lost placement leadership while deciding")
            if await self.backend.apply(actions, view):
                self.applied.extend(actions)
                del self.applied[:-10_000]
                for a in actions:
                    log.info("placement: %s %s on %s (%s)", a.kind, a.model_id, a.instance_id, a.reason)
                return actions
        raise DecisionConflict(f"decision still conflicting after {self.max_attempts} attempts")


async def _cancel(task: asyncio.Task[Any]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
