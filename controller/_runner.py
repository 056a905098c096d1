"""Running the controller as a process: leader election, health probes, the entry point.

- :class:`ElectedController` runs a :class:`Controller` only while this replica holds the
  Lease (``_election``), a fresh one per term.
- :func:`serve_health` answers the kubelet's ``/healthz`` and ``/readyz`` probes.
- :func:`run_controller` builds everything (store client, store mirror, in-process
  Management, Kubernetes client) and runs until SIGINT / SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable

from mesh import ClusterMirror, Keys, Management, StoreError, StoreSettings, build_store, serve_http

from ._controller import Controller
from ._election import LeaderElector
from ._kube_client import KubeClient, build_api_client
from ._settings import ControllerSettings

log = logging.getLogger(__name__)


class ElectedController:
    """Runs a :class:`Controller` only while this replica leads (or always, with election off).

    Each term gets a fresh controller from ``make`` (informers list again, so a new leader
    starts from what the API server says). Losing the Lease stops the controller at once and
    the replica campaigns again; a clean stop releases the Lease for a fast takeover.
    """

    def __init__(self, settings: ControllerSettings, kube: KubeClient, make: Callable[[], Controller]) -> None:
        self.settings = settings
        self.make = make
        self.controller: Controller | None = None
        self.terms = 0
        self.elector: LeaderElector | None = None
        if settings.leader_election:
            identity = settings.identity or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
            namespace = settings.lease_namespace or os.environ.get("POD_NAMESPACE") or "default"
            self.elector = LeaderElector(
                kube, namespace, settings.lease_name, identity,
                lease_duration_s=settings.lease_duration_s,
                renew_deadline_s=settings.renew_deadline_s,
                retry_period_s=settings.retry_period_s,
            )

    @property
    def leading(self) -> bool:
        return self.controller is not None

    @property
    def ready(self) -> bool:
        """A standby replica is ready (healthy, waiting); a leader once its controller has synced."""
        return self.controller.ready if self.controller is not None else self.elector is not None

    async def run(self, stop: asyncio.Event, on_started: Callable[[Controller], None] | None = None) -> None:
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                if self.elector is not None and not await self.elector.acquire(stop):
                    break
                ctl = self.make()
                self.controller = ctl
                self.terms += 1
                lost = self.elector.lost if self.elector is not None else asyncio.Event()
                losing = asyncio.create_task(lost.wait())
                try:
                    await ctl.start()
                    if on_started is not None and not lost.is_set():
                        on_started(ctl)
                    await asyncio.wait({stopping, losing}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    losing.cancel()
                    self.controller = None
                    await ctl.stop()
                if lost.is_set():
                    log.warning("controller lost its lease: reconciling stopped; campaigning again")
        finally:
            stopping.cancel()
            if self.elector is not None:
                await self.elector.release()


async def serve_health(host: str, port: int, ready: Callable[[], bool]) -> asyncio.Server:
    """``/healthz`` (always 200 while the loop runs) and ``/readyz`` (200 once synced)."""

    def route(_method: str, path: str) -> tuple[str, str, bytes]:
        ok = path.startswith("/healthz") or (path.startswith("/readyz") and ready())
        return ("200 OK", "text/plain", b"ok\n") if ok else ("503 Service Unavailable", "text/plain", b"not ready\n")

    return await serve_http(host, port, route, read_timeout_s=5.0)


async def run_controller(
    settings: ControllerSettings,
    store_settings: StoreSettings | None = None,
    *,
    stop: asyncio.Event | None = None,
    on_started: Callable[[Controller], None] | None = None,
) -> None:
    """Run the controller until SIGINT / SIGTERM (or until ``stop`` is set).

    Builds everything it needs: the store client (``MODELMUX_STORE_*`` unless given), the
    cluster view, an in-process Management and the Kubernetes client. ``on_started`` is
    called once the controller has synced (``controller.health_port`` is the bound port).
    """
    store_settings = store_settings or StoreSettings()
    store = build_store(store_settings)
    state = ClusterMirror(store, Keys(store_settings.prefix))
    instance_id = settings.instance_id or f"controller-{socket.gethostname()}"
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    own_signals = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            own_signals.append(sig)
    kube: KubeClient | None = None
    health: asyncio.Server | None = None
    try:
        delay = settings.retry_initial_s
        while True:  # the store may come up after us: wait for it rather than exit
            try:
                await state.start()
                break
            except StoreError as exc:
                await state.stop()
                log.warning("store not reachable (%s); retrying in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    return
                delay = min(delay * 2, settings.retry_max_s)
        api = await asyncio.to_thread(build_api_client, settings)
        kube = KubeClient(api, settings)
        k = kube
        runner = ElectedController(settings, kube, lambda: Controller(settings, k, state, Management(state, instance_id, store=store)))
        health_port = 0
        if settings.health_port >= 0:
            health = await serve_health(settings.health_host, settings.health_port, lambda: runner.ready)
            health_port = int(health.sockets[0].getsockname()[1])

        def started(ctl: Controller) -> None:
            ctl.health_port = health_port
            log.info("controller %s started (namespace: %s)", instance_id, settings.namespace or "all")
            if on_started is not None:
                on_started(ctl)

        await runner.run(stop, started)
    finally:
        for sig in own_signals:
            loop.remove_signal_handler(sig)
        if health is not None:
            health.close()
            await health.wait_closed()
        if kube is not None:
            await kube.close()
        await state.stop()
        await store.close()
