"""The frame server's choice of thread: a model measured fast runs on the event loop, a slow
one and a large request go to the infer pool, and calls on one connection are matched to their
answers by call id."""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from protos import grpc_predict_v2_pb2 as pb
from runtime_adapters import (
    FRAME_ANSWER_HEAD,
    FRAME_REQUEST_HEAD,
    InferOutput,
    InferRequest,
    InferResponse,
    ModelNotLoaded,
    default_status_for,
    start_frame_server,
)


class Model:
    """Answers with the name of the thread it ran on; ``delay_s`` makes it slow."""

    def __init__(self, model_id: str, delay_s: float, pool: Any) -> None:
        self.spec = type("Spec", (), {"model_id": model_id})()
        self.delay_s = delay_s
        self.pool = pool
        self.last_infer_s = 0.0

    def infer_blocking(self, request: InferRequest) -> InferResponse:
        t0 = time.perf_counter()
        if self.delay_s:
            time.sleep(self.delay_s)
        name = threading.current_thread().name.encode()
        self.last_infer_s = time.perf_counter() - t0
        return InferResponse(model_name=request.model_name, outputs=(InferOutput("t", "BYTES", (1,), name),), id=request.id)

    async def infer(self, request: InferRequest) -> InferResponse:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.infer_blocking, request)


class Service:
    def __init__(self, models: dict[str, Model]) -> None:
        self.models = models

    def model(self, model_id: str) -> Model:
        if model_id not in self.models:
            raise ModelNotLoaded(f"model '{model_id}' is not loaded in this runtime")
        return self.models[model_id]

    def status_for(self, exc: BaseException) -> tuple[grpc.StatusCode, str]:
        return default_status_for(exc)


def _request(model: str, size: int = 4) -> bytes:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="x", datatype="UINT8", shape=[size])
    req.raw_input_contents.append(b"\0" * size)
    return req.SerializeToString()


async def test_fast_models_inline_slow_models_and_big_requests_in_the_pool() -> None:
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(2, thread_name_prefix="pool")
    service = Service({"fast": Model("fast", 0.0, pool), "slow": Model("slow", 0.005, pool)})
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "frames.sock")
        server = await start_frame_server(service, path, inline_below_s=0.002)  # type: ignore[arg-type]
        reader, writer = await asyncio.open_unix_connection(path)
        next_id = 0

        async def call(mid: str, payload: bytes) -> tuple[int, bytes]:
            nonlocal next_id
            next_id += 1
            m = mid.encode()
            writer.write(FRAME_REQUEST_HEAD.pack(6 + len(m) + len(payload), next_id, len(m)) + m + payload)
            length, call_id, status = FRAME_ANSWER_HEAD.unpack(await reader.readexactly(FRAME_ANSWER_HEAD.size))
            body = await reader.readexactly(length - 5)
            assert call_id == next_id
            if status:
                return status, body
            return 0, pb.ModelInferResponse.FromString(body).raw_output_contents[0]

        try:
            loop_thread = threading.current_thread().name
            first = [await call("fast", _request("fast")) for _ in range(3)]
            assert first[0][1].startswith(b"pool")  # unmeasured: the pool
            assert first[1][1] == first[2][1] == loop_thread.encode()  # measured fast: inline
            big = await call("fast", _request("fast", 100_000))
            assert big[1].startswith(b"pool")  # a big request of a fast model: the pool
            slow = [await call("slow", _request("slow")) for _ in range(3)]
            assert all(s[1].startswith(b"pool") for s in slow)  # 5 ms per call: never inline
            status, message = await call("gone", _request("gone"))
            assert status == grpc.StatusCode.NOT_FOUND.value[0] and b"not loaded" in message
            status, message = await call("fast", b"\xff\xff\xff")
            assert status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        finally:
            writer.close()
            await writer.wait_closed()
            await asyncio.wait_for(reader.read(), 5)  # the server saw the end and closed its side
            server.close()
            await server.wait_closed()
            pool.shutdown()


async def test_frames_split_anywhere_or_sent_together_are_all_answered() -> None:
    """The reader does its own framing: a frame cut into single bytes and several frames in one
    write are parsed alike; a frame whose length is impossible closes that connection only."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1, thread_name_prefix="pool")
    service = Service({"fast": Model("fast", 0.0, pool)})

    def frame(call_id: int, payload: bytes) -> bytes:
        return FRAME_REQUEST_HEAD.pack(6 + 4 + len(payload), call_id, 4) + b"fast" + payload

    async def answers(reader: asyncio.StreamReader, n: int) -> dict[int, int]:
        got = {}
        for _ in range(n):
            length, call_id, status = FRAME_ANSWER_HEAD.unpack(await reader.readexactly(FRAME_ANSWER_HEAD.size))
            await reader.readexactly(length - 5)
            got[call_id] = status
        return got

    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "frames.sock")
        server = await start_frame_server(service, path, inline_below_s=0.002)  # type: ignore[arg-type]
        reader, writer = await asyncio.open_unix_connection(path)
        other_reader, other_writer = await asyncio.open_unix_connection(path)
        try:
            one = frame(1, _request("fast"))
            for i in range(len(one)):  # byte by byte, each write on its own
                writer.write(one[i : i + 1])
                await writer.drain()
            assert await answers(reader, 1) == {1: 0}
            # three frames and half of a fourth in one write, then the rest
            batch = b"".join(frame(i, _request("fast")) for i in (2, 3, 4)) + frame(5, _request("fast"))
            cut = len(batch) - 7
            writer.write(batch[:cut])
            await writer.drain()
            writer.write(batch[cut:])
            assert await answers(reader, 4) == {2: 0, 3: 0, 4: 0, 5: 0}
            # a model id longer than its frame: read up to the frame's end, the next frame intact
            long_id = FRAME_REQUEST_HEAD.pack(6 + 4, 7, 200) + b"nope"
            writer.write(long_id + frame(8, _request("fast")))
            got = await answers(reader, 2)
            assert got[8] == 0 and got[7] == grpc.StatusCode.NOT_FOUND.value[0]
            # an impossible length: that connection is closed, the other one still served
            other_writer.write((3).to_bytes(4, "little") + b"\0" * 16)
            assert await asyncio.wait_for(other_reader.read(), 10) == b""
            writer.write(frame(6, _request("fast")))
            assert await answers(reader, 1) == {6: 0}
        finally:
            for w in (writer, other_writer):
                w.close()
            server.close()
            await server.wait_closed()
            pool.shutdown()
