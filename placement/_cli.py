"""``python -m placement``: the trace simulator and the decision-latency benchmark."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ._compare import HEADER, Row, compare, markdown_table, plot_comparison, row_cells
from ._errors import InvalidTrace
from ._families import FAMILIES, family_spec, generate_family
from ._settings import PolicySettings
from ._sim import POLICY_NAMES, simulate
from ._trace import Trace, TraceSpec, generate, read_csv, write_csv


def _console() -> Console:
    """A console as wide as the terminal, or wide enough for the table when output is not a terminal."""
    c = Console()
    return c if c.is_terminal else Console(width=220)


app = typer.Typer(help="modelmux placement: simulate policies on request traces.", no_args_is_help=True)


def _spec(
    models: int, requests: int, alpha: float, tenants: int, scan_length: int, shift_fraction: float, seed: int
) -> TraceSpec:
    return TraceSpec(
        models=models, requests=requests, alpha=alpha, tenants=tenants, scan_length=scan_length,
        shift_fraction=shift_fraction, seed=seed,
    )


Models = Annotated[int, typer.Option(help="models in a generated trace")]
Requests = Annotated[int, typer.Option(help="requests in a generated trace")]
Tenants = Annotated[int, typer.Option(help="tenants the models are spread over")]
ScanLength = Annotated[int, typer.Option(help="models in each one-off scan (0: no scans)")]
Shift = Annotated[float, typer.Option(help="fraction of popularity ranks swapped at each hot-set shift")]
Seed = Annotated[int, typer.Option(help="random seed of generated traces")]


@app.command("simulate")
def simulate_cmd(
    trace: Annotated[
        list[Path] | None, typer.Option(help="CSV trace(s) (time,model,size[,tenant][,load_time_s]); else generated")
    ] = None,
    alpha: Annotated[list[float] | None, typer.Option(help="Zipf alpha(s) of generated traces")] = None,
    family: Annotated[
        list[str] | None, typer.Option(help=f"trace famil(y/ies) to generate: {', '.join(FAMILIES)}")
    ] = None,
    scale: Annotated[float, typer.Option(help="shrink generated families (models and requests) by this")] = 1.0,
    models: Models = 10_000,
    requests: Requests = 1_000_000,
    tenants: Tenants = 1,
    scan_length: ScanLength = 500,
    shift_fraction: Shift = 0.1,
    seed: Seed = 0,
    policies: Annotated[
        str,
        typer.Option(
            help="comma-separated: ours, adaptive (learns its recency horizon online), lru, oracle (furthest next use), rates (knows each model's request count), "
            "wrates (knows each model's request count per --window-s)"
        ),
    ] = "lru,ours,oracle",
    capacity: Annotated[
        list[float] | None, typer.Option(help="capacity as a fraction of the bytes the trace requests")
    ] = None,
    instances: Annotated[int, typer.Option(help="instances sharing the capacity equally")] = 8,
    tick_s: Annotated[float, typer.Option(help="run on_tick every this many virtual seconds (0: never)")] = 0.0,
    rate_window_s: Annotated[
        float | None, typer.Option(help="time constant of the measured request rates (default: rate_tau_s)")
    ] = None,
    window_s: Annotated[
        float, typer.Option(help="window of the wrates reference (default: the generated traces' shift period)")
    ] = 4 * 3600.0,
    plot: Annotated[Path | None, typer.Option(help="write the curves over capacity to this PNG")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the rows as JSON here")] = None,
    markdown: Annotated[bool, typer.Option(help="print the table as markdown")] = False,
) -> None:
    """Replay traces through the policies side by side; print hit ratios, load time, evictions, peak memory."""
    console = _console()
    traces: list[tuple[str, Trace]] = []
    try:
        for p in trace or []:
            traces.append((p.name, read_csv(p)))
    except InvalidTrace as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    for fam in family or []:
        if fam not in FAMILIES:
            console.print(f"[red]unknown trace family {fam!r} ({', '.join(FAMILIES)})[/]")
            raise typer.Exit(2)
        traces.append((fam, generate_family(family_spec(fam, scale=scale, seed=seed), fam)))
    if not traces:
        for a in alpha or [0.8, 1.0, 1.2]:
            spec = _spec(models, requests, a, tenants, scan_length, shift_fraction, seed)
            traces.append((f"zipf {a:g}, {models} models", generate(spec)))
    names = [p.strip() for p in policies.split(",") if p.strip()]
    bad = set(names) - set(POLICY_NAMES)
    if bad:
        console.print(f"[red]unknown policies: {', '.join(sorted(bad))} ({', '.join(POLICY_NAMES)})[/]")
        raise typer.Exit(2)

    def progress(row: Row) -> None:
        r = row.result
        console.print(
            f"[dim]{row.trace} @ {row.capacity_fraction:.0%}: {r.policy} done in {r.wall_s:.1f}s[/]", highlight=False
        )

    rows = compare(
        traces, policies=names, capacity_fractions=capacity or [0.05, 0.1, 0.2], instances=instances,
        settings=PolicySettings(), tick_s=tick_s, rate_window_s=rate_window_s, window_s=window_s, on_result=progress,
    )
    if markdown:
        console.print(markdown_table(rows), highlight=False, soft_wrap=True)
    else:
        table = Table(*HEADER, title="placement policies, same traces")
        for row in rows:
            table.add_row(*row_cells(row))
        console.print(table)
    if json_out is not None:
        json_out.write_text(
            json.dumps(
                [
                    {"trace": r.trace, "capacity_fraction": r.capacity_fraction, "x_lru": r.lru_ratio,
                     "x_oracle": r.oracle_ratio, **r.result.summary()}
                    for r in rows
                ],
                indent=1,
            )
        )
    if plot is not None:
        plot_comparison(rows, plot)
        console.print(f"plot: {plot}")


@app.command("latency")
def latency_cmd(
    instances: Annotated[int, typer.Option(help="instances")] = 100,
    models: Models = 100_000,
    requests: Requests = 300_000,
    alpha: Annotated[float, typer.Option(help="Zipf alpha")] = 1.0,
    capacity: Annotated[float, typer.Option(help="capacity as a fraction of requested bytes")] = 0.1,
    policy: Annotated[str, typer.Option(help="ours, lru or oracle")] = "ours",
    seed: Seed = 0,
) -> None:
    """Decision latency of on_miss on a large cluster (time per call, from the simulator)."""
    spec = TraceSpec(models=models, requests=requests, alpha=alpha, seed=seed)
    tr = generate(spec)
    r = simulate(tr, policy, instances=instances, capacity_bytes=int(tr.total_bytes * capacity), settings=PolicySettings())
    us = sorted(r.decision_us)
    console = _console()
    console.print(
        f"{policy}: {len(us)} decisions with {instances} instances and {models} models: "
        f"p50 {r.decision_percentile_us(50):.0f} us, p99 {r.decision_percentile_us(99):.0f} us, "
        f"max {us[-1] if us else 0:.0f} us, mean {statistics.fmean(us) if us else 0:.0f} us; "
        f"hit ratio {r.hit_ratio:.3f}; replay {r.wall_s:.1f}s ({requests / max(r.wall_s, 1e-9):,.0f} requests/s)",
        highlight=False,
    )


@app.command("gen-trace")
def gen_trace_cmd(
    out: Annotated[Path, typer.Argument(help="CSV file to write")],
    alpha: Annotated[float, typer.Option(help="Zipf alpha")] = 1.0,
    models: Models = 10_000,
    requests: Requests = 100_000,
    tenants: Tenants = 1,
    scan_length: ScanLength = 500,
    shift_fraction: Shift = 0.1,
    seed: Seed = 0,
) -> None:
    """Write a generated trace as CSV (time,model,size,tenant,load_time_s)."""
    write_csv(generate(_spec(models, requests, alpha, tenants, scan_length, shift_fraction, seed)), out)
    Console().print(f"wrote {requests} requests to {out}")


def main() -> None:
    app()
