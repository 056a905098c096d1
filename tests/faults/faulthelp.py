"""Helpers of the fault tests: a management client and store look-ups."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc

from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.mesh.cluster import ProcessCluster

LEASE_TTL_S = 3  # the clusters' lease TTL (small, so that a dead instance is noticed fast)
SLACK_S = 10.0  # a loaded 2-core CI machine: elections, ticks and loads all run late
NO_RATE_COPIES = {  # copies come only from min_copies here, never from traffic
    "MODELMUX_PLACEMENT_SECOND_COPY_RPM": "1000000000",
    "MODELMUX_PLACEMENT_SECOND_COPY_OFF_RPM": "100000000",
    "MODELMUX_PLACEMENT_SCALE_OUT_RPM_PER_COPY": "1000000000",
}


class Mgmt:
    """mmesh.ModelMesh clients to every instance (index picks the entry)."""

    def __init__(self, endpoints: list[str]) -> None:
        self.channels = [grpc.aio.insecure_channel(e) for e in endpoints]
        self.stubs = [mm_grpc.ModelMeshStub(ch) for ch in self.channels]

    async def register(
        self, model_id: str, path: Path | str, *, i: int = 0, min_copies: int = 0, load: bool = False, timeout: float = 30, **extra: Any
    ) -> mm.ModelStatusInfo:
        key = json.dumps({"min_copies": min_copies, **extra}) if (min_copies or extra) else ""
        return await self.stubs[i % len(self.stubs)].registerModel(
            mm.RegisterModelRequest(
                modelId=model_id,
                modelInfo=mm.ModelInfo(type="onnx", path=str(path), key=key),
                loadNow=load,
                sync=load,
            ),
            timeout=timeout,
        )

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()


async def holders(cluster: ProcessCluster, model: str) -> list[str]:
    """Instances with a loaded copy of ``model``, per the store."""
    snap = await cluster.snapshot()
    return sorted(i for i, st in snap["copies"].get(model, {}).items() if st == "loaded")


async def register_pairs_and_singles(mgmt: Mgmt, models_dir: Path, n: int = 3) -> tuple[dict[str, float], set[str]]:
    """``n`` models with min 2 copies (``dup*``) and ``n`` with one (``one*``), loaded now.

    Returns each model's answer and the set of two-copy models.
    """
    from tests.mesh.models import add_model

    answers: dict[str, float] = {}
    for prefix, base, extra in (("dup", 10.0, {"min_copies": 2}), ("one", 20.0, {})):
        for k in range(n):
            p = add_model(models_dir / f"{prefix}{k}" / "model.onnx", base + k)
            await mgmt.register(f"{prefix}{k}", p, i=k, load=True, **extra)
            answers[f"{prefix}{k}"] = base + k
    return answers, {m for m in answers if m.startswith("dup")}
