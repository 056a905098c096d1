"""``modelmux tenant set|get|list|delete``: tenant quotas (bytes and request rate)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._client import AddressOpt, CACertOpt, TokenOpt, check, client, follow_pages
from ._output import TableOutput, TableOutputOpt, console, emit
from ._render import TENANT_COLUMNS

tenant_app = typer.Typer(
    help="Tenant quotas: a tenant's models together may hold at most its bytes; each instance admits at most its rate.",
    no_args_is_help=True,
)


@tenant_app.command("set")
def tenant_set(
    name: str,
    max_bytes: Annotated[
        str | None, typer.Option("--max-bytes", help="byte quota: bytes, or a quantity like 512Mi, 8Gi (0: none)")
    ] = None,
    max_rps: Annotated[
        float | None, typer.Option("--max-rps", help="requests per second each instance admits from the tenant (0: none)")
    ] = None,
    address: AddressOpt = None,
    token: TokenOpt = None,
    cacert: CACertOpt = None,
    output: TableOutputOpt = TableOutput.table,
) -> None:
    """Create or change a tenant's quota: bytes (enforced from the next placement decision) and a
    request rate (from the next request); a limit not given keeps its value."""
    if max_bytes is None and max_rps is None:
        raise typer.BadParameter("give --max-bytes, --max-rps or both")
    body: dict[str, int | str | float] = {}
    if max_bytes is not None:
        body["maxBytes"] = int(max_bytes) if max_bytes.isdigit() else max_bytes
    if max_rps is not None:
        body["maxRps"] = max_rps
    with client(address, token, cacert) as c:
        row = check(c.put(f"/api/v1/tenants/{name}", json=body))
    emit(row, output, TENANT_COLUMNS, [row], what="tenants")


@tenant_app.command("get")
def tenant_get(
    name: str,
    address: AddressOpt = None,
    token: TokenOpt = None,
    cacert: CACertOpt = None,
    output: TableOutputOpt = TableOutput.table,
) -> None:
    """A tenant's quota and what its models hold now."""
    with client(address, token, cacert) as c:
        row = check(c.get(f"/api/v1/tenants/{name}"))
    emit(row, output, TENANT_COLUMNS, [row], what="tenants")


@tenant_app.command("list")
def tenant_list(
    limit: Annotated[int, typer.Option(help="at most this many (0: all)")] = 0,
    address: AddressOpt = None,
    token: TokenOpt = None,
    cacert: CACertOpt = None,
    output: TableOutputOpt = TableOutput.table,
) -> None:
    """Every tenant with a quota or a registered model."""
    with client(address, token, cacert) as c:
        rows = follow_pages(c, "/api/v1/tenants", "tenants", limit=limit)
    emit(rows, output, TENANT_COLUMNS, what="tenants")


@tenant_app.command("delete")
def tenant_delete(
    name: str,
    address: AddressOpt = None,
    token: TokenOpt = None,
    cacert: CACertOpt = None,
) -> None:
    """Remove a tenant's quota (its models stay registered)."""
    with client(address, token, cacert) as c:
        check(c.delete(f"/api/v1/tenants/{name}"))
    console.print(f"quota of tenant {name} removed", soft_wrap=True)
