"""What the CLI shows of the mesh's JSON views: the columns of each ``get`` table, and the rich
renderings of ``describe``, ``top`` and ``logs``. Formats are one token per cell (``1.5MiB``,
``3m``, ``local-0,local-1``) so that plain output splits cleanly on whitespace."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ._output import Column, FitTable, Row, rich_table

STATE_STYLE = {"LOADED": "green", "LOADING": "magenta", "LOADING_FAILED": "red", "NOT_LOADED": "dim"}
COPY_STYLE = {"loaded": "green", "loading": "magenta", "failed": "red"}
KIND_STYLE = {"load": "green", "unload": "yellow", "reject": "red"}
UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def size(n: float, sep: str = " ") -> str:
    i = 0
    while n >= 1024 and i < len(UNITS) - 1:
        n /= 1024
        i += 1
    return f"{n:.1f}{sep}{UNITS[i]}" if i else f"{int(n)}{sep}B"


def age(t: float, now: float | None = None) -> str:
    """How long ago ``t`` was, as kubectl's AGE column writes it (``42s``, ``5m``, ``1.5h``)."""
    if not t:
        return "-"
    s = max((now or time.time()) - t, 0.0)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s / 60:.0f}m"
    if s < 86400:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def ago(t: float, now: float | None = None) -> str:
    a = age(t, now)
    return a if a == "-" else f"{a} ago"


def rate(x: float) -> str:
    """A request rate in at most three significant digits below 100 (``0.0167``, ``1.5``, ``42.3``)
    and whole above (``1234``): as wide as the number needs, never ``0.0166667``."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _ids(ids: list[str]) -> str:
    return ",".join(ids) or "-"


def _bytes(n: int) -> str:
    return size(n, sep="") if n else "-"


def _state(s: str) -> Text:
    return Text(s, style=STATE_STYLE.get(s, ""))


# ---------------------------------------------------------------- get tables

MODEL_COLUMNS = (
    Column("MODEL", lambda m: m["model_id"], flex=True),
    Column("TYPE", lambda m: m["type"] or "-"),
    Column("STATE", lambda m: m["state"], style=lambda m: STATE_STYLE.get(m["state"], "")),
    Column("LOADED", lambda m: str(m["copies"]["loaded"]), justify="right"),
    Column("LOADING", lambda m: str(m["copies"]["loading"]), justify="right"),
    Column("FAILED", lambda m: str(m["copies"]["failed"]), style=lambda m: "red" if m["copies"]["failed"] else "", justify="right"),
    Column("SIZE", lambda m: _bytes(m["size_bytes"]), justify="right"),
    Column("REQ/MIN", lambda m: rate(m["rpm"]), justify="right"),
    Column("LAST USED", lambda m: age(m["last_used"])),
    Column("WHERE", lambda m: _ids(m["where"]), flex=True),
    Column("TENANT", lambda m: m["tenant"] or "-", wide=True, flex=True),
    Column("ASSIGNED", lambda m: _ids(m["assigned"]), wide=True, flex=True),
)

VMODEL_COLUMNS = (
    Column("VMODEL", lambda v: v["name"], flex=True),
    Column("STATUS", lambda v: v["status"]),
    Column("ACTIVE MODEL", lambda v: v["active_model_id"] or "-", flex=True),
    Column("TARGET MODEL", lambda v: v["target_model_id"] or "-", flex=True),
    Column("ACTIVE STATE", lambda v: v["active_state"], style=lambda v: STATE_STYLE.get(v["active_state"], "")),
    Column("OWNER", lambda v: v["owner"] or "-", flex=True),
    Column("FAILURE", lambda v: v.get("failure") or "-", wide=True, flex=True),
)

TENANT_COLUMNS = (
    Column("TENANT", lambda r: r["tenant"] or "(none)", flex=True),
    Column("QUOTA", lambda r: _bytes(r["max_bytes"]), justify="right"),
    Column("RATE", lambda r: f"{r['max_rps']:g}/s" if r.get("max_rps") else "-", justify="right"),
    Column("USED", lambda r: size(r["used_bytes"], sep=""), justify="right"),
    Column("MODELS", lambda r: str(r["models"]), justify="right"),
    Column("COPIES", lambda r: str(r["copies"]), justify="right"),
    Column("SOURCE", lambda r: r["source"] or "-"),
    Column("UPDATED", lambda r: age(r.get("updated_at", 0.0)), wide=True),
)


def _bar(i: Row, width: int = 24) -> RenderableType:
    used, capacity = i["used_bytes"], i["capacity_bytes"]
    frac = used / capacity if capacity else 0.0
    style = "red" if frac > 0.95 else ("yellow" if frac > 0.8 else "green")
    return ProgressBar(total=max(capacity, 1), completed=min(used, capacity), width=width, complete_style=style, finished_style=style)


def instance_columns(leader: str = "", *, bars: bool = True) -> tuple[Column, ...]:
    """Instances' columns; ``bars``: a memory bar in the terminal (never in plain output)."""
    return (
        Column("INSTANCE", lambda i: i["instance_id"], flex=True),
        *((Column("MEMORY", lambda i: "", graphic=_bar),) if bars else ()),
        Column("USED", lambda i: size(i["used_bytes"], sep=""), justify="right"),
        Column("CAPACITY", lambda i: size(i["capacity_bytes"], sep=""), justify="right"),
        Column("MODELS", lambda i: str(i["models"]), justify="right"),
        Column("LOADING", lambda i: str(i["loading"]), justify="right"),
        Column("REQ/MIN", lambda i: rate(i["rpm"]), justify="right"),
        Column("ADDRESS", lambda i: i["address"] or "-", flex=True),
        Column("STATUS", lambda i: "draining" if i["shutting_down"] else "serving"),
        Column("ROLE", lambda i: "leader" if i["instance_id"] == leader else "-", style=lambda i: "cyan" if i["instance_id"] == leader else ""),
        Column("REST ADDRESS", lambda i: i["rest_address"] or "-", wide=True, flex=True),
        Column("ZONE", lambda i: i["zone"] or "-", wide=True, flex=True),
        Column("VERSION", lambda i: i["version"] or "-", wide=True, flex=True),
        Column("STARTED", lambda i: age(i["started_at"]), wide=True),
    )


