"""Limits on the data plane: admission of inference requests, keyed by tenant.

:class:`RequestAdmission` resolves the model first (an unknown name is NOT_FOUND before any
body is read or parsed), then holds a slot of :class:`~mesh._admission.Admission` for the
request. The key is the caller's tenant when its principal is bound to one, else the model's
tenant (known from the mirror).

Requests forwarded by a peer count at the receiving instance too, in a pool of their own: the
holder is where the runtime's capacity is spent, so a tenant that enters through many instances
still meets its limit where its model runs; a separate pool keeps an entry instance's slots,
which wait on forwards, from starving the forwarded work that would free them (no wait cycle
between two instances forwarding to each other).

A tenant's rate (``max_rps`` of its quota record, read from the mirror; else the instance's
``tenant_max_rps``, if any) is enforced where its requests enter: each instance admits at
most that many of the tenant's requests per second from callers; forwarded requests were
counted at their entry and are not counted again.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING

from ._admission import Admission, AdmissionLimits, TenantRates

if TYPE_CHECKING:
    from ._dataplane import RequestContext
    from ._router import Router


def admission_limits(settings: object) -> AdmissionLimits:
    """The limits named in :class:`~mesh._settings.InstanceSettings` (defaults where absent)."""
    d = AdmissionLimits()
    return AdmissionLimits(
        instance_inflight=getattr(settings, "instance_inflight", d.instance_inflight),
        instance_queued=getattr(settings, "instance_queued", d.instance_queued),
        tenant_inflight=getattr(settings, "tenant_inflight", d.tenant_inflight),
        tenant_queued=getattr(settings, "tenant_queued", d.tenant_queued),
        retry_after_s=getattr(settings, "retry_after_s", d.retry_after_s),
        refusal_hold_s=getattr(settings, "refusal_hold_s", d.refusal_hold_s),
        rate_refusal_hold_s=getattr(settings, "rate_refusal_hold_s", d.rate_refusal_hold_s),
        tenant_max_rps=getattr(settings, "tenant_max_rps", d.tenant_max_rps),
        refusals_held_max=getattr(settings, "refusals_held_max", d.refusals_held_max),
    )


class RequestAdmission:
    def __init__(self, router: Router, limits: AdmissionLimits | None = None) -> None:
        self.router = router
        refusals = router.metrics.admission_refusals
        self.entry = Admission(limits, on_refuse=lambda reason: refusals.labels(reason).inc())
        self.forwarded = Admission(limits, on_refuse=self.entry.on_refuse)
        self.rates = TenantRates()

    def configure(self, limits: AdmissionLimits) -> None:
        self.entry.limits = self.forwarded.limits = limits

    def tenant_of(self, model_id: str, ctx: RequestContext) -> str:
        caller = getattr(ctx.principal, "tenant", None)
        if caller:
            return str(caller)
        rec = self.router.mirror.model(model_id)
        return rec.tenant if rec is not None else ""

    def try_admit(self, name: str, ctx: RequestContext) -> tuple[Admission, str] | None:
        """The common case of :meth:`admit`, without awaiting: ``name`` is in the mirror, a slot is
        free at once and the tenant is under its rate. The slot is taken; give it back with
        :meth:`release`. None: nothing was taken, go through :meth:`admit` (which resolves from the
        store, queues or refuses, as the case may be)."""
        if ctx.admitted:
            return None
        router = self.router
        mid = router.mirror.resolve(name)
        if mid is None:
            return None
        pool = self.forwarded if ctx.forwarded else self.entry
        tenant = self.tenant_of(mid, ctx)
        if not pool._may_run(tenant) or tenant in pool._waiting:
            return None
        if not ctx.forwarded:
            quota = router.mirror.tenants.items.get(tenant)
            rps = quota.max_rps if quota is not None and quota.max_rps > 0 else pool.limits.tenant_max_rps
            if rps > 0 and self.rates.take(tenant, rps):
                return None  # over its rate (no token taken): admit() refuses it
        pool._take(tenant)
        return pool, tenant

    @staticmethod
    def release(held: tuple[Admission, str]) -> None:
        held[0]._give_back(held[1])

    @contextlib.asynccontextmanager
    async def admit(self, name: str, ctx: RequestContext) -> AsyncIterator[RequestContext]:
        """Resolve ``name`` (NOT_FOUND when unknown) and hold a slot; yields the context marked admitted."""
        if ctx.admitted:
            yield ctx
            return
        router = self.router
        mid = router.mirror.resolve(name) or await router.resolve_fresh(name)
        pool = self.forwarded if ctx.forwarded else self.entry
        timeout = ctx.timeout_s if ctx.timeout_s is not None else router.default_deadline_s
        tenant = self.tenant_of(mid, ctx)
        rps = 0.0
        if not ctx.forwarded:
            quota = router.mirror.tenants.items.get(tenant)
            rps = quota.max_rps if quota is not None and quota.max_rps > 0 else pool.limits.tenant_max_rps
        if rps > 0 and (wait := self.rates.take(tenant, rps)):
            await pool.refuse(
                f"tenant '{tenant}' is over its rate of {rps:g} requests per second on this instance; retry later",
                reason="tenant_rate",
                retry_after_s=wait,
                timeout_s=timeout,
                hold_s=pool.limits.rate_refusal_hold_s,
            )
        async with pool.slot(tenant, timeout_s=timeout):
            yield replace(ctx, admitted=True)
