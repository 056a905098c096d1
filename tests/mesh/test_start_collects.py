"""An instance makes one full collection before it reports SERVING, so that the long-lived heap
policy (runtime_adapters._heap) freezes what start-up built before the first requests."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from mesh import LocalMesh, LocalMeshConfig, StoreSettings

pytestmark = pytest.mark.asyncio


async def test_start_makes_a_full_collection_before_serving(tmp_path: Path) -> None:
    full: list[bool] = []  # per full collection during start: was the instance serving yet?

    def seen(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2 and mesh.instances:
            health = getattr(mesh.instances[0], "health", None)
            full.append(bool(health and health.serving))

    mesh = LocalMesh(LocalMeshConfig(instances=1, data_dir=tmp_path, store=StoreSettings(kind="memory"), allowed_roots=[tmp_path]))
    gc.callbacks.append(seen)
    try:
        await mesh.start()
        assert False in full  # a full collection ran before the instance reported SERVING
        assert mesh.instances[0].health.serving
    finally:
        gc.callbacks.remove(seen)
        await mesh.stop()
