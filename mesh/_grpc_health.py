"""``grpc.health.v1.Health`` and server reflection on the serving port.

Health (grpcio-health-checking): the server as a whole (service ``""``), the V2 inference service
and the ModelMesh management service each report SERVING once the instance has joined the
cluster, and NOT_SERVING from the moment it starts to shut down (Kubernetes gRPC probes, Envoy
and Istio health checks; ``Watch`` streams see the change). Reflection (grpcio-reflection) lets
``grpcurl list`` / ``describe`` and other generic clients see our services.

Our generated messages live in a private descriptor pool (``protos._pool``); reflection gets a
pool of its own holding those files and the health and reflection protos, so every listed
service can also be described.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from protos import grpc_predict_v2_pb2, model_mesh_pb2

INFERENCE_SERVICE = "inference.GRPCInferenceService"
MODELMESH_SERVICE = "mmesh.ModelMesh"
HEALTH_SERVICE = health.SERVICE_NAME
REFLECTION_SERVICE = reflection.SERVICE_NAME
SERVED = (INFERENCE_SERVICE, MODELMESH_SERVICE)


def _reflection_pool(files: Iterable[FileDescriptor]) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(fd: FileDescriptor) -> None:
        if fd.name in added:
            return
        for dep in fd.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        pool.Add(proto)
        added.add(fd.name)

    for fd in files:
        add(fd)
    return pool


class Health:
    """The health servicer of one gRPC server (and reflection, when switched on)."""

    def __init__(self, server: grpc.aio.Server, *, reflection_on: bool = True) -> None:
        self.servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        if reflection_on:
            pool = _reflection_pool(
                (grpc_predict_v2_pb2.DESCRIPTOR, model_mesh_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR)
            )
            reflection.enable_server_reflection((*SERVED, HEALTH_SERVICE, REFLECTION_SERVICE), server, pool=pool)
        self.serving = False

    async def set_serving(self) -> None:
        for name in ("", *SERVED):
            await self.servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.serving = True

    async def set_not_serving(self) -> None:
        """Shutting down: every service NOT_SERVING (Watch streams see it), before the port closes."""
        for name in ("", *SERVED):
            await self.servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.serving = False
