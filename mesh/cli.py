"""The ``modelmux`` command line (typer + rich). The entry point configures logging; nothing else does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(help="modelmux: serve thousands of models from a small pool of instances.", no_args_is_help=True)
get_app = typer.Typer(help="List models, vmodels or instances of a running mesh.", no_args_is_help=True)
app.add_typer(get_app, name="get")
console = Console()
err_console = Console(stderr=True)  # progress and spinners: stdout stays clean for -o json|yaml
_BAR = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())

ADDRESS_ENV = "MODELMUX_ADDRESS"


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


# ---------------------------------------------------------------- servers


@app.command()
def serve(
    grpc_port: Annotated[int, typer.Option(help="gRPC port (V2 inference + mmesh.ModelMesh); 0 = any")] = 8033,
    rest_port: Annotated[int, typer.Option(help="REST port (V2 JSON + management); 0 = any, -1 = off")] = 8008,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus metrics port (ModelMesh: 2112); 0 = any, -1 = off (default: MODELMUX_INSTANCE_METRICS_PORT, else off)")] = None,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    store: Annotated[str, typer.Option(help="memory | etcd")] = "",
    etcd: Annotated[str, typer.Option(help="etcd endpoints, comma separated host:port")] = "",
    capacity: Annotated[int, typer.Option(help="capacity in MiB (0 = from MODELMUX_INSTANCE_CAPACITY_BYTES)")] = 0,
    data_dir: Annotated[Path | None, typer.Option(help="data directory (puller cache)")] = None,
    instance_id: Annotated[str, typer.Option(help="instance id (default: host-pid-random)")] = "",
    allowed_root: Annotated[list[Path] | None, typer.Option(help="local roots models may be read from (repeatable)")] = None,
    ready_file: Annotated[Path | None, typer.Option(help="write {instance_id, grpc, rest} as JSON here once serving")] = None,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Run one instance (the process a pod runs)."""
    _logging(log_level)
    from placement import Policy, PolicySettings
    from puller import Puller, PullerSettings, StorageConfig
    from runtime_adapters import AdapterSettings, build_registry

    from ._instance import Instance
    from ._settings import InstanceSettings
    from ._store import StoreSettings, build_store
    from ._store_schema import Keys

    overrides: dict[str, Any] = {"host": host, "grpc_port": grpc_port, "rest_port": rest_port}
    if metrics_port is not None:
        overrides["metrics_port"] = metrics_port
    if capacity:
        overrides["capacity_bytes"] = capacity << 20
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if instance_id:
        overrides["instance_id"] = instance_id
    settings = InstanceSettings(**overrides)
    store_overrides: dict[str, Any] = {}
    if store:
        store_overrides["kind"] = store
    if etcd:
        store_overrides["kind"] = "etcd"
        store_overrides["endpoints"] = [e.strip() for e in etcd.split(",") if e.strip()]
    store_settings = StoreSettings(**store_overrides)

    async def main() -> None:
        st = build_store(store_settings)
        puller_overrides: dict[str, Any] = {"cache_dir": settings.data_dir / "cache"}
        if allowed_root:
            puller_overrides["allowed_roots"] = [p.resolve() for p in allowed_root]
        storage_dir = os.environ.get("MODELMUX_STORAGE_CONFIG_DIR")
        storage_config = StorageConfig.from_dir(Path(storage_dir)) if storage_dir else None
        puller = Puller(PullerSettings(**puller_overrides), storage_config)
        await puller.start()
        adapters = build_registry(AdapterSettings())
        inst = Instance(settings, st, adapters, puller, keys=Keys(store_settings.prefix), policy=Policy(PolicySettings()))
        ep = await inst.start()
        console.print(
            f"[bold green]modelmux[/] instance {inst.instance_id}: gRPC {ep.grpc}  REST {ep.rest or '-'}  metrics {ep.metrics or '-'}"
            + (f"  dashboard http://{ep.rest}/dashboard/" if ep.rest else "")
        )
        if ready_file is not None:
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"instance_id": inst.instance_id, "grpc": ep.grpc, "rest": ep.rest, "metrics": ep.metrics, "pid": os.getpid()}))
            tmp.replace(ready_file)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        console.print("shutting down: moving models away ...")
        await inst.stop(graceful=True)
        await adapters.close()
        await puller.close()
        await st.close()

    asyncio.run(main())


