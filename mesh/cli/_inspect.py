"""Commands that look at a running mesh: ``get models|vmodels|vmodel|instances``,
``describe model``, ``logs`` (the placement decision log) and ``top``."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer

from . import _render
from ._client import AddressOpt, CACertOpt, TokenOpt, check, client, follow_pages, model_pages
from ._output import DocOutput, OutputOpt, TableOutput, TableOutputOpt, console, emit, emit_doc

app = typer.Typer()
get_app = typer.Typer(help="List models, vmodels or instances of a running mesh.", no_args_is_help=True)
describe_app = typer.Typer(help="Everything about one object of a running mesh.", no_args_is_help=True)


@get_app.command("models")
def get_models(
    search: Annotated[str, typer.Option("--search", "-q", help="only model ids containing this")] = "",
    state: Annotated[str, typer.Option(help="LOADED | LOADING | LOADING_FAILED | NOT_LOADED")] = "",
    sort: Annotated[str, typer.Option(help="model | rpm | size | last_used")] = "model",
    limit: Annotated[int, typer.Option(help="at most this many (0: all)")] = 0,
    address: AddressOpt = None,
    token: TokenOpt = None,
    cacert: CACertOpt = None,
    output: TableOutputOpt = TableOutput.table,
) -> None:
    """Registered models: state, copies loaded / loading / failed, size, rate, last use, where."""
    with client(address, token, cacert) as c:
        rows = model_pages(c, {"q": search, "state": state, "sort": sort}, limit)
    emit(rows, output, _render.MODEL_COLUMNS, what="models")


@get_app.command("vmodels")
def get_vmodels(
    limit: Annotated[int, typer.Option(help="at most this many (0: all)")] = 0,
    address: AddressOpt = None,
    token: TokenOpt = None,
    cacert: CACertOpt = None,
    output: TableOutputOpt = TableOutput.table,
) -> None:
    """vModels: the model each one serves now and the one it is moving to."""
    with client(address, token, cacert) as c:
        rows = follow_pages(c, "/api/v1/vmodels", "vmodels", limit=limit)
    emit(rows, output, _render.VMODEL_COLUMNS, what="vmodels")


@get_app.command("vmodel")
def get_vmodel(
    name: str,
    address: AddressOpt = None,
    token: TokenOpt = None,
    cacert: CACertOpt = None,
    output: OutputOpt = DocOutput.json,
) -> None:
    """One vModel's status (ModelMesh's VModelStatusInfo)."""
    with client(address, token, cacert) as c:
        data = check(c.get(f"/api/v1/vmodels/{name}"))
    emit_doc(data, output)


@get_app.command("instances")
def get_instances(
    address: AddressOpt = None,
    token: TokenOpt = None,
    cacert: CACertOpt = None,
    output: TableOutputOpt = TableOutput.table,
) -> None:
    """Instances: memory used of capacity, models, loading, rate, the models each one holds (-o json)."""
    with client(address, token, cacert) as c:
        o = check(c.get("/api/v1/cluster/overview"))
    emit(o["instances"], output, _render.instance_columns(o["leader"]), what="instances")


@describe_app.command("model")
def describe_model(
    model_id: str,
    history: Annotated[int, typer.Option(help="decisions of its history to show")] = 50,
    address: AddressOpt = None,
    token: TokenOpt = None,
    cacert: CACertOpt = None,
    output: OutputOpt = DocOutput.table,
) -> None:
    """A model's spec, copies (and why each is where it is), history of loads / evictions, last failure."""
    with client(address, token, cacert) as c:
        d = check(c.get(f"/api/v1/models/{model_id}/describe", params={"history": history}))
    if output == "table":
        console.print(_render.describe(d))
    else:
        emit_doc(d, output)


@app.command()
def logs(
    model: Annotated[str, typer.Option("--model", "-m", help="only this model")] = "",
    instance: Annotated[str, typer.Option("--instance", "-i", help="only this instance")] = "",
    kind: Annotated[str, typer.Option(help="load | unload | reject")] = "",
    limit: Annotated[int, typer.Option("--limit", "-n", help="how many of the newest")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new decisions")] = False,
    interval: Annotated[float, typer.Option(help="seconds between polls with --follow")] = 1.0,
    address: AddressOpt = None,
    token: TokenOpt = None,
    cacert: CACertOpt = None,
    output: OutputOpt = DocOutput.table,
) -> None:
    """The placement decision log (loads, evictions, rejections, with reasons), oldest first."""
    params: dict[str, Any] = {"model": model, "instance": instance, "kind": kind}
    with client(address, token, cacert) as c:
        out = check(c.get("/api/v1/decisions", params={**params, "limit": limit}))
        rows = list(reversed(out["decisions"]))
        if output != "table":
            emit_doc(rows, output)
        else:
            for d in rows:
                console.print(_render.decision_line(d), soft_wrap=True)
        last = out["last_seq"]
        while follow:
            time.sleep(interval)
            out = check(c.get("/api/v1/decisions", params={**params, "limit": 5000, "after": last}))
            for d in reversed(out["decisions"]):
                if output == "table":
                    console.print(_render.decision_line(d), soft_wrap=True)
                else:
                    sys.stdout.write(json.dumps(d) + "\n")
                    sys.stdout.flush()
            last = max(last, out["last_seq"])


@app.command()
def top(
    once: Annotated[bool, typer.Option("--once", help="print one frame and exit")] = False,
    interval: Annotated[float, typer.Option(help="seconds between refreshes")] = 2.0,
    limit: Annotated[int, typer.Option(help="hottest models and decisions shown")] = 10,
    address: AddressOpt = None,
    token: TokenOpt = None,
    cacert: CACertOpt = None,
    output: OutputOpt = DocOutput.table,
) -> None:
    """A live view of the mesh: instances with memory bars, hottest models, recent decisions."""
    from rich.live import Live

    with client(address, token, cacert) as c:
        o = check(c.get("/api/v1/cluster/overview"))
        if once or output != "table":
            if output == "table":
                console.print(_render.top(o, limit=limit))
            else:
                emit_doc(o, output)
            return
        with Live(_render.top(o, limit=limit), console=console, screen=False, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(_render.top(check(c.get("/api/v1/cluster/overview")), limit=limit), refresh=True)
