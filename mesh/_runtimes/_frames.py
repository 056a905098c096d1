"""The instance's side of a worker's inference frames (``runtime_adapters._frame_server``):
one Unix-socket connection per worker, calls multiplexed by call id, answered on this event
loop with no thread in between.

Failures look like the gRPC path's: a worker's error status is raised as the same
``grpc.aio.AioRpcError`` a gRPC call would raise (the edges pass it through), a call past its
deadline is ``DEADLINE_EXCEEDED``, and a connection that closes (the worker died) fails every
call in flight with UNAVAILABLE, which the copy turns into "lost".
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from runtime_adapters import FRAME_ANSWER_HEAD as ANSWER_HEAD
from runtime_adapters import FRAME_REQUEST_HEAD as REQUEST_HEAD

_STATUS = {s.value[0]: s for s in grpc.StatusCode}


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def _expire(fut: asyncio.Future[bytes], timeout_s: float) -> None:
    if not fut.done():
        fut.set_exception(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer from the runtime in {timeout_s:.3f}s"))


class FrameClient:
    """Calls on one worker's frame socket; connects on first use, once."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()
        self._calls: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 0
        self._closed = False
        self._why = ""

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is not None:
                return self._writer
            if self._closed:
                raise rpc_error(grpc.StatusCode.UNAVAILABLE, self._why or "runtime connection closed")
            try:
                reader, writer = await asyncio.open_unix_connection(self.path, limit=1 << 20)
            except OSError as exc:
                raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"cannot reach the runtime: {exc}") from exc
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read(reader), name=f"frames-{self.path}")
            return writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        why = "runtime closed the connection"
        try:
            while True:
                head = await reader.readexactly(ANSWER_HEAD.size)
                length, call_id, status = ANSWER_HEAD.unpack(head)
                body = await reader.readexactly(length - 5)
                fut = self._calls.pop(call_id, None)
                if fut is None or fut.done():
                    continue  # its caller gave up
                if status == 0:
                    fut.set_result(body)
                else:
                    code = _STATUS.get(status, grpc.StatusCode.UNKNOWN)
                    fut.set_exception(rpc_error(code, body.decode("utf-8", errors="replace")))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            why = f"runtime connection lost ({type(exc).__name__})"
        finally:
            self._fail_all(why)

    def _fail_all(self, why: str) -> None:
        self._closed = True
        self._why = why
        calls, self._calls = self._calls, {}
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(rpc_error(grpc.StatusCode.UNAVAILABLE, why))
        if self._writer is not None:
            self._writer.close()

    async def call(self, model_id: str, payload: bytes, timeout_s: float) -> bytes:
        writer = self._writer or await self._connect()
        if self._closed:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, self._why)
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        call_id = self._next_id
        mid = model_id.encode()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self._calls[call_id] = fut
        # a timer on the future itself (asyncio.wait_for would add a task hop per call)
        timer = loop.call_later(timeout_s, _expire, fut, timeout_s)
        writer.write(REQUEST_HEAD.pack(6 + len(mid) + len(payload), call_id, len(mid)) + mid)
        writer.write(payload)
        try:
            if writer.transport.get_write_buffer_size() > (1 << 20):
                await writer.drain()
            return await fut
        except ConnectionError as exc:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"runtime connection lost: {exc}") from exc
        finally:
            timer.cancel()
            self._calls.pop(call_id, None)

    async def close(self) -> None:
        self._fail_all("runtime connection closed")
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