def _mesh_config(instances: int, capacity_mib: int, data_dir: Path, grpc_port: int, rest_port: int) -> Any:
    from ._local import LocalMeshConfig

    return LocalMeshConfig(
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
    store: Annotated[str, typer.Option(help="memory: one process; etcd: one process per instance")] = "memory",
    etcd: Annotated[str, typer.Option(help="etcd endpoint (default with --store etcd: start a local etcd)")] = "",
    log_level: Annotated[str, typer.Option()] = "warning",
) -> None:
    """Start a local mesh of N instances: in this process over the memory store, or as processes over etcd."""
    _logging(log_level)
    from ._local import LocalMesh

    if store == "etcd":
        _up_processes(instances, capacity, grpc_port, rest_port, data_dir, etcd)
        return

    async def main() -> None:
        mesh = LocalMesh(_mesh_config(instances, capacity, data_dir, grpc_port, rest_port))
        await mesh.start()
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

    asyncio.run(main())


def _up_processes(instances: int, capacity_mib: int, grpc_port: int, rest_port: int, data_dir: Path, etcd: str) -> None:
    from ._launcher import LocalEtcd, ProcessMesh

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
    _logging(log_level)
    from ._local import LocalMesh

    async def main(root: Path) -> dict[str, Any]:
        mesh = LocalMesh(_mesh_config(instances, capacity, root, 0, 0))
        await mesh.start()
        try:
            return await _run_demo(mesh, root / "demo-models", count=models, duration_s=duration)
        finally:
            await mesh.stop()

    if data_dir is None:
        with tempfile.TemporaryDirectory(prefix="modelmux-demo-") as tmp:
            result = asyncio.run(main(Path(tmp)))
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(main(data_dir))
    if json_out:
        json_out.write_text(json.dumps(result, indent=2))
    if result["requests"] == 0 or result["errors"] > result["requests"] * 0.01:
        console.print("[red]demo finished with too many errors[/]")
        raise typer.Exit(1)


async def _run_demo(mesh: Any, root: Path, *, count: int, duration_s: float) -> dict[str, Any]:
    from . import _demo

    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*cols, console=console, transient=False) as prog:
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
    it = Table(title="instances")
    for col in ("instance", "loaded models", "used", "capacity", "rpm"):
        it.add_column(col)
    for i in s["instances"]:
        it.add_row(i["instance"], str(i["loaded"]), _mb(i["used_bytes"]), _mb(i["capacity_bytes"]), str(i["rpm"]))
    console.print(it)
    ht = Table(title="hottest models: where they are")
    for col in ("model", "requests", "loaded on"):
        ht.add_column(col)
    for h in s["hottest"]:
        ht.add_row(h["model"], str(h["requests"]), ", ".join(h["where"]) or "-")
    console.print(ht)


# ---------------------------------------------------------------- client commands


def _address(address: str | None) -> str:
    addr = address or os.environ.get(ADDRESS_ENV) or "127.0.0.1:8008"
    return addr if addr.startswith("http") else f"http://{addr}"


def _client(address: str | None) -> Any:
    import httpx

    return httpx.Client(base_url=_address(address), timeout=60.0)


def _check(resp: Any) -> Any:
    if resp.status_code >= 400:
        try:
            msg = resp.json().get("error", resp.text)
        except ValueError:
            msg = resp.text
        console.print(f"[red]error {resp.status_code}[/]: {msg}")
        raise typer.Exit(1)
    return resp.json()


AddressOpt = Annotated[str | None, typer.Option("--address", "-a", help=f"REST address of any instance (env {ADDRESS_ENV})")]
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="table | json | yaml")]


def _emit(data: Any, output: str, table: Table | None) -> None:
    if output == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif output == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    elif table is not None:
        console.print(table)


@app.command()
def register(
    model_id: str,
    type: Annotated[str, typer.Option("--type", "-t", help="onnx | pytorch | xgboost ...")],
    path: Annotated[str, typer.Option("--path", "-p", help="storage URI or local path")],
    key: Annotated[str, typer.Option(help="storage key, or a JSON object of extras")] = "",
    load_now: Annotated[bool, typer.Option(help="load right away")] = False,
    address: AddressOpt = None,
) -> None:
    """Register a model (with --load-now: wait, with a spinner, until it is loaded or failed)."""
    import time

    with _client(address) as c:
        out = _check(c.post(f"/v1/models/{model_id}", json={"modelInfo": {"type": type, "path": path, "key": key}, "loadNow": load_now}))
        if load_now:
            with err_console.status(f"loading {model_id} ...") as status:
                deadline = time.monotonic() + 600
                while out["status"] in ("LOADING", "NOT_LOADED") and time.monotonic() < deadline:
                    time.sleep(0.2)
                    out = _check(c.get(f"/v1/models/{model_id}"))
                    status.update(f"loading {model_id} ... {out['status'].lower()}")
    colour = {"LOADED": "green", "LOADING_FAILED": "red"}.get(out["status"], "yellow")
    console.print(f"{model_id}: [{colour}]{out['status']}[/]" + (f" ({'; '.join(out['errors'])})" if out.get("errors") else ""))
    if out["status"] == "LOADING_FAILED":
        raise typer.Exit(1)


