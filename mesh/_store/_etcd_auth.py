"""etcd user authentication for :class:`~mesh._store._etcd.EtcdStore` (``MODELMUX_STORE_USER`` /
``MODELMUX_STORE_PASSWORD_FILE``).

etcd authenticates a user once (``Auth.Authenticate`` → a token) and then expects the token as
``token`` metadata on every call. The interceptors here add it to every call on an endpoint's
channel (unary calls, the watch and lease keep-alive streams), fetch it on first use, renew it
before it can age out (``refresh_s``), and on an ``invalid auth token`` answer fetch a new one and
retry the call once. Tokens are per endpoint (etcd's simple tokens are known to the member that
issued them only). The password is read from its file at each authentication, so a rotated
Secret is picked up without a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from aetcd import rpc

_AUTHENTICATE = "/etcdserverpb.Auth/Authenticate"


class EtcdCredentials:
    """A user and the file holding its password."""

    def __init__(self, user: str, password_file: Path, *, refresh_s: float = 60.0) -> None:
        self.user = user
        self.password_file = password_file
        self.refresh_s = refresh_s

    def password(self) -> str:
        return self.password_file.read_text(encoding="utf-8").strip()


class _Token:
    """One endpoint's token, fetched through ``authenticate`` (set once the channel exists)."""

    def __init__(self, creds: EtcdCredentials) -> None:
        self.creds = creds
        self.value = ""
        self.at = 0.0
        self.authenticate: Callable[[str, str], Any] | None = None
        self._lock = asyncio.Lock()

    async def get(self, *, renew: bool = False, stale: str = "") -> str:
        async with self._lock:
            fresh = self.value and time.monotonic() - self.at < self.creds.refresh_s
            if fresh and not renew:
                return self.value
            if renew and self.value != stale:  # another call renewed it meanwhile
                return self.value
            assert self.authenticate is not None
            password = await asyncio.to_thread(self.creds.password)
            resp = await self.authenticate(self.creds.user, password)
            self.value, self.at = resp.token, time.monotonic()
            return self.value


def _with_token(details: grpc.aio.ClientCallDetails, token: str) -> grpc.aio.ClientCallDetails:
    md = grpc.aio.Metadata(*(details.metadata or ()))
    md["token"] = token
    return grpc.aio.ClientCallDetails(details.method, details.timeout, md, details.credentials, details.wait_for_ready)


def _method(details: grpc.aio.ClientCallDetails) -> str:
    m = details.method
    return m.decode() if isinstance(m, bytes) else str(m)


def _invalid_token(exc: grpc.aio.AioRpcError) -> bool:
    return exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT) and "auth token" in (exc.details() or "")


class _UnaryAuth(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, token: _Token) -> None:
        self.token = token

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        if _method(client_call_details) == _AUTHENTICATE:
            return await continuation(client_call_details, request)
        token = await self.token.get()
        call = await continuation(_with_token(client_call_details, token), request)
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            if not _invalid_token(exc):
                raise
        token = await self.token.get(renew=True, stale=token)
        return await (await continuation(_with_token(client_call_details, token), request))


class _StreamAuth(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, token: _Token) -> None:
        self.token = token

    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        token = await self.token.get()
        return await continuation(_with_token(client_call_details, token), request_iterator)


def interceptors(creds: EtcdCredentials) -> tuple[list[grpc.aio.ClientInterceptor], Callable[[grpc.aio.Channel], None]]:
    """Interceptors for one endpoint's channel, and the function to call with that channel once
    it exists (the token is fetched through it)."""
    token = _Token(creds)

    def bind(channel: grpc.aio.Channel) -> None:
        stub = rpc.AuthStub(channel)

        async def authenticate(user: str, password: str) -> Any:
            return await stub.Authenticate(rpc.AuthenticateRequest(name=user, password=password), timeout=10)

        token.authenticate = authenticate

    return [_UnaryAuth(token), _StreamAuth(token)], bind
