"""The etcd store (any etcd >= 3.4), over etcd's v3 gRPC API.

The message and stub classes come from ``aetcd.rpc`` (aetcd's generated etcd API);
the calls are made here directly on a ``grpc.aio`` channel rather than through
``aetcd.Client`` because the store needs things that client hides or lacks: the header
revision of a transaction (``cas``/``txn`` return it), watch responses as whole batches
(one transaction's events arrive together), a watch that fails instead of waiting
forever when its stream ends, paginated listing at one pinned revision, and TLS.

Every unary call is bounded twice by ``op_timeout_s``: as the gRPC deadline and by
``asyncio.wait_for``; a call that hits either raises :class:`StoreUnavailable`, so no
operation hangs while etcd is down. Several endpoints are tried in turn: an operation
that finds its endpoint unavailable moves the store to the next one for later calls
(the failing call itself still fails fast; callers retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from aetcd import rpc

from ._base import Store, validate_txn
from ._errors import (
    Compacted,
    LeaseExpired,
    StoreError,
    StoreInvalidArgument,
    StorePermissionDenied,
    StoreResourceExhausted,
    StoreUnauthenticated,
    StoreUnavailable,
)
from ._etcd_auth import EtcdCredentials, interceptors
from ._types import Compare, Delete, KeyValue, Put, StoreUsage, WatchEvent

logger = logging.getLogger(__name__)

R = TypeVar("R")

_UNAVAILABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
}


def _enc(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _dec(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def _range_for_prefix(prefix: str) -> tuple[bytes, bytes]:
    """(key, range_end) covering every key that starts with ``prefix``."""
    start = _enc(prefix)
    if not start:
        return b"\0", b"\0"  # etcd: every key >= "\0", i.e. all keys
    end = bytearray(start)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return start, bytes(end[: i + 1])
    return start, b"\0"  # prefix of only 0xff bytes: everything after it


def _kv(kv: Any) -> KeyValue:
    return KeyValue(
        _dec(kv.key),
        bytes(kv.value),
        int(kv.create_revision),
        int(kv.mod_revision),
        int(kv.version),
        int(kv.lease),
    )


def _map_rpc_error(exc: grpc.RpcError, what: str, endpoint: str) -> StoreError:
    code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
    details = (exc.details() if isinstance(exc, grpc.aio.AioRpcError) else None) or str(exc)
    msg = f"etcd {what} at {endpoint}: {details}"
    if code is None or code in _UNAVAILABLE_CODES:
        return StoreUnavailable(msg)
    if code == grpc.StatusCode.NOT_FOUND:  # etcd: "requested lease not found"
        return LeaseExpired(msg)
    if code == grpc.StatusCode.OUT_OF_RANGE:
        if "compacted" in details:
            return Compacted(msg)
        return StoreInvalidArgument(msg)  # "required revision is a future revision"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return StoreInvalidArgument(msg)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return StoreResourceExhausted(msg)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return StorePermissionDenied(msg)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return StoreUnauthenticated(msg)
    return StoreError(msg)


def _request_op(op: Put | Delete) -> Any:
    if isinstance(op, Put):
        return rpc.RequestOp(
            request_put=rpc.PutRequest(key=_enc(op.key), value=op.value, lease=op.lease)
        )
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=_enc(op.key)))


def _read_file(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StoreInvalidArgument(f"cannot read the etcd TLS {what} {str(path)!r}: {exc}") from exc


@dataclass
class _Endpoint:
    host: str
    port: int
    channel: grpc.aio.Channel | None = None
    kv: Any = None
    lease: Any = None
    watch: Any = None
    maintenance: Any = None

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


class EtcdStore(Store):
    def __init__(
        self,
        endpoints: Sequence[tuple[str, int]],
        *,
        op_timeout_s: float = 2.0,
        ca_cert_path: Path | None = None,
        cert_path: Path | None = None,
        key_path: Path | None = None,
        page_size: int = 1000,
        max_message_bytes: int = 64 << 20,
        user: EtcdCredentials | None = None,
        quota_bytes: int = 2 << 30,
        quota_high_water: float = 0.9,
    ) -> None:
        if not endpoints:
            raise StoreInvalidArgument("EtcdStore needs at least one endpoint")
        self._endpoints = [_Endpoint(h, p) for h, p in endpoints]
        self._current = 0
        # etcd's --quota-backend-bytes (its default: 2 GiB); a client cannot read the flag
        self.quota_bytes = quota_bytes
        self.quota_high_water = quota_high_water
        self._op_timeout_s = op_timeout_s
        self._page_size = page_size
        self._closed = False
        self._user = user  # etcd authentication: a token on every call (mesh._store._etcd_auth)
        ca = _read_file(ca_cert_path, "CA certificate")
        cert = _read_file(cert_path, "client certificate")
        key = _read_file(key_path, "client key")
        self._credentials = (
            grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=cert
            )
            if ca is not None or cert is not None
            else None
        )
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # detect a dead connection under a long-lived watch (etcd allows pings >= 5 s
            # apart, and only while a call is open)
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 0),
            # come back quickly once etcd is back (gRPC's default backoff grows to 120 s)
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1_000),
            # a connection of this store's own: channels with equal options share gRPC's global
            # subchannel pool, so one client closing its channel could shut down a connection
            # attempt another is waiting on ("tcp handshaker shutdown"), and one client's
            # reconnect backoff would be every client's
            ("grpc.use_local_subchannel_pool", 1),
        ]

    # ------------------------------------------------------------------ plumbing

    def _endpoint(self) -> _Endpoint:
        if self._closed:
            raise StoreUnavailable("etcd store is closed")
        ep = self._endpoints[self._current]
        if ep.channel is None:
            target = ep.name
            chain, bind = interceptors(self._user) if self._user is not None else ([], None)
            if self._credentials is not None:
                ep.channel = grpc.aio.secure_channel(
                    target, self._credentials, options=self._options, interceptors=chain or None
                )
            else:
                ep.channel = grpc.aio.insecure_channel(target, options=self._options, interceptors=chain or None)
            if bind is not None:
                bind(ep.channel)
            ep.kv = rpc.KVStub(ep.channel)
            ep.lease = rpc.LeaseStub(ep.channel)
            ep.watch = rpc.WatchStub(ep.channel)
            ep.maintenance = rpc.MaintenanceStub(ep.channel)
        return ep

    def _failed(self, ep: _Endpoint) -> None:
        """``ep`` did not answer: later calls try the next endpoint."""
        if len(self._endpoints) > 1 and self._endpoints[self._current] is ep:
            self._current = (self._current + 1) % len(self._endpoints)
            logger.info(
                "etcd %s unavailable; switching to %s", ep.name, self._endpoints[self._current].name
            )

    async def _call(
        self, what: str, fn: Callable[[_Endpoint], Awaitable[R]], ep: _Endpoint | None = None
    ) -> R:
        """Run ``fn`` on an endpoint within the op timeout, mapping gRPC errors to ours."""
        ep = ep or self._endpoint()
        try:
            return await asyncio.wait_for(fn(ep), self._op_timeout_s)
        except TimeoutError as exc:
            self._failed(ep)
            raise StoreUnavailable(
                f"etcd {what} at {ep.name} did not answer within {self._op_timeout_s} s"
            ) from exc
        except grpc.RpcError as exc:
            err = _map_rpc_error(exc, what, ep.name)
            if isinstance(err, StoreUnavailable):
                self._failed(ep)
            raise err from exc
        except (grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
            raise StoreUnavailable(f"etcd {what} at {ep.name}: {exc}") from exc

    # ------------------------------------------------------------------ key-value

    async def get(self, key: str) -> KeyValue | None:
        req = rpc.RangeRequest(key=_enc(key))
        resp = await self._call(
            f"get {key!r}", lambda ep: ep.kv.Range(req, timeout=self._op_timeout_s)
        )
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Pages of ``page_size`` keys, all read at the revision of the first page."""
        start, end = _range_for_prefix(prefix)
        for _attempt in range(3):
            out: list[KeyValue] = []
            key, rev = start, 0
            try:
                while True:
                    req = rpc.RangeRequest(
                        key=key, range_end=end, limit=self._page_size, revision=rev
                    )
                    resp = await self._call(f"list {prefix!r}", self._range_call(req))
                    if rev == 0:
                        rev = int(resp.header.revision)
                    out.extend(_kv(kv) for kv in resp.kvs)
                    if not resp.more or not resp.kvs:
                        return out, rev
                    key = bytes(resp.kvs[-1].key) + b"\0"
            except Compacted:
                continue  # compacted between pages: list again at a newer revision
        raise StoreUnavailable(f"etcd list {prefix!r}: history compacted under every attempt")

    def _range_call(self, req: Any) -> Callable[[_Endpoint], Awaitable[Any]]:
        return lambda ep: ep.kv.Range(req, timeout=self._op_timeout_s)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        req = rpc.PutRequest(key=_enc(key), value=value, lease=lease)
        resp = await self._call(
            f"put {key!r}", lambda ep: ep.kv.Put(req, timeout=self._op_timeout_s)
        )
        return int(resp.header.revision)

    async def delete(self, key: str) -> bool:
        req = rpc.DeleteRangeRequest(key=_enc(key))
        resp = await self._call(
            f"delete {key!r}", lambda ep: ep.kv.DeleteRange(req, timeout=self._op_timeout_s)
        )
        return int(resp.deleted) > 0

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Put | Delete],
        failure: Sequence[Put | Delete] = (),
    ) -> tuple[bool, int]:
        validate_txn(compares, success, failure, self.max_txn_ops)
        req = rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    result=rpc.Compare.EQUAL,
                    target=rpc.Compare.MOD,
                    key=_enc(c.key),
                    mod_revision=c.mod_revision,
                )
                for c in compares
            ],
            success=[_request_op(op) for op in success],
            failure=[_request_op(op) for op in failure],
        )
        keys = ", ".join(
            repr(k) for k in sorted({c.key for c in compares} | {o.key for o in success})
        )
        resp = await self._call(
            f"transaction on {keys}", lambda ep: ep.kv.Txn(req, timeout=self._op_timeout_s)
        )
        return bool(resp.succeeded), int(resp.header.revision)

    async def usage(self) -> StoreUsage:
        """The backend's bytes in use (Status RPC of the member answering; pages freed by a
        compaction are reused before the file grows) against the configured quota."""
        resp = await self._call(
            "status", lambda ep: ep.maintenance.Status(rpc.StatusRequest(), timeout=self._op_timeout_s)
        )
        used = int(resp.dbSizeInUse) or int(resp.dbSize)  # etcd < 3.4 reports no dbSizeInUse
        return StoreUsage(used, self.quota_bytes, self.quota_high_water)

    async def compact(self, revision: int) -> None:
        req = rpc.CompactionRequest(revision=revision, physical=True)
        with contextlib.suppress(Compacted):  # already compacted that far
            await self._call(
                f"compact to {revision}", lambda ep: ep.kv.Compact(req, timeout=self._op_timeout_s)
            )

    # ------------------------------------------------------------------ leases

    async def grant_lease(self, ttl_s: int) -> int:
        if ttl_s <= 0:
            raise StoreInvalidArgument(f"lease TTL must be positive, got {ttl_s}")
        req = rpc.LeaseGrantRequest(TTL=ttl_s, ID=0)
        resp = await self._call(
            "lease grant", lambda ep: ep.lease.LeaseGrant(req, timeout=self._op_timeout_s)
        )
        if resp.error:
            raise StoreError(f"etcd lease grant: {resp.error}")
        return int(resp.ID)

    async def keepalive(self, lease_id: int) -> int:
        async def once(ep: _Endpoint) -> Any:
            call = ep.lease.LeaseKeepAlive(timeout=self._op_timeout_s)
            try:
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
                await call.done_writing()
                return await call.read()
            finally:
                call.cancel()

        resp = await self._call(f"keepalive of lease {lease_id:x}", once)
        if resp is grpc.aio.EOF:
            raise StoreUnavailable(
                f"etcd keepalive of lease {lease_id:x}: stream ended without an answer"
            )
        if int(resp.TTL) <= 0:
            raise LeaseExpired(f"lease {lease_id:x} not found (expired or revoked)")
        return int(resp.TTL)

    async def revoke_lease(self, lease_id: int) -> None:
        req = rpc.LeaseRevokeRequest(ID=lease_id)
        with contextlib.suppress(LeaseExpired):  # already gone: nothing to do
            await self._call(
                f"revoke of lease {lease_id:x}",
                lambda ep: ep.lease.LeaseRevoke(req, timeout=self._op_timeout_s),
            )

    # ------------------------------------------------------------------ watch

    def watch_prefix(
        self, prefix: str, start_revision: int
    ) -> AsyncGenerator[list[WatchEvent], None]:
        return self._watch(prefix, start_revision)

    async def _watch(
        self, prefix: str, start_revision: int
    ) -> AsyncGenerator[list[WatchEvent], None]:
        ep = self._endpoint()
        key, end = _range_for_prefix(prefix)
        what = f"watch on {prefix!r} from revision {start_revision}"
        # One stream per watch; long-lived, so no deadline. "hasleader" makes a member that
        # loses its leader cancel the watch instead of leaving it silently stalled.
        call = ep.watch.Watch(metadata=(("hasleader", "true"),))

        async def create() -> None:
            await call.write(
                rpc.WatchRequest(
                    create_request=rpc.WatchCreateRequest(
                        key=key, range_end=end, start_revision=max(start_revision, 0), prev_kv=True
                    )
                )
            )
            while True:
                resp = await call.read()
                self._check_watch_response(resp, what, ep)
                if resp.created:
                    return

        try:
            await self._call(what, lambda _ep: create(), ep)
            yield []
            while True:
                try:
                    resp = await call.read()
                except grpc.RpcError as exc:
                    self._failed(ep)
                    raise _map_rpc_error(exc, what, ep.name) from exc
                except (grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
                    raise StoreUnavailable(f"etcd {what} at {ep.name}: {exc}") from exc
                self._check_watch_response(resp, what, ep)
                if resp.events:
                    yield [
                        WatchEvent(
                            "put" if ev.type == rpc.Event.PUT else "delete",
                            _dec(ev.kv.key),
                            bytes(ev.kv.value) if ev.type == rpc.Event.PUT else b"",
                            int(ev.kv.mod_revision),
                            bytes(ev.prev_kv.value) if ev.HasField("prev_kv") else None,
                        )
                        for ev in resp.events
                    ]
        finally:
            call.cancel()

    def _check_watch_response(self, resp: Any, what: str, ep: _Endpoint) -> None:
        if resp is grpc.aio.EOF:
            self._failed(ep)
            raise StoreUnavailable(f"etcd {what} at {ep.name}: stream ended")
        if resp.compact_revision:
            raise Compacted(
                f"etcd {what}: history before revision {resp.compact_revision} is compacted",
                compact_revision=int(resp.compact_revision),
            )
        if resp.canceled:
            raise StoreUnavailable(
                f"etcd {what} at {ep.name} was cancelled: {resp.cancel_reason or 'no reason'}"
            )

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for ep in self._endpoints:
            channel, ep.channel = ep.channel, None
            if channel is not None:
                await channel.close()
