"""Test clusters: N instances over one store, in process (memory store) or as processes (real etcd).

Both kinds offer the same surface, so a cluster test runs unchanged against both:
``grpc`` / ``rest`` endpoint lists, ``counters()`` (per instance, from /v1/cluster),
``stop()`` / ``start()`` of all instances (registrations must survive), and ``close()``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from mesh import LocalMesh, LocalMeshConfig, StoreSettings
from mesh._store import MemoryStore

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

    def __init__(self, n: int, data_dir: Path, etcd_endpoint: str, prefix: str, *, capacity_bytes: int, overrides: dict[str, Any] | None = None) -> None:
        self.n = n
        self.data_dir = data_dir
        self.etcd = etcd_endpoint
        self.prefix = prefix
        self.capacity_bytes = capacity_bytes
        self.overrides = overrides or {}
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
        return env

    async def start(self) -> None:
        ready = []
        for i in range(self.n):
            rf = self.data_dir / f"ready-{i}.json"
            rf.unlink(missing_ok=True)
            log = open(self.data_dir / f"instance-{i}.log", "ab")
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "mesh", "serve",
                    "--grpc-port", "0", "--rest-port", "0",
                    "--instance-id", f"proc-{i}",
                    "--data-dir", str(self.data_dir / f"instance-{i}"),
                    "--allowed-root", str(self.data_dir),
                    "--ready-file", str(rf),
                    "--log-level", "info",
                ],
                env=self._env(i),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
            log.close()
            self.procs.append(proc)
            ready.append(rf)
        infos = []
        for i, rf in enumerate(ready):
            proc = self.procs[i]

            def _ready(rf: Path = rf, proc: subprocess.Popen[bytes] = proc, i: int = i) -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"instance exited with {proc.returncode}: {self.log(i)[-3000:]}")
                return rf.exists()

            await wait_until(_ready, 60.0, f"instance {i} to serve")
            infos.append(json.loads(rf.read_text()))
        self.grpc = [x["grpc"] for x in infos]
        self.rest = [f"http://{x['rest']}" for x in infos]

    def log(self, i: int) -> str:
        p = self.data_dir / f"instance-{i}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    async def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
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
        out = []
        async with httpx.AsyncClient(timeout=10) as client:
            for base in self.rest:
                out.append((await client.get(f"{base}/v1/cluster")).json()["self"])
        return out
