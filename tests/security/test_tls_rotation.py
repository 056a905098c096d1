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
from tests.mesh.cluster import MemoryCluster, wait_until
from tests.tls_certs import make_ca


def _served_cn(address: str, ca: Path) -> str:
    host, _, port = address.rpartition(":")
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((host, int(port)), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
        cert = s.getpeercert() or {}
    return next(v for rdn in cert["subject"] for k, v in rdn if k == "commonName")  # type: ignore[index,union-attr]


async def test_rotated_certificates_are_served_without_a_restart(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "pki")
    old = ca.issue("old", cn="served-old", sans=("IP:127.0.0.1",))
    new = ca.issue("new", cn="served-new", sans=("IP:127.0.0.1",))
    live_cert, live_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(old.cert, live_cert)
    shutil.copy(old.key, live_key)
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
            tmp = dst.with_suffix(".next")
            shutil.copy(src, tmp)
            tmp.replace(dst)
        for address in (ep.rest, ep.metrics):

            async def rotated(a: str = address) -> bool:
                return await asyncio.to_thread(_served_cn, a, ca.cert) == "served-new"

            await wait_until(rotated, 20, f"{address} to serve the rotated certificate")
        async with grpc.aio.secure_channel(ep.grpc, grpc.ssl_channel_credentials(ca.cert.read_bytes())) as ch:
            st = await mm_grpc.ModelMeshStub(ch).getModelStatus(mm.GetStatusRequest(modelId="x"), timeout=10)
            assert st.status == mm.ModelStatusInfo.NOT_FOUND
    finally:
        await cluster.close()
