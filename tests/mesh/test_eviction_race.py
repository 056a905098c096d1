"""A request that arrives while its only copy is being unloaded on this very instance.

The store still lists the copy as loaded (its record is deleted when the unload finishes), but
the router has already dropped it: the router must wait for the unload to finish and then load
the model again, not spin (which would starve the event loop and the unload with it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from mesh import ModelInfoSpec
from tests.mesh.cluster import MemoryCluster, wait_until
from tests.mesh.models import add_model, answer, request_bytes


async def test_request_during_own_unload_waits_and_reloads(tmp_path: Path) -> None:
    cluster = MemoryCluster(1, tmp_path, capacity_bytes=64 << 20)
    await cluster.start()
    release = asyncio.Event()
    try:
        assert cluster.mesh is not None
        inst = cluster.mesh.instances[0]
        path = add_model(tmp_path / "m" / "model.onnx", 7.0)
        await inst.management.register_model("m", ModelInfoSpec(type="onnx", path=str(path)))
        assert np.allclose(answer(await inst.router.infer_bytes("m", request_bytes("m"), timeout_s=20)), 7.0)

        copy = inst.agent.copies["m"]
        assert copy.loaded is not None
        real_unload = copy.loaded.unload

        async def slow_unload() -> None:
            await release.wait()
            await real_unload()

        copy.loaded.unload = slow_unload  # type: ignore[method-assign]
        # take the assignment away, as an eviction would: the agent starts unloading
        await inst.store.delete(inst.keys.assignment("m"))
        await wait_until(lambda: copy.state == "unloading", 10, "unload started")
        assert inst.state.holders("m") == (inst.instance_id,)  # the store still says loaded

        request = asyncio.create_task(inst.router.infer_bytes("m", request_bytes("m"), timeout_s=10))
        # the request runs into the race and asks for a load; the event loop stays free while it
        # waits (a spinning request would starve this poll and the unload with it)
        await wait_until(lambda: inst.router.counters.misses >= 1, 10, "the request to ask for a load")
        assert not request.done()
        release.set()
        out = answer(await asyncio.wait_for(request, 20))
        assert np.allclose(out, 7.0)
        assert inst.agent.counters.unloads == 1
        assert inst.agent.counters.loads == 2  # loaded again after the unload finished
    finally:
        release.set()
        await cluster.close()
