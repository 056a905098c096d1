"""Every error of every package maps to a status, and both transports apply the same table."""

from __future__ import annotations

import grpc
import httpx
import pytest
from fastapi import FastAPI

from mesh._errors import ERROR_ROOTS, STATUS_TABLE, status_for
from mesh._grpc_edge import error_mapped
from mesh._rest_edge import install_error_handler


def _all_subclasses(root: type) -> list[type]:
    out = [root]
    for sub in root.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


ALL_ERRORS = sorted({cls for root in ERROR_ROOTS for cls in _all_subclasses(root)}, key=lambda c: c.__module__ + c.__qualname__)


def _instance(cls: type) -> BaseException:
    exc = cls.__new__(cls)
    Exception.__init__(exc, f"boom from {cls.__name__}")
    return exc


def test_there_are_errors_from_every_package() -> None:
    modules = {cls.__module__.split(".")[0] for cls in ALL_ERRORS}
    assert {"mesh", "runtime_adapters", "puller", "placement"} <= modules


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_error_has_a_mapped_code(cls: type) -> None:
    code = getattr(cls, "code", None)
    assert isinstance(code, str), f"{cls} has no semantic code"
    assert code in STATUS_TABLE, f"{cls}.code={code!r} is not in the status table"


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handler(app)

    @app.get("/raise/{index}")
    async def raise_it(index: int) -> None:
        raise _instance(ALL_ERRORS[index])

    return app


async def _grpc_server() -> tuple[grpc.aio.Server, int]:
    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise _instance(ALL_ERRORS[int(request.decode())])

    server = grpc.aio.server()
    server.add_registered_method_handlers("t.T", {"Raise": error_mapped(grpc.unary_unary_rpc_method_handler(handler), "/t.T/Raise")})
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def test_both_transports_apply_the_table() -> None:
    server, port = await _grpc_server()
    transport = httpx.ASGITransport(app=_app())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel, httpx.AsyncClient(
            transport=transport, base_url="http://t"
        ) as client:
            call = channel.unary_unary("/t.T/Raise")
            for i, cls in enumerate(ALL_ERRORS):
                expected, message = status_for(_instance(cls))
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(str(i).encode(), timeout=5)
                assert info.value.code() == expected.grpc, cls
                assert info.value.details() == message
                resp = await client.get(f"/raise/{i}")
                assert resp.status_code == expected.http, cls
                assert resp.json() == {"error": message}
    finally:
        await server.stop(None)


def test_unknown_exceptions_are_internal() -> None:
    status, message = status_for(ValueError("x"))
    assert status.grpc == grpc.StatusCode.INTERNAL and status.http == 500 and message == "x"


