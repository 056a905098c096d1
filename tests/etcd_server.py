"""A real etcd for tests, and the shared store fixtures.

``EtcdServer(data_dir)`` runs the ``etcd`` binary (Debian package ``etcd-server``) on
127.0.0.1 with free client and peer ports; ``restart()`` brings it back on the SAME ports
and data directory (for "store down, then back" tests).

Fixtures (import them into a conftest to use them)::

    from tests.etcd_server import etcd_factory, etcd_server, key_prefix, store  # noqa: F401

and, to enforce the ``etcd`` mark on tests that use none of them::

    from tests.etcd_server import check_etcd_marker

    def pytest_runtest_setup(item):
        check_etcd_marker(item)

- ``etcd_server`` (session): one shared server. Skips when the binary is missing, but
  FAILS when ``CI=true`` (CI must run the etcd tests).
- ``etcd_factory`` (function): ``etcd_factory()`` starts a private server, stopped at
  teardown (for tests that stop or restart etcd).
- ``key_prefix`` (function): a fresh key prefix (``/t/<hex>/``) so tests never collide.
- ``store`` (function, parametrised ``memory`` / ``etcd``): a store of each kind; the etcd
  variant carries the ``etcd`` mark.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import pytest

ETCD_BINARY = "etcd"
_START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def etcd_binary() -> str | None:
    return shutil.which(os.environ.get("MODELMUX_TEST_ETCD_BINARY", ETCD_BINARY))


def require_etcd() -> str:
    """The etcd binary's path; skip the test when absent, fail under CI."""
    path = etcd_binary()
    if path is None:
        reason = "etcd binary not found (apt-get install etcd-server)"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{reason}; CI must run the etcd tests", pytrace=False)
        pytest.skip(reason)
    return path


def check_etcd_marker(item: pytest.Item) -> None:
    """Call from a conftest's ``pytest_runtest_setup``: a test marked ``etcd`` skips (locally)
    or fails (CI) when the binary is missing, even if it uses none of these fixtures."""
    if item.get_closest_marker("etcd") is not None:
        require_etcd()


class EtcdServer:
    """One single-member etcd on loopback. Start with :meth:`start` (or use as a context)."""

    def __init__(
        self, data_dir: Path, *, binary: str | None = None, extra_args: Sequence[str] = ()
    ) -> None:
        self.data_dir = Path(data_dir)
        self.extra_args = list(extra_args)  # more etcd flags, e.g. --quota-backend-bytes
        self.binary = binary or etcd_binary() or ETCD_BINARY
        self.client_port = 0
        self.peer_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_path = self.data_dir.with_name(self.data_dir.name + ".log")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> EtcdServer:
        """Start on free ports (retrying on a port collision) and wait until healthy."""
        last_error = ""
        for _attempt in range(5):
            self.client_port, self.peer_port = _free_port(), _free_port()
            if self.client_port == self.peer_port:
                continue
            try:
                self._launch()
                return self
            except RuntimeError as exc:
                last_error = str(exc)
                if "address already in use" not in last_error:
                    raise
        raise RuntimeError(f"etcd could not find free ports: {last_error}")

    def restart(self) -> None:
        """Stop (if running) and start again on the same ports and data directory."""
        self.stop()
        self._launch()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL, for crash tests."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def _launch(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.data_dir.chmod(0o700)
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        name = "modelmux-test"
        cmd = [
            self.binary,
            "--name", name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{name}={peer}",
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"modelmux-test-{uuid.uuid4().hex[:8]}",
            "--listen-metrics-urls", "",
            "--log-level", "warn",
            "--logger", "zap",
            *self.extra_args,
        ]  # fmt: skip
        log = self._log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            log.close()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"etcd exited at start: {self.log_tail()}")
            if self._healthy():
                return
            time.sleep(0.05)  # polling a condition under a deadline
        self.stop()
        raise RuntimeError(f"etcd not healthy within {_START_TIMEOUT_S} s: {self.log_tail()}")

    def _healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.client_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def log_tail(self, n_bytes: int = 2000) -> str:
        try:
            return self._log_path.read_bytes()[-n_bytes:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh data directory: on tmpfs when available (etcd fsyncs every write)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / f"modelmux-etcd-{os.getpid()}-{uuid.uuid4().hex[:12]}" / "data"
    return tmp_path_factory.mktemp("etcd") / "data"


def _cleanup(server: EtcdServer) -> None:
    server.stop()
    root = server.data_dir.parent
    if root.is_relative_to("/dev/shm"):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    binary = require_etcd()
    server = EtcdServer(_data_dir(tmp_path_factory), binary=binary)
    try:
        server.start()
        yield server
    finally:
        _cleanup(server)


@pytest.fixture
def etcd_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., EtcdServer]]:
    """``make(*extra_args)``: a fresh etcd of its own (with more flags if given)."""
    binary = require_etcd()
    servers: list[EtcdServer] = []

    def make(*extra_args: str) -> EtcdServer:
        server = EtcdServer(_data_dir(tmp_path_factory), binary=binary, extra_args=extra_args)
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            _cleanup(server)


@pytest.fixture
def key_prefix() -> str:
    return f"/t/{uuid.uuid4().hex[:12]}/"


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.etcd)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[object]:
    """A store of each kind (typed ``object`` here so this module imports nothing of mesh)."""
    from mesh._store import EtcdStore, MemoryStore

    s: MemoryStore | EtcdStore
    if request.param == "memory":
        s = MemoryStore()
    else:
        server: EtcdServer = request.getfixturevalue("etcd_server")
        s = EtcdStore([("127.0.0.1", server.client_port)], op_timeout_s=2.0)
    try:
        yield s
    finally:
        with contextlib.suppress(Exception):
            await s.close()
