"""The peer link (mesh._peer_link): forwards between instances go over it when the holder
advertises one, answer exactly as a gRPC forward would (values, errors, the holder trailer), fall
back to gRPC when the link cannot be opened, reconnect after a drop, and refuse a caller without
an instance's credentials (hand-written frames, as an attacker would send them)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml

from mesh._auth import token_sha256
from mesh._peer_link import PeerLinkClient
from tests.mesh.cluster import MemoryCluster
from tests.mesh.models import WIDTH, answer, loaded, request_bytes
from tests.security.tenancy_help import TOKENS, write_auth_file

INFER = "/inference.GRPCInferenceService/ModelInfer"
PEER_TOKEN = "tok-peer-link-instances-0042"


@pytest.fixture(autouse=True)
def _one_copy_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELMUX_PLACEMENT_SECOND_COPY_RPM", "1000000")


def _x(k: float) -> np.ndarray:
    return np.full((1, WIDTH), k, dtype=np.float32)


@pytest.fixture
async def cluster(tmp_path: Path) -> Any:
    c = MemoryCluster(2, tmp_path, capacity_bytes=64 << 20, overrides={"forward_retry_backoff_s": 0.1})
    await c.start()
    yield c
    await c.close()


async def test_forwards_use_the_link_and_answer_as_a_grpc_forward(cluster: MemoryCluster, tmp_path: Path) -> None:
    await _forwards_over_the_link(cluster, tmp_path)


def test_the_link_works_on_uvloop(tmp_path: Path) -> None:
    """The same on uvloop, the loop a serving process runs on by default (run_event_loop): its
    transports are not asyncio's classes, and the link once refused them (every forward then
    waited for the link to time out and went over gRPC)."""
    from runtime_adapters import run_event_loop

    async def scenario() -> str:
        c = MemoryCluster(2, tmp_path, capacity_bytes=64 << 20, overrides={"forward_retry_backoff_s": 0.1})
        await c.start()
        try:
            await _forwards_over_the_link(c, tmp_path)
        finally:
            await c.close()
        return type(asyncio.get_running_loop()).__module__

    assert run_event_loop(scenario(), loop="uvloop").startswith("uvloop")


async def _forwards_over_the_link(cluster: MemoryCluster, tmp_path: Path) -> None:
    holder, other = await loaded(cluster, tmp_path, "m")
    assert holder.endpoints is not None and other.endpoints is not None
    assert holder.endpoints.link and holder.describe()["link_address"] == holder.endpoints.link
    async with grpc.aio.insecure_channel(other.endpoints.grpc) as ch, grpc.aio.insecure_channel(holder.endpoints.grpc) as direct:
        infer, infer_direct = ch.unary_unary(INFER), direct.unary_unary(INFER)
        calls = [infer(request_bytes("m", _x(k)), timeout=30) for k in range(20)]
        for k, call in enumerate(calls):  # 20 at once over the one connection, each its own answer
            np.testing.assert_array_equal(answer(await call), _x(k) + 3)
        assert ("mm-holder", holder.endpoints.grpc) in list(await calls[0].trailing_metadata())
        # an error on the holder comes back with the code and message the holder gives its own callers
        bad = request_bytes("m", np.zeros((1, WIDTH + 1), dtype=np.float32))
        with pytest.raises(grpc.aio.AioRpcError) as via_link:
            await infer(bad, timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as at_holder:
            await infer_direct(bad, timeout=30)
        assert via_link.value.code() == at_holder.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert via_link.value.details() == at_holder.value.details()
    counters = other.describe()
    assert counters["forwarded"] == counters["linked"] == 21 and counters["link_fallbacks"] == 0
    assert not other.router._channels, "a gRPC channel to the holder was opened although its link works"


async def test_a_link_that_cannot_be_opened_falls_back_to_grpc(cluster: MemoryCluster, tmp_path: Path) -> None:
    holder, other = await loaded(cluster, tmp_path, "m")
    assert other.endpoints is not None and holder._link_server is not None
    await holder._link_server.close()  # still advertised, nothing listening
    async with grpc.aio.insecure_channel(other.endpoints.grpc) as ch:
        for k in range(3):
            np.testing.assert_array_equal(answer(await ch.unary_unary(INFER)(request_bytes("m", _x(k)), timeout=30)), _x(k) + 3)
    counters = other.describe()
    # one failed attempt to open it; the next requests go straight to gRPC for a while
    assert counters["link_fallbacks"] == 1 and counters["linked"] == 0 and counters["forwarded"] == 3


async def test_a_dropped_link_fails_its_calls_unavailable_and_the_next_call_reconnects(cluster: MemoryCluster, tmp_path: Path) -> None:
    holder, other = await loaded(cluster, tmp_path, "m")
    assert other.endpoints is not None and holder._link_server is not None
    async with grpc.aio.insecure_channel(other.endpoints.grpc) as ch:
        infer = ch.unary_unary(INFER)
        answer(await infer(request_bytes("m", _x(1)), timeout=30))
        for conn in list(holder._link_server._connections):
            conn.abort()
        np.testing.assert_array_equal(answer(await infer(request_bytes("m", _x(2)), timeout=30)), _x(2) + 3)
    (client,) = other.router._links.values()
    assert client.connects == 2 and other.describe()["link_fallbacks"] == 0


# ---------------------------------------------------------------- the client against a misbehaving peer


async def _fake_peer(behaviour: str) -> tuple[asyncio.Server, str]:
    """A server that takes the hello and then: drops the connection at the first request
    ("drop"), never answers ("silent"), or answers with a frame shorter than its head ("garbage")."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (n,) = struct.unpack("<I", await reader.readexactly(4))
            await reader.readexactly(n)
            writer.write(struct.pack("<IIB", 5, 0, 0))  # hello accepted
            (n,) = struct.unpack("<I", await reader.readexactly(4))
            await reader.readexactly(n)
            if behaviour == "garbage":
                writer.write(struct.pack("<IIB", 1, 1, 0))
            if behaviour == "silent":
                await reader.read()  # until the client goes
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize(("behaviour", "code"), [("drop", grpc.StatusCode.UNAVAILABLE), ("silent", grpc.StatusCode.DEADLINE_EXCEEDED), ("garbage", grpc.StatusCode.UNAVAILABLE)])
async def test_client_maps_a_misbehaving_peer_to_grpc_codes(behaviour: str, code: grpc.StatusCode) -> None:
    server, address = await _fake_peer(behaviour)
    client = PeerLinkClient(address)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.call("m", b"payload", 0.5)
        assert err.value.code() == code, err.value
        assert not client._calls  # nothing left waiting
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------- hostile callers on the link


