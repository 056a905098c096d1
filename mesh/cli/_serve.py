"""Commands that run servers: ``serve`` (one instance, the process a pod runs), ``up`` (a local
mesh of N instances) and ``demo`` (a local mesh, demo models, skewed traffic, a summary)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table

from ._output import BAR, Column, console, err_console, rich_table, setup_logging

app = typer.Typer()


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


@app.command()
def serve(
    grpc_port: Annotated[int, typer.Option(help="gRPC port (V2 inference + mmesh.ModelMesh); 0 = any")] = 8033,
    rest_port: Annotated[int, typer.Option(help="REST port (V2 JSON + management); 0 = any, -1 = off")] = 8008,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus metrics port (ModelMesh: 2112); 0 = any, -1 = off (default: MODELMUX_INSTANCE_METRICS_PORT, else off)")] = None,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    store: Annotated[str, typer.Option(help="sqlite (default: kept in --data-dir) | etcd | memory (nothing kept)")] = "",
    etcd: Annotated[str, typer.Option(help="etcd endpoints, comma separated host:port")] = "",
    capacity: Annotated[int, typer.Option(help="capacity in MiB (0 = from MODELMUX_INSTANCE_CAPACITY_BYTES)")] = 0,
    data_dir: Annotated[Path | None, typer.Option(help="data directory (store, puller cache)")] = None,
    instance_id: Annotated[str, typer.Option(help="instance id (default: host-pid-random)")] = "",
    allowed_root: Annotated[list[Path] | None, typer.Option(help="local roots models may be read from (repeatable)")] = None,
    ready_file: Annotated[Path | None, typer.Option(help="write {instance_id, grpc, rest} as JSON here once serving")] = None,
    auth_file: Annotated[Path | None, typer.Option(envvar="MODELMUX_AUTH_FILE", help="principals (YAML: name, sha256 of the token or cert name, role, tenant); re-read on change")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate for the gRPC, REST and metrics ports (re-read on change)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="its private key")] = None,
    tls_client_ca: Annotated[Path | None, typer.Option(help="mutual TLS: every client (and peer) presents a certificate from this CA")] = None,
    peer_token_file: Annotated[Path | None, typer.Option(help="bearer token this instance sends when forwarding to peers (without --tls-client-ca)")] = None,
    health_port: Annotated[int | None, typer.Option(help="plaintext port serving grpc.health.v1.Health only (kubelet probes); 0 = any")] = None,
    peer_link_port: Annotated[int | None, typer.Option(help="port of the peer link (forwards between instances, same TLS and credentials as gRPC); 0 = any, -1 = off: peers forward over gRPC (default: MODELMUX_INSTANCE_PEER_LINK_PORT, else 0)")] = None,
    isolated_types: Annotated[str | None, typer.Option(help="model types whose code runs in worker processes, comma separated; '' = none, all in this process (default: MODELMUX_RUNTIMES_ISOLATED_TYPES, else pytorch,torchscript,torch_export)")] = None,
    insecure: Annotated[bool, typer.Option(help="allow listening beyond loopback without --auth-file and TLS (every caller is an admin)")] = False,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Run one instance (the process a pod runs). Beyond loopback it needs --auth-file and TLS (docs/security.md)."""
    setup_logging(log_level)
    from placement import Policy, PolicySettings
    from puller import PullerSettings, StorageConfig

    from .._errors import InvalidRequest
    from .._instance import assemble_instance
    from .._runtimes import RuntimeSettings
    from .._settings import InstanceSettings
    from .._store import build_store
    from .._store_schema import Keys
    from ._store import command_store_settings, describe_store

    overrides: dict[str, Any] = {"host": host, "grpc_port": grpc_port, "rest_port": rest_port}
    if metrics_port is not None:
        overrides["metrics_port"] = metrics_port
    if capacity:
        overrides["capacity_bytes"] = capacity << 20
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if instance_id:
        overrides["instance_id"] = instance_id
    for name, value in (("auth_file", auth_file), ("tls_cert", tls_cert), ("tls_key", tls_key), ("tls_client_ca", tls_client_ca),
                        ("peer_token_file", peer_token_file), ("health_port", health_port), ("peer_link_port", peer_link_port)):
        if value is not None:
            overrides[name] = value
    if insecure:
        overrides["insecure"] = True
    settings = InstanceSettings(**overrides)
    runtime_overrides: dict[str, Any] = {}
    if isolated_types is not None:
        runtime_overrides["isolated_types"] = tuple(t.strip() for t in isolated_types.split(",") if t.strip())
    runtime_settings = RuntimeSettings(**runtime_overrides)
    store_settings = command_store_settings(store, etcd, settings.data_dir)

    async def main() -> None:
        st = build_store(store_settings)
        puller_overrides: dict[str, Any] = {"cache_dir": settings.data_dir / "cache"}
        if allowed_root:
            puller_overrides["allowed_roots"] = [p.resolve() for p in allowed_root]
        storage_dir = os.environ.get("MODELMUX_STORAGE_CONFIG_DIR")
        storage_config = StorageConfig.from_dir(Path(storage_dir)) if storage_dir else None
        inst = await assemble_instance(
            settings, st, puller_settings=PullerSettings(**puller_overrides), storage_config=storage_config,
            keys=Keys(store_settings.prefix), policy=Policy(PolicySettings()), runtime_settings=runtime_settings,
        )
        try:
            ep = await inst.start()
        except InvalidRequest as exc:  # secure by default, or an unreadable auth/TLS file
            err_console.print(f"[bold red]modelmux serve: {exc}[/]")
            await inst.stop(graceful=False)
            await st.close()
            raise typer.Exit(2) from None
        if inst.exposure_warning:
            err_console.print(f"[bold red reverse] {inst.exposure_warning} [/]")
        console.print(
            f"[bold green]modelmux[/] instance {inst.instance_id}: gRPC {ep.grpc}  REST {ep.rest or '-'}  metrics {ep.metrics or '-'}"
            + (f"  dashboard http://{ep.rest}/dashboard/" if ep.rest else "")
        )
        console.print(describe_store(store_settings))
        if ready_file is not None:
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"instance_id": inst.instance_id, "grpc": ep.grpc, "rest": ep.rest, "metrics": ep.metrics, "health": ep.health, "pid": os.getpid()}))
            tmp.replace(ready_file)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        console.print("shutting down: moving models away ...")
        await inst.stop(graceful=True)
        await st.close()

    _run_owning_store(main())


