"""Client helpers. :class:`DirectRouter`: V2 gRPC inference that goes straight to the holder.

Every ModelInfer answer from a modelmux instance carries the trailing metadata ``mm-holder``:
the gRPC address of the instance whose copy served it. A request sent to any instance that
does not hold the model is forwarded once inside the mesh (two hops); ``DirectRouter`` learns
the holder from the first answer and sends the next requests for that model to it (one hop).

Fallback: a holder that cannot be reached (``UNAVAILABLE``: stopped, killed, restarted
elsewhere) is forgotten and the request goes to the entry instances in turn (any instance
serves any model). A holder that lost the copy still answers (it routes the request like any
instance) and its answer names the new holder, which the next request uses. Other errors
(bad input, unknown model, deadline) are the request's own and are raised unchanged.

Trust: answers name addresses the client will connect to; ``accept`` can restrict them (e.g.
to the cluster's pod network). Against instances with TLS and an auth file, pass the CA that
signed their certificates and a bearer token: every channel (entries and learnt holders) is then
TLS, verified against that CA (``server_name`` when the certificates name a Service rather than
each pod's address), and every request carries the token. ``channel_factory`` replaces all of
that with channels of the caller's own making.

    router = DirectRouter(["modelmux:8033"])
    answer_bytes = await router.infer("my-model", request.SerializeToString())

    secure = DirectRouter(["modelmux:8033"], root_certificates=ca_pem, token=token, server_name="modelmux")
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence

import grpc

from ._holder import HOLDER_HEADER

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
MODEL_ID_HEADER = "mm-model-id"

ChannelFactory = Callable[[str], grpc.aio.Channel]


def _insecure(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address)


def _secure(root_certificates: bytes | None, server_name: str | None) -> ChannelFactory:
    credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []

    def factory(address: str) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(address, credentials, options=options)

    return factory


class DirectRouter:
    """Sends each model's requests to the instance that last served it (see the module docstring).

    ``entries``: addresses of any instances (a Service address will do); tried in turn when no
    holder is known or the known one is unreachable. ``max_models``: holders remembered (least
    recently learned forgotten first). Channels are cached per address and closed by :meth:`close`.
    ``tls``: TLS channels verified against ``root_certificates`` (PEM; None: the system's roots),
    implied by either; ``token``: sent as ``authorization: Bearer`` on every request.
    """

    def __init__(
        self,
        entries: Sequence[str],
        *,
        channel_factory: ChannelFactory | None = None,
        accept: Callable[[str], bool] | None = None,
        max_models: int = 10_000,
        tls: bool = False,
        root_certificates: bytes | None = None,
        server_name: str | None = None,
        token: str | None = None,
    ) -> None:
        if not entries:
            raise ValueError("DirectRouter needs at least one entry address")
        self.entries = list(entries)
        if channel_factory is None:
            secure = tls or root_certificates is not None or server_name is not None
            channel_factory = _secure(root_certificates, server_name) if secure else _insecure
        self._factory = channel_factory
        self._auth: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._accept = accept
        self._max_models = max_models
        self._holders: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self._next_entry = 0
        self.direct = 0  # requests answered by the remembered holder
        self.fallbacks = 0  # remembered holders found unreachable

    def holder(self, model: str) -> str | None:
        """The address the next request for ``model`` goes to first (None: an entry)."""
        return self._holders.get(model)

    def learn(self, model: str, address: str) -> None:
        """Remember ``address`` as ``model``'s holder (done from every answer; public for warm starts)."""
        if self._accept is not None and not self._accept(address):
            return
        holders = self._holders
        if holders.get(model) == address:
            return
        holders[model] = address
        holders.move_to_end(model)
        while len(holders) > self._max_models:
            holders.popitem(last=False)

    def forget(self, model: str) -> None:
        self._holders.pop(model, None)

    def _call(self, address: str) -> grpc.aio.UnaryUnaryMultiCallable:
        call = self._calls.get(address)
        if call is None:
            channel = self._factory(address)
            self._channels[address] = channel
            call = self._calls[address] = channel.unary_unary(INFER_METHOD)  # bytes in, bytes out
        return call

    async def _send(self, address: str, model: str, payload: bytes, timeout: float | None, metadata: tuple[tuple[str, str], ...]) -> bytes:
        call = self._call(address)(payload, timeout=timeout, metadata=metadata)
        out: bytes = await call
        for key, value in await call.trailing_metadata() or ():
            if key == HOLDER_HEADER and isinstance(value, str) and value:
                self.learn(model, value)
                break
        return out

    async def infer(self, model: str, payload: bytes, *, timeout: float | None = None) -> bytes:
        """A serialized ModelInferRequest for ``model`` in, the serialized ModelInferResponse out.

        ``model`` names the model (or vModel) the payload asks for; it is sent as the
        ``mm-model-id`` header too, so the payload is never parsed here.
        """
        metadata = ((MODEL_ID_HEADER, model), *self._auth)
        holder = self._holders.get(model)
        if holder is not None:
            try:
                out = await self._send(holder, model, payload, timeout, metadata)
                self.direct += 1
                return out
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                self.fallbacks += 1
                if self._holders.get(model) == holder:
                    del self._holders[model]
        last: grpc.aio.AioRpcError | None = None
        n = len(self.entries)
        for i in range(n):
            entry = self.entries[(self._next_entry + i) % n]
            if entry == holder:
                continue  # just failed
            try:
                out = await self._send(entry, model, payload, timeout, metadata)
                self._next_entry = (self._next_entry + i + 1) % n
                return out
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                last = exc
        if last is None:  # the only entry was the holder that just failed: try it once more
            return await self._send(self.entries[0], model, payload, timeout, metadata)
        raise last

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._calls.clear()

    async def __aenter__(self) -> DirectRouter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
