"""``modelmux up --store etcd``: a local etcd (when none is given) and N ``modelmux serve`` processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class LocalEtcd:
    data_dir: Path
    binary: str = "etcd"
    client_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self, timeout_s: float = 30.0) -> LocalEtcd:
        path = shutil.which(self.binary)
        if path is None:
            raise RuntimeError("no etcd endpoint given and no etcd binary on PATH (Debian: apt-get install etcd-server)")
        self.client_port = self.client_port or free_port()
        peer = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "etcd.log", "ab")
        self.proc = subprocess.Popen(
            [
                path,
                "--name", "modelmux-local",
                "--data-dir", str(self.data_dir / "data"),
                "--listen-client-urls", f"http://127.0.0.1:{self.client_port}",
                "--advertise-client-urls", f"http://127.0.0.1:{self.client_port}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"modelmux-local=http://127.0.0.1:{peer}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; see {self.data_dir / 'etcd.log'}")
            try:
                with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as r:
                    if json.loads(r.read()).get("health") in ("true", True):
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("etcd did not become healthy in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class ProcessMesh:
    instances: int
    data_dir: Path
    etcd_endpoint: str
    capacity_bytes: int
    grpc_port: int = 0
    rest_port: int = 0
    allowed_roots: list[Path] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    endpoints: list[dict[str, str]] = field(default_factory=list)

    def start(self, timeout_s: float = 60.0) -> list[dict[str, str]]:
        ready = []
        for i in range(self.instances):
            rf = self.data_dir / f"instance-{i}.ready.json"
            rf.unlink(missing_ok=True)
            env = dict(
                os.environ,
                MODELMUX_STORE_KIND="etcd",
                MODELMUX_STORE_ENDPOINTS=self.etcd_endpoint,
                MODELMUX_INSTANCE_CAPACITY_BYTES=str(self.capacity_bytes),
            )
            # a local mesh stops all at once: nowhere to move models to, so do not wait long
            env.setdefault("MODELMUX_INSTANCE_SHUTDOWN_GRACE_S", "3")
            cmd = [
                sys.executable, "-m", "mesh", "serve",
                "--grpc-port", str(self.grpc_port + i if self.grpc_port else 0),
                "--rest-port", str(self.rest_port + i if self.rest_port else 0),
                "--instance-id", f"instance-{i}",
                "--data-dir", str(self.data_dir / f"instance-{i}"),
                "--ready-file", str(rf),
                "--log-level", "warning",
                *[a for root in self.allowed_roots for a in ("--allowed-root", str(root))],
            ]
            self.procs.append(subprocess.Popen(cmd, env=env))
            ready.append(rf)
        deadline = time.monotonic() + timeout_s
        for rf, proc in zip(ready, self.procs, strict=True):
            while not rf.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"instance failed to start ({rf.name})")
                time.sleep(0.05)
            self.endpoints.append(json.loads(rf.read_text()))
        return self.endpoints

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
