"""Trace families: traffic shapes production model serving shows, one trait at a time or combined.

The built-in generator (:func:`placement.generate`) draws independent requests whose
popularity is fixed within each phase. Real serving traffic also has time structure, and a
policy tuned on the first can lose its lead on the second. Each trait here is an option of
:class:`FamilySpec`; :data:`FAMILIES` names one trace per trait plus ``combined`` (the five
traits of an independently made 3-day trace together: diurnal load, batch jobs, arrivals,
per-tenant Zipf skew, large models less popular).

How a trace is drawn: every model gets a base popularity (Zipf by rank within its tenant,
tenants weighted by volume), and a rate multiplier per time bin (``bin_s``) that carries the
time traits (diurnal factor, batch windows, arrival and the hot period after it, hourly
bursts, slow drift). Requests are drawn from popularity x multiplier over (model, bin),
placed uniformly inside their bin, then sorted. One-hit models are extra models requested
exactly once at a uniform time. Everything is seeded; no I/O.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from ._trace import Trace

DAY_S = 86400.0
HOUR_S = 3600.0


class FamilySpec(BaseModel):
    """One trace family's parameters (times in virtual seconds, sizes in bytes)."""

    models: int = Field(default=5000, gt=0)
    requests: int = Field(default=250_000, gt=0)
    duration_s: float = Field(default=3 * DAY_S, gt=0)
    bin_s: float = Field(default=300.0, gt=0, description="time resolution of the rate multipliers")
    tenants: int = Field(default=1, ge=1)
    alpha_min: float = Field(default=1.0, ge=0, description="Zipf exponent of the least skewed tenant")
    alpha_max: float = Field(default=1.0, ge=0, description="Zipf exponent of the most skewed tenant")
    tenant_volume_sigma: float = Field(default=0.0, ge=0, description="log-normal spread of tenants' traffic volume")
    size_median_bytes: int = Field(default=200 << 20, gt=0)
    size_sigma: float = Field(default=1.0, ge=0)
    size_min_bytes: int = Field(default=1 << 20, gt=0)
    size_max_bytes: int = Field(default=8 << 30, gt=0)
    load_bytes_per_s: float = Field(default=200e6, gt=0)
    load_overhead_s: float = Field(default=0.3, ge=0)
    load_factor_sigma: float = Field(default=0.5, ge=0)
    size_popularity: float = Field(
        default=0.0, ge=0, le=1, description="correlation of size with unpopularity (1: larger is always rarer)"
    )
    diurnal: float = Field(default=0.0, ge=0, le=1, description="amplitude of the daily cycle of all traffic")
    batch_fraction: float = Field(default=0.0, ge=0, le=1, description="models that run as batch jobs")
    batch_on_s: float = Field(default=1200.0, gt=0)
    batch_off_s: float = Field(default=6 * HOUR_S, gt=0)
    arrival_fraction: float = Field(default=0.0, ge=0, le=1, description="models that arrive during the trace")
    arrival_hot_s: float = Field(default=2 * HOUR_S, gt=0, description="decay time of the hot period after arrival")
    arrival_boost: float = Field(default=30.0, ge=0, description="extra rate factor right after arrival")
    burst_fraction: float = Field(default=0.0, ge=0, le=1, description="models requested in a burst at the top of each hour")
    drift_sigma: float = Field(default=0.0, ge=0, description="random walk of log popularity, per sqrt(day)")
    one_hit_fraction: float = Field(default=0.0, ge=0, lt=1, description="share of requests to models used only once")
    seed: int = 0

    def describe(self) -> str:
        parts = [f"{self.models} models, {self.requests} requests over {self.duration_s / DAY_S:g} d"]
        if self.tenants > 1:
            parts.append(f"{self.tenants} tenants, Zipf {self.alpha_min:g}-{self.alpha_max:g}")
        else:
            parts.append(f"Zipf {self.alpha_min:g}")
        for name, v in (
            ("diurnal", self.diurnal), ("batch", self.batch_fraction), ("arrivals", self.arrival_fraction),
            ("size-popularity", self.size_popularity), ("bursts", self.burst_fraction), ("drift", self.drift_sigma),
            ("one-hit", self.one_hit_fraction), ("tenant-volume-sigma", self.tenant_volume_sigma),
        ):
            if v:
                parts.append(f"{name} {v:g}")
        return ", ".join(parts) + f", seed {self.seed}"


