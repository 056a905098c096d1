"""MLServer as an external runtime: the same calls as :class:`RuntimeClient`, made on MLServer's
own APIs (it does not speak ``mmesh.ModelRuntime``).

* load: the artifact is copied into MLServer's model repository as ``<name>/`` with a
  ``model-settings.json`` naming the implementation for the model type (e.g.
  ``mlserver_sklearn.SKLearnModel``), then ``POST /v2/repository/models/<name>/load`` (V2
  model-repository extension) makes MLServer load it.
* size: the RSS growth of the MLServer process and its children (its inference workers) across
  the load, when its pid is configured; otherwise (or when the growth is smaller) the
  artifact's bytes. Loads are serialised so that growths are not mixed up.
* inference: the request bytes go unparsed to MLServer's gRPC port; MLServer routes by the
  request's ``model_name``, so the MLServer name is appended as field 1 (protobuf keeps the last
  value of a singular field: no parse, ModelMesh's id injection); the answer gets the caller's
  name back the same way.
* unload: ``POST .../unload``, then the staged folder is removed.

``<name>`` is the model id made safe for a folder and a URL, with a hash of the id.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
from pathlib import Path

import httpx
import psutil

from protos import grpc_predict_v2_pb2 as v2
from runtime_adapters import (
    ModelLoadError,
    ModelMetadata,
    ModelSpec,
    TensorMetadata,
    UnsupportedModelType,
)

from ._client import RuntimeClient
from ._settings import ExternalRuntime

# model type -> MLServer implementation, for the runtimes MLServer ships
DEFAULT_IMPLEMENTATIONS = {
    "sklearn": "mlserver_sklearn.SKLearnModel",
    "scikit-learn": "mlserver_sklearn.SKLearnModel",
    "xgboost": "mlserver_xgboost.XGBoostModel",
    "lightgbm": "mlserver_lightgbm.LightGBMModel",
}


def mlserver_name(model_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model_id)[:80].strip(".") or "m"
    return f"{safe}-{hashlib.sha256(model_id.encode()).hexdigest()[:10]}"


def inject_name(payload: bytes, name: str) -> bytes:
    """``payload`` with ``model_name`` (field 1) set to ``name``, without parsing it."""
    raw = name.encode()
    return payload + b"\x0a" + _varint(len(raw)) + raw


def leading_name(payload: bytes) -> bytes | None:
    """``model_name`` when it is the message's first field (as protobuf writers put it), else None.
    Reads a tag and a length: O(1), not a parse."""
    if payload[:1] != b"\x0a":
        return None
    size, shift, i = 0, 0, 1
    while i < len(payload) and i < 6:
        byte = payload[i]
        size |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return payload[i : i + size] if i + size <= len(payload) else None
        shift += 7
    return None


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tree_rss(pid: int) -> int:
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += int(p.memory_info().rss)
        except psutil.Error:
            pass
    return total


def _stage(src: Path, dest: Path, implementation: str) -> int:
    """Copy the artifact into ``dest`` with its model-settings.json; returns the artifact's bytes."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if src.is_dir():
        shutil.copytree(src, dest / "model")
        files = [p for p in (dest / "model").rglob("*") if p.is_file()]
        uri = "./model"
        # a folder with one file: point at the file (MLServer's well-known names vary by runtime)
        if len(files) == 1:
            uri = f"./{files[0].relative_to(dest)}"
    else:
        files = [dest / src.name]
        shutil.copy2(src, files[0])
        uri = f"./{src.name}"
    name = dest.name
    (dest / "model-settings.json").write_text(
        json.dumps({"name": name, "implementation": implementation, "parameters": {"uri": uri}})
    )
    return sum(p.stat().st_size for p in files)


class MLServerClient(RuntimeClient):
    """An MLServer reached at ``external.address`` (gRPC) and ``external.rest_address`` (REST)."""

    def __init__(self, external: ExternalRuntime, *, max_message_bytes: int = 64 << 20) -> None:
        super().__init__(external.address, max_message_bytes=max_message_bytes)
        if not external.rest_address or not external.model_repository:
            raise ValueError(f"MLServer runtime '{external.name}' needs rest_address and model_repository")
        self.external = external
        self.repository = Path(external.model_repository)
        self.implementations = {**DEFAULT_IMPLEMENTATIONS, **{k.lower(): v for k, v in external.implementations.items()}}
        self._http = httpx.AsyncClient(base_url=f"http://{external.rest_address}", timeout=None)
        self._loads = asyncio.Lock()
        self._names: dict[str, str] = {}

    async def load(self, spec: ModelSpec, path: str, timeout_s: float) -> int:
        implementation = self.implementations.get(spec.model_type.strip().lower())
        if implementation is None:
            raise UnsupportedModelType(f"MLServer runtime '{self.external.name}' has no implementation for '{spec.model_type}'")
        name = mlserver_name(spec.model_id)
        dest = self.repository / name
        async with self._loads:
            files = await asyncio.to_thread(_stage, Path(path), dest, implementation)
            pid = self.external.pid
            before = await asyncio.to_thread(_tree_rss, pid) if pid else 0
            resp = await self._http.post(f"/v2/repository/models/{name}/load", timeout=timeout_s)
            if resp.status_code != 200:
                await asyncio.to_thread(shutil.rmtree, dest, True)
                raise ModelLoadError(f"MLServer could not load '{spec.model_id}': {resp.status_code} {resp.text[:500]}")
            grown = (await asyncio.to_thread(_tree_rss, pid) - before) if pid else 0
        self._names[spec.model_id] = name
        return max(grown, files, 1)

    async def unload(self, model_id: str, timeout_s: float) -> None:
        name = self._names.pop(model_id, mlserver_name(model_id))
        try:
            resp = await self._http.post(f"/v2/repository/models/{name}/unload", timeout=timeout_s)
            if resp.status_code not in (200, 404):
                raise ModelLoadError(f"MLServer could not unload '{model_id}': {resp.status_code} {resp.text[:500]}")
        finally:
            await asyncio.to_thread(shutil.rmtree, self.repository / name, True)

    async def metadata(self, model_id: str, timeout_s: float) -> ModelMetadata:
        msg = await self._metadata(v2.ModelMetadataRequest(name=self._names.get(model_id, mlserver_name(model_id))), timeout=timeout_s)
        return ModelMetadata(
            name=model_id,
            platform=msg.platform,
            versions=tuple(msg.versions),
            inputs=tuple(TensorMetadata(t.name, t.datatype, tuple(t.shape)) for t in msg.inputs),
            outputs=tuple(TensorMetadata(t.name, t.datatype, tuple(t.shape)) for t in msg.outputs),
        )

    async def infer(self, model_id: str, payload: bytes, timeout_s: float) -> bytes:
        name = self._names.get(model_id) or mlserver_name(model_id)
        result: bytes = await self.infer_raw(inject_name(payload, name), timeout=timeout_s)
        asked = leading_name(payload)
        if asked is not None:  # answer under the name the caller used (a vModel's, say), not MLServer's
            result = result + b"\x0a" + _varint(len(asked)) + asked
        return result

    async def close(self) -> None:
        await self._http.aclose()
        await super().close()
