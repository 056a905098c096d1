"""Who is calling: principals, roles, and the auth file that maps credentials to them.

A caller presents ``authorization: Bearer <token>`` (gRPC metadata or HTTP header) or, with TLS
client authentication on, a client certificate. :class:`Authenticator` turns either into a
:class:`Principal` once, at the data plane; every read and write then takes that principal and
is scoped to its tenant in one place (:mod:`mesh._access`).

The auth file (``modelmux serve --auth-file FILE`` / ``MODELMUX_AUTH_FILE``) is YAML: a list of
principals (or a mapping with a ``principals`` list)::

    - name: team-a-ci            # shown in logs and decisions
      sha256: 9f86d0...          # hex SHA-256 of the bearer token (plain tokens are never stored)
      role: tenant               # admin | tenant | reader | instance
      tenant: team-a             # required for tenant and reader
    - name: team-a-batch
      cert: batch.team-a.example # a client certificate whose subject CN or a SAN is this name
      role: reader
      tenant: team-a
    - name: instances            # the mesh's own instances (forwarding between them)
      cert: modelmux-instance
      role: instance

Roles: ``admin`` may do everything for every tenant; ``tenant`` manages and infers its own
tenant's models and vModels; ``reader`` infers and reads its own tenant; ``instance`` is another
instance of the mesh: it may forward a request an instance already authorised (``mm-forwarded``)
and read the cluster, never manage. The file is re-read when it changes (rotation without a
restart); a file that fails to parse on a reload leaves the previous principals in force.

Without an auth file every caller is :data:`LOCAL_ADMIN` (the loopback default of ``modelmux
serve``, ``up`` and ``demo``); binding beyond loopback without one refuses to start unless the
operator says ``--insecure`` (:func:`check_exposure`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import yaml

from ._errors import InvalidRequest, PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

BEARER = "bearer"


class Role(StrEnum):
    ADMIN = "admin"
    TENANT = "tenant"
    READER = "reader"
    INSTANCE = "instance"


class Action(StrEnum):
    """What a call does, for :meth:`Principal.allows`."""

    INFER = "infer"  # inference, ready, metadata
    READ = "read"  # status, describe, lists, decisions
    MANAGE = "manage"  # register / unregister / vModels / load of its tenant's models
    ADMIN = "admin"  # quotas, pinned, min copies above the limit, another tenant's models, cluster settings
    FORWARD = "forward"  # serve a request another instance forwarded (mm-forwarded)


_ALLOWED: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.TENANT: frozenset({Action.INFER, Action.READ, Action.MANAGE}),
    Role.READER: frozenset({Action.INFER, Action.READ}),
    Role.INSTANCE: frozenset({Action.FORWARD, Action.INFER, Action.READ}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``tenant`` None: not bound to one tenant (admin, instance)."""

    name: str
    role: Role
    tenant: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def sees(self, tenant: str) -> bool:
        """Whether anything of ``tenant`` exists for this caller (else it is NOT_FOUND to it)."""
        return self.tenant is None or self.tenant == tenant

    def allows(self, action: Action) -> bool:
        return action in _ALLOWED[self.role]

    def require(self, action: Action, what: str = "") -> None:
        """PERMISSION_DENIED unless the role allows ``action`` (tenant scoping is separate)."""
        if not self.allows(action):
            target = f" {what}" if what else ""
            raise PermissionDenied(f"principal '{self.name}' (role {self.role.value}) may not {action.value}{target}")


LOCAL_ADMIN = Principal(name="local", role=Role.ADMIN)
"""Every caller when no auth file is configured (loopback and the embedded modes)."""


@dataclass(frozen=True)
class PrincipalTable:
    """Credentials → principals, as read from one version of the auth file."""

    by_token_sha256: Mapping[str, Principal] = field(default_factory=dict)
    by_cert_name: Mapping[str, Principal] = field(default_factory=dict)

    def __len__(self) -> int:
        return len({*self.by_token_sha256.values(), *self.by_cert_name.values()})


