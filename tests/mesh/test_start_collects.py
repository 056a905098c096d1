"""Where the long-lived heap policy (runtime_adapters._heap) runs, an instance makes one full
collection before it reports SERVING, so that what start-up built is frozen before the first
requests; without the policy it makes none (it would leave nothing behind, and cost every start)."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from mesh import LocalMesh, LocalMeshConfig, StoreSettings
from runtime_adapters._heap import LongLivedHeap
from tests.mesh.cluster import wait_until

pytestmark = pytest.mark.asyncio


async def test_start_makes_a_full_collection_before_serving(tmp_path: Path) -> None:
    full: list[bool] = []  # per full collection during start: was the instance serving yet?

    def seen(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2 and mesh.instances:
            health = getattr(mesh.instances[0], "health", None)
            full.append(bool(health and health.serving))

    mesh = LocalMesh(LocalMeshConfig(instances=1, data_dir=tmp_path, store=StoreSettings(kind="memory"), allowed_roots=[tmp_path]))
    heap = LongLivedHeap(refresh_s=3600, poll_s=0.01)
    heap.start()
    gc.callbacks.append(seen)
    try:
        await mesh.start()
        assert False in full  # a full collection ran before the instance reported SERVING
        assert mesh.instances[0].health.serving
        await wait_until(lambda: heap.freezes >= 1, 10, "what start-up built frozen")
    finally:
        gc.callbacks.remove(seen)
        await heap.stop()
        await mesh.stop()
