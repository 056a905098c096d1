"""A steady-traffic load generator for fault tests: open loop, per-model counts, latencies vs deadlines.

Each model gets requests at a fixed rate whatever the answers take (open loop: a hung call
does not slow the others down), spread round-robin over the *entry* instances (a client
behind a Service: ``entries`` can be narrowed before an instance is killed, as a Service
drops a dead endpoint). Every request carries a gRPC deadline; each one is recorded with its
start, end, entry and outcome (``OK``, ``WRONG`` for a wrong answer, or the status code's
name). Bounded in time (``max_s``) and in requests in flight (``max_inflight``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np

INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True)
class Rec:
    model: str
    entry: int
    t0: float
    t1: float
    outcome: str
    detail: str = ""

    @property
    def latency_s(self) -> float:
        return self.t1 - self.t0


@dataclass
class ModelStats:
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.ok + sum(self.failed.values())


class Traffic:
    def __init__(
        self,
        endpoints: list[str],
        answers: dict[str, float],
        *,
        rate_hz: float = 10.0,
        deadline_s: float = 10.0,
        max_inflight: int = 400,
        max_s: float = 120.0,
    ) -> None:
        from tests.mesh.models import request_bytes

        self.answers = answers
        self.rate_hz = rate_hz
        self.deadline_s = deadline_s
        self.max_inflight = max_inflight
        self.max_s = max_s
        self.entries = list(range(len(endpoints)))
        self.records: list[Rec] = []
        self.sent: list[float] = []  # start time of every request sent
        self.skipped = 0  # sends dropped because max_inflight was reached
        self._payload = {m: request_bytes(m) for m in answers}
        self._channels = [grpc.aio.insecure_channel(e) for e in endpoints]
        self._calls = [ch.unary_unary(INFER) for ch in self._channels]
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._n = 0

    def set_endpoint(self, i: int, endpoint: str) -> None:
        """Point entry ``i`` at a new address (an instance restarted on new ports)."""
        old = self._channels[i]
        self._channels[i] = grpc.aio.insecure_channel(endpoint)
        self._calls[i] = self._channels[i].unary_unary(INFER)
        task = asyncio.ensure_future(old.close())
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    # ------------------------------------------------------------ running

    async def __aenter__(self) -> Traffic:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        await self.close()

    def start(self) -> None:
        self._stop.clear()
        loop = asyncio.get_running_loop()
        t_end = loop.time() + self.max_s
        for k, m in enumerate(sorted(self.answers)):
            self._tasks.append(asyncio.create_task(self._model_loop(m, k, t_end)))

    async def _model_loop(self, model: str, k: int, t_end: float) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.rate_hz
        nxt = loop.time() + period * (k % 10) / 10  # stagger the models
        while not self._stop.is_set() and nxt < t_end:
            delay = nxt - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)  # the pacing of an open loop
                if self._stop.is_set():
                    return
            nxt += period
            if len(self._inflight) >= self.max_inflight:
                self.skipped += 1
                continue
            task = asyncio.create_task(self._one(model))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _one(self, model: str) -> None:
        entries = self.entries
        entry = entries[self._n % len(entries)]
        self._n += 1
        t0 = time.monotonic()
        self.sent.append(t0)
        try:
            raw = await self._calls[entry](self._payload[model], timeout=self.deadline_s)
            t1 = time.monotonic()
            from tests.mesh.models import answer

            ok = bool(np.allclose(answer(raw), self.answers[model]))
            self.records.append(Rec(model, entry, t0, t1, "OK" if ok else "WRONG"))
        except grpc.aio.AioRpcError as exc:
            self.records.append(Rec(model, entry, t0, time.monotonic(), exc.code().name, exc.details() or ""))

    async def stop(self) -> None:
        """Stop sending and wait for every request in flight (each is bounded by its deadline)."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        self._tasks.clear()
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close()

    # ------------------------------------------------------------ results

    def stats(self, since: float = 0.0, until: float = float("inf")) -> dict[str, ModelStats]:
        """Per model, over the requests started in [since, until)."""
        out = {m: ModelStats() for m in self.answers}
        for r in self.records:
            if not since <= r.t0 < until:
                continue
            st = out[r.model]
            if r.outcome == "OK":
                st.ok += 1
            else:
                st.failed[r.outcome] += 1
        return out

    def settled(self, before: float) -> bool:
        """Whether every request started before ``before`` has ended (answered or failed)."""
        return sum(1 for t in self.sent if t < before) == sum(1 for r in self.records if r.t0 < before)

    def ok_count(self, model: str, since: float = 0.0) -> int:
        return sum(1 for r in self.records if r.model == model and r.outcome == "OK" and r.t0 >= since)

    def failures(self, models: set[str] | None = None) -> list[Rec]:
        return [r for r in self.records if r.outcome != "OK" and (models is None or r.model in models)]

    def first_ok_after(self, model: str, t: float) -> float | None:
        """End time of the first successful request for ``model`` started at or after ``t``."""
        ends = [r.t1 for r in self.records if r.model == model and r.outcome == "OK" and r.t0 >= t]
        return min(ends) if ends else None

    def max_overrun_s(self) -> float:
        """How far past its deadline the slowest request ended (<= 0: none waited past it)."""
        return max((r.latency_s - self.deadline_s for r in self.records), default=-self.deadline_s)

    def summary(self) -> str:
        total = Counter(r.outcome for r in self.records)
        lat = sorted(r.latency_s for r in self.records)
        p99 = lat[int(0.99 * (len(lat) - 1))] if lat else 0.0
        return f"{len(self.records)} requests {dict(total)}; p99 {p99 * 1000:.0f} ms, max {max(lat, default=0) * 1000:.0f} ms"
