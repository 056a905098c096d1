"""External load generators (h2load for gRPC, wrk for REST), the machine's description, small helpers.

h2load (Debian ``nghttp2-client``) and wrk (Debian ``wrk``) are C load generators written by
others: the server under test is measured by a client that is neither ours nor Python. h2load
sends a prebuilt gRPC frame (5-byte length prefix + serialized ModelInferRequest) as the
body of every POST; it does not read ``grpc-status``, so every target is first checked with
a real gRPC call, and the bytes h2load received are checked against the size of one answer.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import statistics
import struct
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / (1 << 20):.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    versions = []
    for pkg in ("grpcio", "protobuf", "onnxruntime", "xgboost", "numpy", "fastapi", "uvicorn"):
        try:
            versions.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    tools = []
    for tool, flag in (("h2load", "--version"), ("wrk", "-v")):
        if shutil.which(tool):
            out = subprocess.run([tool, flag], capture_output=True, text=True, check=False)
            first = (out.stdout + out.stderr).strip().splitlines()
            tools.append(first[0] if first else tool)
    return {
        "cpu": f"{cpu}, {os.cpu_count()} logical CPUs",
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": ", ".join(versions),
        "load generators": "; ".join(tools) or "none (Python fallback)",
    }


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def _pcts(values_ms: list[float]) -> tuple[float, float]:
    if not values_ms:
        return 0.0, 0.0
    values_ms.sort()
    return values_ms[len(values_ms) // 2], values_ms[min(len(values_ms) - 1, int(0.99 * len(values_ms)))]


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def h2load(address: str, method: str, message: bytes, *, connections: int, streams: int, duration_s: float,
           warmup_s: float = 1.0, reply_bytes: int = 0, headers: dict[str, str] | None = None) -> dict[str, float]:
    """Closed-loop gRPC unary load: ``connections`` x ``streams`` requests in flight for ``duration_s``."""
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body.bin"
        body.write_bytes(grpc_frame(message))
        log = Path(tmp) / "log.tsv"
        cmd = ["h2load", "-c", str(connections), "-m", str(streams), "-t", "1", "-D", f"{int(duration_s * 1000)}ms",
               "--warm-up-time", f"{int(warmup_s * 1000)}ms", "-d", str(body), "--log-file", str(log),
               "-H", "content-type: application/grpc", "-H", "te: trailers"]
        for k, v in (headers or {}).items():
            cmd += ["-H", f"{k}: {v}"]
        cmd.append(f"http://{address}/{method.lstrip('/')}")
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=duration_s + warmup_s + 60).stdout
        m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
        if m is None:
            raise RuntimeError(f"h2load output not understood:\n{out}")
        done, ok = int(m.group(3)), int(m.group(4))
        lat = []
        for line in log.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1] == "200":
                lat.append(int(parts[2]) / 1000.0)
        data = re.search(r"\((\d+)\) data", out)
    p50, p99 = _pcts(lat)
    data_bytes = int(data.group(1)) if data else 0
    # a failed gRPC call is HTTP 200 with trailers only: the answers' bytes must all be there
    short = bool(reply_bytes) and data_bytes < len(lat) * (reply_bytes + 5)
    if short:
        raise RuntimeError(f"h2load got {data_bytes} bytes of answers for {len(lat)} requests of {reply_bytes + 5}: gRPC errors")
    return {"rps": len(lat) / duration_s, "p50_ms": p50, "p99_ms": p99, "errors": float(done - ok), "n": float(len(lat))}


_WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = {body}
done = function(summary, latency, requests)
  io.write(string.format("JSON{{\\"p50\\": %d, \\"p99\\": %d, \\"requests\\": %d, \\"non2xx\\": %d, \\"errors\\": %d}}\\n",
    latency:percentile(50), latency:percentile(99), summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def wrk(url: str, body: bytes | None, *, connections: int, duration_s: float, script: str | None = None,
        warmup_s: float = 1.0) -> dict[str, float]:
    """Closed-loop HTTP/1.1 load with keep-alive: ``connections`` requests in flight for ``duration_s``."""
    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "post.lua"
        lua.write_text(script if script is not None else _WRK_LUA.format(body=json.dumps(body.decode() if body else "")))
        if warmup_s > 0:
            subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, int(warmup_s))}s", "-s", str(lua), url],
                           capture_output=True, check=False)
        t = max(1, round(duration_s))
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{t}s", "--timeout", "30s", "-s", str(lua), url],
                             capture_output=True, text=True, check=False, timeout=t + 60).stdout
    m = re.search(r"JSON(\{.*\})", out)
    if m is None:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    r = json.loads(m.group(1))
    ok = r["requests"] - r["non2xx"] - r["errors"]
    return {"rps": ok / t, "p50_ms": r["p50"] / 1000.0, "p99_ms": r["p99"] / 1000.0,
            "errors": float(r["non2xx"] + r["errors"]), "n": float(r["requests"])}


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def wait_file(path: Path, proc: subprocess.Popen[Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start in {timeout_s}s")
        time.sleep(0.05)
