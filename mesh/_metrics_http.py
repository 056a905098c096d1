"""The metrics port: Prometheus' text format on ``GET /metrics`` (ModelMesh serves it on 2112).

Apart from the REST port, so scrapers reach the metrics even with REST off and a NetworkPolicy
can open the metrics port alone. The same registry is also mounted at REST ``/metrics``.
"""

from __future__ import annotations

import asyncio
from ssl import SSLContext

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ._http_tiny import Answer, serve_http


async def serve_metrics(host: str, port: int, registry: CollectorRegistry, *, ssl: SSLContext | None = None) -> asyncio.Server:
    """Serve ``registry`` on ``host:port`` (0: any free port; read it from the returned server)."""

    def route(method: str, path: str) -> Answer:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET\n"
        if path in ("/metrics", "/metrics/"):
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(registry)
        return "404 Not Found", "text/plain", b"metrics are at /metrics\n"

    return await serve_http(host, port, route, ssl=ssl)
