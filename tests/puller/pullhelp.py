"""Test servers for the puller tests: moto (S3) in a child process, and a controllable HTTP
file server in a thread. Both bind 127.0.0.1 port 0 and report the port they got; both can be
killed mid-transfer and restarted on the port they had."""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.server
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from puller import (
    Listing,
    ObjectSink,
    Provider,
    PullerSettings,
    RemoteObject,
    Source,
    StorageConfig,
)

MOTO_SCRIPT = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # run until the test closes our stdin (or dies)
server.stop()
"""


class MotoProcess:
    """A moto S3 server in a child process (so its memory and CPU are not ours, and so that
    it can be killed with SIGKILL mid-transfer)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = dict(env or {})
        self.start()

    def start(self, port: int | None = None) -> None:
        env = dict(os.environ, **self.env)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MOTO_SCRIPT, str(self.port if port is None else port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("moto server failed to start")
        self.port = int(line)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self._close_pipes()

    def _close_pipes(self) -> None:
        assert self.proc is not None
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._close_pipes()

    def client(self, service: str = "s3", key_id: str = "testing", secret: str = "testing") -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            region_name="us-east-1",
        )

    def storage_config(
        self, bucket: str = "models", key: str = "s3", key_id: str = "testing", secret: str = "testing"
    ) -> StorageConfig:
        doc = json.dumps(
            {
                "type": "s3",
                "access_key_id": key_id,
                "secret_access_key": secret,
                "endpoint_url": self.endpoint,
                "region": "us-east-1",
                "bucket": bucket,
            }
        )
        return StorageConfig.from_mapping({key: doc})


class FileServer:
    """An HTTP(S) server of in-memory or on-disk files, with faults on demand.

    ``requests`` counts GETs per path. ``drop_after[path] = n`` sends n body bytes then drops
    the connection (once per entry); ``stall_after[path] = n`` sends n bytes, sets
    ``stalled`` and waits until ``kill()`` (or ``unstall``). ``required_headers`` must all be
    present or the answer is 401; ``status[path]`` forces a status.
    """

    def __init__(self, files: Mapping[str, bytes | Path] | None = None, *, tls: ssl.SSLContext | None = None) -> None:
        self.files: dict[str, bytes | Path] = dict(files or {})
        self.tls = tls
        self.requests: Counter[str] = Counter()
        self.required_headers: dict[str, str] = {}
        self.status: dict[str, int] = {}
        self.drop_after: dict[str, int] = {}
        self.stall_after: dict[str, int] = {}
        self.content_md5: dict[str, list[str]] = {}
        self.stalled = threading.Event()
        self.unstall = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.start()

    def url(self, path: str) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def start(self, port: int | None = None) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def setup(self) -> None:
                super().setup()
                with owner._lock:
                    owner._conns.add(self.connection)

            def finish(self) -> None:
                with owner._lock:
                    owner._conns.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def do_GET(self) -> None:
                path = self.path
                with owner._lock:
                    owner.requests[path] += 1
                for name, value in owner.required_headers.items():
                    if self.headers.get(name) != value:
                        return self._empty(401)
                if path in owner.status:
                    return self._empty(owner.status[path])
                body = owner.files.get(path)
                if body is None:
                    return self._empty(404)
                size = len(body) if isinstance(body, bytes) else body.stat().st_size
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                md5s = owner.content_md5.get(path)
                if md5s:
                    self.send_header("Content-MD5", md5s.pop(0) if len(md5s) > 1 else md5s[0])
                self.end_headers()
                limit = owner.drop_after.pop(path, None)
                stall = owner.stall_after.get(path)
                cut = limit if limit is not None else stall
                sent = 0
                for chunk in _chunks(body):
                    if cut is not None and sent + len(chunk) >= cut:
                        self.wfile.write(chunk[: cut - sent])
                        self.wfile.flush()
                        if limit is None:
                            owner.stalled.set()
                            owner.unstall.wait(30)
                        self._abort()
                        return
                    self.wfile.write(chunk)
                    sent += len(chunk)

            def _empty(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _abort(self) -> None:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port if port is None else port), Handler)
        server.daemon_threads = True
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def kill(self) -> None:
        """Stop listening and cut every open connection (a server dying mid-transfer)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.unstall.set()
        assert self._thread is not None
        self._thread.join(10)
        self._server = None

    def restart(self) -> None:
        self.unstall.clear()
        self.stalled.clear()
        self.start(self.port)


def _chunks(body: bytes | Path, size: int = 1 << 20) -> Iterator[bytes]:
    if isinstance(body, bytes):
        for i in range(0, len(body), size):
            yield body[i : i + size]
        return
    with open(body, "rb") as f:
        while chunk := f.read(size):
            yield chunk


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def make_tls(tmp: Path) -> tuple[ssl.SSLContext, str]:
    """A throwaway CA and a server certificate for 127.0.0.1: (server context, CA PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "puller test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "server.pem", tmp / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, ca.public_bytes(serialization.Encoding.PEM).decode()


class Counting:
    """A provider wrapper that counts listings and object fetches, and can run a hook on the
    first write of each transfer (to act mid-transfer, deterministically)."""

    def __init__(self, inner: Provider, on_first_write: Callable[[], None] | None = None) -> None:
        self.inner = inner
        self.lists = 0
        self.fetches: Counter[str] = Counter()
        self.on_first_write = on_first_write

    async def list_objects(self, source: Source) -> Listing:
        self.lists += 1
        return await self.inner.list_objects(source)

    async def fetch(self, source: Source, obj: RemoteObject, sink: ObjectSink) -> None:
        self.fetches[obj.name] += 1
        hook = self.on_first_write
        if hook is not None:
            original = sink.write
            fired = False

            def write(data: bytes | memoryview) -> None:
                nonlocal fired
                if not fired:
                    fired = True
                    hook()
                original(data)

            sink.write = write  # type: ignore[method-assign]
        await self.inner.fetch(source, obj, sink)

    async def aclose(self) -> None:
        await self.inner.aclose()


def settings(cache: Path, **overrides: Any) -> PullerSettings:
    values: dict[str, Any] = {
        "cache_dir": cache,
        "cache_budget_bytes": 1 << 30,
        "retries": 2,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "request_timeout_s": 10,
        "progress_interval_s": 0,
        # the test servers are on loopback, which HTTP(S) sources may not reach unless allowed
        "http_allow_private": ["127.0.0.1/32"],
    }
    values.update(overrides)
    return PullerSettings(**values)


def visible(cache: Path) -> list[str]:
    """What a reader of the cache sees: published artifacts, and leftovers of pulls."""
    out = []
    for sub in ("artifacts", "staging"):
        d = cache / sub
        if d.exists():
            out += [f"{sub}/{p.name}" for p in d.iterdir()]
    return sorted(out)


def files_under(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }
