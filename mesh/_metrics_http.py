"""The metrics port: Prometheus' text format on ``GET /metrics`` (ModelMesh serves it on 2112).

A minimal HTTP/1.1 server on the event loop, apart from the REST port, so scrapers reach the
metrics even with REST off and a NetworkPolicy can open the metrics port alone. The same
registry is also mounted at REST ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

_MAX_HEADER_BYTES = 16 << 10


async def serve_metrics(host: str, port: int, registry: CollectorRegistry) -> asyncio.Server:
    """Serve ``registry`` on ``host:port`` (0: any free port; read it from the returned server)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            if len(head) > _MAX_HEADER_BYTES:
                raise ValueError("header too large")
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"only GET\n"
            elif path.split("?", 1)[0] in ("/metrics", "/metrics/"):
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(registry)
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"metrics are at /metrics\n"
            header = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(header.encode() + (body if method != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=_MAX_HEADER_BYTES)
