"""A secured mesh for the hostile-tenant suite: 2 ``modelmux serve`` processes over a real etcd,
mutual TLS on every port, an auth file with an admin, two tenants, a reader (by client
certificate) and the instances themselves (by certificate); clients per principal."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import yaml

from mesh._auth import token_sha256
from protos import grpc_predict_v2_pb2 as pb
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.mesh.models import answer, request_bytes
from tests.tls_certs import Pair, TestCA, make_ca

INFER = "/inference.GRPCInferenceService/ModelInfer"
TOKENS = {"admin": "tok-admin-0001", "a": "tok-tenant-a-0002", "b": "tok-tenant-b-0003"}


@dataclass
class PKI:
    ca: TestCA
    server: Pair  # the instances' certificate (server, and client when forwarding)
    client: Pair  # a certificate mapped to no principal (callers that use tokens present it)
    reader_b: Pair  # a certificate that is the principal "team-b-batch" (reader of team-b)
    stranger_ca: TestCA  # a CA the mesh does not trust


def make_pki(d: Path) -> PKI:
    ca = make_ca(d / "ca")
    return PKI(
        ca=ca,
        server=ca.issue("instance", cn="modelmux-instance", sans=("DNS:localhost", "IP:127.0.0.1")),
        client=ca.issue("client", cn="some-client", server=False),
        reader_b=ca.issue("reader-b", cn="batch.team-b", server=False),
        stranger_ca=make_ca(d / "stranger"),
    )


def write_auth_file(path: Path) -> Path:
    principals = [
        {"name": "ops", "sha256": token_sha256(TOKENS["admin"]), "role": "admin"},
        {"name": "team-a-ci", "sha256": token_sha256(TOKENS["a"]), "role": "tenant", "tenant": "team-a"},
        {"name": "team-b-ci", "sha256": token_sha256(TOKENS["b"]), "role": "tenant", "tenant": "team-b"},
        {"name": "team-b-batch", "cert": "batch.team-b", "role": "reader", "tenant": "team-b"},
        {"name": "instances", "cert": "modelmux-instance", "role": "instance"},
    ]
    path.write_text(yaml.safe_dump(principals))
    return path


def instance_env(pki: PKI, auth_file: Path) -> dict[str, str]:
    return {
        "MODELMUX_INSTANCE_AUTH_FILE": str(auth_file),
        "MODELMUX_INSTANCE_TLS_CERT": str(pki.server.cert),
        "MODELMUX_INSTANCE_TLS_KEY": str(pki.server.key),
        "MODELMUX_INSTANCE_TLS_CLIENT_CA": str(pki.ca.cert),
    }


class Caller:
    """One principal's gRPC (V2 + mmesh) and REST clients to both instances."""

    def __init__(self, pki: PKI, grpc_eps: list[str], rest_eps: list[str], *, token: str | None, cert: Pair | None) -> None:
        cert = cert or pki.client
        creds = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.cert.read_bytes(), private_key=cert.key.read_bytes(), certificate_chain=cert.cert.read_bytes()
        )
        self.md: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.channels = [grpc.aio.secure_channel(e, creds) for e in grpc_eps]
        self.infer_calls = [ch.unary_unary(INFER) for ch in self.channels]
        self.mgmt = [mm_grpc.ModelMeshStub(ch) for ch in self.channels]
        self.v2 = [ch.unary_unary("/inference.GRPCInferenceService/ModelMetadata",
                                  request_serializer=pb.ModelMetadataRequest.SerializeToString,
                                  response_deserializer=pb.ModelMetadataResponse.FromString) for ch in self.channels]
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.rest = [f"https://{e}" for e in rest_eps]
        self.http = httpx.AsyncClient(verify=ctx, headers=headers, timeout=30)

    async def infer(self, i: int, model: str, *, extra_md: tuple[tuple[str, str], ...] = ()) -> np.ndarray:
        out = await self.infer_calls[i % 2](request_bytes(model), metadata=self.md + extra_md, timeout=30)
        return answer(out)

    async def register(self, model_id: str, path: Path, i: int = 0, key: dict[str, Any] | None = None, **kw: Any) -> mm.ModelStatusInfo:
        info = mm.ModelInfo(type="onnx", path=str(path), key=json.dumps(key) if key else "")
        return await self.mgmt[i % 2].registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info, **kw), metadata=self.md, timeout=60)

    async def status(self, model_id: str, i: int = 0) -> mm.ModelStatusInfo:
        return await self.mgmt[i % 2].getModelStatus(mm.GetStatusRequest(modelId=model_id), metadata=self.md, timeout=30)

    async def get(self, path: str, i: int = 0) -> httpx.Response:
        return await self.http.get(self.rest[i % 2] + path)

    async def close(self) -> None:
        await self.http.aclose()
        for ch in self.channels:
            await ch.close()


async def grpc_error(coro: Any) -> tuple[grpc.StatusCode, str]:
    """The status and message a call fails with (AssertionError when it succeeds)."""
    try:
        await coro
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError("the call succeeded")
