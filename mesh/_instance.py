"""One instance: wires store view, router, agent, leader and both servers (the single place that builds them)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata as _md

import grpc
import uvicorn

from placement import Policy, PolicySettings
from puller import Puller
from runtime_adapters import AdapterRegistry

from ._agent import Agent
from ._cluster_mirror import ClusterMirror
from ._dashboard import ClusterOverview, TrafficSeries
from ._grpc_edge import build_grpc_server
from ._leader import Leader
from ._management import Management
from ._metrics import Metrics
from ._metrics_http import serve_metrics
from ._rest_edge import build_rest_app
from ._router import Router
from ._runtimes import RuntimeSupervisor
from ._settings import InstanceSettings
from ._store import Store, StoreError
from ._store_schema import Keys

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return _md.version("modelmux")
    except _md.PackageNotFoundError:
        return "0.0.0+local"


def _instance_id(settings: InstanceSettings) -> str:
    if settings.instance_id:
        return settings.instance_id
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class Endpoints:
    grpc: str
    rest: str
    metrics: str = ""


class Instance:
    """A serving instance. ``await start()`` binds both servers and joins the mesh; ``await stop()`` leaves it."""

    def __init__(
        self,
        settings: InstanceSettings,
        store: Store,
        adapters: AdapterRegistry,
        puller: Puller,
        *,
        keys: Keys | None = None,
        policy: Policy | None = None,
        clock: Callable[[], float] = time.time,
        runtimes: RuntimeSupervisor | None = None,
    ) -> None:
        self.settings = settings
        self.runtimes = runtimes  # started here, its lost copies reported to the agent
        self.store = store
        self.adapters = adapters
        self.puller = puller
        self.keys = keys or Keys()
        self.policy = policy or Policy(PolicySettings())
        self.clock = clock
        self.instance_id = _instance_id(settings)
        self.version = _version()
        self.metrics = Metrics(per_model_labels=settings.per_model_metrics)
        self.metrics.report_cluster(lambda: self.leader is not None and self.leader.is_leader)
        self.state = ClusterMirror(store, self.keys, clock=clock)
        self.series = TrafficSeries(self.state, clock=clock)
        self.views = ClusterOverview(
            self.state, self.instance_id, is_leader=lambda: self.leader is not None and self.leader.is_leader, series=self.series, clock=clock
        )
        self.router = Router(
            self.instance_id,
            self.state,
            forward_attempts=settings.forward_attempts,
            default_deadline_s=settings.default_deadline_s,
            forward_attempt_timeout_s=settings.forward_attempt_timeout_s,
            suspect_holder_s=settings.suspect_holder_s,
            forward_retry_backoff_s=settings.forward_retry_backoff_s,
            clock=clock,
            metrics=self.metrics,
        )
        self.router.max_message_bytes = settings.max_message_bytes
        self.management = Management(self.state, self.instance_id, clock=clock)
        self.agent: Agent | None = None
        self.leader: Leader | None = None
        self.endpoints: Endpoints | None = None
        self._grpc: grpc.aio.Server | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._rest_task: asyncio.Task[None] | None = None
        self._rest_sock: socket.socket | None = None
        self._metrics_server: asyncio.Server | None = None
        self.stopped = asyncio.Event()

    async def _join_store(self) -> None:
        """Load the cluster view; a store that is not reachable yet (etcd starting beside us, or
        slow) is retried with capped backoff for ``store_connect_timeout_s`` before giving up."""
        deadline = time.monotonic() + self.settings.store_connect_timeout_s
        delay = 0.2
        while True:
            try:
                await self.state.start()
                return
            except StoreError as exc:
                await self.state.stop()
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("store not reachable yet (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def start(self) -> Endpoints:
        s = self.settings
        await self._join_store()
        self._grpc, _ = build_grpc_server(
            self.router, self.management, max_message_bytes=s.max_message_bytes, version=self.version, metrics=self.metrics
        )
        port = self._grpc.add_insecure_port(f"{s.host}:{s.grpc_port}")
        if port == 0:
            raise RuntimeError(f"could not bind gRPC to {s.host}:{s.grpc_port}")
        await self._grpc.start()
        advertise = s.advertise_host or s.host
        grpc_addr = f"{advertise}:{port}"
        rest_addr = ""
        if s.rest_port >= 0:
            app = build_rest_app(
                self.router,
                self.management,
                max_message_bytes=s.max_message_bytes,
                version=self.version,
                metrics=self.metrics,
                extra={
                    "leader": lambda: self.leader.describe() if self.leader else {},
                    "self": self.describe,
                },
                views=self.views,
            )
            # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without it
            # every keep-alive response (headers and body written apart) waits ~40 ms for a delayed ACK
            sock = socket.socket(socket.AF_INET6 if ":" in s.host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((s.host, s.rest_port))
            sock.listen(1024)
            sock.setblocking(False)
            self._rest_sock = sock
            config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
            self._uvicorn = uvicorn.Server(config)
            self._uvicorn.install_signal_handlers = lambda: None  # type: ignore[method-assign,attr-defined]
            self._rest_task = asyncio.create_task(self._uvicorn.serve(sockets=[sock]))
            rest_addr = f"{advertise}:{sock.getsockname()[1]}"
            while not self._uvicorn.started:
                if self._rest_task.done():
                    self._rest_task.result()
                await asyncio.sleep(0.005)
        metrics_addr = ""
        if s.metrics_port >= 0:
            self._metrics_server = await serve_metrics(s.host, s.metrics_port, self.metrics.registry)
            metrics_addr = f"{advertise}:{self._metrics_server.sockets[0].getsockname()[1]}"
        self.series.start(s.dashboard_sample_s)
        self.endpoints = Endpoints(grpc=grpc_addr, rest=rest_addr, metrics=metrics_addr)
        self.agent = Agent(
            s,
            self.instance_id,
            grpc_addr,
            self.store,
            self.state,
            self.router,
            self.adapters,
            self.puller,
            rest_address=rest_addr,
            version=self.version,
            clock=self.clock,
            metrics=self.metrics,
            runtimes=self.runtimes,
        )
        if self.runtimes is not None:
            self.runtimes.on_lost = self.agent.copies_lost
            await self.runtimes.start()
        await self.agent.start()
        await self.state.wait_for(lambda: self.instance_id in self.state.instances.items, 10.0)
        if s.enable_scheduler:
            agent = self.agent
            self.leader = Leader(
                self.instance_id,
                self.store,
                self.state,
                self.policy,
                lambda: agent.lease,
                tick_s=s.scheduler_tick_s,
                failure_ttl_s=s.failure_ttl_s,
                clock=self.clock,
                metrics=self.metrics,
            )
            await self.leader.start()
        log.info("instance %s serving gRPC on %s, REST on %s", self.instance_id, grpc_addr, rest_addr or "-")
        return self.endpoints

    def describe(self) -> dict[str, object]:
        """This instance's own counters and copies (served at /v1/cluster as "self")."""
        agent = self.agent
        return {
            "instance_id": self.instance_id,
            "loads": agent.counters.loads if agent else 0,
            "load_failures": agent.counters.load_failures if agent else 0,
            "unloads": agent.counters.unloads if agent else 0,
            "misses": self.router.counters.misses,
            "local": self.router.counters.local,
            "forwarded": self.router.counters.forwarded,
            "forward_retries": self.router.counters.forward_retries,
            "copies": {m: c.state for m, c in agent.copies.items()} if agent else {},
            "used_bytes": agent.used_bytes if agent else 0,
            "store_connected": self.state.connected,
        }

    async def stop(self, *, graceful: bool = True) -> None:
        if graceful and self.agent is not None:
            with contextlib.suppress(Exception):
                await self.agent.drain(self.settings.shutdown_grace_s)
        if self.leader is not None:
            await self.leader.stop()
        if self.agent is not None:
            await self.agent.stop()
        if self.runtimes is not None:
            await self.runtimes.close()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
            if self._rest_task is not None:
                with contextlib.suppress(Exception):
                    await self._rest_task
        if self._rest_sock is not None:
            self._rest_sock.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
            await self._metrics_server.wait_closed()
            self._metrics_server = None
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        await self.series.stop()
        await self.router.close()
        await self.state.stop()
        self.stopped.set()