def instances_table(rows: list[Row], *, leader: str = "", bars: bool = True) -> FitTable:
    return rich_table([c for c in instance_columns(leader, bars=bars) if not c.wide], rows)


DECISION_COLUMNS = (
    Column("TIME", lambda d: clock(d["at"])),
    Column("ACTION", lambda d: d["kind"], style=lambda d: KIND_STYLE.get(d["kind"], "")),
    Column("MODEL", lambda d: d["model_id"], flex=True),
    Column("INSTANCE", lambda d: d["instance_id"] or "-", flex=True),
    Column("REASON", lambda d: d["reason"], flex=True),
)


def decisions_table(rows: list[Row], *, title: str | None = None) -> FitTable:
    return rich_table(DECISION_COLUMNS, rows, title=title)


def decision_line(d: Row) -> Text:
    line = Text(f"{clock(d['at'])}  ")
    line.append(f"{d['kind']:<6}", style=KIND_STYLE.get(d["kind"], ""))
    line.append(f"  {d['model_id']}")
    if d["instance_id"]:
        line.append(f" {'->' if d['kind'] == 'load' else '<-'} {d['instance_id']}")
    line.append(f"  ({d['reason']})", style="dim")
    return line


# ---------------------------------------------------------------- describe, top


def describe(d: dict[str, Any]) -> RenderableType:
    st = d["status"]
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold", no_wrap=True)
    head.add_column(overflow="fold")
    head.add_row("Model", d["model_id"])
    head.add_row("State", _state(st["state"]))
    spec = d["spec"]
    if spec:
        head.add_row("Type", spec["type"])
        head.add_row("Path", spec["path"] or "-")
        head.add_row("Tenant", spec["tenant"] or "-")
        head.add_row("Copies (min/max)", f"{spec['min_copies']}/{spec['max_copies'] or '-'}" + (" pinned" if spec["pinned"] else ""))
        head.add_row("Registered", ago(spec["registered_at"]))
    else:
        head.add_row("Registered", Text("no (unregistered; history only)", style="yellow"))
    head.add_row("Size", size(st["size_bytes"]) if st["size_bytes"] else "-")
    head.add_row("Rate", f"{rate(st['rpm'])} req/min")
    head.add_row("Last used", ago(st["last_used"]))
    head.add_row("vModels", ", ".join(d["vmodels"]) or "-")
    reasons = (d["assignment"] or {}).get("reasons", {})
    copy_columns = (
        Column("INSTANCE", lambda c: c["instance_id"], flex=True),
        Column("STATE", lambda c: c["state"], style=lambda c: COPY_STYLE.get(c["state"], "")),
        Column("SIZE", lambda c: _bytes(c["size_bytes"]), justify="right"),
        Column("LOAD TIME", lambda c: f"{c['load_time_s']:.3f}s" if c["load_time_s"] else "-", justify="right"),
        Column("SINCE", lambda c: ago(c["since"])),
        Column("LAST USED", lambda c: ago(c["last_used"])),
        Column("REQ/MIN", lambda c: rate(c["rpm"]), justify="right"),
        Column("WHY PLACED", lambda c: reasons.get(c["instance_id"], "-"), flex=True),
    )
    parts: list[RenderableType] = [head, rich_table(copy_columns, d["copies"], title="Copies")]
    parts.append(decisions_table(d["history"], title="History (newest first)"))
    failure = d["last_failure"]
    if failure:
        parts.append(Text(f"Last failure: {failure['instance_id'] or '-'} {ago(failure['at'])}: {failure['error']}", style="red"))
    return Group(*parts)


def top(o: dict[str, Any], *, limit: int = 10) -> RenderableType:
    tot = o["totals"]
    series = o["series"]
    last = series[-1] if series else None
    hits = [s["hit_ratio"] for s in series if s["hit_ratio"] is not None]
    states = o["states"]
    summary = Text()
    summary.append(f"{tot['instances']} instances", style="bold")
    summary.append(f"  {tot['models']} models (")
    for k, style in STATE_STYLE.items():
        summary.append(f"{states.get(k, 0)} {k.lower().replace('_', ' ')}", style=style)
        if k != "NOT_LOADED":
            summary.append(", ")
    summary.append(f")  {tot['copies_loaded']} copies  {size(tot['used_bytes'])} / {size(tot['capacity_bytes'])}")
    if last is not None:
        hit = f"{hits[-1] * 100:.1f}%" if hits else "-"
        summary.append(f"  {last['rps']:.1f} req/s  hit ratio {hit}")
    summary.append(f"  leader {o['leader'] or '-'}", style="cyan")
    hot_columns = (
        Column("MODEL", lambda h: h["model_id"], flex=True),
        Column("REQ/MIN", lambda h: rate(h["rpm"]), justify="right"),
        Column("WHERE", lambda h: _ids(h["where"]), flex=True),
    )
    hot = rich_table(hot_columns, o["hottest"][:limit], title="Hottest models")
    recent = decisions_table(o["decisions"][:limit], title="Recent placement decisions")
    return Panel(
        Group(summary, instances_table(o["instances"], leader=o["leader"]), hot, recent),
        title=f"modelmux top · {o['served_by']} · {clock(o['time'])}",
        title_align="left",
    )
