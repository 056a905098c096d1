"""The adaptive policy in a live in-process mesh: it learns from the misses the leader sees, and says why it evicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mesh import LocalMesh, LocalMeshConfig, ModelInfoSpec, StoreSettings
from mesh._store import MemoryStore
from placement import AdaptivePolicy, PolicySettings
from tests.mesh.cluster import wait_until
from tests.mesh.models import add_model, answer, request_bytes


async def test_live_leader_learns_from_ghost_hits_and_explains_evictions(tmp_path: Path) -> None:
    cfg = LocalMeshConfig(
        instances=1,
        capacity_bytes=640 << 10,  # two of the 256 KiB models fit, not three
        data_dir=tmp_path / "mesh",
        store=StoreSettings(kind="memory"),
        allowed_roots=[tmp_path],
        instance_overrides={"lease_ttl_s": 3, "publish_interval_s": 0.2, "scheduler_tick_s": 0.5},
        policy=PolicySettings(kind="adaptive"),
    )
    mesh = LocalMesh(cfg, store=MemoryStore())
    await mesh.start()
    try:
        inst = mesh.instances[0]
        names = [f"m{k}" for k in range(3)]
        for k, name in enumerate(names):
            path = add_model(tmp_path / name / "model.onnx", float(k + 1))
            await inst.management.register_model(name, ModelInfoSpec(type="onnx", path=str(path)))
        for rnd in range(3):  # round-robin over three models where two fit: every request after the first two misses
            for k, name in enumerate(names):
                out = answer(await inst.router.infer_bytes(name, request_bytes(name), timeout_s=30))
                assert np.allclose(out, float(k + 1)), (rnd, name)
        leader = inst.leader
        assert leader is not None and isinstance(leader.policy, AdaptivePolicy)
        # the one decision log (the store's, mirrored), as the leader describes it
        def evictions() -> list[dict[str, Any]]:
            return [d for d in leader.describe()["decisions"] if d["kind"] == "unload" and d["reason"].startswith("evict")]

        await wait_until(lambda: len(evictions()) >= 4, 10, "four evictions in the decision log")
        for d in evictions():
            assert "horizon " in d["reason"] and "learned from ghost hits" in d["reason"]
        st = leader.policy.state()
        assert st.hits_recent + st.hits_frequent >= 3  # the evicted models came back: regret the leader learned from
    finally:
        await mesh.stop()
