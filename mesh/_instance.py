"""One instance: wires store mirror, router, data plane, agent, leader and both servers (the single place
that builds them, in :meth:`Instance.__init__`; :meth:`Instance.start` / :meth:`Instance.stop` run them in
a fixed order). :func:`assemble_instance` also builds the parts an instance is given (puller, runtime
adapters) for the two entry points that run instances (``modelmux serve`` and :class:`LocalMesh`)."""

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
from fastapi import FastAPI

from placement import Policy, PolicySettings
from puller import Puller, PullerSettings, StorageConfig
from runtime_adapters import (
    AdapterRegistry,
    AdapterSettings,
    BatchingSettings,
    build_registry,
    collect_for_freezing,
)

from ._agent import Agent
from ._caps import RegistrationCaps
from ._cluster_mirror import ClusterMirror
from ._dashboard import ClusterOverview, TrafficSeries
from ._dataplane import DataPlane
from ._grpc_edge import build_grpc_server
from ._grpc_health import Health
from ._health_port import start_health_port
from ._leader import Leader
from ._limits import admission_limits
from ._loaded_copies import LoadedCopies
from ._management import Management
from ._metrics import Metrics
from ._metrics_http import serve_metrics
from ._peer_link import PeerLinkServer
from ._request_metrics import RequestMetrics
from ._rest_edge import build_rest_app
from ._router import Router
from ._runtimes import RuntimeSettings, RuntimeSupervisor, adapter_env
from ._security import Security, build_security, exposure_warning, peer_cert_protocol
from ._settings import InstanceSettings
from ._store import Store, StoreError
from ._store_schema import Keys
from ._tasks import cancel_and_wait

log = logging.getLogger(__name__)
STORE_USAGE_INTERVAL_S = 15.0  # how often the store-usage metric is refreshed (registrations read it too)


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
    health: str = ""
    link: str = ""  # the peer link (mesh._peer_link); "" when off


