"""Faults in runtime processes are contained (real worker processes): crash, hang, memory
blow-up, crash loops, leaks. Another runtime's model under steady traffic sees no error."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh._runtimes import RuntimeSettings, RuntimeSupervisor
from runtime_adapters import ModelLoadError, ModelNotLoaded, ModelSpec
from tests import model_factory as mf
from tests.mesh.runtimes.rthelp import (
    HOSTILE_WORKER,
    Traffic,
    fp32_request,
    open_up,
    readable_dir,
    wait_for,
)

FAST = {
    "worker_module": HOSTILE_WORKER,
    "isolated_types": ("pytorch", "hostile"),
    "health_interval_s": 0.2,
    "health_timeout_s": 1.0,
    "health_failures": 3,
    "restart_backoff_s": 0.05,
    "memory_limit_bytes": 4 << 30,
    "start_workers": "at_start",
}


class Lost:
    def __init__(self) -> None:
        self.events: list[tuple[list[str], str, float]] = []

    def __call__(self, models: list[str], reason: str) -> None:
        self.events.append((models, reason, time.monotonic()))


@pytest.fixture
async def two_runtimes() -> AsyncIterator[tuple[RuntimeSupervisor, Lost, Path]]:
    lost = Lost()
    with readable_dir() as d:
        sup = RuntimeSupervisor(RuntimeSettings(count=2, **FAST), on_lost=lost)
        await sup.start()
        try:
            yield sup, lost, d
        finally:
            await sup.close()


async def _good_and_hostile(sup: RuntimeSupervisor, d: Path, action: str) -> tuple[Any, Any]:
    path = open_up(mf.make_torchscript_model(d / "good"))
    good = await sup.load(ModelSpec("good", "pytorch"), path.parent)
    hostile = await sup.load(ModelSpec("bad", "hostile", options={"action": action}), d)
    assert good.runtime_name != hostile.runtime_name  # copies spread over the runtimes
    return good, hostile


@pytest.mark.parametrize("fault", ["kill9", "exit", "segv", "sigstop"])
async def test_runtime_fault_is_contained(two_runtimes: tuple[RuntimeSupervisor, Lost, Path], fault: str) -> None:
    sup, lost, d = two_runtimes
    good, bad = await _good_and_hostile(sup, d, {"exit": "exit", "segv": "segv"}.get(fault, "echo"))
    victim = next(r for r in sup.runtimes if r.name == bad.runtime_name)
    old_pid = victim.pid
    assert old_pid is not None
    traffic = Traffic()
    runner = asyncio.create_task(traffic.run(good, fp32_request("good", good.metadata.inputs[0].name, [1, 2, 3, 4])))
    await wait_for(lambda: traffic.ok >= 5, 10, "steady traffic")
    t0 = time.monotonic()
    if fault == "kill9":
        os.kill(old_pid, signal.SIGKILL)
    elif fault == "sigstop":
        os.kill(old_pid, signal.SIGSTOP)
    else:
        with pytest.raises(ModelNotLoaded):
            await bad.infer_bytes(fp32_request("bad", "INPUT0", [1.0]), 10.0)
    await wait_for(lambda: lost.events, 10, "the copies to be reported lost")
    detected = lost.events[0][2] - t0
    models, reason = lost.events[0][0], lost.events[0][1]
    assert models == ["bad"]
    assert ("hung" in reason) if fault == "sigstop" else ("crashed" in reason)
    await wait_for(lambda: victim.ready.is_set() and victim.pid not in (None, old_pid), 30, "a fresh runtime")
    again = await sup.load(ModelSpec("bad", "hostile", options={"action": "echo"}), d)
    back = time.monotonic() - t0
    await wait_for(lambda: traffic.ok >= 10, 10, "more traffic")
    traffic.stop.set()
    await runner
    assert traffic.errors == []
    assert again.runtime_name == victim.name or again.runtime_name  # served again
    assert bad.status.name == "UNLOADED" and bad.lost_reason == reason
    print(f"\n{fault}: lost reported after {detected:.3f}s, copy back after {back:.3f}s, {traffic.ok} good requests")


async def test_memory_blow_up_is_refused_by_the_limit(two_runtimes: tuple[RuntimeSupervisor, Lost, Path]) -> None:
    sup, lost, d = two_runtimes
    good, bad = await _good_and_hostile(sup, d, "alloc")
    victim = next(r for r in sup.runtimes if r.name == bad.runtime_name)
    pid = victim.pid
    # the worker's own limits, soft and hard (model code cannot raise them): address space, no core
    limits = {line[:26].strip(): line[26:].split()[:2] for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]}
    limit = str(sup.settings.memory_limit_bytes)
    assert limits["Max address space"] == [limit, limit] and limits["Max core file size"] == ["0", "0"], limits
    traffic = Traffic()
    runner = asyncio.create_task(traffic.run(good, fp32_request("good", good.metadata.inputs[0].name, [1, 2, 3, 4])))
    await wait_for(lambda: traffic.ok >= 5, 10, "steady traffic")
    with pytest.raises((grpc.aio.AioRpcError, ModelNotLoaded)):
        await bad.infer_bytes(fp32_request("bad", "INPUT0", [1.0]), 20.0)
    await wait_for(lambda: traffic.ok >= 10, 10, "more traffic")
    traffic.stop.set()
    await runner
    assert traffic.errors == []
    # either the runtime refused the allocation and lives on, or it died and was replaced
    if lost.events:
        assert lost.events[0][0] == ["bad"]
        await wait_for(lambda: victim.ready.is_set() and victim.pid != pid, 30, "a fresh runtime")
    else:
        assert victim.pid == pid and victim.ready.is_set()


async def test_crash_looping_model_is_marked_failed() -> None:
    lost = Lost()
    with readable_dir() as d:
        sup = RuntimeSupervisor(RuntimeSettings(count=1, crash_loop_strikes=3, **FAST), on_lost=lost)
        await sup.start()
        try:
            spec = ModelSpec("looper", "hostile", options={"action": "exit_on_load"})
            for _ in range(3):
                with pytest.raises(ModelLoadError, match="crashed"):
                    await sup.load(spec, d)
            failure = sup.failure("looper")
            assert failure is not None and "crashed its runtime 3 times" in failure
            restarts = sup.runtimes[0].restarts
            with pytest.raises(ModelLoadError, match="is failed"):
                await sup.load(spec, d)
            assert sup.runtimes[0].restarts == restarts  # refused without touching the runtime
            await wait_for(lambda: sup.runtimes[0].ready.is_set(), 30, "the runtime back")
            ok = await sup.load(ModelSpec("fine", "hostile", options={"action": "echo"}), d)
            assert ok.size_bytes > 0 and sup.failure("fine") is None
        finally:
            await sup.close()


async def test_leaking_runtime_is_recycled_after_unloads() -> None:
    lost = Lost()
    settings = RuntimeSettings(count=1, leak_slack_bytes=64 << 20, leak_check_s=0.2, **FAST)
    with readable_dir() as d:
        sup = RuntimeSupervisor(settings, on_lost=lost)
        await sup.start()
        try:
            rt = sup.runtimes[0]
            pid = rt.pid
            keep = await sup.load(ModelSpec("keep", "hostile", options={"action": "echo"}), d)
            leaky = await sup.load(ModelSpec("leaky", "hostile", options={"action": "leak", "leak_mb": "300"}), d)
            await leaky.unload()  # the runtime keeps the 300 MiB: its RSS no longer matches what it holds
            await wait_for(lambda: rt.restarts == 1, 20, "the leaking runtime to be recycled")
            assert lost.events and lost.events[0][0] == ["keep"] and lost.events[0][1].startswith("recycled")
            assert keep.status.name == "UNLOADED"
            await wait_for(lambda: rt.ready.is_set() and rt.pid != pid, 30, "a fresh runtime")
        finally:
            await sup.close()


async def test_unloads_without_a_leak_do_not_recycle() -> None:
    settings = RuntimeSettings(count=1, leak_slack_bytes=64 << 20, leak_check_s=0.2, **FAST)
    with readable_dir() as d:
        sup = RuntimeSupervisor(settings)
        await sup.start()
        try:
            rt = sup.runtimes[0]
            for i in range(3):
                copy = await sup.load(ModelSpec(f"m{i}", "hostile", options={"action": "echo"}), d)
                await copy.unload()
                checked = rt.unloaded
                assert checked  # a leak check is due
                await wait_for(lambda: not rt.unloaded, 10, "the leak check to run")
            assert rt.restarts == 0
        finally:
            await sup.close()


async def test_a_call_whose_runtime_is_torn_down_under_it_is_lost_not_cancelled() -> None:
    """The supervisor closes a torn-down runtime's channel, and grpc.aio cancels the calls still
    on it: the caller must get ModelNotLoaded (the router routes the request again) or, for
    an unload, nothing; a CancelledError it did not ask for would end the request instead (seen
    as a flaky crash-loop test: the load raised CancelledError, not 'failed during the load')."""
    from mesh._runtimes._client import INFER_METHOD, RuntimeClient, RuntimeCopy
    from runtime_adapters import ModelMetadata

    entered, never = asyncio.Event(), asyncio.Event()

    async def hang(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        entered.set()
        await never.wait()
        return b""

    service, method = INFER_METHOD.strip("/").split("/")
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {method: grpc.unary_unary_rpc_method_handler(hang)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    done: list[str] = []

    def copy_on(client: RuntimeClient, mid: str) -> RuntimeCopy:
        return RuntimeCopy(
            ModelSpec(mid, "hostile"), 1, ModelMetadata(mid, "", (), (), ()), client, runtime_name="rt0",
            call_timeout_s=30, default_timeout_s=30, on_call=lambda mid: None,
            on_done=lambda mid, lost: done.append(f"{mid}:{lost}"), on_unload=lambda c: None,
        )

    try:
        client = RuntimeClient(f"127.0.0.1:{port}")
        copy = copy_on(client, "m")
        call = asyncio.create_task(copy.infer_bytes(b"", 30))
        await asyncio.wait_for(entered.wait(), 30)
        copy.mark_lost("runtime crashed (exit code 9)")  # what the supervisor's teardown does, in its order
        await client.close()
        with pytest.raises(ModelNotLoaded, match="runtime crashed"):
            await call
        assert done == ["m:True"]
        # the caller's own cancellation is still a cancellation
        client2 = RuntimeClient(f"127.0.0.1:{port}")
        copy2 = copy_on(client2, "m2")
        entered.clear()
        call = asyncio.create_task(copy2.infer_bytes(b"", 30))
        await asyncio.wait_for(entered.wait(), 30)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await client2.close()
    finally:
        never.set()
        await server.stop(None)
