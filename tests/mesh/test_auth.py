"""Principals from the auth file, authentication of tokens and certificate names, reloads, exposure."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import pytest

from mesh._auth import (
    LOCAL_ADMIN,
    Action,
    Authenticator,
    AuthFile,
    Principal,
    Role,
    check_exposure,
    parse_principals,
    token_sha256,
)
from mesh._errors import InvalidRequest, PermissionDenied, Unauthenticated
from mesh._tls import ServerTLS, TLSFiles, cert_names_from_auth_context
from tests.mesh.cluster import wait_until
from tests.tls_certs import make_ca

A_TOKEN = "token-of-team-a"
B_TOKEN = "token-of-team-b"
ADMIN_TOKEN = "token-of-the-admin"


def _auth_yaml() -> str:
    return f"""
- name: a
  sha256: {token_sha256(A_TOKEN)}
  role: tenant
  tenant: team-a
- name: b-reader
  sha256: {token_sha256(B_TOKEN).upper()}
  role: reader
  tenant: team-b
- name: root
  sha256: {token_sha256(ADMIN_TOKEN)}
  role: admin
- name: peers
  cert: modelmux-instance
  role: instance
"""


def test_tokens_and_certificates_name_principals() -> None:
    auth = Authenticator(_file_with(_auth_yaml()))
    assert auth.authenticate(f"Bearer {A_TOKEN}") == Principal("a", Role.TENANT, "team-a")
    assert auth.authenticate(f"bearer   {B_TOKEN} ") == Principal("b-reader", Role.READER, "team-b")
    assert auth.authenticate(f"Bearer {ADMIN_TOKEN}").is_admin
    assert auth.authenticate(None, ["someone", "modelmux-instance"]).role is Role.INSTANCE
    # a token wins over a certificate; a wrong token is refused even with a good certificate
    assert auth.authenticate(f"Bearer {A_TOKEN}", ["modelmux-instance"]).name == "a"
    for header, certs in ((f"Bearer {A_TOKEN}x", ["modelmux-instance"]), ("Basic abc", []), ("Bearer", []), (None, []), (None, ["nobody"])):
        with pytest.raises(Unauthenticated):
            auth.authenticate(header, certs)
    # the stored hash is not a token
    with pytest.raises(Unauthenticated):
        auth.authenticate(f"Bearer {token_sha256(A_TOKEN)}")


def test_without_an_auth_file_everyone_is_the_local_admin() -> None:
    auth = Authenticator(None)
    assert not auth.enabled
    assert auth.authenticate(None) is LOCAL_ADMIN
    assert auth.authenticate("Bearer whatever") is LOCAL_ADMIN


def test_roles_allow_what_they_say() -> None:
    tenant, reader, inst = Principal("t", Role.TENANT, "x"), Principal("r", Role.READER, "x"), Principal("i", Role.INSTANCE)
    assert tenant.allows(Action.MANAGE) and not tenant.allows(Action.ADMIN) and not tenant.allows(Action.FORWARD)
    assert reader.allows(Action.INFER) and reader.allows(Action.READ) and not reader.allows(Action.MANAGE)
    assert inst.allows(Action.FORWARD) and not inst.allows(Action.MANAGE)
    assert tenant.sees("x") and not tenant.sees("y") and inst.sees("y") and LOCAL_ADMIN.sees("y")
    with pytest.raises(PermissionDenied, match="may not manage"):
        reader.require(Action.MANAGE, "model m")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {name: a, role: tenant, sha256: " + "0" * 64 + "}", "needs a 'tenant'"),
        ("- {name: a, role: admin, tenant: t, sha256: " + "0" * 64 + "}", "not bound to a tenant"),
        ("- {name: a, role: god, sha256: " + "0" * 64 + "}", "role must be one of"),
        ("- {name: a, role: admin, sha256: plain-token}", "64 hex digits"),
        ("- {name: a, role: admin}", "give 'sha256'"),
        ("- {name: a, role: admin, cert: x, extra: 1}", "unknown field"),
        ("- {name: a, role: admin, cert: x}\n- {name: a, role: admin, cert: y}", "name used twice"),
        ("- {name: a, role: admin, cert: x}\n- {name: b, role: admin, cert: x}", "given to two principals"),
        ("{principals: 3}", "expected a list"),
        ("[a: b: c", "not valid YAML"),
    ],
)
def test_a_bad_auth_file_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_principals(text)


def _file_with(text: str, path: Path | None = None) -> AuthFile:
    import tempfile

    if path is None:
        fd, name = tempfile.mkstemp(suffix=".yaml")
        os.close(fd)
        path = Path(name)
    path.write_text(text)
    f = AuthFile(path)
    f.load()
    return f


async def test_the_auth_file_is_reloaded_and_a_broken_version_keeps_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "auth.yaml"
    source = _file_with(_auth_yaml(), path)
    auth = Authenticator(source)
    watcher = asyncio.create_task(source.watch(0.05))
    try:
        assert auth.authenticate(f"Bearer {A_TOKEN}").tenant == "team-a"
        # rotation: team a gets a new token, the old one stops working without a restart
        new = _auth_yaml().replace(token_sha256(A_TOKEN), token_sha256("rotated"))
        path.write_text(new + "\n# v2\n")
        await wait_until(lambda: source.reloads >= 1, 10, "the auth file to be reloaded")
        assert auth.authenticate("Bearer rotated").name == "a"
        with pytest.raises(Unauthenticated):
            auth.authenticate(f"Bearer {A_TOKEN}")
        # a broken edit is not applied: the previous principals stay in force
        path.write_text("- {name: x, role: nope}\n# broken\n")
        await wait_until(lambda: source.rejected >= 1, 10, "the broken version to be seen")
        assert source.reloads == 1
        assert auth.authenticate("Bearer rotated").name == "a"
    finally:
        watcher.cancel()


def test_secure_by_default_beyond_loopback() -> None:
    assert check_exposure(["127.0.0.1", "::1", "localhost"], auth=False, tls=False, insecure=False) is None
    assert check_exposure(["0.0.0.0"], auth=True, tls=True, insecure=False) is None
    with pytest.raises(InvalidRequest, match=r"without an auth file .* and TLS"):
        check_exposure(["0.0.0.0"], auth=False, tls=False, insecure=False)
    with pytest.raises(InvalidRequest, match="without TLS"):
        check_exposure(["10.1.2.3"], auth=True, tls=False, insecure=False)
    warning = check_exposure(["0.0.0.0"], auth=False, tls=True, insecure=True)
    assert warning is not None and warning.startswith("INSECURE")


async def test_mutual_tls_gives_the_client_certificate_names(tmp_path: Path) -> None:
    """A grpc.aio server with ServerTLS: a client certificate's CN/SANs reach the handler; a client
    without a certificate is refused at the handshake; rotated files are served to new handshakes."""
    ca = make_ca(tmp_path / "pki")
    server_pair = ca.issue("server", cn="localhost", sans=("DNS:localhost", "IP:127.0.0.1"))
    client_pair = ca.issue("client", cn="modelmux-instance", sans=("DNS:instance-1.mesh",), server=False)
    tls = ServerTLS(TLSFiles(cert=server_pair.cert, key=server_pair.key, client_ca=ca.cert))
    seen: list[list[str]] = []

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(cert_names_from_auth_context(context.auth_context()))
        return request

    handler = grpc.method_handlers_generic_handler(
        "t.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", tls.grpc_credentials())
    await server.start()
    try:
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca.cert.read_bytes(), private_key=client_pair.key.read_bytes(), certificate_chain=client_pair.cert.read_bytes()
        )
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
            assert await ch.unary_unary("/t.Echo/Echo")(b"hi", timeout=10) == b"hi"
        assert "modelmux-instance" in seen[0] and "instance-1.mesh" in seen[0]
        # no client certificate: refused before any handler runs
        bare = grpc.ssl_channel_credentials(root_certificates=ca.cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", bare) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary("/t.Echo/Echo")(b"hi", timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len(seen) == 1
        # rotation in place: a new server certificate (new CN) is served to new connections
        rotated = ca.issue("server2", cn="rotated.local", sans=("DNS:localhost", "IP:127.0.0.1"))
        server_pair.cert.write_bytes(rotated.cert.read_bytes())
        server_pair.key.write_bytes(rotated.key.read_bytes())
        import ssl

        def served_cn() -> str:
            ctx = ssl.create_default_context(cafile=str(ca.cert))
            ctx.load_cert_chain(str(client_pair.cert), str(client_pair.key))
            ctx.set_alpn_protocols(["h2"])
            import socket

            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as s:
                subject = dict(x[0] for x in s.getpeercert()["subject"])  # type: ignore[index,misc]
                return str(subject["commonName"])

        assert await asyncio.to_thread(served_cn) == "rotated.local"
    finally:
        await server.stop(None)
