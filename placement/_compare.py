"""Side-by-side comparison of policies on the same traces, as rows, a text table and a PNG."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._plan import fmt_bytes
from ._settings import PolicySettings
from ._sim import SimResult, simulate
from ._trace import Trace


@dataclass(frozen=True)
class Row:
    trace: str
    capacity_fraction: float
    result: SimResult
    lru_ratio: float | None
    """total load time / LRU's on the same trace and capacity"""
    oracle_ratio: float | None
    """total load time / the oracle's"""


def compare(
    traces: Sequence[tuple[str, Trace]],
    *,
    policies: Sequence[str] = ("lru", "ours", "oracle"),
    capacity_fractions: Sequence[float] = (0.05, 0.1, 0.2),
    instances: int = 8,
    settings: PolicySettings | None = None,
    tick_s: float = 0.0,
    rate_window_s: float | None = None,
    window_s: float = 4 * 3600.0,
    on_result: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Every policy on every trace at every capacity (a fraction of the bytes the trace requests)."""
    rows: list[Row] = []
    for name, trace in traces:
        total = trace.total_bytes
        for frac in capacity_fractions:
            results = {
                p: simulate(
                    trace, p, instances=instances, capacity_bytes=int(total * frac), settings=settings,
                    tick_s=tick_s, rate_window_s=rate_window_s, window_s=window_s,
                )
                for p in policies
            }
            lru = results.get("lru")
            oracle = results.get("oracle")
            for p in policies:
                r = results[p]
                row = Row(
                    name, frac, r,
                    r.load_time_s / lru.load_time_s if lru and lru.load_time_s else None,
                    r.load_time_s / oracle.load_time_s if oracle and oracle.load_time_s else None,
                )
                rows.append(row)
                if on_result is not None:
                    on_result(row)
    return rows


HEADER = (
    "trace", "capacity", "policy", "hit ratio", "byte hit ratio", "total load time", "x LRU", "x oracle",
    "evictions", "peak memory", "refused", "decision p99",
)


def row_cells(row: Row) -> tuple[str, ...]:
    r = row.result
    return (
        row.trace,
        f"{row.capacity_fraction:.0%}",
        r.policy,
        f"{r.hit_ratio:.3f}",
        f"{r.byte_hit_ratio:.3f}",
        f"{r.load_time_s / 3600:.1f} h",
        "-" if row.lru_ratio is None else f"{row.lru_ratio:.3f}",
        "-" if row.oracle_ratio is None else f"{row.oracle_ratio:.3f}",
        str(r.evictions),
        fmt_bytes(r.peak_used_bytes),
        str(r.refused),
        f"{r.decision_percentile_us(99):.0f} us" if r.decision_us else "-",
    )


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def plot_comparison(rows: Sequence[Row], path: Path) -> None:
    """Total load time and hit ratio over capacity, one column per trace, one line per policy (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    traces = list(dict.fromkeys(r.trace for r in rows))
    policies = list(dict.fromkeys(r.result.policy for r in rows))
    fig = Figure(figsize=(4.5 * len(traces), 7), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(traces), squeeze=False)
    for col, t in enumerate(traces):
        for p in policies:
            pts = sorted((r.capacity_fraction, r.result) for r in rows if r.trace == t and r.result.policy == p)
            xs = [x * 100 for x, _ in pts]
            axes[0][col].plot(xs, [res.load_time_s / 3600 for _, res in pts], marker="o", label=p)
            axes[1][col].plot(xs, [res.hit_ratio for _, res in pts], marker="o", label=p)
        axes[0][col].set_title(t, fontsize=9)
        axes[0][col].set_ylabel("total load time (h)")
        axes[1][col].set_ylabel("hit ratio")
        axes[1][col].set_xlabel("capacity (% of requested bytes)")
        axes[0][col].legend()
        axes[0][col].grid(alpha=0.3)
        axes[1][col].grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
