"""A minimal HTTP/1.1 server on the event loop for small fixed answers (metrics, health probes).

One request per connection: the head is read (bounded in size and time), ``route(method, path)``
returns ``(status line, content type, body)``, the answer is written and the connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from ssl import SSLContext

Answer = tuple[str, str, bytes]  # ("200 OK", content type, body)

MAX_HEAD_BYTES = 16 << 10


async def serve_http(
    host: str, port: int, route: Callable[[str, str], Answer], *, read_timeout_s: float = 10.0, ssl: SSLContext | None = None
) -> asyncio.Server:
    """Serve ``route`` on ``host:port`` (0: any free port; read it from the returned server)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), read_timeout_s)
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            status, ctype, body = route(method, path.split("?", 1)[0])
            header = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(header.encode() + (body if method != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=MAX_HEAD_BYTES, ssl=ssl)