@app.command()
def unregister(model_id: str, address: AddressOpt = None) -> None:
    """Unregister a model."""
    with _client(address) as c:
        _check(c.delete(f"/v1/models/{model_id}"))
    console.print(f"{model_id}: unregistered")


@app.command()
def infer(
    model: str,
    data: Annotated[str, typer.Option("--json", help="V2 JSON request body (or @file)")],
    address: AddressOpt = None,
) -> None:
    """Send one V2 JSON inference request and print the answer."""
    body = Path(data[1:]).read_text() if data.startswith("@") else data
    with _client(address) as c:
        out = _check(c.post(f"/v2/models/{model}/infer", content=body, headers={"content-type": "application/json"}))
    sys.stdout.write(json.dumps(out, indent=2) + "\n")


def _pages(c: Any, params: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """Model rows page by page (limit 0: all of them), with a progress bar for long listings."""
    rows: list[dict[str, Any]] = []
    page = 500 if not limit else min(limit, 500)
    first = _check(c.get("/v1/cluster/models", params={**params, "offset": 0, "limit": page}))
    rows += first["models"]
    total = first["total"] if not limit else min(first["total"], limit)
    if len(rows) >= total:
        return rows[:total]
    with Progress(*_BAR, console=err_console, transient=True) as prog:
        t = prog.add_task("listing models", total=total, completed=len(rows))
        while len(rows) < total:
            more = _check(c.get("/v1/cluster/models", params={**params, "offset": len(rows), "limit": min(page, total - len(rows))}))
            if not more["models"]:
                break
            rows += more["models"]
            prog.update(t, completed=len(rows))
    return rows[:total]


@get_app.command("models")
def get_models(
    search: Annotated[str, typer.Option("--search", "-q", help="only model ids containing this")] = "",
    state: Annotated[str, typer.Option(help="LOADED | LOADING | LOADING_FAILED | NOT_LOADED")] = "",
    sort: Annotated[str, typer.Option(help="model | rpm | size | last_used")] = "model",
    limit: Annotated[int, typer.Option(help="at most this many (0: all)")] = 0,
    address: AddressOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Registered models: state, copies loaded / loading / failed, size, rate, last use, where."""
    from ._dashboard import _render

    with _client(address) as c:
        rows = _pages(c, {"q": search, "state": state, "sort": sort}, limit)
    _emit(rows, output, _render.models_table(rows))


@get_app.command("vmodels")
def get_vmodels(address: AddressOpt = None, output: OutputOpt = "table") -> None:
    """vModels: the model each one serves now and the one it is moving to."""
    from ._dashboard import _render

    with _client(address) as c:
        rows = _check(c.get("/v1/vmodels"))["vmodels"]
    _emit(rows, output, _render.vmodels_table(rows))


@get_app.command("vmodel")
def get_vmodel(name: str, address: AddressOpt = None, output: OutputOpt = "json") -> None:
    """One vModel's status (ModelMesh's VModelStatusInfo)."""
    with _client(address) as c:
        data = _check(c.get(f"/v1/vmodels/{name}"))
    _emit(data, "json" if output == "table" else output, None)


@get_app.command("instances")
def get_instances(address: AddressOpt = None, output: OutputOpt = "table") -> None:
    """Instances: memory used of capacity, models, loading, rate, the models each one holds (-o json)."""
    from ._dashboard import _render

    with _client(address) as c:
        o = _check(c.get("/v1/cluster/overview"))
    _emit(o["instances"], output, _render.instances_table(o["instances"], leader=o["leader"]))


describe_app = typer.Typer(help="Everything about one object of a running mesh.", no_args_is_help=True)
app.add_typer(describe_app, name="describe")


@describe_app.command("model")
def describe_model(
    model_id: str,
    history: Annotated[int, typer.Option(help="decisions of its history to show")] = 50,
    address: AddressOpt = None,
    output: OutputOpt = "table",
) -> None:
    """A model's spec, copies (and why each is where it is), history of loads / evictions, last failure."""
    from ._dashboard import _render

    with _client(address) as c:
        d = _check(c.get(f"/v1/models/{model_id}/describe", params={"history": history}))
    if output == "table":
        console.print(_render.describe(d))
    else:
        _emit(d, output, None)


@app.command()
def logs(
    model: Annotated[str, typer.Option("--model", "-m", help="only this model")] = "",
    instance: Annotated[str, typer.Option("--instance", "-i", help="only this instance")] = "",
    kind: Annotated[str, typer.Option(help="load | unload | reject")] = "",
    limit: Annotated[int, typer.Option("--limit", "-n", help="how many of the newest")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new decisions")] = False,
    interval: Annotated[float, typer.Option(help="seconds between polls with --follow")] = 1.0,
    address: AddressOpt = None,
    output: OutputOpt = "table",
) -> None:
    """The placement decision log (loads, evictions, rejections, with reasons), oldest first."""
    import time

    from ._dashboard import _render

    params: dict[str, Any] = {"model": model, "instance": instance, "kind": kind}
    with _client(address) as c:
        out = _check(c.get("/v1/decisions", params={**params, "limit": limit}))
        rows = list(reversed(out["decisions"]))
        if output != "table":
            _emit(rows, output, None)
        else:
            for d in rows:
                console.print(_render.decision_line(d))
        last = out["last_seq"]
        while follow:
            time.sleep(interval)
            out = _check(c.get("/v1/decisions", params={**params, "limit": 5000, "after": last}))
            for d in reversed(out["decisions"]):
                if output == "table":
                    console.print(_render.decision_line(d))
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
    output: OutputOpt = "table",
) -> None:
    """A live view of the mesh: instances with memory bars, hottest models, recent decisions."""
    import time

    from rich.live import Live

    from ._dashboard import _render

    with _client(address) as c:
        o = _check(c.get("/v1/cluster/overview"))
        if once or output != "table":
            if output == "table":
                console.print(_render.top(o, limit=limit))
            else:
                _emit(o, output, None)
            return
        with Live(_render.top(o, limit=limit), console=console, screen=False, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(_render.top(_check(c.get("/v1/cluster/overview")), limit=limit), refresh=True)


# ---------------------------------------------------------------- tenants

tenant_app = typer.Typer(help="Tenant byte quotas: a tenant's models together may hold at most its quota.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")


def _tenant_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="tenants")
    for col in ("tenant", "quota", "used", "models", "copies", "source"):
        t.add_column(col)
    for r in rows:
        quota = _mb(r["max_bytes"]) if r["max_bytes"] else "-"
        t.add_row(r["tenant"] or "(none)", quota, _mb(r["used_bytes"]), str(r["models"]), str(r["copies"]), r["source"])
    return t


@tenant_app.command("set")
def tenant_set(
    name: str,
    max_bytes: Annotated[str, typer.Option("--max-bytes", help="quota: bytes, or a quantity like 512Mi, 8Gi")],
    address: AddressOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Create or change a tenant's quota (enforced from the next placement decision)."""
    with _client(address) as c:
        value: int | str = int(max_bytes) if max_bytes.isdigit() else max_bytes
        row = _check(c.put(f"/v1/tenants/{name}", json={"maxBytes": value}))
    _emit(row, output, _tenant_table([row]))


@tenant_app.command("get")
def tenant_get(name: str, address: AddressOpt = None, output: OutputOpt = "table") -> None:
    """A tenant's quota and what its models hold now."""
    with _client(address) as c:
        row = _check(c.get(f"/v1/tenants/{name}"))
    _emit(row, output, _tenant_table([row]))


@tenant_app.command("list")
def tenant_list(address: AddressOpt = None, output: OutputOpt = "table") -> None:
    """Every tenant with a quota or a registered model."""
    with _client(address) as c:
        rows = _check(c.get("/v1/tenants"))["tenants"]
    _emit(rows, output, _tenant_table(rows))


@tenant_app.command("delete")
def tenant_delete(name: str, address: AddressOpt = None) -> None:
    """Remove a tenant's quota (its models stay registered)."""
    with _client(address) as c:
        _check(c.delete(f"/v1/tenants/{name}"))
    console.print(f"quota of tenant {name} removed")


# ---------------------------------------------------------------- commands of other packages

PLUGIN_GROUP = "modelmux.cli"


def add_plugin_commands(target: typer.Typer, found: Iterable[metadata.EntryPoint] | None = None) -> None:
    """Let installed packages add commands: each entry point of the ``modelmux.cli`` group is a
    function called with the app (the controller package adds ``controller`` and ``apply``).
    mesh never imports them; a plugin that fails to load is reported and skipped."""
    for ep in metadata.entry_points(group=PLUGIN_GROUP) if found is None else found:
        try:
            ep.load()(target)
        except Exception as exc:
            logging.getLogger(__name__).warning("commands from %s (%s) not loaded: %s", ep.name, ep.value, exc)


add_plugin_commands(app)


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        app()


if __name__ == "__main__":
    main()
