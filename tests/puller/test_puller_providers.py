"""GCS (JSON API, against a fake on loopback), Azure without its SDK, error codes, package seams."""

from __future__ import annotations

import base64
import hashlib
import http.server
import importlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

import puller
from puller import (
    ArtifactNotFound,
    BadCredentials,
    IntegrityError,
    ProviderUnavailable,
    Puller,
    PullerError,
    StorageConfig,
    StorageRef,
)
from tests.puller.pullhelp import files_under, settings, visible

VOCABULARY = {
    "invalid_argument", "not_found", "already_exists", "failed_precondition", "resource_exhausted",
    "unavailable", "deadline_exceeded", "permission_denied", "unauthenticated", "internal",
    "unimplemented", "aborted", "load_failed",
}  # fmt: skip
ROOT = Path(__file__).resolve().parents[2]


class FakeGcs:
    """The slice of the GCS JSON API the provider uses: object metadata, listing by prefix
    (two items a page, to exercise paging) and ``alt=media`` downloads; bearer auth."""

    def __init__(self, objects: dict[str, bytes], token: str = "tok") -> None:
        self.objects = objects
        self.corrupt: set[str] = set()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                if self.headers.get("Authorization") != f"Bearer {token}":
                    return self._send(401, b"{}")
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                prefix = "/storage/v1/b/models/o"
                if not parts.path.startswith(prefix):
                    return self._send(404, b"{}")
                rest = parts.path[len(prefix) :]
                if rest.startswith("/"):
                    name = unquote(rest[1:])
                    if name not in owner.objects:
                        return self._send(404, b"{}")
                    if query.get("alt") == ["media"]:
                        body = owner.objects[name]
                        return self._send(200, body[:-1] + b"!" if name in owner.corrupt else body)
                    return self._send(200, json.dumps(owner.meta(name)).encode())
                want = query.get("prefix", [""])[0]
                names = sorted(n for n in owner.objects if n.startswith(want))
                start = int(query.get("pageToken", ["0"])[0])
                page: dict[str, Any] = {"items": [owner.meta(n) for n in names[start : start + 2]]}
                if start + 2 < len(names):
                    page["nextPageToken"] = str(start + 2)
                return self._send(200, json.dumps(page).encode())

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def meta(self, name: str) -> dict[str, str]:
        body = self.objects[name]
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        return {"name": name, "size": str(len(body)), "md5Hash": md5}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def gcs() -> Iterator[FakeGcs]:
    fake = FakeGcs(
        {
            "m/model.onnx": b"onnx" * 100,
            "dir/a.bin": b"a",
            "dir/sub/b.bin": b"bb",
            "dir/sub/c.bin": b"ccc",
            "dir/": b"",
        }
    )
    try:
        yield fake
    finally:
        fake.close()


async def test_gcs_object_prefix_md5_and_auth(tmp_path: Path, gcs: FakeGcs) -> None:
    config = StorageConfig.from_mapping(
        {
            "gcs": json.dumps({"type": "gcs", "endpoint_url": gcs.endpoint, "token": "tok", "bucket": "models"}),
            "anon": json.dumps({"type": "gcs", "endpoint_url": gcs.endpoint, "bucket": "models"}),
        }
    )
    cache = tmp_path / "cache"
    p = Puller(settings(cache), config)
    try:
        single = await p.stage(StorageRef(storage_uri="gs://models/m/model.onnx", storage_key="gcs"))
        assert files_under(single.local_path) == {"model.onnx": b"onnx" * 100}
        tree = await p.stage(StorageRef(storage_key="gcs", path="dir"))
        assert files_under(tree.local_path) == {"a.bin": b"a", "sub/b.bin": b"bb", "sub/c.bin": b"ccc"}
        with pytest.raises(ArtifactNotFound):
            await p.stage(StorageRef(storage_key="gcs", path="nothing"))
        with pytest.raises(BadCredentials, match="HTTP 401"):
            await p.stage(StorageRef(storage_key="anon", path="m/model.onnx"))
        sa = StorageConfig.from_mapping(
            {"sa": json.dumps({"type": "gcs", "bucket": "models", "private_key": "k", "client_email": "e"})}
        )
        if not _has("google.auth"):  # service-account keys need google-auth to mint tokens
            p2 = Puller(settings(tmp_path / "cache2"), sa)
            try:
                with pytest.raises(ProviderUnavailable, match="google-auth") as err:
                    await p2.stage(StorageRef(storage_key="sa", path="m/model.onnx"))
                assert err.value.code == "failed_precondition"
            finally:
                await p2.close()
        gcs.corrupt.add("dir/sub/c.bin")
        gcs.objects["dir2/x.bin"] = b"xyz"
        gcs.corrupt.add("dir2/x.bin")
        with pytest.raises(IntegrityError, match="MD5"):
            await p.stage(StorageRef(storage_key="gcs", path="dir2"))
    finally:
        await p.close()
    assert visible(cache) == sorted(f"artifacts/{k}" for k in (single.key, tree.key))


def _has(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


async def test_azure_without_sdk_fails_clearly(tmp_path: Path) -> None:
    if _has("azure.storage.blob"):
        pytest.skip("azure-storage-blob is installed")
    p = Puller(settings(tmp_path / "cache"))
    try:
        with pytest.raises(ProviderUnavailable, match="azure-storage-blob") as err:
            await p.stage(StorageRef(storage_uri="azure://container/model.onnx"))
        assert err.value.code == "failed_precondition"
        assert visible(tmp_path / "cache") == []
    finally:
        await p.close()


def test_every_error_has_a_code_from_the_vocabulary() -> None:
    errors = [
        obj for name in puller.__all__ if isinstance(obj := getattr(puller, name), type) and issubclass(obj, Exception)
    ]
    assert PullerError in errors and len(errors) > 10
    for cls in errors:
        assert issubclass(cls, PullerError), cls
        assert cls.code in VOCABULARY, (cls, cls.code)


def test_puller_knows_no_other_package() -> None:
    code = (
        "import sys, puller\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mesh', 'placement', 'runtime_adapters'))\n"
        "heavy = sorted(m for m in ('boto3', 'botocore') if m in sys.modules)\n"
        "print(bad, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[] []"  # nothing of the other packages; boto3 only when S3 is used


async def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELMUX_PULLER_CACHE_BUDGET_BYTES", "12345")
    monkeypatch.setenv("MODELMUX_PULLER_ALLOWED_ROOTS", json.dumps([str(tmp_path)]))
    s = puller.PullerSettings(cache_dir=tmp_path / "c")
    assert s.cache_budget_bytes == 12345 and s.allowed_roots == [tmp_path]
    p = Puller(s)
    try:
        await p.start()
        assert p.cache_usage().budget_bytes == 12345
    finally:
        await p.close()
