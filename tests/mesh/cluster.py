"""Test clusters: N instances over one store, in process (memory store) or as processes (real etcd).

Both kinds offer the same surface, so a cluster test runs unchanged against both:
``grpc`` / ``rest`` endpoint lists, ``counters()`` (per instance, from /api/v1/cluster),
``stop()`` / ``start()`` of all instances (registrations must survive), and ``close()``.

:class:`ProcessCluster` also injects faults into one instance (``kill`` = SIGKILL, ``pause`` /
``resume`` = SIGSTOP / SIGCONT, ``restart`` with the same id and data directory, so its
artifact cache is warm) and reads the store directly (``leader_id()``, ``snapshot()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from mesh import LocalMesh, LocalMeshConfig, StoreSettings
from mesh._store import EtcdStore, MemoryStore
from mesh._store_schema import (
    AssignmentRecord,
    CopyRecord,
    InstanceRecord,
    Keys,
    LeaderRecord,
    decode,
)

ROOT = Path(__file__).resolve().parents[2]


async def wait_until(predicate: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    """Poll an (async or sync) predicate with a deadline (for conditions with no event to wait on)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)


class ServeProcess:
    """One ``python -m mesh serve`` process started by :func:`serve_process`."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, info: dict[str, Any]) -> None:
        self.proc, self.log, self.info = proc, log, info
        self.grpc: str = info["grpc"]
        self.rest = f"http://{info['rest']}"
        self.pid: int = info["pid"]


@contextlib.asynccontextmanager
async def serve_process(
    tmp: Path, *, env: Mapping[str, str], args: Sequence[str] = (), start_timeout_s: float = 90.0, stop_timeout_s: float = 60.0
) -> AsyncIterator[ServeProcess]:
    """Run ``modelmux serve`` on ports 0 under ``tmp`` (data dir, allowed root, ready file, log),
    wait for its ready file, and on exit stop it with SIGTERM and check that it exited 0."""
    ready, log = tmp / "ready.json", tmp / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mesh", "serve", "--grpc-port", "0", "--rest-port", "0",
             "--data-dir", str(tmp / "data"), "--allowed-root", str(tmp), "--ready-file", str(ready),
             "--log-level", "warning", *args],
            env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(log.read_text())
        return ready.exists()

    try:
        await wait_until(up, start_timeout_s, "modelmux serve to start")
        yield ServeProcess(proc, log, json.loads(ready.read_text()))
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, stop_timeout_s)
    assert proc.returncode == 0, log.read_text()[-3000:]


class MemoryCluster:
    kind = "memory"

    def __init__(self, n: int, data_dir: Path, *, capacity_bytes: int, overrides: dict[str, Any] | None = None) -> None:
        self.n = n
        self.data_dir = data_dir
        self.capacity_bytes = capacity_bytes
        self.overrides = overrides or {}
        self.store = MemoryStore()
        self.mesh: LocalMesh | None = None

    def _config(self) -> LocalMeshConfig:
        return LocalMeshConfig(
            instances=self.n,
            capacity_bytes=self.capacity_bytes,
            data_dir=self.data_dir,
            store=StoreSettings(kind="memory"),
            allowed_roots=[self.data_dir],
            instance_overrides={"lease_ttl_s": 3, "publish_interval_s": 0.2, "scheduler_tick_s": 0.5, **self.overrides},
        )

    async def start(self) -> None:
        self.mesh = LocalMesh(self._config(), store=self.store)
        await self.mesh.start()

    async def stop(self) -> None:
        if self.mesh is not None:
            await self.mesh.stop()
            self.mesh = None

    async def close(self) -> None:
        await self.stop()
        await self.store.close()

    @property
    def grpc(self) -> list[str]:
        assert self.mesh is not None
        return [i.endpoints.grpc for i in self.mesh.instances if i.endpoints]

    @property
    def rest(self) -> list[str]:
        assert self.mesh is not None
        return [f"http://{i.endpoints.rest}" for i in self.mesh.instances if i.endpoints]

    async def counters(self) -> list[dict[str, Any]]:
        assert self.mesh is not None
        return [i.describe() for i in self.mesh.instances]


class ProcessCluster:
    """``modelmux serve`` processes sharing a real etcd."""

    kind = "etcd"

    def __init__(
        self,
        n: int,
        data_dir: Path,
        etcd_endpoint: str,
        prefix: str,
        *,
        capacity_bytes: int,
        overrides: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.n = n
        self.data_dir = data_dir
        self.etcd = etcd_endpoint
        self.prefix = prefix
        self.capacity_bytes = capacity_bytes
        self.overrides = overrides or {}
        self.extra_env = env or {}  # any other MODELMUX_* (placement, puller, storage config)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.grpc: list[str] = []
        self.rest: list[str] = []

    def _env(self, i: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "MODELMUX_STORE_KIND": "etcd",
                "MODELMUX_STORE_ENDPOINTS": json.dumps([self.etcd]),
                "MODELMUX_STORE_PREFIX": self.prefix,
                "MODELMUX_INSTANCE_CAPACITY_BYTES": str(self.capacity_bytes),
                "MODELMUX_INSTANCE_LEASE_TTL_S": "3",
                "MODELMUX_INSTANCE_PUBLISH_INTERVAL_S": "0.2",
                "MODELMUX_INSTANCE_SCHEDULER_TICK_S": "0.5",
                "MODELMUX_INSTANCE_SHUTDOWN_GRACE_S": "2",
                "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
            }
        )
        for k, v in self.overrides.items():
            env[f"MODELMUX_INSTANCE_{k.upper()}"] = str(v)
        env.update(self.extra_env)
        return env

    def instance_id(self, i: int) -> str:
        return f"proc-{i}"

    def index_of(self, instance_id: str) -> int:
        return int(instance_id.rsplit("-", 1)[1])

    def _spawn(self, i: int) -> tuple[subprocess.Popen[bytes], Path]:
        rf = self.data_dir / f"ready-{i}.json"
        rf.unlink(missing_ok=True)
        log = open(self.data_dir / f"instance-{i}.log", "ab")
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "mesh", "serve",
                "--grpc-port", "0", "--rest-port", "0",
                "--instance-id", self.instance_id(i),
                "--data-dir", str(self.data_dir / f"instance-{i}"),
                "--allowed-root", str(self.data_dir),
                "--ready-file", str(rf),
                "--log-level", "info",
            ],
            env=self._env(i),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )  # fmt: skip
        log.close()
        return proc, rf

    async def _wait_ready(self, i: int, proc: subprocess.Popen[bytes], rf: Path) -> dict[str, Any]:
        def _ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"instance exited with {proc.returncode}: {self.log(i)[-3000:]}")
            return rf.exists()

        await wait_until(_ready, 60.0, f"instance {i} to serve")
        info: dict[str, Any] = json.loads(rf.read_text())
        return info

    async def start(self) -> None:
        spawned = [self._spawn(i) for i in range(self.n)]
        self.procs = [p for p, _ in spawned]
        infos = [await self._wait_ready(i, p, rf) for i, (p, rf) in enumerate(spawned)]
        self.grpc = [x["grpc"] for x in infos]
        self.rest = [f"http://{x['rest']}" for x in infos]

    async def restart(self, i: int) -> None:
        """Start instance ``i`` again (after ``kill``): same id, same data directory (warm cache), new ports."""
        assert self.procs[i].poll() is not None, "restart() needs a stopped instance"
        proc, rf = self._spawn(i)
        self.procs[i] = proc
        info = await self._wait_ready(i, proc, rf)
        self.grpc[i] = info["grpc"]
        self.rest[i] = f"http://{info['rest']}"

    def pid(self, i: int) -> int:
        return self.procs[i].pid

    def alive(self, i: int) -> bool:
        return self.procs[i].poll() is None

    def pause(self, i: int) -> None:
        """SIGSTOP: the instance hangs (sockets stay open, nothing answers, its lease runs out)."""
        self.procs[i].send_signal(signal.SIGSTOP)

    def resume(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGCONT)

    # ------------------------------------------------------------ the store, read directly

    def keys(self) -> Keys:
        return Keys(self.prefix)

    def store_client(self) -> EtcdStore:
        host, _, port = self.etcd.rpartition(":")
        return EtcdStore([(host, int(port))], op_timeout_s=5.0)

    async def snapshot(self) -> dict[str, Any]:
        """``{"leader": id or None, "instances": set, "assignments": {model: instances}, "copies": {model: {instance: state}}}``."""
        keys = self.keys()
        st = self.store_client()
        try:
            leader_kv = await st.get(keys.leader)
            instances, _ = await st.get_prefix(keys.instances)
            assignments, _ = await st.get_prefix(keys.assignments)
            copies, _ = await st.get_prefix(keys.copies)
        finally:
            await st.close()
        by_model: dict[str, dict[str, str]] = {}
        for kv in copies:
            rec = decode(CopyRecord, kv.value)
            by_model.setdefault(rec.model_id, {})[rec.instance_id] = rec.state
        return {
            "leader": decode(LeaderRecord, leader_kv.value).instance_id if leader_kv is not None else None,
            "instances": {decode(InstanceRecord, kv.value).instance_id for kv in instances},
            "assignments": {
                (a := decode(AssignmentRecord, kv.value)).model_id: list(a.instances) for kv in assignments
            },
            "copies": by_model,
        }

    async def leader_id(self) -> str | None:
        return (await self.snapshot())["leader"]

    def log(self, i: int) -> str:
        p = self.data_dir / f"instance-{i}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    async def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)  # a paused instance must run to stop
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                await asyncio.to_thread(p.wait, 30)
            except subprocess.TimeoutExpired:
                p.kill()
                await asyncio.to_thread(p.wait, 10)
        self.procs = []

    def kill(self, i: int) -> None:
        self.procs[i].kill()
        self.procs[i].wait(10)

    async def close(self) -> None:
        await self.stop()

    async def counters(self) -> list[dict[str, Any]]:
        """Per instance; ``{}`` for one that is not running."""
        out = []
        async with httpx.AsyncClient(timeout=10) as client:
            for i, base in enumerate(self.rest):
                if i < len(self.procs) and not self.alive(i):
                    out.append({})
                    continue
                out.append((await client.get(f"{base}/api/v1/cluster")).json()["self"])
        return out
