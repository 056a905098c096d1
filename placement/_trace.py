"""Request traces for the simulator: generated (Zipf, log-normal sizes, shifts, scans, tenants) or CSV.

A trace is columnar (numpy): request times and model indexes, plus per-model size, load
time and tenant. CSV files have a header with at least ``time,model,size`` (seconds, id,
bytes) and optionally ``tenant`` and ``load_time_s``; a missing load time is derived from
the size as ``load_overhead_s + size / load_bytes_per_s``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from ._errors import InvalidTrace


@dataclass(frozen=True)
class Trace:
    times: np.ndarray
    """float64 request times in seconds, ascending"""
    models: np.ndarray
    """int64 model index of each request"""
    names: list[str]
    sizes: np.ndarray
    """int64 bytes per model"""
    load_times: np.ndarray
    """float64 seconds one load of each model takes"""
    tenants: list[str]
    description: str = ""

    def __len__(self) -> int:
        return int(self.times.shape[0])

    @property
    def total_bytes(self) -> int:
        """Bytes of every model the trace requests at least once."""
        used = np.unique(self.models)
        return int(self.sizes[used].sum())

    def next_use(self) -> np.ndarray:
        """For each request, the time of the next request for the same model (inf if none)."""
        n = len(self)
        order = np.lexsort((np.arange(n), self.models))
        nxt = np.full(n, np.inf)
        same = self.models[order[1:]] == self.models[order[:-1]]
        nxt[order[:-1][same]] = self.times[order[1:][same]]
        return nxt


class TraceSpec(BaseModel):
    """Parameters of a generated trace (times in virtual seconds, sizes in bytes)."""

    models: int = Field(default=10_000, gt=0)
    requests: int = Field(default=1_000_000, gt=0)
    alpha: float = Field(default=1.0, ge=0, description="Zipf exponent of model popularity")
    rate_per_s: float = Field(default=20.0, gt=0, description="mean background request rate")
    size_median_bytes: int = Field(default=200 << 20, gt=0)
    size_sigma: float = Field(default=1.0, ge=0, description="sigma of log(size)")
    size_min_bytes: int = Field(default=1 << 20, gt=0)
    size_max_bytes: int = Field(default=8 << 30, gt=0)
    load_bytes_per_s: float = Field(default=200e6, gt=0, description="load throughput for the size part of load time")
    load_overhead_s: float = Field(default=0.3, ge=0, description="fixed part of a load")
    load_factor_sigma: float = Field(default=0.5, ge=0, description="per-model spread of load speed (runtime, format)")
    shift_period_s: float = Field(default=4 * 3600.0, ge=0, description="hot-set shift period (0: none)")
    shift_fraction: float = Field(default=0.1, ge=0, le=1, description="fraction of ranks swapped per shift")
    scan_every_s: float = Field(default=3600.0, ge=0, description="a one-off scan this often (0: none)")
    scan_length: int = Field(default=500, ge=0, description="distinct models one scan requests once each")
    scan_rate_per_s: float = Field(default=50.0, gt=0)
    tenants: int = Field(default=1, ge=1)
    scan_tenant: int = Field(default=-1, description="tenant index that scans (-1: scans span all models)")
    seed: int = 0

    def describe(self) -> str:
        return (
            f"zipf {self.alpha:g} over {self.models} models, {self.requests} requests at {self.rate_per_s:g}/s, "
            f"sizes log-normal (median {self.size_median_bytes >> 20} MiB, sigma {self.size_sigma:g}), "
            f"shift {self.shift_fraction:g} every {self.shift_period_s:g}s, scans of {self.scan_length} every "
            f"{self.scan_every_s:g}s, {self.tenants} tenant(s), seed {self.seed}"
        )


def generate(spec: TraceSpec) -> Trace:
    rng = np.random.default_rng(spec.seed)
    n = spec.models
    names = [f"m{i:06d}" for i in range(n)]
    sizes = np.exp(rng.normal(np.log(spec.size_median_bytes), spec.size_sigma, n))
    sizes = np.clip(sizes, spec.size_min_bytes, spec.size_max_bytes).astype(np.int64)
    factor = np.exp(rng.normal(0.0, spec.load_factor_sigma, n))
    load_times = spec.load_overhead_s + sizes / spec.load_bytes_per_s * factor
    tenant_of = rng.integers(0, spec.tenants, n)
    tenants = [f"t{int(t)}" for t in tenant_of]

    # background: Poisson arrivals, Zipf ranks mapped to models by a permutation per phase
    n_bg = spec.requests
    times = np.cumsum(rng.exponential(1.0 / spec.rate_per_s, n_bg))
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** spec.alpha
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.minimum(np.searchsorted(cdf, rng.random(n_bg), side="right"), n - 1)
    duration = float(times[-1]) if n_bg else 0.0
    phases = 1 if spec.shift_period_s <= 0 else int(duration // spec.shift_period_s) + 1
    perms = np.empty((phases, n), dtype=np.int64)
    perm = rng.permutation(n)
    swaps = int(spec.shift_fraction * n)
    for p in range(phases):
        if p > 0 and swaps:
            a = rng.integers(0, n, swaps)
            b = rng.integers(0, n, swaps)
            for i, j in zip(a.tolist(), b.tolist(), strict=True):
                perm[i], perm[j] = perm[j], perm[i]
        perms[p] = perm
    phase = np.zeros(n_bg, dtype=np.int64) if phases == 1 else (times // spec.shift_period_s).astype(np.int64)
    models = perms[phase, ranks]

    # one-off scans: distinct models, each once, in a burst
    scan_t: list[np.ndarray] = []
    scan_m: list[np.ndarray] = []
    if spec.scan_every_s > 0 and spec.scan_length > 0 and duration > 0:
        pool = np.arange(n) if spec.scan_tenant < 0 else np.flatnonzero(tenant_of == spec.scan_tenant)
        start = spec.scan_every_s / 2
        while start < duration and len(pool):
            k = min(spec.scan_length, len(pool))
            scan_m.append(rng.choice(pool, k, replace=False))
            scan_t.append(start + np.arange(k) / spec.scan_rate_per_s)
            start += spec.scan_every_s
    if scan_t:
        all_t = np.concatenate([times, *scan_t])
        all_m = np.concatenate([models, *scan_m])
        order = np.argsort(all_t, kind="stable")
        keep = order[: spec.requests]  # keep the request count as asked
        times, models = all_t[keep], all_m[keep]
    return Trace(times, models.astype(np.int64), names, sizes, load_times, tenants, spec.describe())


def read_csv(
    path: Path, *, load_bytes_per_s: float = 200e6, load_overhead_s: float = 0.3, tenant_default: str = ""
) -> Trace:
    """Read a ``time,model,size[,tenant][,load_time_s]`` trace; rows must be in time order."""
    index: dict[str, int] = {}
    sizes: list[int] = []
    loads: list[float] = []
    tenants: list[str] = []
    times: list[float] = []
    models: list[int] = []
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = set(reader.fieldnames or ())
            missing = {"time", "model", "size"} - fields
            if missing:
                raise InvalidTrace(f"{path}: header lacks column(s) {', '.join(sorted(missing))}")
            last = float("-inf")
            for line, row in enumerate(reader, start=2):
                try:
                    t = float(row["time"])
                    size = int(float(row["size"]))
                    mid = row["model"]
                    lt = float(row["load_time_s"]) if row.get("load_time_s") else None
                except (TypeError, ValueError) as exc:
                    raise InvalidTrace(f"{path}:{line}: {exc}") from exc
                if not mid or size < 0 or not np.isfinite(t):
                    raise InvalidTrace(f"{path}:{line}: need a model id, a size >= 0 and a finite time")
                if t < last:
                    raise InvalidTrace(f"{path}:{line}: time {t} is before the previous row's {last}")
                last = t
                i = index.get(mid)
                if i is None:
                    i = index[mid] = len(sizes)
                    sizes.append(size)
                    loads.append(lt if lt is not None else load_overhead_s + size / load_bytes_per_s)
                    tenants.append(row.get("tenant") or tenant_default)
                times.append(t)
                models.append(i)
    except OSError as exc:
        raise InvalidTrace(f"cannot read trace {path}: {exc}") from exc
    if not times:
        raise InvalidTrace(f"{path}: no requests")
    return Trace(
        np.asarray(times, dtype=np.float64),
        np.asarray(models, dtype=np.int64),
        list(index),
        np.asarray(sizes, dtype=np.int64),
        np.asarray(loads, dtype=np.float64),
        tenants,
        f"{path.name}: {len(times)} requests over {len(sizes)} models",
    )


def write_csv(trace: Trace, path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", "model", "size", "tenant", "load_time_s"])
        names, sizes, loads, tenants = trace.names, trace.sizes.tolist(), trace.load_times.tolist(), trace.tenants
        for t, mi in zip(trace.times.tolist(), trace.models.tolist(), strict=True):
            w.writerow([f"{t:.6f}", names[mi], sizes[mi], tenants[mi], f"{loads[mi]:.6f}"])
