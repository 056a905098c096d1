"""Forwarding between instances with a peer bearer token over TLS (no client certificates): the
forward is served while the token's principal is an instance, and refused once the operator
takes that principal out of the auth file (re-read without a restart), also on the peer link
that was opened before the token was revoked (the holder checks the token on every call)."""

from __future__ import annotations

from pathlib import Path

import grpc
import yaml

from mesh._auth import token_sha256
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.mesh.cluster import MemoryCluster, wait_until
from tests.mesh.models import add_model, answer, request_bytes
from tests.security.tenancy_help import INFER, TOKENS, write_auth_file
from tests.tls_certs import make_ca

PEER_TOKEN = "tok-peer-instances-0009"


async def test_forwarding_with_a_peer_token_and_its_revocation(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "pki")
    server = ca.issue("server", cn="modelmux", sans=("IP:127.0.0.1",))
    auth = write_auth_file(tmp_path / "auth.yaml")
    principals = yaml.safe_load(auth.read_text())
    with_peer = [*principals, {"name": "peers", "sha256": token_sha256(PEER_TOKEN), "role": "instance"}]
    auth.write_text(yaml.safe_dump(with_peer))
    (tmp_path / "peer-token").write_text(PEER_TOKEN + "\n")
    cluster = MemoryCluster(
        2, tmp_path, capacity_bytes=64 << 20,
        overrides={"auth_file": auth, "tls_cert": server.cert, "tls_key": server.key,
                   "peer_token_file": tmp_path / "peer-token", "peer_tls_ca_file": ca.cert},
    )  # fmt: skip
    await cluster.start()
    creds = grpc.ssl_channel_credentials(root_certificates=ca.cert.read_bytes())
    channels = [grpc.aio.secure_channel(e, creds) for e in cluster.grpc]
    md = (("authorization", f"Bearer {TOKENS['b']}"),)
    try:
        path = add_model(tmp_path / "m" / "model.onnx", 3.0)
        st = await mm_grpc.ModelMeshStub(channels[0]).registerModel(
            mm.RegisterModelRequest(modelId="m", modelInfo=mm.ModelInfo(type="onnx", path=str(path)), loadNow=True, sync=True),
            metadata=md, timeout=60,
        )
        assert st.status == mm.ModelStatusInfo.LOADED
        assert cluster.mesh is not None
        instances = cluster.mesh.instances
        holder = next(i for i, inst in enumerate(instances) if "m" in inst.loaded)
        other = 1 - holder
        out = answer(await channels[other].unary_unary(INFER)(request_bytes("m"), metadata=md, timeout=30))
        assert out[0, 0] == 3.0
        assert instances[other].router.counters.forwarded >= 1
        # over the peer link (TLS checked against the peer CA, the token in its hello)
        assert instances[other].router.counters.linked == instances[other].router.counters.forwarded
        assert instances[other].router.counters.link_fallbacks == 0

        auth.write_text(yaml.safe_dump(principals))  # the peers' token no longer names an instance
        await wait_until(lambda: all(i.security.auth_file and i.security.auth_file.reloads >= 1 for i in instances), 30, "reload")
        try:
            await channels[other].unary_unary(INFER)(request_bytes("m"), metadata=md, timeout=30)
            raise AssertionError("a forward with a revoked peer token was served")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE), exc
        # the holder itself still serves the tenant directly
        out = answer(await channels[holder].unary_unary(INFER)(request_bytes("m"), metadata=md, timeout=30))
        assert out[0, 0] == 3.0
    finally:
        for ch in channels:
            await ch.close()
        await cluster.close()
