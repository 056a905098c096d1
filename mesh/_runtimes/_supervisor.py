"""The runtime supervisor: starts and watches runtime processes, places copies on them, and
reports copies lost the moment their runtime dies.

Each runtime is a :class:`Runtime`: a worker process this instance started
(:class:`WorkerProcess`) or an external server declared in the settings. A watch task per
runtime waits on three things at once - the process exiting, health probes (V2 ``ServerLive``
with a deadline: a SIGSTOPped or wedged runtime stops answering) and the leak check - and on
any of them tears the runtime down: every copy on it is marked lost and reported through
``on_lost`` (the agent drops its copy records, the router stops routing there), then a fresh
process replaces it after a back-off that doubles while replacements keep dying young.

Workers start on demand (``start_workers``): none until the first load of an isolated model
type, then one more whenever a load finds every started worker holding copies, up to
``worker_count()``; that load goes to the new worker. An instance that never loads model code
starts no process.

Artifacts: when the instance runs as root its workers run as ``settings.user`` and cannot read
the instance's folders, so each load hands the worker a read-only copy in a share folder
(:class:`ShareDir`), removed when the copy is unloaded or lost.

Crash loops: a model that was being loaded or served when its runtime died gets a strike;
``crash_loop_strikes`` strikes within ``crash_loop_window_s`` mark it failed with the reason,
and further loads of it are refused (the agent then reports the failure like any failed load).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil

from runtime_adapters import AdapterSettings, ModelLoadError, ModelSpec, UnsupportedModelType

from .._tasks import cancel_and_wait
from ._client import LOST_CODES, RuntimeClient, RuntimeCopy, cancelled_by_a_close
from ._mlserver import MLServerClient
from ._process import WorkerProcess, describe_exit
from ._settings import ExternalRuntime, RuntimeSettings
from ._share import ShareDir

log = logging.getLogger(__name__)

OnLost = Callable[[list[str], str], None]


def adapter_env(settings: AdapterSettings) -> dict[str, str]:
    """The adapter settings of this instance as the ``MODELMUX_ADAPTER_*`` variables of a worker."""
    out: dict[str, str] = {}
    for key, value in settings.model_dump().items():
        out[f"MODELMUX_ADAPTER_{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


@dataclass
class Runtime:
    """One runtime (a worker process or an external server) and the copies it holds."""

    name: str
    external: ExternalRuntime | None = None
    client: RuntimeClient | None = None
    process: WorkerProcess | None = None
    copies: dict[str, RuntimeCopy] = field(default_factory=dict)
    inflight: dict[str, int] = field(default_factory=dict)
    suspects: set[str] = field(default_factory=set)  # calls that failed because the runtime went away
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    down: asyncio.Event = field(default_factory=asyncio.Event)
    restarts: int = 0
    last_reason: str = ""
    started_at: float = 0.0
    baseline_rss: int = 0
    unloaded: bool = False  # an unload happened since the last leak check
    recycle_reason: str = ""
    task: asyncio.Task[None] | None = None  # its runner, once started
    loading: int = 0  # loads in flight (a first framework import may hold the worker's GIL)

    @property
    def held_bytes(self) -> int:
        return sum(c.size_bytes for c in self.copies.values())

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


@dataclass
class _Failure:
    reason: str
    until: float


class RuntimeSupervisor:
    def __init__(
        self,
        settings: RuntimeSettings,
        *,
        worker_env: Mapping[str, str] | None = None,
        on_lost: OnLost | None = None,
        default_timeout_s: float = 60.0,
    ) -> None:
        self.settings = settings
        self.on_lost = on_lost
        self._worker_env = dict(worker_env or {})
        self._default_timeout_s = default_timeout_s
        self.runtimes: list[Runtime] = [Runtime(name=f"rt{i}") for i in range(settings.worker_count())]
        self.runtimes += [Runtime(name=e.name, external=e) for e in settings.external]
        self._strikes: dict[str, collections.deque[float]] = {}
        self._failed: dict[str, _Failure] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._share = ShareDir(settings.share_dir)
        self._share_tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ what goes where

    def handles(self, model_type: str) -> bool:
        mtype = model_type.strip().lower()
        return any(mtype in (t.lower() for t in e.model_types) for e in self.settings.external) or (
            self.settings.isolated(mtype) and any(r.external is None for r in self.runtimes)
        )

    def named(self, name: str) -> bool:
        """Whether a runtime of this name is configured here (``runtime`` in a registration)."""
        return any(r.name == name for r in self.runtimes)

    def names(self) -> list[str]:
        return [r.name for r in self.runtimes]

    def _candidates(self, model_type: str, runtime: str = "") -> list[Runtime]:
        if runtime:
            return [r for r in self.runtimes if r.name == runtime]
        mtype = model_type.strip().lower()
        ext = [r for r in self.runtimes if r.external and mtype in (t.lower() for t in r.external.model_types)]
        if ext:
            return ext
        if self.settings.isolated(mtype):
            return [r for r in self.runtimes if r.external is None]
        return []

    def failure(self, model_id: str) -> str | None:
        f = self._failed.get(model_id)
        if f is None:
            return None
        if f.until <= time.monotonic():
            del self._failed[model_id]
            self._strikes.pop(model_id, None)
            return None
        return f.reason

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect to the external runtimes (and, with ``start_workers="at_start"``, start every
        worker); returns when each of those is ready or has failed once. Workers started on
        demand start with the load that needs them."""
        eager = self.settings.start_workers == "at_start"
        now = [rt for rt in self.runtimes if rt.external is not None or eager]
        for rt in now:
            self._launch(rt)
        waits = [asyncio.create_task(self._first_attempt(rt)) for rt in now]
        if waits:
            await asyncio.wait(waits, timeout=self.settings.start_timeout_s)
            for w in waits:
                w.cancel()

    def _launch(self, rt: Runtime) -> None:
        if rt.task is None and not self._closing:
            runner = self._run_external if rt.external else self._run_worker
            rt.task = asyncio.create_task(runner(rt), name=f"runtime-{rt.name}")
            self._tasks.append(rt.task)

    def _grow(self, workers: list[Runtime]) -> Runtime | None:
        """Start a worker for a load when none is started or every started one holds copies."""
        unstarted = [r for r in workers if r.task is None]
        if not unstarted or any(r.task is not None and not (r.copies or r.inflight) for r in workers):
            return None
        rt = unstarted[0]
        log.info("starting runtime %s on demand", rt.name)
        self._launch(rt)
        return rt

    async def _first_attempt(self, rt: Runtime) -> None:
        while not rt.ready.is_set() and not rt.last_reason:
            await asyncio.wait(
                [asyncio.create_task(rt.ready.wait()), asyncio.create_task(rt.down.wait())],
                return_when=asyncio.FIRST_COMPLETED,
            )

    async def close(self) -> None:
        self._closing = True
        for t in self._tasks:
            await cancel_and_wait(t)
        self._tasks.clear()
        for rt in self.runtimes:
            await self._teardown(rt, "instance stopping", report=False)
        for task in list(self._share_tasks):
            with contextlib.suppress(Exception):
                await task
        await asyncio.to_thread(self._share.close)

    # ------------------------------------------------------------ worker processes

    async def _run_worker(self, rt: Runtime) -> None:
        st = self.settings
        backoff = 0.0
        while not self._closing:
            if backoff:
                await asyncio.sleep(backoff)
            proc = WorkerProcess(
                rt.name,
                module=st.worker_module,
                env=self._worker_env,
                memory_limit_bytes=st.memory_limit_bytes,
                user=st.user,
                start_timeout_s=st.start_timeout_s,
                python=st.python,
                frames=st.frames,
            )
            try:
                await proc.start()
            except asyncio.CancelledError:
                await proc.kill()
                raise
            except Exception as exc:
                rt.last_reason = f"start failed: {exc}"
                rt.down.set()
                log.warning("runtime %s: %s", rt.name, rt.last_reason)
                backoff = min(max(backoff * 2, st.restart_backoff_s, 0.05), st.restart_backoff_max_s)
                continue
            rt.process, rt.client = proc, RuntimeClient(proc.address, frames_path=proc.frames_path)
            rt.suspects.clear()
            rt.recycle_reason = ""
            rt.unloaded = False
            rt.started_at = time.monotonic()
            assert proc.pid is not None
            rt.baseline_rss = await asyncio.to_thread(_rss, proc.pid)
            rt.down.clear()
            rt.ready.set()
            log.info("runtime %s up (pid %s, %s)", rt.name, proc.pid, proc.address)
            try:
                reason = await self._watch(rt, proc)
            except asyncio.CancelledError:
                raise
            lived = time.monotonic() - rt.started_at
            await self._teardown(rt, reason)
            rt.restarts += 1
            if lived >= st.stable_after_s:
                backoff = st.restart_backoff_s
            else:
                backoff = min(max(backoff * 2, st.restart_backoff_s), st.restart_backoff_max_s)
            log.warning("runtime %s replaced (%s); next start in %.2fs", rt.name, reason, backoff)

    async def _watch(self, rt: Runtime, proc: WorkerProcess) -> str:
        """Returns why the worker must be replaced: it exited, hung, or leaks."""
        st = self.settings
        assert rt.client is not None
        exited = asyncio.create_task(proc.wait())
        failures = 0
        answered = time.monotonic()
        next_leak_check = answered + st.leak_check_s
        try:
            while True:
                probe = asyncio.create_task(rt.client.live(st.health_timeout_s))
                await asyncio.wait([exited, probe], return_when=asyncio.FIRST_COMPLETED)
                if exited.done():
                    probe.cancel()
                    tail = proc.tail()
                    return f"runtime crashed ({describe_exit(exited.result())})" + (f": {tail}" if tail else "")
                try:
                    probe.result()
                    failures = 0
                    answered = time.monotonic()
                except grpc.aio.AioRpcError:
                    failures += 1
                    silent = time.monotonic() - answered
                    # while it loads, a worker may be silent longer (importing torch holds its GIL;
                    # the load has its own deadline)
                    if failures >= st.health_failures and (not rt.loading or silent >= st.loading_silence_s):
                        return f"runtime hung (no answer to {failures} health probes of {st.health_timeout_s}s)"
                if rt.recycle_reason:
                    return rt.recycle_reason
                now = time.monotonic()
                if now >= next_leak_check:
                    next_leak_check = now + st.leak_check_s
                    leak = await self._leak(rt)
                    if leak:
                        return leak
                await asyncio.wait([exited], timeout=st.health_interval_s)
        finally:
            if not exited.done():
                exited.cancel()

    async def _leak(self, rt: Runtime) -> str:
        """A reason to recycle when, after unloads, RSS is far above what the copies account for."""
        if not rt.unloaded or rt.pid is None:
            return ""
        rt.unloaded = False
        try:
            rss = await asyncio.to_thread(_rss, rt.pid)
        except psutil.Error:
            return ""
        st = self.settings
        held = rt.held_bytes
        over = rss - rt.baseline_rss
        allowed = max(int(held * st.leak_factor), held + st.leak_slack_bytes)
        if over > allowed:
            return f"recycled: RSS {rss} bytes is {over} above its start while its copies hold {held} bytes"
        return ""

    async def _teardown(self, rt: Runtime, reason: str, *, report: bool = True) -> None:
        rt.ready.clear()
        rt.last_reason = reason
        lost = list(rt.copies.values())
        rt.copies.clear()
        crashed = not reason.startswith("recycled") and reason != "instance stopping"
        if crashed:
            for mid in {m for m, n in rt.inflight.items() if n > 0} | rt.suspects:
                self._strike(mid, reason)
        rt.inflight.clear()
        for copy in lost:
            copy.mark_lost(reason)
            self._unshare(copy.share)
        if report and lost and self.on_lost is not None:
            try:
                self.on_lost([c.spec.model_id for c in lost], reason)
            except Exception:
                log.exception("on_lost callback failed")
        proc, client = rt.process, rt.client
        rt.process = None
        if rt.external is None:
            rt.client = None
        if proc is not None:
            await proc.kill()
        if client is not None and rt.external is None:
            await client.close()
        rt.down.set()

    def _strike(self, mid: str, reason: str) -> None:
        st = self.settings
        now = time.monotonic()
        strikes = self._strikes.setdefault(mid, collections.deque())
        strikes.append(now)
        while strikes and strikes[0] < now - st.crash_loop_window_s:
            strikes.popleft()
        if len(strikes) >= st.crash_loop_strikes:
            why = f"model crashed its runtime {len(strikes)} times in {st.crash_loop_window_s:.0f}s; last: {reason}"
            self._failed[mid] = _Failure(why, now + st.crash_loop_window_s)
            log.warning("model %s marked failed: %s", mid, why)

    # ------------------------------------------------------------ external servers

    async def _run_external(self, rt: Runtime) -> None:
        st = self.settings
        assert rt.external is not None
        rt.client = MLServerClient(rt.external) if rt.external.kind == "mlserver" else RuntimeClient(rt.external.address)
        failures = 0
        try:
            while not self._closing:
                try:
                    await rt.client.live(st.health_timeout_s)
                    failures = 0
                    if not rt.ready.is_set():
                        rt.suspects.clear()
                        rt.started_at = time.monotonic()
                        rt.down.clear()
                        rt.ready.set()
                        log.info("external runtime %s ready at %s", rt.name, rt.external.address)
                except grpc.aio.AioRpcError as exc:
                    failures += 1
                    if rt.ready.is_set() and failures >= st.health_failures:
                        await self._teardown(rt, f"external runtime unreachable: {exc.code().name}")
                        rt.restarts += 1
                    elif not rt.ready.is_set() and not rt.last_reason:
                        rt.last_reason = f"external runtime unreachable: {exc.code().name}"
                        rt.down.set()
                await asyncio.sleep(st.health_interval_s)
        finally:
            await rt.client.close()

    # ------------------------------------------------------------ copies

    def predict_size(self, spec: ModelSpec, local_path: Path) -> int:
        """Artifact bytes (the runtime sizes the model for real when it loads it)."""
        path = Path(local_path)
        if path.is_file():
            return max(1, path.stat().st_size)
        return max(1, sum(p.stat().st_size for p in path.rglob("*") if p.is_file()))

    async def _pick(self, model_type: str, deadline: float, runtime: str = "") -> Runtime:
        candidates = self._candidates(model_type, runtime)
        if not candidates:
            if runtime:
                raise UnsupportedModelType(f"runtime '{runtime}' is not configured on this instance")
            raise UnsupportedModelType(f"no runtime serves model type '{model_type}'")
        # a worker started for this load takes it, unless it fails to come up
        fresh = self._grow([r for r in candidates if r.external is None])
        while True:
            if fresh is not None and (fresh.ready.is_set() or fresh.down.is_set()):
                fresh = None
            ready = [r for r in candidates if r.ready.is_set() and r.client is not None]
            if ready and fresh is None:
                return min(ready, key=lambda r: (r.held_bytes, len(r.copies)))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reasons = "; ".join(
                    f"{r.name}: {r.last_reason or ('starting' if r.task else 'not started')}" for r in candidates
                )
                raise ModelLoadError(f"no runtime for model type '{model_type}' is ready ({reasons})")
            waits = [asyncio.create_task(r.ready.wait()) for r in candidates]
            if fresh is not None:
                waits.append(asyncio.create_task(fresh.down.wait()))
            try:
                await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    async def load(self, spec: ModelSpec, local_path: Path, *, runtime: str = "") -> RuntimeCopy:
        """Load on a runtime: the one named ``runtime``, else one that serves the model's type."""
        mid = spec.model_id
        failed = self.failure(mid)
        if failed is not None:
            raise ModelLoadError(f"model '{mid}' is failed: {failed}")
        st = self.settings
        deadline = time.monotonic() + st.load_timeout_s
        rt = await self._pick(spec.model_type, deadline, runtime)
        client = rt.client
        assert client is not None
        path = Path(local_path)
        share: Path | None = None
        if rt.external is None and self.shares_artifacts:
            try:
                share = path = await asyncio.to_thread(self._share.add, spec, path)
            except OSError as exc:
                raise ModelLoadError(
                    f"model '{mid}': cannot hand the artifact to runtime {rt.name}: {type(exc).__name__}"
                ) from exc
        rt.inflight[mid] = rt.inflight.get(mid, 0) + 1
        rt.loading += 1
        try:
            if rt.client is not client:  # replaced while the artifact was copied
                raise ModelLoadError(f"model '{mid}': runtime {rt.name} went away before the load: {rt.last_reason}")
            size = await client.load(spec, str(path), max(deadline - time.monotonic(), 0.001))
            metadata = await client.metadata(mid, st.call_timeout_s)
        except grpc.aio.AioRpcError as exc:
            self._unshare(share)
            raise await self._load_failed(rt, mid, exc) from exc
        except asyncio.CancelledError:
            self._unshare(share)
            if rt.client is client or not cancelled_by_a_close():
                raise
            # the runtime was torn down during the load and its channel closed under the call
            raise ModelLoadError(f"model '{mid}': runtime {rt.name} failed during the load: {rt.last_reason}") from None
        except BaseException:
            self._unshare(share)
            raise
        finally:
            rt.loading -= 1
            n = rt.inflight.get(mid, 1) - 1
            if n > 0:
                rt.inflight[mid] = n
            else:
                rt.inflight.pop(mid, None)
        copy = self._new_copy(rt, client, spec, size, metadata)
        copy.share = share
        if not rt.ready.is_set() or rt.client is not client:  # the runtime died right after answering
            copy.mark_lost(rt.last_reason or "runtime restarted")
            self._unshare(share)
            raise ModelLoadError(f"model '{mid}': runtime {rt.name} went away after the load: {rt.last_reason}")
        rt.copies[mid] = copy
        return copy

    async def _load_failed(self, rt: Runtime, mid: str, exc: grpc.aio.AioRpcError) -> ModelLoadError:
        st = self.settings
        if exc.code() in LOST_CODES or exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            rt.suspects.add(mid)
            with contextlib.suppress(TimeoutError):  # let the watcher say why it went away
                await asyncio.wait_for(rt.down.wait(), st.health_timeout_s * (st.health_failures + 1))
            why = rt.last_reason if rt.down.is_set() else f"{exc.code().name}: {exc.details()}"
            return ModelLoadError(f"model '{mid}': runtime {rt.name} failed during the load: {why}")
        return ModelLoadError(f"model '{mid}': {exc.details() or exc.code().name}")

    @property
    def shares_artifacts(self) -> bool:
        """Whether workers get copies of artifacts: they run as another user when we are root."""
        return os.geteuid() == 0

    def _unshare(self, share: Path | None) -> None:
        if share is None:
            return
        task = asyncio.create_task(asyncio.to_thread(self._share.remove, share))
        self._share_tasks.add(task)
        task.add_done_callback(self._share_tasks.discard)

    def _new_copy(self, rt: Runtime, client: RuntimeClient, spec: ModelSpec, size: int, metadata: Any) -> RuntimeCopy:
        st = self.settings
        return RuntimeCopy(
            spec,
            size,
            metadata,
            client,
            runtime_name=rt.name,
            call_timeout_s=st.call_timeout_s,
            default_timeout_s=self._default_timeout_s,
            on_call=lambda m: self._called(rt, m),
            on_done=lambda m, lost: self._done(rt, m, lost),
            on_unload=lambda c: self._unloaded(rt, c),
        )

    def _called(self, rt: Runtime, mid: str) -> None:
        rt.inflight[mid] = rt.inflight.get(mid, 0) + 1

    def _done(self, rt: Runtime, mid: str, lost: bool) -> None:
        if lost:
            rt.suspects.add(mid)
        n = rt.inflight.get(mid, 0) - 1
        if n > 0:
            rt.inflight[mid] = n
        else:
            rt.inflight.pop(mid, None)

    def _unloaded(self, rt: Runtime, copy: RuntimeCopy) -> None:
        if rt.copies.get(copy.spec.model_id) is copy:
            del rt.copies[copy.spec.model_id]
            rt.unloaded = True
        self._unshare(copy.share)
        copy.share = None

    def recycle(self, name: str, reason: str) -> None:
        """Ask for a runtime to be drained and replaced at its next health check."""
        for rt in self.runtimes:
            if rt.name == name and rt.external is None:
                rt.recycle_reason = f"recycled: {reason}"

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": rt.name,
                "external": rt.external.address if rt.external else "",
                "pid": rt.pid,
                "started": rt.task is not None,
                "ready": rt.ready.is_set(),
                "restarts": rt.restarts,
                "last_reason": rt.last_reason,
                "copies": sorted(rt.copies),
                "held_bytes": rt.held_bytes,
            }
            for rt in self.runtimes
        ]
