"""The work queue's semantics and the controller process entry point (run_controller + health)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from controller import Controller, ControllerSettings, WorkQueue, run_controller
from mesh import StoreSettings
from tests.controller.apiserver import DEFAULT_RESOURCES, FakeApiServer


async def test_queue_dedups_and_requeues_dirty_keys() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.add("b")
    q.add("a")
    assert len(q) == 2
    assert await q.get() == "a"
    q.add("a")  # changed while in progress: not handed to a second worker ...
    assert await q.get() == "b"
    assert len(q) == 0
    q.done("a")  # ... but queued again once the first is done
    assert await q.get() == "a"
    q.done("a")
    q.done("b")
    assert q.idle


async def test_queue_retries_with_growing_backoff_and_forgets() -> None:
    q: WorkQueue[str] = WorkQueue(retry_initial_s=0.01, retry_max_s=0.04)
    delays = [q.retry("k") for _ in range(4)]
    assert delays == [0.01, 0.02, 0.04, 0.04]
    assert not q.idle  # a retry is pending
    assert await asyncio.wait_for(q.get(), 5) == "k"
    q.done("k")
    assert q.failures("k") == 4
    q.forget("k")
    assert q.failures("k") == 0
    assert q.idle


async def test_queue_close_wakes_workers() -> None:
    q: WorkQueue[str] = WorkQueue()
    waiter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.close()
    try:
        await asyncio.wait_for(waiter, 5)
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("get() returned after close")
    q.add("x")
    assert len(q) == 0


async def test_run_controller_serves_health_and_reconciles() -> None:
    with FakeApiServer() as api:
        settings = ControllerSettings(kube_host=api.url, health_port=0, health_host="127.0.0.1", retry_initial_s=0.05)
        stop = asyncio.Event()
        started: asyncio.Future[Controller] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            run_controller(settings, StoreSettings(kind="memory"), stop=stop, on_started=started.set_result)
        )
        ctl = await asyncio.wait_for(started, 30)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ctl.health_port}") as client:
            assert (await client.get("/healthz")).status_code == 200
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
        # no instance in this store: the model is registered and waits in Standby
        api.create({
            "apiVersion": "serving.kserve.io/v1alpha1",
            "kind": "Predictor",
            "metadata": {"name": "lonely", "namespace": "default"},
            "spec": {"modelType": {"name": "onnx"}, "path": "/models/m.onnx"},
        })

        def registered() -> bool:
            st: dict[str, Any] = (api.objects.get(("predictors", "default", "lonely")) or {}).get("status") or {}
            return st.get("activeModelState") in ("Standby", "Loading") and st.get("transitionStatus") == "UpToDate"

        assert await asyncio.to_thread(api.wait, registered, 30)
        stop.set()
        await asyncio.wait_for(task, 30)
        assert not ctl.started


async def test_missing_crds_do_not_block_the_controller() -> None:
    # leases are built in (coordination.k8s.io): only the CRDs may be missing
    only_predictors = tuple(r for r in DEFAULT_RESOURCES if r.plural in ("predictors", "events", "leases"))
    with FakeApiServer(only_predictors) as api:
        settings = ControllerSettings(kube_host=api.url, health_port=-1, retry_initial_s=0.05, retry_max_s=0.2)
        stop = asyncio.Event()
        started: asyncio.Future[Controller] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(run_controller(settings, StoreSettings(kind="memory"), stop=stop, on_started=started.set_result))
        ctl = await asyncio.wait_for(started, 30)
        assert ctl.informers["InferenceService"].missing
        assert ctl.runtime_informer is not None and ctl.runtime_informer.missing
        assert ctl.ready
        api.create({
            "apiVersion": "serving.kserve.io/v1alpha1",
            "kind": "Predictor",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"modelType": {"name": "onnx"}, "path": "/models/m.onnx"},
        })

        def registered() -> bool:
            st: dict[str, Any] = (api.objects.get(("predictors", "default", "p")) or {}).get("status") or {}
            return st.get("transitionStatus") == "UpToDate" and st.get("activeModelState") in ("Standby", "Loading")

        assert await asyncio.to_thread(api.wait, registered, 30)
        stop.set()
        await asyncio.wait_for(task, 30)