class Instance:
    """A serving instance. ``await start()`` binds both servers and joins the mesh; ``await stop()`` leaves it.

    Start order: mirror (store) -> gRPC and REST servers -> metrics port -> agent (lease, record,
    reconcile) -> leader (campaign). Stop runs it backwards: drain (graceful) -> leader -> agent ->
    servers -> router channels -> mirror -> the parts it owns (puller, adapters).
    """

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
        owns_parts: bool = False,
        batching: BatchingSettings | None = None,
        runtimes: RuntimeSupervisor | None = None,
    ) -> None:
        self.settings = settings
        self.owns_parts = owns_parts  # close the puller and the adapters on stop
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
        self.metrics.report_cluster(lambda: self.leader.is_leader)
        self.state = ClusterMirror(store, self.keys, clock=clock)
        self.series = TrafficSeries(self.state, clock=clock)
        self.views = ClusterOverview(
            self.state, self.instance_id, is_leader=lambda: self.leader.is_leader, series=self.series, clock=clock
        )
        self.loaded = LoadedCopies()  # written by the agent only, read by the router
        self.router = Router(
            self.instance_id,
            self.state,
            store,
            self.loaded,
            forward_attempts=settings.forward_attempts,
            default_deadline_s=settings.default_deadline_s,
            forward_attempt_timeout_s=settings.forward_attempt_timeout_s,
            suspect_holder_s=settings.suspect_holder_s,
            forward_retry_backoff_s=settings.forward_retry_backoff_s,
            clock=clock,
            metrics=self.metrics,
            request_metrics=RequestMetrics(self.metrics, self.state),
        )
        self.router.max_message_bytes = settings.max_message_bytes
        self.dataplane = DataPlane(self.router, version=self.version)
        self.dataplane.admission.configure(admission_limits(settings))
        self.management = Management(self.state, self.instance_id, store=store, clock=clock, puller=puller)
        self.management.caps = RegistrationCaps(settings.max_key_bytes, settings.max_record_bytes, settings.max_models_per_tenant)
        self.management.room.on_usage = lambda u: self.metrics.set_store_usage(u.used_bytes, u.quota_bytes)
        self._room_task: asyncio.Task[None] | None = None
        # the placement meter's window: what the copies report and the leader merges with; the
        # policy's own frequency horizon unless set (every instance of a cluster runs the same)
        usage_window_s = settings.usage_window_s or self.policy.settings.rate_tau_s
        self.agent = Agent(
            settings,
            self.instance_id,
            "",  # advertised once the servers are bound (start)
            store,
            self.state,
            self.router,
            adapters,
            puller,
            loaded=self.loaded,
            runtimes=self.runtimes,
            version=self.version,
            clock=clock,
            metrics=self.metrics,
            batching=batching or BatchingSettings(),  # MODELMUX_BATCHING_*, read once per instance
            usage_window_s=usage_window_s,
        )
        self.leader = Leader(
            self.instance_id,
            store,
            self.state,
            self.policy,
            lambda: self.agent.lease,
            tick_s=settings.scheduler_tick_s,
            failure_ttl_s=settings.failure_ttl_s,
            clock=clock,
            metrics=self.metrics,
            # the window the agents meter copies with: every instance of a cluster runs the same one
            rate_window_s=settings.rate_window_s,
            usage_window_s=usage_window_s,
        )  # campaigns only with enable_scheduler
        self.endpoints: Endpoints | None = None
        self._grpc: grpc.aio.Server | None = None
        # grpc.health.v1.Health of the serving port (also served by a plaintext health port when one is set)
        self.health: Health | None = None
        self._uvicorn: uvicorn.Server | None = None
        self.rest_app: FastAPI | None = None  # the REST edge's ASGI app (None: no REST port)
        self._rest_task: asyncio.Task[None] | None = None
        self._rest_sock: socket.socket | None = None
        self._metrics_server: asyncio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._link_server: PeerLinkServer | None = None
        self._security_tasks: list[asyncio.Task[None]] = []
        self.security = Security()
        self.exposure_warning: str | None = None  # set when --insecure lets an exposed bind start
        self.stopped = asyncio.Event()

    async def _secure(self) -> Security:
        """Read the auth file and TLS files (off the loop), refuse an exposed bind without them
        (unless insecure), and hand the pieces to the data plane and the router."""
        s = self.settings
        security = await asyncio.to_thread(
            build_security,
            auth_file=s.auth_file,
            tls_cert=s.tls_cert,
            tls_key=s.tls_key,
            tls_client_ca=s.tls_client_ca,
            peer_token_file=s.peer_token_file,
            peer_tls_server_name=s.peer_tls_server_name,
            peer_tls_ca=s.peer_tls_ca_file,
        )
        self.exposure_warning = exposure_warning([s.host], security, insecure=s.insecure)
        if self.exposure_warning:
            log.warning("%s", self.exposure_warning)
        self.dataplane.authenticator = security.authenticator
        self.router.peer_credentials = security.peer_credentials
        self.router.peer_call_metadata = security.peer_metadata
        self.router.peer_server_name = security.peer_server_name
        self.router.peer_ssl_context = security.peer_ssl_context
        self.router.peer_link = self.settings.forward_over_link
        self._security_tasks = [asyncio.create_task(watch()) for watch in security.background_tasks()]
        self.security = security
        return security

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
        tls = (await self._secure()).server_tls
        await self._join_store()
        self._grpc, _ = build_grpc_server(self.dataplane, self.management, max_message_bytes=s.max_message_bytes)
        self.health = Health(self._grpc, reflection_on=s.grpc_reflection)
        await self.health.set_not_serving()  # until joined (the servicer starts with the server SERVING)
        if tls is not None:
            port = self._grpc.add_secure_port(f"{s.host}:{s.grpc_port}", tls.grpc_credentials())
        else:
            port = self._grpc.add_insecure_port(f"{s.host}:{s.grpc_port}")
        if port == 0:
            raise RuntimeError(f"could not bind gRPC to {s.host}:{s.grpc_port}")
        await self._grpc.start()
        advertise = s.advertise_host or s.host
        grpc_addr = f"{advertise}:{port}"
        rest_addr = ""
        if s.rest_port >= 0:
            app = build_rest_app(
                self.dataplane,
                self.management,
                self.state,
                max_message_bytes=s.max_message_bytes,
                version=self.version,
                metrics=self.metrics,
                extra={
                    "leader": lambda: self.leader.describe() if s.enable_scheduler else {},
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
            self.rest_app = app
            tls_kwargs: dict[str, object] = {}
            if tls is not None:  # one reloading SSLContext; the client certificate's names reach the routes
                tls_kwargs = {"ssl_context_factory": lambda _config, _default: tls.ssl_context, "http": peer_cert_protocol()}
            config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", **tls_kwargs)  # type: ignore[arg-type]
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
            self._metrics_server = await serve_metrics(
                s.host, s.metrics_port, self.metrics.registry, ssl=tls.ssl_context if tls is not None else None
            )
            metrics_addr = f"{advertise}:{self._metrics_server.sockets[0].getsockname()[1]}"
        link_addr = ""
        if s.peer_link_port >= 0:  # same bind host and TLS as the gRPC port; the caller checked at its hello
            self._link_server = PeerLinkServer(
                self.dataplane, max_frame_bytes=s.max_message_bytes + (64 << 10), ssl_context=tls.ssl_context if tls is not None else None
            )
            link_addr = f"{advertise}:{await self._link_server.start(s.host, s.peer_link_port)}"
        health_addr = ""
        if s.health_port >= 0:  # plaintext, Health only: kubelet gRPC probes cannot speak TLS
            self._health_server, hport = await start_health_port(s.host, s.health_port, getattr(self, "health", None))
            health_addr = f"{advertise}:{hport}"
        self.series.start(s.dashboard_sample_s)
        self._room_task = asyncio.create_task(self.management.room.watch(STORE_USAGE_INTERVAL_S), name="store-usage")
        self.endpoints = Endpoints(grpc=grpc_addr, rest=rest_addr, metrics=metrics_addr, health=health_addr, link=link_addr)
        self.agent.address, self.agent.rest_address, self.agent.link_address = grpc_addr, rest_addr, link_addr
        self.router.address = grpc_addr  # what its local hits name as their holder (mesh._holder)
        if self.runtimes is not None:
            self.runtimes.on_lost = self.agent.copies_lost
            await self.runtimes.start()
        await self.agent.start()
        await self.state.wait_for(lambda: self.instance_id in self.state.instances.items, 10.0)
        if s.enable_scheduler:
            await self.leader.start()
        # one full collection before serving, where the process's long-lived heap policy runs: it
        # freezes what start-up built (modules, the mirror's records), so the first full
        # collection's pause falls here and not on the first requests
        collect_for_freezing()
        await self.health.set_serving()
        log.info("instance %s serving gRPC on %s, REST on %s", self.instance_id, grpc_addr, rest_addr or "-")
        return self.endpoints

    def describe(self) -> dict[str, object]:
        """This instance's own counters and copies (served at /api/v1/cluster as "self")."""
        agent = self.agent
        return {
            "instance_id": self.instance_id,
            "loads": agent.counters.loads,
            "load_failures": agent.counters.load_failures,
            "unloads": agent.counters.unloads,
            "misses": self.router.counters.misses,
            "local": self.router.counters.local,
            "forwarded": self.router.counters.forwarded,
            "forward_retries": self.router.counters.forward_retries,
            # the peer link (mesh._peer_link): its address, forwards sent over links, forwards
            # that fell back to gRPC, and peers' hellos this instance refused
            "link_address": self.agent.link_address,
            "linked": self.router.counters.linked,
            "link_fallbacks": self.router.counters.link_fallbacks,
            "link_refused": self._link_server.refused if self._link_server is not None else 0,
            "copies": {m: c.state for m, c in agent.copies.items()},
            "used_bytes": agent.used_bytes,
            "store_connected": self.state.connected,
            # where copies run: each runtime process (or external server) and the copies it holds;
            # a copy in none of them runs in this process
            "runtimes": self.runtimes.describe() if self.runtimes is not None else [],
        }

    async def stop(self, *, graceful: bool = True) -> None:
        try:
            await self._stop(graceful)
        finally:
            if self.owns_parts:
                with contextlib.suppress(Exception):
                    await self.adapters.close()
                with contextlib.suppress(Exception):
                    await self.puller.close()

    async def _stop(self, graceful: bool) -> None:
        if self.health is not None:  # first: probes and Watch streams see it while the instance drains
            await self.health.set_not_serving()
        if graceful and self.agent.lease:  # joined the mesh: move models away first
            with contextlib.suppress(Exception):
                await self.agent.drain(self.settings.shutdown_grace_s)
        await self.leader.stop()
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
        if self._link_server is not None:
            await self._link_server.close(grace_s=1.0)
            self._link_server = None
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._health_server is not None:
            await self._health_server.stop(grace=None)
            self._health_server = None
        background = [*self._security_tasks, *([self._room_task] if self._room_task is not None else [])]
        self._security_tasks, self._room_task = [], None
        for task in background:
            await cancel_and_wait(task)
        await self.series.stop()
        await self.router.close()
        await self.state.stop()
        self.stopped.set()


async def assemble_instance(
    settings: InstanceSettings,
    store: Store,
    *,
    puller_settings: PullerSettings,
    storage_config: StorageConfig | None = None,
    adapter_settings: AdapterSettings | None = None,
    keys: Keys | None = None,
    policy: Policy | None = None,
    batching: BatchingSettings | None = None,
    runtime_settings: RuntimeSettings | None = None,
) -> Instance:
    """An instance with its own puller, runtime adapters and runtime supervisor (closed by its
    ``stop()``): what every process that runs instances builds, written once.

    Model types in ``runtime_settings.isolated_types`` (default: TorchScript and torch.export,
    i.e. model code) run in worker processes, started on the first load that needs one; the
    others (ONNX, XGBoost) in this process. ``runtime_settings`` defaults to
    ``MODELMUX_RUNTIMES_*``; ``isolated_types=()`` and no external runtime: no supervisor."""
    adapter_settings = adapter_settings or AdapterSettings()
    rs = runtime_settings if runtime_settings is not None else RuntimeSettings()
    runtimes = None
    if rs.worker_count() or rs.external:
        runtimes = RuntimeSupervisor(rs, worker_env=adapter_env(adapter_settings), default_timeout_s=settings.default_deadline_s)
    puller = Puller(puller_settings, storage_config)
    await puller.start()
    adapters = build_registry(adapter_settings)
    return Instance(
        settings, store, adapters, puller, keys=keys, policy=policy, owns_parts=True, batching=batching, runtimes=runtimes
    )
