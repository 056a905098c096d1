"""The router: resolve a name to a model, then serve locally, forward, or ask for a load.

Hot path for a loaded model: one vModel/model look-up and one holders look-up in
the in-memory :class:`ClusterMirror`; a local copy (from the agent's
:class:`~mesh._loaded_copies.LoadedCopies`, read only here) is served in process, a
remote one gets the request bytes forwarded unparsed over the holder's peer link
(:mod:`mesh._peer_link`) or, for a peer without one, a cached gRPC channel. Nothing on
this path touches the store. Request metrics and wire formats are the data plane's
(:mod:`mesh._dataplane`) and the edges'.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import grpc

from runtime_adapters import InferRequest, InferResponse, LoadedModel, ModelNotLoaded

from . import _codec
from ._cluster_mirror import ClusterMirror
from ._errors import DeadlineExceeded, ModelLoadFailed, ModelNotFound, NoCapacity, Unavailable
from ._holder import served_by
from ._load_request import request_load
from ._loaded_copies import LoadedCopiesView
from ._metrics import Metrics
from ._peer_link import LinkDown, PeerLinkClient
from ._request_metrics import RequestMetrics
from ._runtimes import RuntimeCopy
from ._split_routing import SplitRouting
from ._store import Store
from ._store_schema import Keys
from ._validation import valid_id

log = logging.getLogger(__name__)

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
METADATA_METHOD = "/inference.GRPCInferenceService/ModelMetadata"
FORWARDED_HEADER = "mm-forwarded"  # set on forwarded calls: serve locally or answer NOT_FOUND
MODEL_ID_HEADER = "mm-model-id"
VMODEL_ID_HEADER = "mm-vmodel-id"
_RETRY_CODES = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE)
LINK_RETRY_S = 30.0
"""a peer whose link could not be opened is reached over gRPC this long before the link is tried again"""
PEER_FORGET_S = 60.0
"""the channel and link to an address no instance record names are closed after this long"""


@dataclass
class UsageStats:
    """Per-model use counters, published by the agent (coalesced)."""

    last_used: float = 0.0
    count: int = 0
    window_start: float = field(default_factory=time.monotonic)
    window_count: int = 0  # requests in the current rate window
    prev_count: int = -1  # requests in the previous window (-1: no full window yet)

    def rate_rpm(self, now: float, window_s: float) -> float:
        """Requests per minute over a sliding window of ``window_s`` (the previous window weighted by
        how much of it still overlaps), so that the rate falls to 0 within two windows of idleness."""
        elapsed = now - self.window_start
        if elapsed >= window_s:
            periods = int(elapsed // window_s)
            self.prev_count = self.window_count if periods == 1 else 0
            self.window_start += periods * window_s
            self.window_count = 0
            elapsed = now - self.window_start
        if self.prev_count < 0:
            # first window: the requests seen so far, over a whole window. Dividing by the time
            # elapsed instead would read one request in its first second as 60 per minute, and
            # give every one-off model a second copy.
            return self.window_count * 60.0 / window_s
        return (self.prev_count * (1.0 - elapsed / window_s) + self.window_count) * 60.0 / window_s


@dataclass
class RouterCounters:
    requests: int = 0  # requests from clients (not forwarded to us by a peer)
    local: int = 0
    forwarded: int = 0
    misses: int = 0
    forward_retries: int = 0
    linked: int = 0  # forwards sent over a peer link (the rest of ``forwarded`` went over gRPC)
    link_fallbacks: int = 0  # forwards sent over gRPC because the peer's link could not be opened


def _reason(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)


class Router:
    def __init__(
        self,
        instance_id: str,
        mirror: ClusterMirror,
        store: Store,
        loaded: LoadedCopiesView,
        *,
        forward_attempts: int = 3,
        default_deadline_s: float = 60.0,
        forward_attempt_timeout_s: float = 0.0,
        suspect_holder_s: float = 10.0,
        forward_retry_backoff_s: float = 0.5,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        request_metrics: RequestMetrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self._forward_ok = self.metrics.forwards.labels("ok")  # bound once: labels() costs a lock and a dict look-up
        self._local_hits = self.metrics.local_hits
        self.request_metrics = request_metrics or RequestMetrics(self.metrics, mirror)
        self.instance_id = instance_id
        self.address = ""  # this instance's advertised gRPC address, once its server is bound (the holder of a local hit)
        self.mirror = mirror
        self.store = store  # cold paths only: a name not yet mirrored, asking for a load
        self.keys: Keys = mirror.keys
        self.forward_attempts = forward_attempts
        self.default_deadline_s = default_deadline_s
        self.forward_attempt_timeout_s = forward_attempt_timeout_s
        self.suspect_holder_s = suspect_holder_s
        self.forward_retry_backoff_s = forward_retry_backoff_s
        self.clock = clock
        self.loaded = loaded  # this instance's loaded copies (the agent's registry, read only)
        self.usage: dict[str, UsageStats] = {}  # counted here, published (and forgotten) by the agent
        self.counters = RouterCounters()
        self._inflight: dict[str, int] = {}
        self._suspect: dict[str, float] = {}  # holder -> monotonic time until which it is avoided
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self._misses: dict[str, asyncio.Future[None]] = {}
        self._unknown: dict[str, float] = {}  # negative cache of names unknown to the store
        self.max_message_bytes = 64 << 20
        self.splits = SplitRouting(mirror, self.metrics)  # weighted targets and shadow of split vModels
        # how this instance identifies itself to peers (mesh._security): TLS credentials (None:
        # plaintext), extra metadata (a peer bearer token) and the name checked in their certificates
        self.peer_credentials: grpc.ChannelCredentials | None = None
        self.peer_call_metadata: tuple[tuple[str, str], ...] = ()
        self.peer_server_name = ""
        # forwards go over a peer's link (mesh._peer_link) when it advertises one; a link that
        # cannot be opened is not tried again for LINK_RETRY_S (its peer is reached over gRPC)
        self.peer_link = True
        self.peer_ssl_context: ssl.SSLContext | None = None
        self._links: dict[str, PeerLinkClient] = {}
        self._link_down: dict[str, float] = {}
        # channels and links to addresses no instance advertises any more are closed after this
        # long (pods come back with new addresses; each cached channel keeps reconnecting)
        self.peer_forget_s = PEER_FORGET_S
        self._gone_since: dict[str, float] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._unsub_instances = mirror.instances.subscribe(lambda _changes: self.forget_gone_peers())

    # ------------------------------------------------------------ names

    def resolve(self, name: str) -> str:
        mid = self.mirror.resolve(name)
        if mid is None:
            raise ModelNotFound(f"model '{name}' is not registered")
        return mid

    async def resolve_fresh(self, name: str) -> str:
        """Resolve, and when the view does not know the name, ask the store once before NOT_FOUND.

        A model registered on another instance a moment ago may not have reached this
        instance's view yet. This cold path (unknown names only) reads the store, with a short
        negative cache so that a client hammering a wrong name cannot hammer the store.
        """
        mid = self.mirror.resolve(name)
        if mid is not None:
            return mid
        if not valid_id(name):  # no model or vModel can have this name: no store read, nothing cached
            raise ModelNotFound(f"model '{name[:256]}' is not registered")
        now = time.monotonic()
        if self._unknown.get(name, 0.0) > now:
            raise ModelNotFound(f"model '{name}' is not registered")
        try:
            found = await self.store.get(self.keys.model(name)) or await self.store.get(self.keys.vmodel(name))
        except Exception:
            found = None
        if found is not None:
            await self.mirror.wait_for(lambda: self.mirror.resolve(name) is not None, 5.0)
            mid = self.mirror.resolve(name)
            if mid is not None:
                return mid
        if len(self._unknown) > 10_000:
            self._unknown.clear()
        self._unknown[name] = now + 1.0
        raise ModelNotFound(f"model '{name}' is not registered")

    def touch(self, model_id: str) -> None:
        st = self.usage.get(model_id)
        if st is None:
            st = self.usage[model_id] = UsageStats()
        st.last_used = self.clock()
        st.count += 1
        st.window_count += 1

    def forget_usage(self, model_id: str) -> None:
        """Drop a model's use counters (the agent calls it once the copy is unloaded)."""
        self.usage.pop(model_id, None)

    # ------------------------------------------------------------ entry points

    async def infer_bytes(
        self, name: str, payload: bytes, *, timeout_s: float | None, forwarded: bool = False, session: str | None = None
    ) -> bytes:
        """Serve a serialized ModelInferRequest; returns a serialized ModelInferResponse."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.default_deadline_s)
        if not forwarded:
            self.counters.requests += 1
        mid = self.mirror.resolve(name) or await self.resolve_fresh(name)
        if not forwarded and (pick := self.splits.pick(name, session)) is not None:
            mid, shadow = pick
            if shadow:
                self.splits.shadow(name, lambda: self._shadow_bytes(shadow, payload))
        model = self.loaded.get(mid)
        if model is not None:
            try:
                return await self._local_bytes(mid, model, name, payload)
            except ModelNotLoaded:
                # unloaded between the look-up and the call (eviction race): route again
                if forwarded:
                    raise
        if forwarded:
            raise ModelNotFound(f"model '{mid}' is not loaded on instance {self.instance_id}")
        return await self._route(mid, name, payload, deadline)

    async def infer(
        self, name: str, request: InferRequest, *, timeout_s: float | None, session: str | None = None
    ) -> InferResponse:
        """Serve a decoded request (REST): local in process, remote as a forwarded gRPC call whose
        answer is decoded once, here, at the end of the forward."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.default_deadline_s)
        self.counters.requests += 1
        mid = self.mirror.resolve(name) or await self.resolve_fresh(name)
        if (pick := self.splits.pick(name, session)) is not None:
            mid, shadow = pick
            if shadow:
                self.splits.shadow(name, lambda: self._shadow_bytes(shadow, _codec.infer_request_to_pb(request).SerializeToString()))
        model = self.loaded.get(mid)
        if model is not None:
            try:
                return await self._local(mid, model, name, request)
            except ModelNotLoaded:
                pass  # unloaded between the look-up and the call: route again
        payload = _codec.infer_request_to_pb(request).SerializeToString()
        raw = await self._route(mid, name, payload, deadline)
        return _codec.infer_response_from_pb(_codec.parse_infer_response(raw))

    async def _shadow_bytes(self, mid: str, payload: bytes) -> None:
        """A split vModel's shadow copy of a request (answer discarded; run by :class:`SplitRouting`)."""
        deadline = time.monotonic() + self.default_deadline_s
        model = self.loaded.get(mid)
        if model is not None:
            await self._local_bytes(mid, model, mid, payload)
        else:
            await self._route(mid, mid, payload, deadline)

    # ------------------------------------------------------------ local

    def _served_here(self, mid: str) -> None:
        """Count a request served by a copy on this instance (and the model's use)."""
        self.counters.local += 1
        self._local_hits.inc()
        self.touch(mid)

    async def _local(self, mid: str, model: LoadedModel, name: str, request: InferRequest) -> InferResponse:
        self._served_here(mid)
        with self.request_metrics.invoke(mid, name):
            resp = await model.infer(request)
        if resp.model_name != name:
            resp = InferResponse(model_name=name, outputs=resp.outputs, id=request.id, model_version=resp.model_version)
        return resp

    async def _local_bytes(self, mid: str, model: LoadedModel, name: str, payload: bytes) -> bytes:
        # the gRPC local hit, once per request: _local's steps inline, timed with two clock
        # readings rather than a timer object (this path's every call shows at 1 request in flight)
        served_by.set(self.address)
        if model.forwards_raw:  # the copy lives in a runtime process: forward the bytes unparsed
            self._served_here(mid)
            with self.request_metrics.invoke(mid, name):
                return await cast(RuntimeCopy, model).infer_bytes(payload)
        msg = _codec.parse_infer_request(payload)
        request = _codec.infer_request_from_pb(msg)
        self.counters.local += 1
        self._local_hits.inc()
        self.touch(mid)
        t0 = time.perf_counter()
        try:
            resp = await model.infer(request)
        except BaseException as exc:
            self.request_metrics.invoke_done(mid, name, t0, time.perf_counter(), exc)
            raise
        self.request_metrics.invoke_done(mid, name, t0, time.perf_counter())
        out = _codec.infer_response_to_pb(resp)
        out.model_name = name  # the name asked for (a vModel's, a split's)
        out.id = msg.id
        return out.SerializeToString()

    # ------------------------------------------------------------ remote / miss

    async def _route(self, mid: str, name: str, payload: bytes, deadline: float) -> bytes:
        """Forward to the least busy holder; on failure try the others, then wait for the view to change.

        A holder that fails a forward (unreachable, lost the copy, or silent past
        ``forward_attempt_timeout_s`` while another holder exists) is excluded for this
        request and avoided by all requests for ``suspect_holder_s``. When every holder has
        failed, the request waits (bounded by its deadline) for the view to change - a dead
        holder's lease expires, its copies vanish and the model is placed again - trying the
        holders again every ``forward_retry_backoff_s``, instead of failing while a new copy
        is only a lease TTL away.
        """
        excluded: set[str] = set()
        attempts = 0
        last_error: BaseException | None = None
        first = True
        while True:
            if not first:
                await asyncio.sleep(0)  # every pass yields: a retry never starves the loop it waits on
            first = False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if last_error is not None:
                    raise DeadlineExceeded(f"deadline exceeded while routing model '{name}': {_reason(last_error)}") from last_error
                raise DeadlineExceeded(f"deadline exceeded while routing model '{name}'")
            # a vModel may have moved to a new target meanwhile: follow it (a split vModel's target
            # was picked for this request: keep it)
            if self.splits.split_of(name) is None:
                mid = self.mirror.resolve(name) or mid
            model = self.loaded.get(mid)
            if model is not None:
                try:
                    return await self._local_bytes(mid, model, name, payload)
                except ModelNotLoaded as exc:
                    last_error = exc
                    continue
            others = [h for h in self.mirror.holders(mid) if h != self.instance_id]
            holders = [h for h in others if h not in excluded]
            if not holders:
                if others:
                    # every holder failed us: wait for the view to change (or a short back-off), then retry them
                    await self.mirror.wait_for(
                        self._view_changed(mid, frozenset(others)), min(remaining, self.forward_retry_backoff_s)
                    )
                    excluded.clear()
                    continue
                try:
                    await self.ensure_loaded(mid, deadline, exclude=excluded)
                except ModelNotFound:
                    moved = self.mirror.resolve(name)
                    if moved is None or moved == mid:
                        raise
                    continue
                continue
            target = self._pick(holders)
            address = self.mirror.address(target)
            if address is None:
                excluded.add(target)
                continue
            attempts += 1
            timeout = deadline - time.monotonic()
            bounded = self.forward_attempt_timeout_s > 0 and len(holders) > 1 and timeout > self.forward_attempt_timeout_s
            if bounded:
                timeout = self.forward_attempt_timeout_s
            try:
                result = await self._forward(target, address, mid, payload, timeout)
                served_by.set(address)
                self._forward_ok.inc()
                if self._suspect:
                    self._suspect.pop(target, None)
                return result
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                self.metrics.forwards.labels(code.name.lower()).inc()
                timed_out = bounded and code == grpc.StatusCode.DEADLINE_EXCEEDED
                if code in _RETRY_CODES or timed_out:
                    # the holder lost the copy (evicted, stopping), is unreachable or hangs: next one
                    self.counters.forward_retries += 1
                    excluded.add(target)
                    last_error = exc
                    if code == grpc.StatusCode.UNAVAILABLE or timed_out:
                        self._suspect[target] = time.monotonic() + self.suspect_holder_s
                    if attempts < 2 * self.forward_attempts or code != grpc.StatusCode.NOT_FOUND:
                        continue
                    raise Unavailable(f"no instance could serve model '{name}': {_reason(exc)}") from exc
                raise

    def _view_changed(self, mid: str, failed: frozenset[str]) -> Callable[[], bool]:
        return lambda: mid in self.loaded or not set(self.mirror.holders(mid)) <= failed

    def _pick(self, holders: list[str]) -> str:
        """The holder with the fewest requests in flight, avoiding suspect holders while others exist."""
        if self._suspect:
            now = time.monotonic()
            for h, until in list(self._suspect.items()):
                if until <= now:
                    del self._suspect[h]
            healthy = [h for h in holders if h not in self._suspect]
            holders = healthy or holders
        if len(holders) == 1:
            return holders[0]
        return min(holders, key=lambda h: self._inflight.get(h, 0))

    def channel(self, address: str) -> grpc.aio.Channel:
        """The cached channel to a peer (shared by forwarding and the metadata look-up)."""
        self._stub(address)
        return self._channels[address]

    def _stub(self, address: str) -> grpc.aio.UnaryUnaryMultiCallable:
        stub = self._stubs.get(address)
        if stub is None:
            options: list[tuple[str, int | str]] = [
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes),
                # the router retries on other holders itself; gRPC's retry machinery would only
                # buffer every forwarded payload for a retry that never comes
                ("grpc.enable_retries", 0),
            ]
            if self.peer_credentials is None:
                channel = grpc.aio.insecure_channel(address, options=options)
            else:
                if self.peer_server_name:
                    options.append(("grpc.ssl_target_name_override", self.peer_server_name))
                channel = grpc.aio.secure_channel(address, self.peer_credentials, options=options)
            self._channels[address] = channel
            stub = channel.unary_unary(INFER_METHOD)  # no (de)serializers: bytes in, bytes out
            self._stubs[address] = stub
        return stub

    def _link(self, target: str) -> PeerLinkClient | None:
        """The link client for a peer that advertises a link and has not refused one lately."""
        address = self.mirror.link_address(target)
        if not address:
            return None
        if self._link_down and self._link_down.get(address, 0.0) > time.monotonic():
            return None
        client = self._links.get(address)
        if client is None:
            authorization = next((v for k, v in self.peer_call_metadata if k == "authorization"), "")
            client = PeerLinkClient(
                address, authorization=authorization, ssl_context=self.peer_ssl_context, server_hostname=self.peer_server_name
            )
            self._links[address] = client
        return client

    async def _forward(self, target: str, address: str, mid: str, payload: bytes, timeout: float) -> bytes:
        self.counters.forwarded += 1
        self._inflight[target] = self._inflight.get(target, 0) + 1
        try:
            if self.peer_link and (link := self._link(target)) is not None:
                started = time.monotonic()
                self.counters.linked += 1
                try:
                    return await link.call(mid, payload, max(timeout, 0.001))
                except LinkDown as exc:  # nothing was sent: this call goes over gRPC
                    log.warning("%s; forwarding to %s over gRPC for %.0fs", exc, target, LINK_RETRY_S)
                    self._link_down[link.address] = time.monotonic() + LINK_RETRY_S
                    self._links.pop(link.address, None)
                    self.counters.linked -= 1
                    self.counters.link_fallbacks += 1
                    timeout -= time.monotonic() - started
            result: bytes = await self._stub(address)(
                payload,
                timeout=max(timeout, 0.001),
                metadata=((MODEL_ID_HEADER, mid), (FORWARDED_HEADER, self.instance_id), *self.peer_call_metadata),
            )
            return result
        finally:
            self._inflight[target] -= 1

    async def ensure_loaded(self, mid: str, deadline: float, *, exclude: set[str] | None = None) -> None:
        """Make sure a loaded copy exists somewhere (one miss per model per process)."""
        holders = self._servable(mid)
        if holders and not (exclude and set(holders) <= exclude):
            return
        error = self.mirror.failure(mid)
        if error is not None:
            raise ModelLoadFailed(f"model '{mid}' failed to load: {error}")
        fut = self._misses.get(mid)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._misses[mid] = fut
            task = asyncio.create_task(self._miss(mid, fut, deadline))
            task.add_done_callback(lambda _t: None)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout=max(deadline - time.monotonic(), 0.0))
        except TimeoutError as exc:
            raise DeadlineExceeded(f"model '{mid}' did not load within the request deadline") from exc

    async def _miss(self, mid: str, fut: asyncio.Future[None], deadline: float) -> None:
        self.counters.misses += 1
        self.metrics.misses.inc()
        t0 = time.perf_counter()
        try:
            def answered() -> bool:
                return (
                    bool(self._servable(mid))
                    or self.mirror.failure(mid) is not None
                    or self.mirror.miss_error(mid) is not None
                    or mid not in self.mirror.models.items
                )

            def unplaced() -> bool:
                # nothing live is assigned to load it and no miss record asks for it. Checked again
                # on every change: the instance it was assigned to may vanish while we wait (its
                # copy record can go before its instance record, and the leader then drops the
                # assignment), and nobody else would ask again.
                return (not self.mirror.assigned(mid) or not self._assigned_live(mid)) and mid not in self.mirror.misses.items

            ok = False
            while True:
                if unplaced():
                    await request_load(self.store, self.keys, mid, requester=self.instance_id, at=self.clock())
                    # until our view shows the miss (or its outcome), unplaced() still holds
                    await self.mirror.wait_for(
                        lambda: not unplaced() or answered(), timeout_s=max(min(deadline - time.monotonic(), 5.0), 0.0)
                    )
                ok = await self.mirror.wait_for(
                    lambda: answered() or unplaced(), timeout_s=max(deadline - time.monotonic(), 0.0)
                )
                if not ok or answered():
                    break
            if mid not in self.mirror.models.items:
                raise ModelNotFound(f"model '{mid}' was unregistered")
            miss_error = self.mirror.miss_error(mid)
            if not self._servable(mid) and miss_error is not None:
                raise NoCapacity(f"model '{mid}' cannot be placed: {miss_error}")
            error = self.mirror.failure(mid)
            if not self._servable(mid) and error is not None:
                raise ModelLoadFailed(f"model '{mid}' failed to load: {error}")
            if not ok:
                raise DeadlineExceeded(f"model '{mid}' did not load within the request deadline")
            self.metrics.model(self.metrics.cache_miss_ms, mid).observe((time.perf_counter() - t0) * 1000)
            fut.set_result(None)
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters may all have timed out
        finally:
            self._misses.pop(mid, None)

    def _servable(self, mid: str) -> tuple[str, ...]:
        """Holders that can serve the model. This instance counts only while it holds the copy in
        memory: a copy record left by a previous incarnation of this instance (killed, restarted
        before its lease ran out) must not make a request wait on itself."""
        holders = self.mirror.holders(mid)
        if self.instance_id in holders and mid not in self.loaded:
            return tuple(h for h in holders if h != self.instance_id)
        return holders

    def _assigned_live(self, mid: str) -> bool:
        live = self.mirror.instances.items
        return any(i in live and not live[i].shutting_down for i in self.mirror.assigned(mid))

    async def peer_metadata(self, mid: str, deadline: float) -> bytes | None:
        """A holder's serialized ModelMetadataResponse for ``mid`` (bytes, unparsed), or None when
        no holder has an address."""
        for holder in self.mirror.holders(mid):
            address = self.mirror.address(holder)
            if address is None:
                continue
            call = self.channel(address).unary_unary(METADATA_METHOD)  # bytes in, bytes out
            raw: bytes = await call(
                _codec.metadata_request_bytes(mid), timeout=max(deadline - time.monotonic(), 0.001), metadata=self.peer_call_metadata
            )
            return raw
        return None

    def forget_gone_peers(self) -> None:
        """Drop the channels and links of addresses that no instance record has named for
        ``peer_forget_s`` (run on every change of the instance records), closing them in the
        background. Without it every address ever forwarded to kept its channel, and the
        channel's reconnect attempts, for the life of the process."""
        cached = self._channels.keys() | self._links.keys()
        if not cached and not self._gone_since:
            return
        live: set[str] = set()
        for rec in self.mirror.instances.items.values():
            live.add(rec.address)
            if rec.link_address:
                live.add(rec.link_address)
        now = self.clock()
        for address in cached:
            if address in live:
                self._gone_since.pop(address, None)
                continue
            since = self._gone_since.setdefault(address, now)
            if now - since < self.peer_forget_s:
                continue
            del self._gone_since[address]
            self._stubs.pop(address, None)
            self._link_down.pop(address, None)
            channel = self._channels.pop(address, None)
            link = self._links.pop(address, None)
            log.info("closing the channel to %s: no instance has advertised it for %.0fs", address, now - since)
            for closer in (channel.close() if channel else None, link.close() if link else None):
                if closer is not None:
                    task = asyncio.ensure_future(closer)
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)
        for address in [a for a in self._gone_since if a not in cached]:
            del self._gone_since[address]

    async def close(self) -> None:
        self._unsub_instances()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self.splits.close()
        for link in self._links.values():
            await link.close()
        self._links.clear()
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
        self._stubs.clear()

