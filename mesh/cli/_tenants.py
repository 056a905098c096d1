"""``modelmux tenant set|get|list|delete``: tenant byte quotas."""

from __future__ import annotations

from typing import Annotated

import typer

from ._client import AddressOpt, CACertOpt, TokenOpt, check, client, follow_pages
from ._output import TableOutput, TableOutputOpt, console, emit
from ._render import TENANT_COLUMNS

tenant_app = typer.Typer(help="Tenant byte quotas: a tenant's models together may hold at most its quota.", no_args_is_help=True)


@tenant_app.command("set")
def tenant_set(
    name: str,
    max_bytes: Annotated[str, typer.Option("--max-bytes", help="quota: bytes, or a quantity like 512Mi, 8Gi")],
    address: AddressOpt = None,
    token: TokenOpt = None,
    cacert: CACertOpt = None,
    output: TableOutputOpt = TableOutput.table,
) -> None:
    """Create or change a tenant's quota (enforced from the next placement decision)."""
    with client(address, token, cacert) as c:
        value: int | str = int(max_bytes) if max_bytes.isdigit() else max_bytes
        row = check(c.put(f"/api/v1/tenants/{name}", json={"maxBytes": value}))
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