_FIVE: dict[str, Any] = {
    "diurnal": 0.7, "batch_fraction": 0.08, "arrival_fraction": 0.3, "tenants": 5, "alpha_min": 0.8,
    "alpha_max": 1.3, "size_popularity": 0.6,
}

FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "diurnal": ("all traffic follows a daily cycle (peak 5.7x the trough)", {"diurnal": 0.7}),
    "batch": ("8% of models are batch jobs: on for 20 min, off for about 6 h", {"batch_fraction": 0.08}),
    "arrivals": (
        "30% of models arrive during the trace and are hot for about 2 h after",
        {"arrival_fraction": 0.3},
    ),
    "tenant-skew": ("5 tenants with Zipf 0.8 to 1.3", {"tenants": 5, "alpha_min": 0.8, "alpha_max": 1.3}),
    "size-popularity": ("large models are less popular (correlation 0.6)", {"size_popularity": 0.6}),
    "hourly-bursts": ("5% of models are requested only in bursts at the top of each hour", {"burst_fraction": 0.05}),
    "drift": ("popularity drifts slowly (log random walk, sigma 1 per sqrt(day))", {"drift_sigma": 1.0}),
    "one-hit": ("30% of requests go to models used exactly once", {"one_hit_fraction": 0.3}),
    "many-tenants": (
        "100 tenants, Zipf 0.6 to 1.4, volumes spread log-normally (sigma 1.5)",
        {"tenants": 100, "alpha_min": 0.6, "alpha_max": 1.4, "tenant_volume_sigma": 1.5},
    ),
    "combined": ("the five traits together: diurnal, batch, arrivals, tenant skew, size-popularity", _FIVE),
}


def family_spec(name: str, *, scale: float = 1.0, seed: int = 0) -> FamilySpec:
    """The spec of a named family; ``scale`` < 1 shrinks models and requests (for tests), keeping the shape."""
    if name not in FAMILIES:
        raise ValueError(f"unknown trace family {name!r} ({', '.join(FAMILIES)})")
    over = dict(FAMILIES[name][1])
    base = FamilySpec()
    return FamilySpec(
        **{**over, "models": max(50, int(base.models * scale)), "requests": max(500, int(base.requests * scale)),
           "seed": seed}
    )


def _sizes(rng: np.random.Generator, spec: FamilySpec, n: int) -> tuple[np.ndarray, np.ndarray]:
    sizes = np.exp(rng.normal(np.log(spec.size_median_bytes), spec.size_sigma, n))
    sizes = np.clip(sizes, spec.size_min_bytes, spec.size_max_bytes).astype(np.int64)
    factor = np.exp(rng.normal(0.0, spec.load_factor_sigma, n))
    return sizes, spec.load_overhead_s + sizes / spec.load_bytes_per_s * factor


def _popularity(rng: np.random.Generator, spec: FamilySpec, sizes: np.ndarray, tenant_of: np.ndarray) -> np.ndarray:
    n = len(sizes)
    alphas = np.linspace(spec.alpha_min, spec.alpha_max, spec.tenants)
    rng.shuffle(alphas)
    volume = np.exp(rng.normal(0.0, spec.tenant_volume_sigma, spec.tenants)) if spec.tenant_volume_sigma else np.ones(spec.tenants)
    ls = np.log(sizes.astype(np.float64))
    z = (ls - ls.mean()) / (ls.std() or 1.0)
    c = spec.size_popularity
    score = c * z + np.sqrt(1.0 - c * c) * rng.normal(0.0, 1.0, n)  # low score: popular
    pop = np.zeros(n)
    for t in range(spec.tenants):
        idx = np.flatnonzero(tenant_of == t)
        if not len(idx):
            continue
        order = idx[np.argsort(score[idx], kind="stable")]
        w = 1.0 / np.arange(1, len(order) + 1, dtype=np.float64) ** alphas[t]
        pop[order] = volume[t] * w / w.sum()
    return pop


