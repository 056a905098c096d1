"""The plaintext health port (``--health-port``): ``grpc.health.v1.Health`` and nothing else.

Kubelet's native gRPC probes cannot speak TLS, so with TLS on the serving port the probes go
here. Only Health is served: no inference, no management, nothing a caller could use. When the
instance already has a :class:`~mesh._grpc_health.Health` on its serving port, the same
servicer is added here, so both ports report the same status; without one, this port reports
SERVING for as long as it is open (the instance started it after joining the mesh).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ._grpc_health import SERVED


async def start_health_port(host: str, port: int, shared: object | None = None) -> tuple[grpc.aio.Server, int]:
    """Start a Health-only gRPC server on ``host:port`` (0: any); returns it and its port.
    ``shared``: the serving port's Health object (its ``servicer`` is reused)."""
    servicer = getattr(shared, "servicer", None)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    if servicer is None:
        servicer = health.aio.HealthServicer()
        for name in ("", *SERVED):
            await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"could not bind the health port {host}:{port}")
    await server.start()
    return server, bound
