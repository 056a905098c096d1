"""Terminal renderings (rich) of the JSON views, for ``modelmux get / describe / top / logs``."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

STATE_STYLE = {"LOADED": "green", "LOADING": "magenta", "LOADING_FAILED": "red", "NOT_LOADED": "dim"}
KIND_STYLE = {"load": "green", "unload": "yellow", "reject": "red"}


def size(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.1f} {units[i]}" if i else f"{int(n)} B"


def ago(t: float, now: float | None = None) -> str:
    if not t:
        return "-"
    s = max((now or time.time()) - t, 0.0)
    if s < 60:
        return f"{s:.0f}s ago"
    if s < 3600:
        return f"{s / 60:.0f}m ago"
    if s < 86400:
        return f"{s / 3600:.1f}h ago"
    return f"{s / 86400:.1f}d ago"


def clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _state(s: str) -> Text:
    return Text(s, style=STATE_STYLE.get(s, ""))


def models_table(rows: list[dict[str, Any]], *, title: str | None = None) -> Table:
    t = Table(title=title, title_justify="left")
    for col, kw in (
        ("MODEL", {}),
        ("TYPE", {}),
        ("STATE", {}),
        ("LOADED", {"justify": "right"}),
        ("LOADING", {"justify": "right"}),
        ("FAILED", {"justify": "right"}),
        ("SIZE", {"justify": "right"}),
        ("REQ/MIN", {"justify": "right"}),
        ("LAST USED", {}),
        ("WHERE", {}),
    ):
        t.add_column(col, **kw)  # type: ignore[arg-type]
    for m in rows:
        c = m["copies"]
        t.add_row(
            m["model_id"],
            m["type"],
            _state(m["state"]),
            str(c["loaded"]),
            str(c["loading"]),
            Text(str(c["failed"]), style="red" if c["failed"] else ""),
            size(m["size_bytes"]) if m["size_bytes"] else "-",
            f"{m['rpm']:g}",
            ago(m["last_used"]),
            ", ".join(m["where"]) or "-",
        )
    return t


def vmodels_table(rows: list[dict[str, Any]]) -> Table:
    t = Table()
    for col in ("VMODEL", "STATUS", "ACTIVE MODEL", "TARGET MODEL", "ACTIVE STATE", "OWNER"):
        t.add_column(col)
    for v in rows:
        t.add_row(v["name"], v["status"], v["active_model_id"], v["target_model_id"], _state(v["active_state"]), v["owner"] or "-")
    return t


def _bar(used: int, capacity: int, width: int = 24) -> RenderableType:
    frac = used / capacity if capacity else 0.0
    style = "red" if frac > 0.95 else ("yellow" if frac > 0.8 else "green")
    return Group(ProgressBar(total=max(capacity, 1), completed=min(used, capacity), width=width, complete_style=style, finished_style=style))


def instances_table(rows: list[dict[str, Any]], *, leader: str = "", bars: bool = True) -> Table:
    t = Table()
    t.add_column("INSTANCE")
    if bars:
        t.add_column("MEMORY", no_wrap=True)
    for col in ("USED", "CAPACITY", "MODELS", "LOADING", "REQ/MIN", "ADDRESS", "STATUS"):
        t.add_column(col, justify="right" if col in ("USED", "CAPACITY", "MODELS", "LOADING", "REQ/MIN") else "left")
    for i in rows:
        name = i["instance_id"] + (" ★" if i["instance_id"] == leader else "")
        status = "draining" if i["shutting_down"] else "serving"
        cells: list[RenderableType] = [name]
        if bars:
            cells.append(_bar(i["used_bytes"], i["capacity_bytes"]))
        cells += [size(i["used_bytes"]), size(i["capacity_bytes"]), str(i["models"]), str(i["loading"]), f"{i['rpm']:g}", i["address"], status]
        t.add_row(*cells)
    return t


def decisions_table(rows: list[dict[str, Any]], *, title: str | None = None) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("TIME", "ACTION", "MODEL", "INSTANCE", "REASON"):
        t.add_column(col, overflow="fold" if col == "REASON" else "ellipsis")
    for d in rows:
        t.add_row(clock(d["at"]), Text(d["kind"], style=KIND_STYLE.get(d["kind"], "")), d["model_id"], d["instance_id"] or "-", d["reason"])
    return t


def decision_line(d: dict[str, Any]) -> Text:
    line = Text(f"{clock(d['at'])}  ")
    line.append(f"{d['kind']:<6}", style=KIND_STYLE.get(d["kind"], ""))
    line.append(f"  {d['model_id']}")
    if d["instance_id"]:
        line.append(f" {'->' if d['kind'] == 'load' else '<-'} {d['instance_id']}")
    line.append(f"  ({d['reason']})", style="dim")
    return line


def describe(d: dict[str, Any]) -> RenderableType:
    st = d["status"]
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
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
    head.add_row("Rate", f"{st['rpm']:g} req/min")
    head.add_row("Last used", ago(st["last_used"]))
    head.add_row("vModels", ", ".join(d["vmodels"]) or "-")
    parts: list[RenderableType] = [head]
    copies = Table(title="Copies", title_justify="left")
    for col in ("INSTANCE", "STATE", "SIZE", "LOAD TIME", "SINCE", "LAST USED", "REQ/MIN", "WHY PLACED"):
        copies.add_column(col)
    reasons = (d["assignment"] or {}).get("reasons", {})
    for c in d["copies"]:
        copies.add_row(
            c["instance_id"],
            Text(c["state"], style={"loaded": "green", "loading": "magenta", "failed": "red"}.get(c["state"], "")),
            size(c["size_bytes"]) if c["size_bytes"] else "-",
            f"{c['load_time_s']:.3f}s" if c["load_time_s"] else "-",
            ago(c["since"]),
            ago(c["last_used"]),
            f"{c['rpm']:g}",
            reasons.get(c["instance_id"], "-"),
        )
    parts.append(copies)
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
    hot = Table(title="Hottest models", title_justify="left")
    for col in ("MODEL", "REQ/MIN", "WHERE"):
        hot.add_column(col, justify="right" if col == "REQ/MIN" else "left")
    for h in o["hottest"][:limit]:
        hot.add_row(h["model_id"], f"{h['rpm']:g}", ", ".join(h["where"]) or "-")
    recent = decisions_table(o["decisions"][:limit], title="Recent placement decisions")
    return Panel(
        Group(summary, instances_table(o["instances"], leader=o["leader"]), hot, recent),
        title=f"modelmux top · {o['served_by']} · {clock(o['time'])}",
        title_align="left",
    )