async def _hello(address: str, hello: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, bytes]:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(struct.pack("<I", len(hello)) + hello)
    length, call_id, status = struct.unpack("<IIB", await reader.readexactly(9))
    assert call_id == 0
    return reader, writer, status, await reader.readexactly(length - 5)


async def _eof(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 10) == b""


def _request_frame(call_id: int, mid: str, payload: bytes) -> bytes:
    m = mid.encode()
    return struct.pack("<IIIH", 10 + len(m) + len(payload), call_id, 30_000, len(m)) + m + payload


async def test_the_link_refuses_callers_without_an_instances_credentials(tmp_path: Path) -> None:
    auth = write_auth_file(tmp_path / "auth.yaml")
    principals = yaml.safe_load(auth.read_text())
    auth.write_text(yaml.safe_dump([*principals, {"name": "peers", "sha256": token_sha256(PEER_TOKEN), "role": "instance"}]))
    (tmp_path / "peer-token").write_text(PEER_TOKEN + "\n")
    c = MemoryCluster(2, tmp_path, capacity_bytes=64 << 20, overrides={"auth_file": auth, "peer_token_file": tmp_path / "peer-token"})
    await c.start()
    md = (("authorization", f"Bearer {TOKENS['b']}"),)
    try:
        holder, other = await loaded(c, tmp_path, "m", md)
        assert holder.endpoints is not None and other.endpoints is not None and holder._link_server is not None
        link = holder.endpoints.link
        local_before = holder.router.counters.local

        attacks = {
            "no token": json.dumps({"authorization": ""}).encode(),
            "forged token": json.dumps({"authorization": "Bearer not-a-token"}).encode(),
            "a tenant's token": json.dumps({"authorization": f"Bearer {TOKENS['b']}"}).encode(),
            "not a hello": _request_frame(1, "m", request_bytes("m", _x(1)))[4:],
        }
        expected = {
            "no token": grpc.StatusCode.UNAUTHENTICATED,
            "forged token": grpc.StatusCode.UNAUTHENTICATED,
            "a tenant's token": grpc.StatusCode.PERMISSION_DENIED,
            "not a hello": grpc.StatusCode.INVALID_ARGUMENT,
        }
        for what, hello in attacks.items():
            reader, writer, status, message = await _hello(link, hello)
            writer.write(_request_frame(1, "m", request_bytes("m", _x(1))))  # sent anyway: never served
            assert status == expected[what].value[0], (what, status, message)
            assert await _eof(reader), what  # and the holder hung up
            writer.close()
            await writer.wait_closed()
        assert holder._link_server.refused == len(attacks)
        # an oversize frame after a valid hello closes that connection only
        reader, writer, status, _ = await _hello(link, json.dumps({"authorization": f"Bearer {PEER_TOKEN}"}).encode())
        assert status == 0
        writer.write(struct.pack("<IIIH", (128 << 20), 7, 1000, 1) + b"m")
        assert await _eof(reader)
        writer.close()
        await writer.wait_closed()

        # nothing ran on the holder, and the model still serves, forwarded over the link by its peer
        assert holder.router.counters.local == local_before
        async with grpc.aio.insecure_channel(other.endpoints.grpc) as ch:
            out = await ch.unary_unary(INFER)(request_bytes("m", _x(4)), metadata=md, timeout=30)
            np.testing.assert_array_equal(answer(out), _x(4) + 3)
        counters = other.describe()
        assert counters["linked"] >= 1 and counters["link_fallbacks"] == 0
    finally:
        await c.close()
