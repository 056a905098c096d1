"""A hostile artifact or registration tries to reach files outside its own artifact: symlink
chains in an archive, ``schema_path``, and local paths outside the allowed roots."""

from __future__ import annotations

import io
import os
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from puller import InvalidStorageRef, Puller, StorageRef, UnsafeArchive
from runtime_adapters import ModelLoadError, ModelSpec
from runtime_adapters._schema import load_schema
from tests.puller.pullhelp import files_under, settings, visible
from tests.security.sechelp import recorders


def tar_with(entries: list[tuple[str, str | bytes]]) -> bytes:
    """A tar of files (bytes) and symlinks (str targets)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, value in entries:
            info = tarfile.TarInfo(name)
            if isinstance(value, str):
                info.type = tarfile.SYMTYPE
                info.linkname = value
                tf.addfile(info)
            else:
                info.size = len(value)
                tf.addfile(info, io.BytesIO(value))
    return buf.getvalue()


async def test_symlink_chain_escaping_the_artifact_is_refused(tmp_path: Path) -> None:
    # each link passes the lexical check on its own; resolved together, b points at the parent
    chain = tar_with([("model.onnx", b"m"), ("a", "."), ("b", "a/.."), ("deep/c", "../b/secret")])
    inside = tar_with([("model.onnx", b"m"), ("sub/x", b"x"), ("a", "sub"), ("b", "a/x")])
    with recorders(1) as (server,):
        server.files["/victim.tar.gz"] = tar_with([("model.onnx", b"victim")])
        server.files["/chain.tar.gz"] = chain
        server.files["/inside.tar.gz"] = inside
        cache = tmp_path / "cache"
        puller = Puller(settings(cache))
        try:
            victim = await puller.stage(StorageRef(storage_uri=server.url("/victim.tar.gz")))
            with pytest.raises(UnsafeArchive, match="resolves outside the artifact") as refused:
                await puller.stage(StorageRef(storage_uri=server.url("/chain.tar.gz")))
            assert str(tmp_path) not in refused.value.message
            good = await puller.stage(StorageRef(storage_uri=server.url("/inside.tar.gz")))
            assert (good.local_path / "b").read_bytes() == b"x"  # chains that stay inside are fine
        finally:
            await puller.close()
        assert visible(cache) == sorted([f"artifacts/{victim.key}", f"artifacts/{good.key}"])
        assert files_under(victim.local_path) == {"model.onnx": b"victim"}
        assert list((cache / "staging").iterdir()) == []


def _schema_dir(tmp_path: Path) -> tuple[Path, Path, Path]:
    model_dir = tmp_path / "artifact"
    model_dir.mkdir()
    model = model_dir / "model.pt"
    model.write_bytes(b"m")
    (model_dir / "s.json").write_text('{"inputs": [{"name": "x", "datatype": "FP32"}], "outputs": []}')
    secret = tmp_path / "secret.json"
    secret.write_text('{"inputs": [], "outputs": []}')
    return model_dir, model, secret


def test_schema_path_is_confined_to_the_artifact(tmp_path: Path) -> None:
    model_dir, model, secret = _schema_dir(tmp_path)
    os.symlink(secret, model_dir / "link-out.json")
    os.symlink(tmp_path / "missing.json", model_dir / "link-missing.json")
    os.symlink("s.json", model_dir / "link-in.json")
    os.symlink(model_dir / "link-out.json", model_dir / "chain.json")

    def load(schema_path: str) -> Any:
        return load_schema(ModelSpec(model_id="m", model_type="pytorch", schema_path=schema_path), model)

    assert [t.name for t in load("s.json").inputs] == ["x"]
    assert [t.name for t in load("link-in.json").inputs] == ["x"]
    messages = {}
    for hostile in (str(secret), "/etc/shadow", "/no/such/file", "../secret.json", "../missing.json",
                    "link-out.json", "link-missing.json", "chain.json", "C:/x.json"):
        with pytest.raises(ModelLoadError) as refused:
            load(hostile)
        messages[hostile] = refused.value.args[0].replace(hostile, "<given>")
        assert str(tmp_path) not in refused.value.args[0].replace(hostile, "")
    # one message for all: existing and missing files outside are not told apart
    assert len(set(messages.values())) == 1, messages
    # a missing file inside the artifact is told (it is the caller's own directory)
    with pytest.raises(ModelLoadError, match="does not exist in the model's directory"):
        load("nope.json")
    # a schema.json beside the model that links outside is refused, not read
    os.symlink(secret, model_dir / "schema.json")
    with pytest.raises(ModelLoadError, match="outside the model's directory"):
        load_schema(ModelSpec(model_id="m", model_type="pytorch"), model)


class FsSpy:
    """Records the paths (and threads) of os.stat / lstat / scandir calls while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        for name in ("stat", "lstat", "scandir"):
            monkeypatch.setattr(os, name, self._wrap(getattr(os, name)))

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def spy(path: Any = ".", *args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls.append((os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else str(path),
                                   threading.current_thread().name))
            return fn(path, *args, **kwargs)

        return spy

    def touched(self, prefix: str) -> list[tuple[str, str]]:
        with self._lock:
            return [c for c in self.calls if c[0].startswith(prefix)]


async def test_registration_checks_roots_before_touching_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "models"
    (root / "m").mkdir(parents=True)
    (root / "m" / "model.onnx").write_bytes(b"x" * 1000)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"y" * 10)
    os.symlink(outside, root / "escape")
    puller = Puller(settings(tmp_path / "cache", allowed_roots=[root]))
    try:
        await puller.start()
        spy = FsSpy(monkeypatch)
        messages = set()
        lexically_outside = (str(outside), str(outside / "big.bin"), str(outside / "missing"), "/usr", f"file://{root}/../outside")
        for hostile in (*lexically_outside, str(root / "escape"), str(root / "escape" / "missing")):
            if hostile == str(root / "escape"):
                # refused before any file-system call on them
                for path in (str(outside), "/usr"):
                    assert spy.touched(path) == []
            with pytest.raises(InvalidStorageRef) as refused:
                await puller.local_size(StorageRef(storage_uri=hostile))
            given = hostile.removeprefix("file://")  # echoed as the caller wrote it, nothing else
            assert str(root) not in refused.value.message.replace(given, "")
            messages.add(refused.value.message.replace(given, "<given>"))
        assert len(messages) == 1, messages  # existing vs missing outside: the same answer
        size = await puller.local_size(StorageRef(storage_uri=str(root / "m")))
        assert size == 1000
        walked = spy.touched(str(root / "m"))
        assert walked and all(thread != threading.main_thread().name for _, thread in walked)
    finally:
        await puller.close()