def generate_family(spec: FamilySpec, name: str = "") -> Trace:
    """Draw one trace of the family ``spec`` describes."""
    rng = np.random.default_rng(spec.seed)
    n = spec.models
    nb = max(1, int(np.ceil(spec.duration_s / spec.bin_s)))
    sizes, load_times = _sizes(rng, spec, n)
    tenant_of = rng.integers(0, spec.tenants, n)
    pop = _popularity(rng, spec, sizes, tenant_of)
    mids = (np.arange(nb) + 0.5) * spec.bin_s  # bin centres
    mult = np.ones((n, nb), dtype=np.float32)
    if spec.drift_sigma:
        steps = rng.normal(0.0, spec.drift_sigma * np.sqrt(spec.bin_s / DAY_S), (n, nb)).astype(np.float32)
        mult *= np.exp(np.cumsum(steps, axis=1) - 0.5 * spec.drift_sigma**2 * (mids / DAY_S)[None, :]).astype(np.float32)
    special = rng.permutation(n)
    k_batch = int(spec.batch_fraction * n)
    k_burst = int(spec.burst_fraction * n)
    batch, burst = special[:k_batch], special[k_batch : k_batch + k_burst]
    if k_batch:
        period = spec.batch_on_s + spec.batch_off_s
        offs = rng.uniform(0.0, period, k_batch)
        on = ((mids[None, :] + offs[:, None]) % period) < spec.batch_on_s
        mult[batch] *= np.where(on, period / spec.batch_on_s, 0.0).astype(np.float32)
    if k_burst:
        top = (mids % HOUR_S) < spec.bin_s
        mult[burst] *= np.where(top, HOUR_S / spec.bin_s, 0.0).astype(np.float32)[None, :]
    k_arr = int(spec.arrival_fraction * n)
    if k_arr:
        arr = rng.permutation(n)[:k_arr]
        at = rng.uniform(0.0, spec.duration_s, k_arr)
        age = mids[None, :] - at[:, None]
        boost = np.where(age < 0, 0.0, 1.0 + spec.arrival_boost * np.exp(-np.maximum(age, 0) / spec.arrival_hot_s))
        mult[arr] *= boost.astype(np.float32)
    if spec.diurnal:
        mult *= (1.0 + spec.diurnal * np.sin(2 * np.pi * (mids / DAY_S - 0.25))).astype(np.float32)[None, :]
    w = mult.astype(np.float64)
    w *= pop[:, None]
    cdf = np.cumsum(w.ravel())
    n_tail = int(spec.one_hit_fraction * spec.requests)
    n_main = spec.requests - n_tail
    flat = np.minimum(np.searchsorted(cdf, rng.random(n_main) * cdf[-1], side="right"), cdf.size - 1)
    del cdf, w, mult
    models = flat // nb
    times = (flat % nb + rng.random(n_main)) * spec.bin_s
    names = [f"m{i:06d}" for i in range(n)]
    tenants = [f"t{int(t)}" for t in tenant_of]
    if n_tail:
        t_sizes, t_loads = _sizes(rng, spec, n_tail)
        sizes = np.concatenate([sizes, t_sizes])
        load_times = np.concatenate([load_times, t_loads])
        names += [f"once{i:07d}" for i in range(n_tail)]
        tenants += [f"t{int(t)}" for t in rng.integers(0, spec.tenants, n_tail)]
        models = np.concatenate([models, n + np.arange(n_tail)])
        times = np.concatenate([times, rng.uniform(0.0, spec.duration_s, n_tail)])
    order = np.argsort(times, kind="stable")
    desc = (f"{name}: " if name else "") + spec.describe()
    return Trace(times[order], models[order].astype(np.int64), names, sizes, load_times, tenants, desc)


def family(name: str, *, scale: float = 1.0, seed: int = 0) -> Trace:
    """The named family's trace (``scale`` < 1 for a smaller one of the same shape)."""
    return generate_family(family_spec(name, scale=scale, seed=seed), name)
