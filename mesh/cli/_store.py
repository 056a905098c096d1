"""``modelmux store export|import`` and how the server commands choose and name their store."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from .._store import StoreSettings

store_app = typer.Typer(
    help="Back up or move registrations (models, vModels, tenant quotas) as YAML.",
    no_args_is_help=True,
)
_err = Console(stderr=True)

StoreOpt = Annotated[str, typer.Option(help="sqlite (default) | etcd | memory")]
EtcdOpt = Annotated[
    str, typer.Option(help="etcd endpoints, comma separated host:port (implies --store etcd)")
]
DataDirOpt = Annotated[Path, typer.Option(help="data directory of the sqlite store")]


def command_store_settings(
    store: str, etcd: str, data_dir: Path, *, default: str = "sqlite"
) -> StoreSettings:
    """The store a command runs on: ``--store``/``--etcd``, else MODELMUX_STORE_KIND, else ``default``.

    The sqlite store lives in the command's data directory unless MODELMUX_STORE_DATA_DIR says otherwise.
    """
    overrides: dict[str, Any] = {}
    if store:
        overrides["kind"] = store
    elif etcd:
        overrides["kind"] = "etcd"
    elif "MODELMUX_STORE_KIND" not in os.environ:
        overrides["kind"] = default
    if etcd:
        overrides["endpoints"] = [e.strip() for e in etcd.split(",") if e.strip()]
    if "MODELMUX_STORE_DATA_DIR" not in os.environ:
        overrides["data_dir"] = data_dir
    return StoreSettings(**overrides)


def describe_store(s: StoreSettings) -> str:
    """One line for the start-up banner: which store, and what survives a restart."""
    if s.kind == "memory":
        return "store: memory (nothing survives a restart; use the default sqlite store or etcd to keep registrations)"
    if s.kind == "sqlite":
        return f"store: sqlite {s.data_dir / 'store.sqlite'} (registrations survive restarts; back up with 'modelmux store export')"
    return f"store: etcd {','.join(s.endpoints)} prefix {s.prefix}"


def _run(settings: StoreSettings, work: Any) -> Any:
    from .._errors import MeshError
    from .._store import StoreError, build_store
    from .._store_schema import Keys

    async def main() -> Any:
        st = build_store(settings)
        try:
            return await work(st, Keys(settings.prefix))
        finally:
            await st.close()

    try:
        return asyncio.run(main())
    except (StoreError, MeshError) as exc:
        _err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None


@store_app.command("export")
def export_cmd(
    store: StoreOpt = "",
    etcd: EtcdOpt = "",
    data_dir: DataDirOpt = Path("var/modelmux"),
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write here instead of stdout")
    ] = None,
) -> None:
    """Print every model, vModel and tenant quota as sorted YAML (stop a sqlite instance first)."""
    from .._store_transfer import dump_yaml, export_records

    settings = command_store_settings(store, etcd, data_dir)
    text = dump_yaml(_run(settings, export_records))
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)


@store_app.command("import")
def import_cmd(
    file: Annotated[Path, typer.Option("--file", "-f", help="an export; - reads stdin")],
    store: StoreOpt = "",
    etcd: EtcdOpt = "",
    data_dir: DataDirOpt = Path("var/modelmux"),
) -> None:
    """Write the registrations of an export into a store; idempotent (equal records are left alone)."""
    from .._store_transfer import import_records

    text = sys.stdin.read() if str(file) == "-" else file.read_text()
    settings = command_store_settings(store, etcd, data_dir)
    result = _run(settings, lambda st, keys: import_records(st, keys, text))
    _err.print(
        f"imported: {result.created} created, {result.updated} updated, {result.unchanged} unchanged"
    )
