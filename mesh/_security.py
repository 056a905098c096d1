"""An instance's security wiring: who the caller is on each edge, TLS on each port, and how this
instance identifies itself to its peers when it forwards.

The building blocks are :mod:`mesh._auth` (principals, the auth file), :mod:`mesh._tls` (server
credentials that follow their files) and :mod:`mesh._access` (tenant scoping). This module only
connects them to the servers:

* gRPC: :func:`grpc_principal` reads ``authorization`` metadata and, only when no token is sent,
  the verified client certificate's names from ``context.auth_context()``.
* REST: :class:`AuthMiddleware` authenticates every request but the public ones (health, the
  dashboard's static page) before a route runs, and leaves the principal in ``request.state``;
  the TLS peer certificate's names come from :func:`peer_cert_protocol` (uvicorn does not pass
  them into the ASGI scope).
* Forwarding: mutual TLS with this instance's own certificate when ``--tls-client-ca`` is set,
  else a peer bearer token (``--peer-token-file``, a principal of role ``instance``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from ._auth import LOCAL_ADMIN, Authenticator, AuthFile, Principal, check_exposure
from ._errors import InvalidRequest, MeshError, Unauthenticated, status_for
from ._tls import ServerTLS, TLSFiles, cert_names_from_auth_context, cert_names_from_peercert

log = logging.getLogger(__name__)

PEER_NAMES_SCOPE_KEY = "modelmux.peer_cert_names"
"""ASGI scope key: the verified client certificate's subject CN and SANs (a list; empty without one)."""

# REST paths anyone may call (probes and the dashboard page itself; its data needs a token)
PUBLIC_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/dashboard", "/dashboard/"})
PUBLIC_PREFIXES = ("/dashboard/static/",)


@dataclass
class Security:
    """What one instance uses to authenticate callers and to talk TLS (all optional)."""

    authenticator: Authenticator = field(default_factory=Authenticator)
    server_tls: ServerTLS | None = None
    peer_credentials: grpc.ChannelCredentials | None = None  # None: forward in plaintext
    peer_metadata: tuple[tuple[str, str], ...] = ()  # e.g. the peer bearer token
    peer_server_name: str = ""  # the name checked in a peer's certificate (its pod IP is not in it)
    peer_ssl_context: ssl.SSLContext | None = None  # the peer link's TLS (the same identity and CA); None: plaintext

    @property
    def auth_file(self) -> AuthFile | None:
        return self.authenticator.source

    def background_tasks(self) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        """Watchers to run while the instance serves (auth file and TLS reloads)."""
        out: list[Callable[[], Coroutine[Any, Any, None]]] = []
        if self.auth_file is not None:
            out.append(self.auth_file.watch)
        if self.server_tls is not None:
            out.append(self.server_tls.watch)
        return out


def _read_secret(path: Path, what: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InvalidRequest(f"{what} {path}: cannot read it: {exc.strerror}") from exc
    if not value:
        raise InvalidRequest(f"{what} {path} is empty")
    return value


def _read_secret_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"{what} {path}: cannot read it: {exc.strerror}") from exc


def build_security(
    *,
    auth_file: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_client_ca: Path | None = None,
    peer_token_file: Path | None = None,
    peer_tls_server_name: str = "",
    peer_tls_ca: Path | None = None,
) -> Security:
    """Read the files once at start-up (blocking; an unreadable or invalid file refuses to start)."""
    authenticator = Authenticator()
    if auth_file is not None:
        source = AuthFile(auth_file)
        source.load()
        authenticator = Authenticator(source)
    if (tls_cert is None) != (tls_key is None):
        raise InvalidRequest("give both --tls-cert and --tls-key (or neither)")
    if tls_client_ca is not None and tls_cert is None:
        raise InvalidRequest("--tls-client-ca needs --tls-cert and --tls-key")
    server_tls = None
    peer_credentials = None
    peer_ssl: ssl.SSLContext | None = None
    if tls_cert is not None and tls_key is not None:
        server_tls = ServerTLS(TLSFiles(cert=tls_cert, key=tls_key, client_ca=tls_client_ca))
        if server_tls.files.mutual:
            peer_credentials = server_tls.peer_channel_credentials()
        else:  # the peers' server certificates checked against their CA (default: the system roots)
            roots = _read_secret_bytes(peer_tls_ca, "peer CA file") if peer_tls_ca is not None else None
            peer_credentials = grpc.ssl_channel_credentials(root_certificates=roots)
        peer_ssl = _peer_ssl_context(server_tls.files, peer_tls_ca)
    peer_metadata: tuple[tuple[str, str], ...] = ()
    if peer_token_file is not None:
        peer_metadata = (("authorization", f"Bearer {_read_secret(peer_token_file, 'peer token file')}"),)
    return Security(authenticator, server_tls, peer_credentials, peer_metadata, peer_tls_server_name, peer_ssl)


