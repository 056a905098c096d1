"""HTTP(S) sources through httpx (async streaming), and the helpers the GCS provider shares.

An HTTP source is one object (HTTP has no listing); it lands under its URL's file name.
Headers come from the storage-config entry (``headers``), a custom CA from ``certificate``
(PEM text). The size is checked against ``Content-Length`` (unless the body is
content-encoded), the MD5 against ``Content-MD5`` when the server sends one.

Where requests may go (see ``_netguard``): every connection is checked against the address
policy after DNS resolution, except to the origin the storage-config entry names itself.
Redirects are followed here, not by httpx: at most ``max_redirects`` hops, http(s) only, each
hop's connection checked again, and the entry's headers are sent only to the origin
(scheme, host, port) the reference named — never to a host a redirect chose. Proxies from the
environment are not used (they would hide the destination from the check).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ssl
from collections.abc import Mapping
from pathlib import PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit

import httpcore
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
from ._netguard import AddressPolicy, GuardedBackend
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


_REDIRECTS = (301, 302, 303, 307, 308)


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, the default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or (443 if scheme == "https" else 80)


class HttpClients:
    """httpx clients keyed by TLS settings and trusted origin (one connection pool each), built
    off the event loop; every connection goes through a ``GuardedBackend``."""

    def __init__(self, ctx: ProviderContext) -> None:
        self._ctx = ctx
        self._policy = AddressPolicy(ctx.settings.http_allow_private)
        self._clients: dict[tuple[str | None, bool, tuple[str, int] | None], httpx.AsyncClient] = {}
        self._lock = asyncio.Lock()

    def _build(self, certificate: str | None, insecure: bool, trusted: tuple[str, int] | None) -> httpx.AsyncClient:
        context = ssl.create_default_context()
        if insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif certificate:
            try:
                context.load_verify_locations(cadata=certificate)
            except (ssl.SSLError, ValueError) as exc:
                raise StorageTlsError(f"the storage config's certificate is not valid PEM ({exc})") from exc
        s = self._ctx.settings
        transport = httpx.AsyncHTTPTransport(verify=context, trust_env=False)
        # the one seam httpx leaves for the network: its pool, rebuilt with the guarded backend
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=max(10, s.object_concurrency * 2),
            keepalive_expiry=5.0,
            network_backend=GuardedBackend(self._policy, trusted),
        )
        return httpx.AsyncClient(
            transport=transport, timeout=httpx.Timeout(s.request_timeout_s), follow_redirects=False, trust_env=False
        )

    async def get(self, spec: StorageSpec, trusted_url: str | None = None) -> httpx.AsyncClient:
        """A client for ``spec``'s TLS settings; connections to ``trusted_url``'s host and port
        (the entry's own, operator-written endpoint) skip the address check."""
        insecure = spec.extra.get("insecure", "false").lower() == "true"
        trusted = None
        if trusted_url:
            _, host, port = origin(trusted_url)
            trusted = (host, port) if host else None
        key = (spec.certificate, insecure, trusted)
        async with self._lock:
            client = self._clients.get(key)
            if client is None:
                loop = asyncio.get_running_loop()
                client = await loop.run_in_executor(self._ctx.executor, self._build, spec.certificate, insecure, trusted)
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
    max_redirects: int = 5,
) -> None:
    """GET ``url`` and stream the body into ``sink``, mapping every failure to a typed error.

    Redirects are followed here (see the module docstring): ``headers`` go only to ``url``'s
    own origin."""
    home = origin(url)
    current = url
    try:
        for _hop in range(max_redirects + 1):
            send = dict(headers) if origin(current) == home else {}
            async with client.stream("GET", current, headers=send) as response:
                if response.status_code in _REDIRECTS:
                    location = response.headers.get("location", "")
                    following = urljoin(current, location)
                    if not location or urlsplit(following).scheme.lower() not in ("http", "https"):
                        raise PullerError(f"{what}: HTTP {response.status_code} redirect to a non-http(s) location")
                    current = following
                    continue
                if response.status_code >= 400:
                    raise status_error(response.status_code, what)
                if response.status_code >= 300:
                    raise PullerError(f"{what}: unexpected HTTP {response.status_code}")
                encoded = response.headers.get("content-encoding", "identity").lower() not in ("", "identity")
                length = response.headers.get("content-length")
                size = int(length) if length and length.isdigit() and not encoded else None
                sink.expect(size, md5_hex or (None if encoded else md5_from_base64(response.headers.get("content-md5"))))
                await sink.areserve()  # the declared size, from the cache budget, before the body
                async for chunk in response.aiter_bytes(chunk_bytes):
                    await sink.awrite(chunk)
                return
    except httpx.HTTPError as exc:
        raise transport_error(exc, what) from exc
    raise PullerError(f"{what}: more than {max_redirects} redirects")


class HttpProvider:
    def __init__(self, ctx: ProviderContext) -> None:
        self._ctx = ctx
        self._clients = HttpClients(ctx)

    async def list_objects(self, source: Source) -> Listing:
        name = PurePosixPath(unquote(urlsplit(source.url).path)).name or "artifact"
        return Listing((RemoteObject(rel_path=name, name=source.url),), single=True)

    async def fetch(self, source: Source, obj: RemoteObject, sink: ObjectSink) -> None:
        # the entry's url is the operator's: its origin is trusted (the resolver has made sure
        # a keyed reference stays on it); an anonymous source trusts nothing
        client = await self._clients.get(source.spec, source.spec.url)
        await stream_to_sink(
            client,
            obj.name,
            source.spec.headers,
            sink,
            what=source.display,
            chunk_bytes=self._ctx.settings.chunk_bytes,
            max_redirects=self._ctx.settings.max_redirects,
        )

    async def aclose(self) -> None:
        await self._clients.aclose()
