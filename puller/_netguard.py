"""Where HTTP(S) sources may connect: no loopback, link-local, private or unique-local address
unless the operator allows it.

The check runs where the connection is made (an httpcore network backend), on the addresses
DNS returned, and the socket is opened to the very address that was checked — a name that
resolves to a public address for the check and to a private one for the connection (DNS
rebinding) cannot slip through. Every connection is checked, so every redirect hop is too.

Allowed without asking: addresses that are global unicast (``ipaddress``'s ``is_global``,
not multicast). Refused otherwise (loopback ``127.0.0.0/8`` and ``::1``, link-local
``169.254.0.0/16`` — cloud metadata included — and ``fe80::/10``, private ``10/8``,
``172.16/12``, ``192.168/16``, shared ``100.64/10``, unique-local ``fc00::/7``, unspecified,
reserved, documentation, multicast; IPv4-mapped IPv6 addresses are judged as the IPv4 they
map), unless one of these lets it through:

* the operator's allow-list (``PullerSettings.http_allow_private``): CIDRs (``10.0.0.0/8``,
  ``127.0.0.1/32``, ``::1/128``) match the resolved address, host names match the name asked
  for (case-insensitive, whatever it resolves to);
* the one origin (host and port) the storage-config entry in use names itself (an ``http``
  key's ``url``, a GCS key's ``endpoint_url``): the operator wrote that host down.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence

import httpcore

from ._errors import ForbiddenAddress

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressPolicy:
    """The allow-list, parsed once: CIDRs and host names (see the module docstring)."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.networks: list[IpNetwork] = []
        self.hosts: set[str] = set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry.lower().rstrip("."))

    @staticmethod
    def forbidden(ip: IpAddress) -> bool:
        """Whether ``ip`` is anything but a global unicast address."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_multicast or not ip.is_global

    def permits(self, host: str, ip: IpAddress) -> bool:
        if not self.forbidden(ip):
            return True
        if host.lower().rstrip(".") in self.hosts:
            return True
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        return any(ip in net or (mapped is not None and mapped in net) for net in self.networks)


async def resolve(host: str, port: int) -> list[IpAddress]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[IpAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    return out


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, checking each connection's resolved addresses first.

    ``trusted`` is the (host, port) the storage-config entry names (connections to it are
    not checked). Every address a name resolves to must be permitted (a name with one public
    and one private address is refused: it is either misconfigured or an attack); the socket
    then connects to a checked address, never to the name. TLS still verifies the certificate
    against the host name (httpcore passes the origin's host as ``server_hostname``).
    """

    def __init__(
        self,
        policy: AddressPolicy,
        trusted: tuple[str, int] | None = None,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self.trusted = (trusted[0].lower(), trusted[1]) if trusted else None
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if self.trusted is not None and (host.lower(), port) == self.trusted:
            return await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            addresses = await resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
        refused = [ip for ip in addresses if not self.policy.permits(host, ip)]
        if refused or not addresses:
            raise ForbiddenAddress(
                f"host {host!r} resolves to {refused[0] if refused else 'nothing'}, a loopback, link-local, "
                "private or otherwise non-public address the puller may not reach "
                "(an operator may allow it: PullerSettings.http_allow_private)"
            )
        return await self._connect_any(addresses, port, timeout, local_address, socket_options)

    async def _connect_any(
        self,
        addresses: Sequence[IpAddress],
        port: int,
        timeout: float | None,
        local_address: str | None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None,
    ) -> httpcore.AsyncNetworkStream:
        last: Exception | None = None
        for ip in addresses:
            try:
                return await self._inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise ForbiddenAddress("HTTP sources may not use Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
