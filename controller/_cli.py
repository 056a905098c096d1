"""The controller's commands: ``modelmux controller``, ``modelmux apply -f`` and ``python -m controller``.

``mesh``'s CLI does not import this package: it hands its typer app to every function of the
``modelmux.cli`` entry-point group (declared in pyproject.toml), and :func:`register_commands`
adds the two commands to it. The commands configure logging (they are entry points); the
rest of the package never does.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mesh import Unavailable

from ._apply import apply_files
from ._runner import run_controller
from ._settings import ControllerSettings

ADDRESS_ENV = "MODELMUX_ADDRESS"  # the same variable the other ``modelmux`` commands read
DEFAULT_ADDRESS = "127.0.0.1:8008"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def controller_command(log_level: Annotated[str, typer.Option()] = "info") -> None:
    """Run the Kubernetes controller (Predictor / InferenceService -> registrations, status back)."""
    configure_logging(log_level)
    asyncio.run(run_controller(ControllerSettings()))


def apply_command(
    filename: Annotated[list[Path], typer.Option("--filename", "-f", help="YAML/JSON file or directory (repeatable)")],
    namespace: Annotated[str, typer.Option("--namespace", "-n")] = "default",
    load_now: Annotated[bool, typer.Option(help="load the models right away")] = True,
    delete: Annotated[bool, typer.Option("--delete", help="unregister instead")] = False,
    address: Annotated[str | None, typer.Option("--address", "-a", help=f"REST address of any instance (env {ADDRESS_ENV})")] = None,
    token: Annotated[str | None, typer.Option("--token", envvar="MODELMUX_TOKEN", help="bearer token (else MODELMUX_CONTROLLER_TOKEN_FILE)")] = None,
    cacert: Annotated[Path | None, typer.Option("--cacert", envvar="MODELMUX_CACERT", help="CA for https:// (else MODELMUX_CONTROLLER_TLS_CA_FILE)")] = None,
) -> None:
    """Register Predictor / InferenceService YAML against a running mesh (no cluster needed)."""
    settings = ControllerSettings()
    if cacert is not None:
        settings.tls_ca_file = cacert
    client_options = settings.mesh_client_options()
    if token:
        client_options["headers"]["authorization"] = f"Bearer {token}"
    console = Console()
    err_console = Console(stderr=True)  # progress on stderr: stdout keeps one line per document
    bar = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    target = address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
    try:
        with Progress(*bar, console=err_console, transient=True) as prog:
            task = prog.add_task("applying", total=None)
            results = apply_files(
                filename, target, namespace=namespace, load_now=load_now, delete=delete,
                progress=lambda done, total: prog.update(task, completed=done, total=total),
                client_options=client_options,
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


def register_commands(app: typer.Typer) -> None:
    """Add ``controller`` and ``apply`` to the ``modelmux`` app (the ``modelmux.cli`` entry point)."""
    app.command("controller")(controller_command)
    app.command("apply")(apply_command)


def main() -> None:
    """``python -m controller [--log-level LEVEL]``: the controller alone, without the mesh CLI."""
    typer.run(controller_command)
