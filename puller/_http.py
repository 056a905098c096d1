"""HTTP(S) sources through httpx (async streaming), and the helpers the GCS provider shares.

An HTTP source is one object (HTTP has no listing); it lands under its URL's file name.
Headers come from the storage-config entry (``headers``), a custom CA from ``certificate``
(PEM text). The size is checked against ``Content-Length`` (unless the body is
content-encoded), the MD5 against ``Content-MD5`` when the server sends one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ssl
from collections.abc import Mapping
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

import httpx

from ._config import StorageSpec
from ._errors import (
    AccessDenied,
    ArtifactNotFound,
    BadCredentials,
    PullerError,
    StorageTlsError,
    StorageUnavailable,
)
from ._provider import Listing, ObjectSink, ProviderContext, RemoteObject
from ._resolve import Source


def status_error(status: int, what: str, detail: str = "") -> PullerError:
    """An HTTP error status -> the puller's typed error."""
    suffix = f": {detail}" if detail else ""
    if status in (404, 410):
        return ArtifactNotFound(f"{what}: not found (HTTP {status}){suffix}")
    if status == 401:
        return BadCredentials(f"{what}: credentials rejected (HTTP 401){suffix}")
    if status == 403:
        return AccessDenied(f"{what}: access denied (HTTP 403){suffix}")
    if status in (408, 425, 429) or status >= 500:
        return StorageUnavailable(f"{what}: HTTP {status}{suffix}")
    return PullerError(f"{what}: unexpected HTTP {status}{suffix}")


def transport_error(exc: httpx.HTTPError, what: str) -> PullerError:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return StorageTlsError(f"{what}: TLS verification failed ({cause.verify_message or cause})")
        cause = cause.__cause__ or cause.__context__
    return StorageUnavailable(f"{what}: {type(exc).__name__}: {exc or 'connection failed'}")


def md5_from_base64(value: str | None) -> str | None:
    if not value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 16 else None


class HttpClients:
    """httpx clients keyed by TLS settings (one connection pool each), built off the event loop."""

    def __init__(self, ctx: ProviderContext) -> None:
        self._ctx = ctx
        self._clients: dict[tuple[str | None, bool], httpx.AsyncClient] = {}
        self._lock = asyncio.Lock()

    def _build(self, certificate: str | None, insecure: bool) -> httpx.AsyncClient:
        verify: ssl.SSLContext | bool
        if insecure:
            verify = False
        else:
            verify = ssl.create_default_context()
            if certificate:
                try:
                    verify.load_verify_locations(cadata=certificate)
                except (ssl.SSLError, ValueError) as exc:
                    raise StorageTlsError(f"the storage config's certificate is not valid PEM ({exc})") from exc
        timeout = httpx.Timeout(self._ctx.settings.request_timeout_s)
        limits = httpx.Limits(max_connections=max(10, self._ctx.settings.object_concurrency * 2))
        return httpx.AsyncClient(verify=verify, timeout=timeout, limits=limits, follow_redirects=True)

    async def get(self, spec: StorageSpec) -> httpx.AsyncClient:
        insecure = spec.extra.get("insecure", "false").lower() == "true"
        key = (spec.certificate, insecure)
        async with self._lock:
            client = self._clients.get(key)
            if client is None:
                loop = asyncio.get_running_loop()
                client = await loop.run_in_executor(self._ctx.executor, self._build, spec.certificate, insecure)
                self._clients[key] = client
            return client

    async def aclose(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            await client.aclose()


async def stream_to_sink(
    client: httpx.AsyncClient,
    url: str,
    headers: Mapping[str, str],
    sink: ObjectSink,
    *,
    what: str,
    chunk_bytes: int,
    md5_hex: str | None = None,
) -> None:
    """GET ``url`` and stream the body into ``sink``, mapping every failure to a typed error."""
    try:
        async with client.stream("GET", url, headers=dict(headers)) as response:
            if response.status_code >= 400:
                raise status_error(response.status_code, what)
            encoded = response.headers.get("content-encoding", "identity").lower() not in ("", "identity")
            length = response.headers.get("content-length")
            size = int(length) if length and length.isdigit() and not encoded else None
            sink.expect(size, md5_hex or (None if encoded else md5_from_base64(response.headers.get("content-md5"))))
            async for chunk in response.aiter_bytes(chunk_bytes):
                await sink.awrite(chunk)
    except httpx.HTTPError as exc:
        raise transport_error(exc, what) from exc


class HttpProvider:
    def __init__(self, ctx: ProviderContext) -> None:
        self._ctx = ctx
        self._clients = HttpClients(ctx)

    async def list_objects(self, source: Source) -> Listing:
        name = PurePosixPath(unquote(urlsplit(source.url).path)).name or "artifact"
        return Listing((RemoteObject(rel_path=name, name=source.url),), single=True)

    async def fetch(self, source: Source, obj: RemoteObject, sink: ObjectSink) -> None:
        client = await self._clients.get(source.spec)
        await stream_to_sink(
            client,
            obj.name,
            source.spec.headers,
            sink,
            what=source.display,
            chunk_bytes=self._ctx.settings.chunk_bytes,
        )

    async def aclose(self) -> None:
        await self._clients.aclose()
