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


PAGE = 500
"""Rows asked per page when a command lists everything (the server's maximum is 1,000)."""


def follow_pages(c: Any, path: str, field: str, params: dict[str, Any] | None = None, limit: int = 0) -> list[dict[str, Any]]:
    """Every row of a paged list (``limit`` > 0: the first ``limit``): page after page, each
    continuing at the previous one's ``next_page_token``, until one comes back without it."""
    rows: list[dict[str, Any]] = []
    token = ""
    while True:
        want = PAGE if not limit else min(PAGE, limit - len(rows))
        page = check(c.get(path, params={**(params or {}), "limit": want, **({"page_token": token} if token else {})}))
        rows += page[field]
        token, prev = page.get("next_page_token", ""), token
        if not token or token == prev or (limit and len(rows) >= limit):
            return rows[:limit] if limit else rows


def model_pages(c: Any, params: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """Model rows page by page (limit 0: all of them), with a progress bar for long listings. By
    model id the pages follow ``next_page_token`` (a model registered or removed meanwhile shifts
    nothing); other sorts change with traffic and page by offset."""
    path = "/api/v1/cluster/models"
    rows: list[dict[str, Any]] = []
    page = PAGE if not limit else min(limit, PAGE)
    first = check(c.get(path, params={**params, "offset": 0, "limit": page}))
    rows += first["models"]
    total = first["total"] if not limit else min(first["total"], limit)
    token = first.get("next_page_token", "")
    by_token = params.get("sort", "model") == "model" and "next_page_token" in first  # (an older server: offsets)
    if (limit and len(rows) >= limit) or (not token if by_token else len(rows) >= total):
        return rows[:limit] if limit else rows
    with Progress(*BAR, console=err_console, transient=True) as prog:
        t = prog.add_task("listing models", total=total, completed=len(rows))
        while (token if by_token else len(rows) < total) and not (limit and len(rows) >= limit):
            want = min(page, limit - len(rows)) if limit else page
            if by_token:
                more = check(c.get(path, params={**params, "limit": want, "page_token": token}))
                token = more.get("next_page_token", "")
            else:
                more = check(c.get(path, params={**params, "offset": len(rows), "limit": want}))
            if not more["models"]:
                break
            rows += more["models"]
            prog.update(t, total=max(total, len(rows)), completed=len(rows))
    return rows[:limit] if limit else rows
