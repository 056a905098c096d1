"""The controller test environment: stand-in API server + mesh store + controllers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controller import Controller, ControllerSettings, KubeClient, build_api_client
from mesh import ClusterMirror, Keys, Management, Store
from tests.controller.apiserver import FakeApiServer


@dataclass
class ControllerEnv:
    api: FakeApiServer
    cluster: Any
    store: Store
    prefix: str
    made: list[tuple[Controller, KubeClient, ClusterMirror]] = field(default_factory=list)

    async def start_controller(self, **overrides: Any) -> Controller:
        settings = ControllerSettings(
            kube_host=self.api.url,
            health_port=-1,
            retry_initial_s=0.05,
            retry_max_s=0.5,
            watch_timeout_s=30,
            request_timeout_s=10,
            **overrides,
        )
        state = ClusterMirror(self.store, Keys(self.prefix))
        await state.start()
        kube = KubeClient(build_api_client(settings), settings)
        ctl = Controller(settings, kube, state, Management(state, "controller-test", store=self.store))
        self.made.append((ctl, kube, state))
        await ctl.start()
        return ctl

    async def stop_controller(self, ctl: Controller) -> None:
        for entry in list(self.made):
            if entry[0] is ctl:
                self.made.remove(entry)
                await stop_controller_parts(*entry)

    async def wait(self, predicate: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
        """Wait (on the stand-in's condition variable, in a thread) until ``predicate()`` holds."""
        ok = await asyncio.to_thread(self.api.wait, predicate, timeout_s)
        assert ok, f"timed out after {timeout_s}s waiting for {what}"

    def obj(self, plural: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        """The current object (call inside a predicate: the lock is held there)."""
        return self.api.objects.get((plural, namespace, name))

    def status(self, plural: str, name: str, namespace: str = "default") -> dict[str, Any]:
        o = self.obj(plural, name, namespace)
        return (o or {}).get("status") or {}


async def stop_controller_parts(ctl: Controller, kube: KubeClient, state: ClusterMirror) -> None:
    await ctl.stop()
    await kube.close()
    await state.stop()