def _run_owning_store(main: Any) -> None:
    """Run a command's main; a data directory whose store another process owns exits 2 with why."""
    from .._store import StoreLocked

    try:
        _run(main)
    except StoreLocked as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None


def _run(main: Any) -> Any:
    """Run a command's main on the event loop MODELMUX_EVENT_LOOP chooses; a bad choice exits 2 with why."""
    from runtime_adapters import EventLoopChoiceError, run_event_loop

    try:
        return run_event_loop(main)
    except EventLoopChoiceError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None


def _mesh_config(instances: int, capacity_mib: int, data_dir: Path, grpc_port: int, rest_port: int, store: Any = None) -> Any:
    from .._local import LocalMeshConfig
    from .._store import StoreSettings

    return LocalMeshConfig(
        store=store or StoreSettings(kind="memory"),
        instances=instances,
        capacity_bytes=capacity_mib << 20,
        data_dir=data_dir,
        grpc_ports=[grpc_port + i for i in range(instances)] if grpc_port else [],
        rest_ports=[rest_port + i for i in range(instances)] if rest_port else [],
        allowed_roots=[data_dir.resolve()],
    )


@app.command()
def up(
    instances: Annotated[int, typer.Option("--instances", "-n", help="number of instances")] = 2,
    capacity: Annotated[int, typer.Option(help="capacity per instance, MiB")] = 256,
    grpc_port: Annotated[int, typer.Option(help="first gRPC port (0 = any)")] = 8033,
    rest_port: Annotated[int, typer.Option(help="first REST port (0 = any)")] = 8008,
    data_dir: Annotated[Path, typer.Option(help="data directory")] = Path("var/modelmux"),
    demo: Annotated[bool, typer.Option(help="create and register demo models, drive traffic, print a summary")] = False,
    duration: Annotated[float, typer.Option(help="demo traffic seconds")] = 20.0,
    store: Annotated[str, typer.Option(help="sqlite (default, kept in --data-dir) or memory: one process; etcd: one process per instance")] = "",
    etcd: Annotated[str, typer.Option(help="etcd endpoint (default with --store etcd: start a local etcd)")] = "",
    log_level: Annotated[str, typer.Option()] = "warning",
) -> None:
    """Start a local mesh of N instances: in this process over the memory store, or as processes over etcd."""
    setup_logging(log_level)
    from .._local import LocalMesh
    from ._store import command_store_settings, describe_store

    store_settings = command_store_settings(store, etcd, data_dir)
    if store_settings.kind == "etcd":
        _up_processes(instances, capacity, grpc_port, rest_port, data_dir, etcd)
        return

    async def main() -> None:
        mesh = LocalMesh(_mesh_config(instances, capacity, data_dir, grpc_port, rest_port, store_settings))
        await mesh.start()
        console.print(describe_store(store_settings))
        for inst in mesh.instances:
            assert inst.endpoints is not None
            console.print(f"instance {inst.instance_id}: gRPC {inst.endpoints.grpc}  REST http://{inst.endpoints.rest}")
        try:
            if demo:
                await _run_demo(mesh, data_dir / "demo-models", count=300, duration_s=duration)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            console.print("mesh is up; Ctrl-C to stop")
            await stop.wait()
        finally:
            await mesh.stop()

    _run_owning_store(main())


