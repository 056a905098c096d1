"""Storage-config secret parsing and StorageRef resolution."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from puller import (
    ForbiddenStorageParameter,
    InvalidStorageRef,
    MalformedStorageConfig,
    Puller,
    StorageConfig,
    StorageRef,
    UnknownStorageKey,
)
from puller._resolve import Resolver, check_local, local_roots

S3 = json.dumps(
    {
        "type": "s3",
        "access_key_id": "AKIA",
        "secret_access_key": "s3cr3t",
        "endpoint_url": "https://minio:9000",
        "region": "eu-west-1",
        "bucket": "models",
    }
)


def resolver(config: StorageConfig | None = None, roots: list[Path] | None = None, pvc: Path = Path("/pvc")) -> Resolver:
    return Resolver(config or StorageConfig(), roots or [], pvc)


def test_parse_modelmesh_fields_and_hide_secrets() -> None:
    cfg = StorageConfig.from_mapping({"my-s3": S3, "web": b'{"type": "https", "url": "https://h/", "headers": {"A": "b"}}'})
    spec = cfg["my-s3"]
    assert (spec.type, spec.access_key_id, spec.endpoint_url, spec.region, spec.bucket) == (
        "s3", "AKIA", "https://minio:9000", "eu-west-1", "models",
    )
    assert cfg["web"].type == "http" and dict(cfg["web"].headers) == {"A": "b"}
    assert "s3cr3t" not in repr(spec) and "s3cr3t" not in repr(cfg)


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"access_key_id": "x"}', "'type' is missing"),
        ('{"type": "ftp"}', "unknown storage type 'ftp'"),
        ('{"type": "s3", "bucket": 7}', "'bucket' must be a string"),
        ('{"type": "http", "headers": ["x"]}', "'headers' must be an object"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_malformed_secret_is_rejected_naming_the_key(document: str | bytes, fragment: str) -> None:
    with pytest.raises(MalformedStorageConfig) as err:
        StorageConfig.from_mapping({"good": S3, "broken-key": document})
    assert "broken-key" in str(err.value) and fragment in str(err.value)
    assert err.value.code == "invalid_argument"


def test_from_dir_reads_a_mounted_secret(tmp_path: Path) -> None:
    data = tmp_path / "..2024_data"
    data.mkdir()
    (data / "my-s3").write_text(S3)
    os.symlink(data, tmp_path / "..data")
    os.symlink("..data/my-s3", tmp_path / "my-s3")
    cfg = StorageConfig.from_dir(tmp_path)
    assert list(cfg) == ["my-s3"] and cfg["my-s3"].bucket == "models"
    with pytest.raises(MalformedStorageConfig, match="does not exist"):
        StorageConfig.from_dir(tmp_path / "nope")


def test_uri_resolution_and_defaults() -> None:
    cfg = StorageConfig.from_mapping(
        {"default": S3, "default_gcs": '{"type": "gcs", "token": "t"}', "other": '{"type": "s3", "bucket": "b2"}'}
    )
    r = resolver(cfg)
    s = r.resolve(StorageRef(storage_uri="s3://bkt/dir/model.onnx"))
    assert (s.type, s.bucket, s.path, s.spec.key) == ("s3", "bkt", "dir/model.onnx", "default")
    g = r.resolve(StorageRef(storage_uri="gs://gb/p"))
    assert (g.type, g.spec.key, g.spec.extra["token"]) == ("gcs", "default_gcs", "t")
    h = r.resolve(StorageRef(storage_uri="https://user:pw@host:8443/m/model.bin?sig=SECRET"))
    assert h.type == "http" and h.display == "https://host:8443/m/model.bin"
    assert "SECRET" not in h.display and "pw" not in h.display
    # a key's bucket is where its credentials go: parameters may not change it (only name it
    # when the key has none)
    with pytest.raises(ForbiddenStorageParameter, match="may not change storage key 'other''s bucket"):
        r.resolve(StorageRef(storage_key="other", path="/a/b", parameters={"bucket": "override"}))
    k = r.resolve(StorageRef(storage_key="other", path="/a/b", parameters={"bucket": "b2"}))
    assert (k.type, k.bucket, k.path) == ("s3", "b2", "a/b")
    d = r.resolve(StorageRef(path="x/y"))  # path only: the default entry applies
    assert (d.type, d.bucket, d.path) == ("s3", "models", "x/y")
    # the same source through different references is one cache identity
    assert r.resolve(StorageRef(storage_uri="s3://models/x/y")).identity() == d.identity()


def test_bad_references_are_rejected() -> None:
    cfg = StorageConfig.from_mapping({"gcs": '{"type": "gcs"}', "nobucket": '{"type": "s3"}'})
    r = resolver(cfg)
    with pytest.raises(UnknownStorageKey, match=r"'missing'.*keys available: gcs, nobucket"):
        r.resolve(StorageRef(storage_key="missing", path="m"))
    with pytest.raises(InvalidStorageRef, match="type 'gcs' but storage_uri"):
        r.resolve(StorageRef(storage_uri="s3://b/k", storage_key="gcs"))
    with pytest.raises(InvalidStorageRef, match="needs a bucket"):
        r.resolve(StorageRef(storage_key="nobucket", path="m"))
    with pytest.raises(InvalidStorageRef, match="unsupported scheme 'ftp'"):
        r.resolve(StorageRef(storage_uri="ftp://h/x"))
    with pytest.raises(InvalidStorageRef, match="both storage_uri"):
        r.resolve(StorageRef(storage_uri="s3://b/k", path="k"))
    with pytest.raises(InvalidStorageRef, match="neither"):
        r.resolve(StorageRef())
    with pytest.raises(InvalidStorageRef, match="no bucket"):
        r.resolve(StorageRef(storage_uri="s3:///k"))
    with pytest.raises(InvalidStorageRef, match="remote host"):
        r.resolve(StorageRef(storage_uri="file://evil.example/etc/passwd"))


def test_local_paths_must_stay_inside_roots(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "m").mkdir(parents=True)
    (tmp_path / "secret").write_text("x")
    os.symlink(tmp_path / "secret", root / "escape")
    pvc = tmp_path / "pvc"
    (pvc / "claim" / "m").mkdir(parents=True)
    (pvc / "other").mkdir()
    r = resolver(roots=[root], pvc=pvc)

    def check(ref: StorageRef) -> Path:
        source = r.resolve(ref)
        return check_local(source, local_roots(source, [root]), [root])

    assert check(StorageRef(storage_uri=f"file://{root}/m")) == (root / "m").resolve()
    assert check(StorageRef(storage_uri=str(root / "m"))) == (root / "m").resolve()
    assert check(StorageRef(storage_uri="pvc://claim/m")) == (pvc / "claim" / "m").resolve()
    hostile = [
        StorageRef(storage_uri=f"file://{tmp_path}/secret"),
        StorageRef(storage_uri=f"file://{root}/../secret"),
        StorageRef(storage_uri=f"file://{root}/escape"),
        StorageRef(storage_uri=str(root / ".." / "secret")),
        StorageRef(path="/etc/passwd"),
        StorageRef(storage_uri="pvc://claim/../other"),
        StorageRef(storage_uri="pvc://claim/../../secret"),
    ]
    for ref in hostile:
        with pytest.raises(InvalidStorageRef, match="outside"):
            check(ref)
    for ref in (StorageRef(storage_uri="pvc://../.."), StorageRef(storage_uri="pvc://..")):
        with pytest.raises(InvalidStorageRef, match="claim name"):
            r.resolve(ref)


async def test_stage_rejects_outside_roots_without_reading(tmp_path: Path) -> None:
    from tests.puller.pullhelp import settings

    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"x")
    puller = Puller(settings(tmp_path / "cache", allowed_roots=[tmp_path / "models"]))
    try:
        with pytest.raises(InvalidStorageRef, match="outside the allowed roots"):
            await puller.stage(StorageRef(storage_uri=f"file://{outside}"))
        with pytest.raises(UnknownStorageKey):
            await puller.stage(StorageRef(storage_key="nope", path="m"))
    finally:
        await puller.close()
    assert not (tmp_path / "cache" / "artifacts").exists() or not any((tmp_path / "cache" / "artifacts").iterdir())
