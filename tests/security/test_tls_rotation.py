"""Certificates rotated in place (as cert-manager does) are served without a restart: new TLS
connections to the REST and metrics ports get the new certificate, and gRPC keeps serving."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
from pathlib import Path

import grpc

from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests import tls_certs
from tests.mesh.cluster import MemoryCluster, wait_until
from tests.tls_certs import make_ca


def _served_cn(address: str, ca: Path) -> str:
    host, _, port = address.rpartition(":")
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((host, int(port)), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
        cert = s.getpeercert() or {}
    return next(v for rdn in cert["subject"] for k, v in rdn if k == "commonName")  # type: ignore[index,union-attr]


def _pki(tmp_path: Path) -> tuple[tls_certs.TestCA, tls_certs.Pair, Path, Path]:
    """A CA, the new server pair (CN served-new), and the live files, holding the old pair (served-old)."""
    ca = make_ca(tmp_path / "pki")
    old = ca.issue("old", cn="served-old", sans=("IP:127.0.0.1",))
    new = ca.issue("new", cn="served-new", sans=("IP:127.0.0.1",))
    live_cert, live_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(old.cert, live_cert)
    shutil.copy(old.key, live_key)
    return ca, new, live_cert, live_key


def _rotate(src: Path, dst: Path) -> None:
    """Write ``dst`` as a Secret volume's update does: a new file (new inode) renamed over it."""
    tmp = dst.with_suffix(".next")
    shutil.copy(src, tmp)
    tmp.replace(dst)


async def test_rotated_certificates_are_served_without_a_restart(tmp_path: Path) -> None:
    ca, new, live_cert, live_key = _pki(tmp_path)
    cluster = MemoryCluster(1, tmp_path, capacity_bytes=64 << 20,
                            overrides={"tls_cert": live_cert, "tls_key": live_key, "metrics_port": 0})  # fmt: skip
    await cluster.start()
    try:
        assert cluster.mesh is not None
        ep = cluster.mesh.instances[0].endpoints
        assert ep is not None
        for address in (ep.rest, ep.metrics):
            assert await asyncio.to_thread(_served_cn, address, ca.cert) == "served-old"
        # rotate: write the new pair in place (new inode, like a Secret volume's symlink swap)
        for src, dst in ((new.cert, live_cert), (new.key, live_key)):
            _rotate(src, dst)
        for address in (ep.rest, ep.metrics):

            async def rotated(a: str = address) -> bool:
                return await asyncio.to_thread(_served_cn, a, ca.cert) == "served-new"

            await wait_until(rotated, 20, f"{address} to serve the rotated certificate")
        async with grpc.aio.secure_channel(ep.grpc, grpc.ssl_channel_credentials(ca.cert.read_bytes())) as ch:
            st = await mm_grpc.ModelMeshStub(ch).getModelStatus(mm.GetStatusRequest(modelId="x"), timeout=10)
            assert st.status == mm.ModelStatusInfo.NOT_FOUND
    finally:
        await cluster.close()


async def test_a_half_written_rotation_keeps_the_previous_pair_served(tmp_path: Path) -> None:
    """cert-manager swaps both files at once, but a hand-run rotation writes the certificate, then
    the key. A reload between the two must not apply the mismatched pair: handshakes keep getting
    the old certificate (the old code loaded into the context in use and left it without a key,
    so every handshake failed), and gRPC is not handed the pair either; once the key follows, the
    new pair is served."""
    from mesh._tls import ServerTLS, TLSFiles

    ca, new, live_cert, live_key = _pki(tmp_path)
    tls = ServerTLS(TLSFiles(live_cert, live_key))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=tls.ssl_context)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        assert await asyncio.to_thread(_served_cn, address, ca.cert) == "served-old"
        _rotate(new.cert, live_cert)  # the certificate only
        assert await asyncio.to_thread(tls._reload_context_if_changed) is False
        assert tls.grpc_fetch() is None
        for _ in range(3):
            assert await asyncio.to_thread(_served_cn, address, ca.cert) == "served-old"
        _rotate(new.key, live_key)  # then its key
        assert await asyncio.to_thread(tls._reload_context_if_changed) is True
        assert tls.grpc_fetch() is not None
        assert await asyncio.to_thread(_served_cn, address, ca.cert) == "served-new"
        assert tls.reloads == 1
    finally:
        server.close()
        await server.wait_closed()
