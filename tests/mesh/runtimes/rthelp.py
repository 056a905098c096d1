"""Helpers for runtime-process tests: world-readable artifact folders, V2 requests, traffic."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protos import grpc_predict_v2_pb2 as pb

HOSTILE_WORKER = "tests.mesh.runtimes.hostile_runtime"


@contextmanager
def readable_dir() -> Iterator[Path]:
    """A folder the unprivileged runtime user can read (pytest's tmp_path is 0700 under root)."""
    d = Path(tempfile.mkdtemp(prefix="mm-rt-test-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def open_up(path: Path) -> Path:
    for p in [path, *path.parents]:
        if p == Path("/tmp") or p == Path("/"):
            break
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return path


def fp32_request(model: str, name: str, values: list[float], shape: list[int] | None = None) -> bytes:
    req = pb.ModelInferRequest(model_name=model)
    t = req.inputs.add(name=name, datatype="FP32", shape=shape or [1, len(values)])
    t.contents.fp32_contents.extend(values)
    return bytes(req.SerializeToString())


def bytes_output(raw: bytes) -> bytes:
    msg = pb.ModelInferResponse.FromString(raw)
    data = bytes(msg.raw_output_contents[0])
    return data[4:]


@dataclass
class Traffic:
    """Steady requests against one copy until stopped; counts successes and errors."""

    ok: int = 0
    errors: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, copy: Any, payload: bytes) -> None:
        infer = copy.infer_bytes
        while not self.stop.is_set():
            try:
                await infer(payload, 5.0)
                self.ok += 1
            except Exception as exc:  # counted: the assertion is that there are none
                self.errors.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.005)


async def wait_for(pred, timeout_s: float, what: str) -> float:  # type: ignore[no-untyped-def]
    """Poll until ``pred()``; returns the seconds it took."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0
