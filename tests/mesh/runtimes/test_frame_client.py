"""The instance's frame client against a fake worker written here: answers matched by call id
whatever their order and however the bytes are cut, worker errors as gRPC statuses, deadlines,
and a lost connection failing every call in flight with UNAVAILABLE."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from mesh._runtimes._frames import FrameClient
from runtime_adapters import FRAME_ANSWER_HEAD, FRAME_REQUEST_HEAD


def answer(call_id: int, status: int, body: bytes) -> bytes:
    return FRAME_ANSWER_HEAD.pack(5 + len(body), call_id, status) + body


class FakeWorker:
    """Collects request frames; the test decides what to send back and how to cut it."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[tuple[int, str, bytes]] = asyncio.Queue()
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.connected.set()
        try:
            while True:
                (length,) = struct.unpack("<I", await reader.readexactly(4))
                body = await reader.readexactly(length)
                call_id, mid_len = struct.unpack_from("<IH", body)
                await self.requests.put((call_id, body[6 : 6 + mid_len].decode(), body[6 + mid_len :]))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()

    async def send(self, data: bytes, *, pieces: int = 1) -> None:
        assert self.writer is not None
        step = max(1, len(data) // pieces)
        for i in range(0, len(data), step):
            self.writer.write(data[i : i + step])
            await self.writer.drain()


@pytest.fixture
async def wired() -> AsyncIterator[tuple[FakeWorker, FrameClient]]:
    """A fake worker listening on a Unix socket, and a frame client connected to it."""
    with tempfile.TemporaryDirectory() as d:
        worker = FakeWorker()
        path = str(Path(d) / "w.sock")
        server = await asyncio.start_unix_server(worker.handle, path=path)
        client = FrameClient(path)
        try:
            yield worker, client
        finally:
            await client.close()
            await worker.close()
            server.close()
            await server.wait_closed()


async def test_answers_in_any_order_and_cut_anywhere_reach_their_callers(wired: tuple[FakeWorker, FrameClient]) -> None:
    assert FRAME_REQUEST_HEAD.size == 10
    worker, client = wired
    calls = [asyncio.create_task(client.call(f"m{i}", f"payload-{i}".encode(), 10)) for i in range(4)]
    got = [await asyncio.wait_for(worker.requests.get(), 10) for _ in range(4)]
    assert sorted((mid, body) for _, mid, body in got) == [(f"m{i}", f"payload-{i}".encode()) for i in range(4)]
    ids = {mid: cid for cid, mid, _ in got}
    # answers in reverse order, all in one write cut into single bytes
    blob = b"".join(answer(ids[f"m{i}"], 0, f"answer-{i}".encode()) for i in reversed(range(3)))
    blob += answer(ids["m3"], grpc.StatusCode.NOT_FOUND.value[0], b"model 'm3' is not loaded")
    await worker.send(blob, pieces=len(blob))
    assert [await c for c in calls[:3]] == [f"answer-{i}".encode() for i in range(3)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls[3]
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "not loaded" in (err.value.details() or "")

    # no answer within the deadline: DEADLINE_EXCEEDED, and a late answer is ignored
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.call("slow", b"x", 0.05)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    late_id, _, _ = await asyncio.wait_for(worker.requests.get(), 10)
    await worker.send(answer(late_id, 0, b"too late"))
    ok = asyncio.create_task(client.call("m0", b"again", 10))
    cid, _, body = await asyncio.wait_for(worker.requests.get(), 10)
    assert body == b"again"
    await worker.send(answer(cid, 0, b"fine"))
    assert await ok == b"fine"

    # the worker dies with calls in flight: each fails with UNAVAILABLE, and so do later ones
    pending = [asyncio.create_task(client.call("m1", b"p", 10)) for _ in range(3)]
    for _ in range(3):
        await asyncio.wait_for(worker.requests.get(), 10)
    assert worker.writer is not None
    worker.writer.close()
    for task in pending:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(task, 10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.call("m1", b"p", 10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_unreachable_worker_is_unavailable() -> None:
    with tempfile.TemporaryDirectory() as d:
        client = FrameClient(str(Path(d) / "nobody-listens.sock"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.call("m", b"x", 5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        await client.close()


async def test_a_frame_shorter_than_its_head_fails_the_connection(wired: tuple[FakeWorker, FrameClient]) -> None:
    """A worker that writes garbage (model code can reach the socket) ends the connection: the
    calls in flight fail with UNAVAILABLE instead of being answered with misparsed bytes."""
    worker, client = wired
    call = asyncio.create_task(client.call("m", b"x", 10))
    await asyncio.wait_for(worker.requests.get(), 10)
    await worker.send(struct.pack("<I", 2) + b"\0" * 16)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(call, 10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "malformed" in (err.value.details() or "")