def _peer_ssl_context(files: TLSFiles, peer_tls_ca: Path | None) -> ssl.SSLContext:
    """The peer link's client side, as the gRPC forward's credentials: under mutual TLS this
    instance's certificate is its identity and peers are checked against the client CA (the
    mesh's CA); otherwise peers are checked against ``peer_tls_ca`` (default: the system roots)."""
    try:
        if files.mutual:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.client_ca))
            ctx.load_cert_chain(str(files.cert), str(files.key))
        else:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(peer_tls_ca) if peer_tls_ca is not None else None)
    except (ssl.SSLError, OSError) as exc:
        raise InvalidRequest(f"TLS files for forwarding to peers: {exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def exposure_warning(hosts: list[str], security: Security, *, insecure: bool) -> str | None:
    """Secure by default (:func:`mesh._auth.check_exposure`): raises when an exposed bind may not start."""
    return check_exposure(hosts, auth=security.authenticator.enabled, tls=security.server_tls is not None, insecure=insecure)


# ---------------------------------------------------------------- gRPC


def grpc_principal(authenticator: Authenticator, context: grpc.aio.ServicerContext, md: dict[str, str]) -> Principal:
    """The caller of one gRPC call (UNAUTHENTICATED when it presents nothing valid)."""
    if not authenticator.enabled:
        return LOCAL_ADMIN
    token = md.get("authorization")
    names: list[str] = []
    if not token:
        names = cert_names_from_auth_context(context.auth_context())
    return authenticator.authenticate(token, names)


# ---------------------------------------------------------------- REST

ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class AuthMiddleware:
    """Authenticates each HTTP request once, before its route; the principal goes to
    ``scope["state"]["principal"]`` (``request.state.principal``). Failures answer 401 through the
    same status table as every other error."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        try:
            if self.authenticator.enabled and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)):
                principal = None
            else:
                principal = self.authenticator.authenticate(_header(scope, b"authorization"), scope.get(PEER_NAMES_SCOPE_KEY, ()))
        except MeshError as exc:
            status, message = status_for(exc)
            await _send_json(send, status.http, {"error": message}, www_authenticate=True)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def _header(scope: MutableMapping[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _send_json(send: Any, status: int, body: dict[str, Any], *, www_authenticate: bool = False) -> None:
    raw = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    if www_authenticate and status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


def rest_principal(request: Any) -> Principal:
    """The principal :class:`AuthMiddleware` established: LOCAL_ADMIN on an app built without it
    (authentication off); UNAUTHENTICATED on a public path, which is not meant to ask."""
    return scope_principal(request.scope)


def scope_principal(scope: MutableMapping[str, Any]) -> Principal:
    """:func:`rest_principal` from an ASGI scope."""
    state = scope.get("state")
    principal = state.get("principal", LOCAL_ADMIN) if state is not None else LOCAL_ADMIN
    if not isinstance(principal, Principal):
        raise Unauthenticated("authentication required")
    return principal


def peer_cert_protocol() -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, passing the verified TLS client certificate's names into each
    request's ASGI scope (under :data:`PEER_NAMES_SCOPE_KEY`)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:  # pragma: no cover - httptools is optional for uvicorn
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base  # type: ignore[assignment]

    class PeerCertProtocol(Base):  # type: ignore[misc,valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            names = cert_names_from_peercert(ssl_object.getpeercert()) if ssl_object is not None else []
            inner = self.app

            async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
                scope[PEER_NAMES_SCOPE_KEY] = names
                await inner(scope, receive, send)

            self.app = app

    return PeerCertProtocol
