"""TLS for the instance's ports: server credentials that follow their files, and the client side
of instance-to-instance forwarding.

``--tls-cert`` / ``--tls-key`` turn TLS on for the gRPC, REST and metrics ports; ``--tls-client-ca``
makes it mutual (every client presents a certificate signed by that CA; its subject CN and SANs
become names :class:`~mesh._auth.Authenticator` maps to principals). The files are re-read when
they change (cert-manager rotates them in place): gRPC asks :meth:`ServerTLS.grpc_fetch` at each
handshake, the REST/metrics :class:`ssl.SSLContext` is reloaded by :meth:`ServerTLS.watch`.

Forwarding to a peer uses the same certificate as a client certificate (the instance's own
identity) and trusts the client CA (else the system roots) for the peer's server certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from ._errors import InvalidRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None


def _stamp(files: TLSFiles) -> tuple[tuple[int, int], ...]:
    out = []
    for p in (files.cert, files.key, files.client_ca):
        if p is None:
            continue
        try:
            st = p.stat()
            out.append((st.st_ino, st.st_mtime_ns))
        except OSError:
            out.append((0, 0))
    return tuple(out)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"TLS {what} {path}: cannot read it: {exc.strerror}") from exc


class ServerTLS:
    """Server-side TLS material, reloaded when its files change."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self._cert = b""
        self._key = b""
        self._ca: bytes | None = None
        self._stamp = _stamp(files)
        self._read_files()
        # the context the servers hold hands each handshake to the newest complete one (its SNI
        # callback runs for every ClientHello): a reload builds and checks a fresh context and
        # swaps it in whole, never edits the one handshakes are using
        self._context = self._new_context()
        self._current = self._context
        self._context.sni_callback = self._hand_over
        self._grpc_stamp = self._stamp
        self.reloads = 0

    def _read_files(self) -> None:
        self._cert = _read(self.files.cert, "certificate")
        self._key = _read(self.files.key, "key")
        self._ca = _read(self.files.client_ca, "client CA") if self.files.client_ca else None

    # ------------------------------------------------------------ gRPC

    def _grpc_config(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(self._key, self._cert)], root_certificates=self._ca)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._grpc_config(), self.grpc_fetch, require_client_authentication=self.files.mutual
        )

    def grpc_fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC at each handshake (on its own thread): new material after a change."""
        stamp = _stamp(self.files)
        if stamp == self._grpc_stamp:
            return None
        try:
            self._new_context()  # the pair must match: a certificate written before its key is not served
            self._read_files()
            config = self._grpc_config()
        except Exception as exc:  # a half-written rotation: keep serving the previous material
            log.warning("TLS files changed but could not be read yet: %s", exc)
            return None
        self._grpc_stamp = stamp
        return config

    # ------------------------------------------------------------ REST / metrics

    def _new_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_into(ctx)
        return ctx

    def _load_into(self, ctx: ssl.SSLContext) -> None:
        try:
            ctx.load_cert_chain(str(self.files.cert), str(self.files.key))
            if self.files.client_ca is not None:
                ctx.load_verify_locations(cafile=str(self.files.client_ca))
                ctx.verify_mode = ssl.CERT_REQUIRED
        except (ssl.SSLError, OSError) as exc:
            raise InvalidRequest(f"TLS files {self.files.cert} / {self.files.key}: {exc}") from exc

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """One context for the REST and metrics servers; new handshakes see reloaded files."""
        return self._context

    def _hand_over(self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext) -> None:
        current = self._current
        if current is not ctx:
            conn.context = current

    def _reload_context_if_changed(self) -> bool:
        """Load changed files into a new context and serve it from the next handshake on. A pair
        that does not load (a rotation half written: the new certificate beside the old key) is
        not applied, and the previous material keeps being served. (Loading into the context in
        use, as before, left it holding the new certificate without a key: every handshake failed
        until the next reload.)"""
        stamp = _stamp(self.files)
        if stamp == self._stamp:
            return False
        try:
            self._current = self._new_context()
        except InvalidRequest as exc:
            log.warning("TLS files changed but were not applied yet: %s", exc)
            return False
        self._stamp = stamp
        self.reloads += 1
        log.info("TLS certificate %s reloaded", self.files.cert)
        return True

    async def watch(self, interval_s: float = 2.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._reload_context_if_changed)

    # ------------------------------------------------------------ forwarding (client side)

    def peer_channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for forwarding to another instance: this instance's certificate as the client
        identity; the peer's server certificate checked against the client CA (the mesh's CA)."""
        return grpc.ssl_channel_credentials(root_certificates=self._ca, private_key=self._key, certificate_chain=self._cert)


def cert_names_from_auth_context(auth_context: dict[str, list[bytes]]) -> list[str]:
    """Subject CN and SANs of a verified gRPC client certificate (empty without mutual TLS)."""
    names: list[str] = []
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for raw in auth_context.get(key, ()):
            with contextlib.suppress(UnicodeDecodeError):
                names.append(raw.decode("utf-8"))
    return names


def cert_names_from_peercert(peercert: dict[str, object] | None) -> list[str]:
    """Subject CN and SANs of a verified client certificate as :meth:`ssl.SSLSocket.getpeercert` gives it."""
    if not peercert:
        return []
    names: list[str] = []
    subject = peercert.get("subject") or ()
    for rdn in subject:  # type: ignore[attr-defined]
        for attr, value in rdn:
            if attr == "commonName":
                names.append(str(value))
    for _kind, value in peercert.get("subjectAltName") or ():  # type: ignore[attr-defined]
        names.append(str(value))
    return names
