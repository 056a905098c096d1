"""gRPC health (Check, Watch) and reflection (list, describe) with the standard clients' stubs."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mesh._grpc_health import INFERENCE_SERVICE, MODELMESH_SERVICE, Health


async def _server(reflection_on: bool = True) -> tuple[grpc.aio.Server, Health, int]:
    server = grpc.aio.server()
    h = Health(server, reflection_on=reflection_on)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, h, port


async def test_check_and_watch_follow_the_instance_state() -> None:
    server, h, port = await _server()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            # before the instance has joined: the service is not known yet
            try:
                await stub.Check(health_pb2.HealthCheckRequest(service=INFERENCE_SERVICE), timeout=5)
                raise AssertionError("SERVING before the instance joined")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
            await h.set_serving()
            for name in ("", INFERENCE_SERVICE, MODELMESH_SERVICE):
                r = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert r.status == health_pb2.HealthCheckResponse.SERVING, name
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=INFERENCE_SERVICE), timeout=10)
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            await h.set_not_serving()  # shutdown begins
            second = await asyncio.wait_for(watch.read(), 10)
            assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
            r = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert r.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await server.stop(None)


async def test_reflection_lists_and_describes_our_services() -> None:
    server, _, port = await _server()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)

            async def ask(req: reflection_pb2.ServerReflectionRequest) -> reflection_pb2.ServerReflectionResponse:
                call = stub.ServerReflectionInfo(timeout=10)
                await call.write(req)
                await call.done_writing()
                resp = await call.read()
                call.cancel()
                return resp

            listed = await ask(reflection_pb2.ServerReflectionRequest(list_services=""))
            names = {s.name for s in listed.list_services_response.service}
            assert {INFERENCE_SERVICE, MODELMESH_SERVICE, "grpc.health.v1.Health"} <= names
            for symbol, method in ((INFERENCE_SERVICE, "ModelInfer"), (MODELMESH_SERVICE, "registerModel")):
                desc = await ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
                protos = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in desc.file_descriptor_response.file_descriptor_proto]
                methods = {m.name for f in protos for s in f.service for m in s.method}
                assert method in methods, (symbol, methods)
    finally:
        await server.stop(None)


async def test_reflection_can_be_switched_off() -> None:
    server, _, port = await _server(reflection_on=False)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(timeout=5)
            await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            try:
                await call.read()
                raise AssertionError("reflection answered while switched off")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(None)
