"""A loopback HTTP server for hostile-source tests: it records every request it receives
(path and headers) and answers each path as told — a file, a redirect, a body that lies about
its length, a chunked body with no length, or a trickle that never ends."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


class Recorder:
    """``files[path] = bytes``; ``redirects[path] = location``; ``lies[path] = (declared, body)``
    (Content-Length says ``declared``, ``body`` is sent); ``chunked[path] = (chunk, count)``
    (no Content-Length); ``trickle[path] = bytes per 50 ms`` (declaring 1 MiB, sent until closed).
    ``seen`` lists every request; ``sent`` counts body bytes written per path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.lies: dict[str, tuple[int, bytes]] = {}
        self.chunked: dict[str, tuple[bytes, int]] = {}
        self.trickle: dict[str, int] = {}
        self.seen: list[Seen] = []
        self.sent: dict[str, int] = {}
        self.closing = threading.Event()
        self._lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                with owner._lock:
                    owner.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
                try:
                    owner._answer(self)
                except OSError:
                    self.close_connection = True

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        with self._lock:
            return [s.path for s in self.seen]

    def header_values(self, name: str) -> list[str | None]:
        with self._lock:
            return [s.headers.get(name.lower()) for s in self.seen]

    def _count(self, path: str, n: int) -> None:
        with self._lock:
            self.sent[path] = self.sent.get(path, 0) + n

    def _answer(self, h: http.server.BaseHTTPRequestHandler) -> None:
        path = h.path
        if path in self.redirects:
            h.send_response(302)
            h.send_header("Location", self.redirects[path])
            h.send_header("Content-Length", "0")
            h.end_headers()
        elif path in self.files:
            body = self.files[path]
            h.send_response(200)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            self._count(path, len(body))
        elif path in self.lies:
            declared, body = self.lies[path]
            h.send_response(200)
            h.send_header("Content-Length", str(declared))
            h.end_headers()
            h.wfile.write(body)
            self._count(path, len(body))
            h.close_connection = True
        elif path in self.chunked:
            chunk, count = self.chunked[path]
            h.send_response(200)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            for _ in range(count):
                h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self._count(path, len(chunk))
            h.wfile.write(b"0\r\n\r\n")
        elif path in self.trickle:
            h.send_response(200)
            h.send_header("Content-Length", str(1 << 20))
            h.end_headers()
            step = self.trickle[path]
            while not self.closing.is_set():
                h.wfile.write(b"x" * step)
                h.wfile.flush()
                self._count(path, step)
                time.sleep(0.05)
            h.close_connection = True
        else:
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()

    def close(self) -> None:
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@contextlib.contextmanager
def recorders(n: int) -> Iterator[list[Recorder]]:
    servers = [Recorder() for _ in range(n)]
    try:
        yield servers
    finally:
        for s in servers:
            s.close()

