"""HTTP(S) sources may not reach loopback, link-local (cloud metadata), private or unique-local
addresses — judged after DNS resolution and on every redirect hop — unless the operator's
allow-list says so. The same loopback fetch succeeds with the allow-list and is refused
without it; a refused fetch sends nothing."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from puller import ForbiddenAddress, Puller, StorageConfig, StorageRef
from puller._netguard import AddressPolicy
from tests.puller.pullhelp import files_under, settings, visible
from tests.security.sechelp import recorders

SECRET = "Bearer victim-secret-0123456789"


def test_address_classes() -> None:
    refused = [
        "127.0.0.1", "127.9.9.9", "::1", "169.254.169.254", "169.254.0.1", "fe80::1", "10.0.0.1",
        "172.16.5.5", "192.168.1.1", "100.64.0.1", "fc00::1", "fd12:3456::1", "0.0.0.0", "::",
        "::ffff:127.0.0.1", "::ffff:169.254.169.254", "224.0.0.1", "192.0.2.1", "240.0.0.1",
    ]
    for ip in refused:
        assert AddressPolicy.forbidden(ipaddress.ip_address(ip)), ip
    for ip in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"):
        assert not AddressPolicy.forbidden(ipaddress.ip_address(ip)), ip
    policy = AddressPolicy(["10.1.0.0/16", "Models.Internal", " ", "::1/128"])
    assert policy.permits("x", ipaddress.ip_address("10.1.2.3"))
    assert not policy.permits("x", ipaddress.ip_address("10.2.0.1"))
    assert policy.permits("models.internal.", ipaddress.ip_address("192.168.0.9"))  # by name
    assert policy.permits("x", ipaddress.ip_address("::1"))
    assert not policy.permits("x", ipaddress.ip_address("127.0.0.1"))


async def test_loopback_is_refused_unless_allowed(tmp_path: Path) -> None:
    with recorders(1) as (server,):
        server.files["/m.bin"] = b"model"
        cache = tmp_path / "cache"
        closed = Puller(settings(cache, http_allow_private=[]))
        try:
            # by address, and by a name that resolves to loopback
            for url in (server.url("/m.bin"), server.url("/m.bin", host="localhost")):
                with pytest.raises(ForbiddenAddress) as refused:
                    await closed.stage(StorageRef(storage_uri=url))
                assert refused.value.code == "permission_denied"
        finally:
            await closed.close()
        assert server.seen == []  # nothing was sent
        assert visible(cache) == []
        # the same fetch, with the operator's allow-list (a CIDR, or the host name)
        for allow in (["127.0.0.0/8", "::1/128"], ["localhost"]):
            opened = Puller(settings(tmp_path / f"cache-{allow[0][:3]}", http_allow_private=allow))
            try:
                staged = await opened.stage(StorageRef(storage_uri=server.url("/m.bin", host="localhost")))
                assert files_under(staged.local_path) == {"m.bin": b"model"}
            finally:
                await opened.close()
        assert server.paths() == ["/m.bin", "/m.bin"]


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fd00::1]/m.bin",
        "http://10.0.0.1/m.bin",
        "http://[::ffff:127.0.0.1]:9/m.bin",
        "http://0.0.0.0:9/m.bin",
        "https://192.168.0.1/m.bin",
    ],
)
async def test_metadata_private_and_unique_local_are_refused(tmp_path: Path, url: str) -> None:
    cache = tmp_path / "cache"
    puller = Puller(settings(cache, http_allow_private=[], retries=0, request_timeout_s=2))
    try:
        with pytest.raises(ForbiddenAddress):
            await puller.stage(StorageRef(storage_uri=url))
    finally:
        await puller.close()
    assert visible(cache) == []


async def test_every_redirect_hop_is_checked(tmp_path: Path) -> None:
    """The key's own host is trusted (the operator named it); a redirect from it to another
    loopback port is not, and is refused before anything is sent there."""
    with recorders(2) as (store, internal):
        store.redirects["/m/model.bin"] = internal.url("/admin/secrets")
        store.redirects["/m/meta"] = "http://169.254.169.254/latest/meta-data/"
        store.files["/m/ok.bin"] = b"ok"
        internal.files["/admin/secrets"] = b"internal"
        config = StorageConfig.from_mapping(
            {"web": json.dumps({"type": "http", "url": store.url("/m/"), "headers": {"Authorization": SECRET}})}
        )
        cache = tmp_path / "cache"
        puller = Puller(settings(cache, http_allow_private=[], retries=0, request_timeout_s=2), config)
        try:
            ok = await puller.stage(StorageRef(storage_key="web", path="ok.bin"))
            for path in ("model.bin", "meta"):
                with pytest.raises(ForbiddenAddress):
                    await puller.stage(StorageRef(storage_key="web", path=path))
            # the key's host through a URI without the key: not the operator's entry, so not trusted
            with pytest.raises(ForbiddenAddress):
                await puller.stage(StorageRef(storage_uri=store.url("/m/ok.bin")))
        finally:
            await puller.close()
        assert internal.seen == []
        assert store.paths() == ["/m/ok.bin", "/m/model.bin", "/m/meta"]
        assert visible(cache) == [f"artifacts/{ok.key}"]


async def test_redirect_loops_and_odd_schemes_end(tmp_path: Path) -> None:
    with recorders(1) as (server,):
        server.redirects["/a"] = "/b"
        server.redirects["/b"] = "/a"
        server.redirects["/file"] = "file:///etc/passwd"
        puller = Puller(settings(tmp_path / "cache", max_redirects=3, retries=0))
        try:
            with pytest.raises(Exception, match="more than 3 redirects"):
                await puller.stage(StorageRef(storage_uri=server.url("/a")))
            with pytest.raises(Exception, match="non-http"):
                await puller.stage(StorageRef(storage_uri=server.url("/file")))
        finally:
            await puller.close()
        assert len(server.seen) == 4 + 1
