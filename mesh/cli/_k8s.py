"""Kubernetes commands: ``controller`` (the controller process) and ``apply`` (Predictor /
InferenceService YAML against a running mesh, no cluster needed).

Both move out with the controller package; until then they live here, on their own, so that
move deletes this module and its two lines in ``__init__``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from ._client import AddressOpt, base_url
from ._output import BAR, console, err_console, setup_logging

app = typer.Typer()


@app.command()
def controller(log_level: Annotated[str, typer.Option()] = "info") -> None:
    """Run the Kubernetes controller (Predictor / InferenceService -> registrations, status back)."""
    setup_logging(log_level)
    from .._k8s import ControllerSettings, run_controller

    asyncio.run(run_controller(ControllerSettings()))


@app.command("apply")
def apply_cmd(
    filename: Annotated[list[Path], typer.Option("--filename", "-f", help="YAML/JSON file or directory (repeatable)")],
    namespace: Annotated[str, typer.Option("--namespace", "-n")] = "default",
    load_now: Annotated[bool, typer.Option(help="load the models right away")] = True,
    delete: Annotated[bool, typer.Option("--delete", help="unregister instead")] = False,
    address: AddressOpt = None,
) -> None:
    """Register Predictor / InferenceService YAML against a running mesh (no cluster needed)."""
    from .._errors import Unavailable
    from .._k8s import apply_files

    try:
        with Progress(*BAR, console=err_console, transient=True) as prog:
            task = prog.add_task("applying", total=None)
            results = apply_files(
                filename, base_url(address), namespace=namespace, load_now=load_now, delete=delete,
                progress=lambda done, total: prog.update(task, completed=done, total=total),
            )
    except Unavailable as exc:
        console.print(f"[red]error[/]: {exc.message}")
        raise typer.Exit(1) from exc
    for r in results:
        what = f"{r.kind.lower() or 'document'}/{r.name}" if r.name else r.source
        colour = "green" if r.ok and r.action != "skipped" else ("yellow" if r.ok else "red")
        detail = f" ({r.model_id})" if r.model_id and r.ok else (f": {r.message}" if r.message else "")
        console.print(f"{what} [{colour}]{r.action}[/]{detail}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)