def _up_processes(instances: int, capacity_mib: int, grpc_port: int, rest_port: int, data_dir: Path, etcd: str) -> None:
    from .._launcher import LocalEtcd, ProcessMesh

    data_dir.mkdir(parents=True, exist_ok=True)
    local_etcd = None
    if not etcd:
        local_etcd = LocalEtcd(data_dir / "etcd").start()
        etcd = local_etcd.endpoint
        console.print(f"started a local etcd on {etcd}")
    mesh = ProcessMesh(
        instances, data_dir, etcd, capacity_mib << 20, grpc_port=grpc_port, rest_port=rest_port,
        allowed_roots=[data_dir.resolve(), Path.cwd()],
    )
    try:
        for ep in mesh.start():
            console.print(f"instance {ep['instance_id']} (pid {ep['pid']}): gRPC {ep['grpc']}  REST http://{ep['rest']}")
        console.print("mesh is up; Ctrl-C to stop")
        signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # after the children started: they keep theirs
        signal.sigwait(signals)
    finally:
        mesh.stop()
        if local_etcd is not None:
            local_etcd.stop()


@app.command("demo")
def demo_cmd(
    instances: Annotated[int, typer.Option("--instances", "-n")] = 2,
    models: Annotated[int, typer.Option(help="number of demo models")] = 300,
    capacity: Annotated[int, typer.Option(help="capacity per instance, MiB")] = 32,
    duration: Annotated[float, typer.Option(help="seconds of traffic")] = 20.0,
    data_dir: Annotated[Path | None, typer.Option(help="where demo models go (default: a temp dir)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the summary as JSON here")] = None,
    log_level: Annotated[str, typer.Option()] = "warning",
) -> None:
    """The main job: a local mesh, demo models, skewed traffic for a bounded time, and a summary."""
    setup_logging(log_level)
    from .._local import LocalMesh

    async def main(root: Path) -> dict[str, Any]:
        mesh = LocalMesh(_mesh_config(instances, capacity, root, 0, 0))
        await mesh.start()
        console.print("store: memory (a demo: nothing is kept)")
        try:
            return await _run_demo(mesh, root / "demo-models", count=models, duration_s=duration)
        finally:
            await mesh.stop()

    if data_dir is None:
        with tempfile.TemporaryDirectory(prefix="modelmux-demo-") as tmp:
            result = _run(main(Path(tmp)))
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        result = _run(main(data_dir))
    if json_out:
        json_out.write_text(json.dumps(result, indent=2))
    if result["requests"] == 0 or result["errors"] > result["requests"] * 0.01:
        console.print("[red]demo finished with too many errors[/]")
        raise typer.Exit(1)


async def _run_demo(mesh: Any, root: Path, *, count: int, duration_s: float) -> dict[str, Any]:
    from .. import _demo

    with Progress(*BAR, console=console, transient=False) as prog:
        t = prog.add_task("creating demo models", total=count)
        demo_models = await asyncio.to_thread(
            _demo.make_demo_models, root, count, progress=lambda n: prog.update(t, completed=n)
        )
        t2 = prog.add_task("registering", total=len(demo_models))
        await _demo.register_models(mesh, demo_models, progress=lambda n: prog.update(t2, completed=n))
        t3 = prog.add_task(f"traffic ({duration_s:.0f}s, Zipf 1.1)", total=int(duration_s * 10))
        loop = asyncio.get_running_loop()
        start = loop.time()
        result = await _demo.drive_traffic(
            [i.endpoints.grpc for i in mesh.instances],
            demo_models,
            duration_s=duration_s,
            on_tick=lambda r: prog.update(t3, completed=min(int((loop.time() - start) * 10), int(duration_s * 10))),
        )
        prog.update(t3, completed=int(duration_s * 10))
    s = _demo.summary(mesh, result)
    _print_summary(s)
    return s


def _print_summary(s: dict[str, Any]) -> None:
    t = Table(title="modelmux demo summary", show_header=False)
    for key in ("requests", "errors", "throughput_rps", "p50_ms", "p99_ms", "hit_ratio", "misses", "served_locally",
                "forwarded", "loads", "evictions", "load_failures"):
        t.add_row(key, str(s[key]))
    console.print(t)
    if s["error_kinds"]:
        console.print(s["error_kinds"])
    instance_columns = (
        Column("instance", lambda i: i["instance"], flex=True),
        Column("loaded models", lambda i: str(i["loaded"])),
        Column("used", lambda i: _mb(i["used_bytes"])),
        Column("capacity", lambda i: _mb(i["capacity_bytes"])),
        Column("rpm", lambda i: str(i["rpm"])),
    )
    console.print(rich_table(instance_columns, s["instances"], title="instances"))
    hot_columns = (
        Column("model", lambda h: h["model"], flex=True),
        Column("requests", lambda h: str(h["requests"])),
        Column("loaded on", lambda h: ", ".join(h["where"]) or "-", flex=True),
    )
    console.print(rich_table(hot_columns, s["hottest"], title="hottest models: where they are"))