def token_sha256(token: str) -> str:
    """The hex digest the auth file stores for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_principals(text: str, *, source: str = "auth file") -> PrincipalTable:
    """Parse the YAML of an auth file; InvalidRequest names the entry that is wrong."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"{source}: not valid YAML: {exc}") from exc
    if isinstance(doc, Mapping):
        doc = doc.get("principals")
    if doc is None:
        doc = []
    if not isinstance(doc, list):
        raise InvalidRequest(f"{source}: expected a list of principals")
    tokens: dict[str, Principal] = {}
    certs: dict[str, Principal] = {}
    names: set[str] = set()
    for n, entry in enumerate(doc):
        where = f"{source}: principal #{n + 1}"
        if not isinstance(entry, Mapping):
            raise InvalidRequest(f"{where}: expected a mapping")
        unknown = set(entry) - {"name", "sha256", "cert", "role", "tenant"}
        if unknown:
            raise InvalidRequest(f"{where}: unknown field(s) {sorted(unknown)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"{where}: 'name' is required")
        where = f"{source}: principal '{name}'"
        if name in names:
            raise InvalidRequest(f"{where}: name used twice")
        names.add(name)
        try:
            role = Role(str(entry.get("role", "")))
        except ValueError:
            raise InvalidRequest(f"{where}: role must be one of {[r.value for r in Role]}") from None
        tenant = entry.get("tenant")
        if role in (Role.TENANT, Role.READER):
            if not isinstance(tenant, str) or not tenant:
                raise InvalidRequest(f"{where}: role {role.value} needs a 'tenant'")
        elif tenant is not None:
            raise InvalidRequest(f"{where}: role {role.value} is not bound to a tenant; remove 'tenant'")
        principal = Principal(name=name, role=role, tenant=tenant)
        digest, cert = entry.get("sha256"), entry.get("cert")
        if digest is None and cert is None:
            raise InvalidRequest(f"{where}: give 'sha256' (of a bearer token) or 'cert' (a client certificate name)")
        if digest is not None:
            if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
                raise InvalidRequest(f"{where}: 'sha256' must be 64 hex digits (the token's SHA-256, not the token)")
            if digest.lower() in tokens:
                raise InvalidRequest(f"{where}: the same token hash is given to two principals")
            tokens[digest.lower()] = principal
        if cert is not None:
            if not isinstance(cert, str) or not cert:
                raise InvalidRequest(f"{where}: 'cert' must be a certificate subject CN or SAN")
            if cert in certs:
                raise InvalidRequest(f"{where}: the certificate name '{cert}' is given to two principals")
            certs[cert] = principal
    return PrincipalTable(by_token_sha256=tokens, by_cert_name=certs)


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class AuthFile:
    """An auth file, re-read when it changes (:meth:`watch` polls its stamp off the event loop)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.table = PrincipalTable()
        self._stamp: tuple[int, int, int] | None = None
        self.reloads = 0  # changed versions applied
        self.rejected = 0  # changed versions that did not parse (the previous principals stayed)

    def load(self) -> PrincipalTable:
        """Read and parse the file now (blocking: call from a thread, or at start-up)."""
        stamp = _file_stamp(self.path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidRequest(f"auth file {self.path}: cannot read it: {exc.strerror}") from exc
        self.table = parse_principals(text, source=f"auth file {self.path}")
        self._stamp = stamp
        return self.table

    def _reload_if_changed(self) -> bool:
        stamp = _file_stamp(self.path)
        if stamp is None or stamp == self._stamp:
            return False
        try:
            self.load()
        except InvalidRequest as exc:
            self._stamp = stamp  # do not re-parse the same broken version every poll
            self.rejected += 1
            log.error("auth file changed but was not applied (previous principals stay in force): %s", exc)
            return False
        self.reloads += 1
        log.info("auth file %s reloaded: %d principal(s)", self.path, len(self.table))
        return True

    async def watch(self, interval_s: float = 1.0) -> None:
        """Reload on change until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._reload_if_changed)


class Authenticator:
    """Credentials → :class:`Principal`. ``source`` None: authentication is off (everyone is
    :data:`LOCAL_ADMIN`)."""

    def __init__(self, source: AuthFile | None = None) -> None:
        self.source = source

    @property
    def enabled(self) -> bool:
        return self.source is not None

    def authenticate(self, authorization: str | None, cert_names: Sequence[str] = ()) -> Principal:
        """The caller of one request: a bearer token first, else a verified client certificate's
        names (subject CN and SANs, as the TLS layer verified them). UNAUTHENTICATED otherwise."""
        if self.source is None:
            return LOCAL_ADMIN
        table = self.source.table
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            token = token.strip()
            if scheme.lower() != BEARER or not token:
                raise Unauthenticated("the authorization header must be 'Bearer <token>'")
            digest = token_sha256(token)
            principal = table.by_token_sha256.get(digest)
            if principal is not None:
                return principal
            raise Unauthenticated("the bearer token is not valid")
        for name in cert_names:
            principal = table.by_cert_name.get(name)
            if principal is not None:
                return principal
        if cert_names:
            raise Unauthenticated("the client certificate is not mapped to a principal")
        raise Unauthenticated("authentication required: send 'authorization: Bearer <token>' or a client certificate")


def is_loopback_host(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(hosts: Iterable[str], *, auth: bool, tls: bool, insecure: bool) -> str | None:
    """Secure by default: binding beyond loopback needs an auth file and TLS, or ``insecure``.

    Returns a warning to print loudly when ``insecure`` lets an exposed instance start; raises
    InvalidRequest when it may not start."""
    exposed = sorted({h for h in hosts if not is_loopback_host(h)})
    if not exposed or (auth and tls):
        return None
    missing = " and ".join(x for x, ok in (("an auth file (--auth-file)", auth), ("TLS (--tls-cert/--tls-key)", tls)) if not ok)
    if not insecure:
        raise InvalidRequest(
            f"refusing to listen on {', '.join(exposed)} without {missing}: anyone who reaches the port could "
            "register, read and run models. Configure them, bind 127.0.0.1, or pass --insecure to accept the risk."
        )
    return f"INSECURE: listening on {', '.join(exposed)} without {missing} (--insecure): every caller is an admin"
