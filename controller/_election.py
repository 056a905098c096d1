"""Leader election for controller replicas over a ``coordination.k8s.io/v1`` Lease.

The semantics are client-go's: the Lease's ``holderIdentity`` leads while it renews
``renewTime`` more often than ``leaseDurationSeconds``. A candidate takes the Lease when
it is free (no holder) or when the record has not changed for a whole lease duration *as
observed on the candidate's own clock* (so clock skew between replicas does not matter),
bumping ``leaseTransitions``. Every write is a replace guarded by the Lease's
``resourceVersion``: of two candidates racing, the API server lets one win (409 for the
other). The leader renews every ``retry_period_s``; if no renewal succeeds for
``renew_deadline_s`` it stops leading at once, before any other replica can take the Lease
(``renew_deadline_s < lease_duration_s``). On a clean stop the leader releases the Lease
(empties ``holderIdentity``) so a standby takes over without waiting for expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ._kinds import Kind
from ._kube_client import KubeApiError, KubeClient

log = logging.getLogger(__name__)

LEASE = Kind("Lease", "coordination.k8s.io", "v1", "leases", "")


def _micro_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaigns for, holds and releases one Lease on behalf of ``identity``."""

    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration_s: float,
        renew_deadline_s: float,
        retry_period_s: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not retry_period_s < renew_deadline_s < lease_duration_s:
            raise ValueError(
                f"leader election needs retry_period_s ({retry_period_s}) < renew_deadline_s "
                f"({renew_deadline_s}) < lease_duration_s ({lease_duration_s})"
            )
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self.clock = clock
        self.wall = wall
        self.is_leader = False
        self.lost = asyncio.Event()
        self.transitions = 0  # times this elector became leader
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0  # local clock when it last changed
        self._renewed_at = 0.0
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ one attempt

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this identity holds the Lease afterwards."""
        now_wall = self.wall()
        cur = await self.kube.get(LEASE, self.namespace, self.name)
        spec_new: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, math.ceil(self.lease_duration_s)),
            "renewTime": _micro_time(now_wall),
        }
        if cur is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {**spec_new, "acquireTime": _micro_time(now_wall), "leaseTransitions": 0},
            }
            try:
                await self.kube.create(LEASE, self.namespace, body)
            except KubeApiError as exc:
                if exc.status == 409:
                    return False
                raise
            self._observe(self.identity, spec_new["renewTime"])
            return True
        spec = dict(cur.get("spec") or {})
        holder = str(spec.get("holderIdentity") or "")
        self._observe(holder, str(spec.get("renewTime") or ""))
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration_s)
        if holder and holder != self.identity and self.clock() < self._observed_at + duration:
            return False  # held by another, renewed within a lease duration as we saw it
        new = dict(spec)
        new.update(spec_new)
        if holder != self.identity:
            new["acquireTime"] = _micro_time(now_wall)
            new["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {**(cur.get("metadata") or {})},
            "spec": new,
        }
        try:
            await self.kube.replace(LEASE, self.namespace, self.name, body)
        except KubeApiError as exc:
            if exc.status == 409:
                return False  # someone else wrote it first
            raise
        self._observe(self.identity, spec_new["renewTime"])
        return True

    def _observe(self, holder: str, renew_time: str) -> None:
        if self._observed != (holder, renew_time):
            self._observed = (holder, renew_time)
            self._observed_at = self.clock()

    # ------------------------------------------------------------ loops

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Campaign until leading (True) or ``stop`` is set (False)."""
        while not stop.is_set():
            try:
                if await self.try_acquire_or_renew():
                    self.is_leader = True
                    self.transitions += 1
                    self._renewed_at = self.clock()
                    self.lost = asyncio.Event()
                    self._task = asyncio.create_task(self._renew_loop(), name=f"lease-renew-{self.identity}")
                    log.info("%s leads (lease %s/%s)", self.identity, self.namespace, self.name)
                    return True
            except KubeApiError as exc:
                log.warning("leader election: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.retry_period_s)
        return False

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.retry_period_s)
            try:
                remaining = self._renewed_at + self.renew_deadline_s - self.clock()
                ok = remaining > 0 and await asyncio.wait_for(self.try_acquire_or_renew(), max(remaining, 0.001))
            except (KubeApiError, TimeoutError) as exc:
                log.warning("lease renewal failed: %s", exc)
                ok = False
            if ok:
                self._renewed_at = self.clock()
            elif self.clock() >= self._renewed_at + self.renew_deadline_s:
                log.error("%s could not renew its lease for %.1fs: stops leading", self.identity, self.renew_deadline_s)
                self.is_leader = False
                self.lost.set()
                return

    async def release(self) -> None:
        """Stop renewing; if still leading, hand the Lease back (holder emptied) for a fast takeover."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if not self.is_leader:
            return
        self.is_leader = False
        with contextlib.suppress(KubeApiError):
            cur = await self.kube.get(LEASE, self.namespace, self.name)
            if cur is not None and (cur.get("spec") or {}).get("holderIdentity") == self.identity:
                spec = {**(cur.get("spec") or {}), "holderIdentity": "", "leaseDurationSeconds": 1}
                await self.kube.replace(LEASE, self.namespace, self.name, {**cur, "spec": spec})
