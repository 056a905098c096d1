"""Commands that change or use one model: ``register``, ``unregister``, ``infer``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ._client import AddressOpt, CACertOpt, TokenOpt, check, client
from ._output import console, err_console

app = typer.Typer()


@app.command()
def register(
    model_id: str,
    type: Annotated[str, typer.Option("--type", "-t", help="onnx | pytorch | xgboost ...")],
    path: Annotated[str, typer.Option("--path", "-p", help="storage URI or local path")],
    key: Annotated[str, typer.Option(help="storage key, or a JSON object of extras")] = "",
    load_now: Annotated[bool, typer.Option(help="load right away")] = False,
    address: AddressOpt = None,
    token: TokenOpt = None,
    cacert: CACertOpt = None,
) -> None:
    """Register a model (with --load-now: wait, with a spinner, until it is loaded or failed)."""
    import time

    with client(address, token, cacert) as c:
        out = check(c.post(f"/api/v1/models/{model_id}", json={"modelInfo": {"type": type, "path": path, "key": key}, "loadNow": load_now}))
        if load_now:
            with err_console.status(f"loading {model_id} ...") as status:
                deadline = time.monotonic() + 600
                while out["status"] in ("LOADING", "NOT_LOADED") and time.monotonic() < deadline:
                    time.sleep(0.2)
                    out = check(c.get(f"/api/v1/models/{model_id}"))
                    status.update(f"loading {model_id} ... {out['status'].lower()}")
    colour = {"LOADED": "green", "LOADING_FAILED": "red"}.get(out["status"], "yellow")
    console.print(f"{model_id}: [{colour}]{out['status']}[/]" + (f" ({'; '.join(out['errors'])})" if out.get("errors") else ""), soft_wrap=True)
    if out["status"] == "LOADING_FAILED":
        raise typer.Exit(1)


@app.command()
def unregister(
    model_id: str,
    address: AddressOpt = None,
    token: TokenOpt = None,
    cacert: CACertOpt = None,
) -> None:
    """Unregister a model."""
    with client(address, token, cacert) as c:
        check(c.delete(f"/api/v1/models/{model_id}"))
    console.print(f"{model_id}: unregistered", soft_wrap=True)


@app.command()
def infer(
    model: str,
    data: Annotated[str, typer.Option("--json", help="V2 JSON request body (or @file)")],
    address: AddressOpt = None,
    token: TokenOpt = None,
    cacert: CACertOpt = None,
) -> None:
    """Send one V2 JSON inference request and print the answer."""
    body = Path(data[1:]).read_text() if data.startswith("@") else data
    with client(address, token, cacert) as c:
        out = check(c.post(f"/v2/models/{model}/infer", content=body, headers={"content-type": "application/json"}))
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
