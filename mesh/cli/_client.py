"""How client commands reach a running mesh: its REST address, an HTTP client, errors as exit 1."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress

from ._output import BAR, console, err_console

ADDRESS_ENV = "MODELMUX_ADDRESS"
TOKEN_ENV = "MODELMUX_TOKEN"
CACERT_ENV = "MODELMUX_CACERT"

AddressOpt = Annotated[str | None, typer.Option("--address", "-a", help=f"REST address of any instance (env {ADDRESS_ENV})")]
TokenOpt = Annotated[
    str | None, typer.Option("--token", envvar=TOKEN_ENV, show_envvar=True, help="bearer token (an instance started with --auth-file asks for one)")
]
CACertOpt = Annotated[
    Path | None, typer.Option("--cacert", envvar=CACERT_ENV, show_envvar=True, help="CA certificate to trust for https:// addresses")
]


def base_url(value: str | None) -> str:
    addr = value or os.environ.get(ADDRESS_ENV) or "127.0.0.1:8008"
    return addr if addr.startswith("http") else f"http://{addr}"


def client(value: str | None, token: str | None = None, cacert: Path | None = None) -> Any:
    """An HTTP client to the mesh: the token as ``authorization: Bearer``; ``cacert`` (else the
    system roots) checks an https:// instance's certificate."""
    import httpx

    headers = {"authorization": f"Bearer {token}"} if token else {}
    verify: Any = True
    if cacert is not None:
        import ssl

        verify = ssl.create_default_context(cafile=str(cacert))
    return httpx.Client(base_url=base_url(value), timeout=60.0, headers=headers, verify=verify)


def check(resp: Any) -> Any:
    """The answer's JSON, or the server's error printed and exit code 1."""
    if resp.status_code >= 400:
        try:
            msg = resp.json().get("error", resp.text)
        except ValueError:
            msg = resp.text
        console.print(f"[red]error {resp.status_code}[/]: {msg}", soft_wrap=True)
        raise typer.Exit(1)
    return resp.json()


def model_pages(c: Any, params: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """Model rows page by page (limit 0: all of them), with a progress bar for long listings."""
    rows: list[dict[str, Any]] = []
    page = 500 if not limit else min(limit, 500)
    first = check(c.get("/api/v1/cluster/models", params={**params, "offset": 0, "limit": page}))
    rows += first["models"]
    total = first["total"] if not limit else min(first["total"], limit)
    if len(rows) >= total:
        return rows[:total]
    with Progress(*BAR, console=err_console, transient=True) as prog:
        t = prog.add_task("listing models", total=total, completed=len(rows))
        while len(rows) < total:
            more = check(c.get("/api/v1/cluster/models", params={**params, "offset": len(rows), "limit": min(page, total - len(rows))}))
            if not more["models"]:
                break
            rows += more["models"]
            prog.update(t, completed=len(rows))
    return rows[:total]
