"""Local and PVC sources: in place inside the roots, copies and archives into the cache."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from puller import ArtifactNotFound, InvalidStorageRef, Puller, StorageRef
from tests.puller.pullhelp import files_under, settings, visible


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    (root / "m1" / "sub").mkdir(parents=True)
    (root / "m1" / "model.onnx").write_bytes(b"a" * 100)
    (root / "m1" / "sub" / "extra.bin").write_bytes(b"b" * 23)
    (root / "single.json").write_bytes(b"{}")
    return root


async def test_in_place_file_and_dir_with_holds(tmp_path: Path, tree: Path) -> None:
    cache = tmp_path / "cache"
    puller = Puller(settings(cache, allowed_roots=[tree]))
    await puller.start()
    try:
        d = await puller.stage(StorageRef(storage_uri=f"file://{tree}/m1"))
        assert d.in_place and d.local_path == (tree / "m1").resolve() and d.size_bytes == 123
        f = await puller.stage(StorageRef(path=str(tree / "single.json")))
        assert f.local_path == (tree / "single.json").resolve() and f.size_bytes == 2
        again = await puller.stage(StorageRef(storage_uri=str(tree / "m1")))
        assert again.key == d.key
        assert puller.cache_usage().used_bytes == 0  # in place: nothing copied, nothing counted
        assert visible(cache) == []
        puller.hold(d.key)
        for _ in range(3):
            await puller.release(d.key)
        await puller.release(d.key)  # over-release is ignored
        with pytest.raises(ArtifactNotFound, match="to hold"):
            puller.hold(d.key)  # fully released in-place keys are forgotten
        with pytest.raises(ArtifactNotFound, match="no such file"):
            await puller.stage(StorageRef(storage_uri=str(tree / "missing")))
    finally:
        await puller.close()


async def test_pvc_and_symlink_escapes(tmp_path: Path, tree: Path) -> None:
    pvc = tmp_path / "pvc"
    (pvc / "claim" / "model").mkdir(parents=True)
    (pvc / "claim" / "model" / "w.bin").write_bytes(b"w" * 10)
    (tmp_path / "secret").write_text("top secret")
    os.symlink(tmp_path / "secret", tree / "m1" / "leak")
    puller = Puller(settings(tmp_path / "cache", allowed_roots=[tree], pvc_root=pvc))
    try:
        staged = await puller.stage(StorageRef(storage_uri="pvc://claim/model"))
        assert staged.local_path == (pvc / "claim" / "model").resolve() and staged.size_bytes == 10
        with pytest.raises(InvalidStorageRef, match="symlink 'leak' points outside"):
            await puller.stage(StorageRef(storage_uri=str(tree / "m1")))
        for uri in ("pvc://../..", "pvc://claim/../../secret", f"file://{tmp_path}/secret"):
            with pytest.raises(InvalidStorageRef):
                await puller.stage(StorageRef(storage_uri=uri))
    finally:
        await puller.close()


async def test_copy_mode_and_local_archive(tmp_path: Path, tree: Path) -> None:
    with tarfile.open(tree / "packed.tar", "w") as tf:
        tf.add(tree / "m1", arcname="m1")
    cache = tmp_path / "cache"
    puller = Puller(settings(cache, allowed_roots=[tree], serve_local_in_place=False))
    try:
        copy = await puller.stage(StorageRef(storage_uri=str(tree / "m1")))
        assert not copy.in_place and copy.local_path.is_relative_to(cache)
        assert files_under(copy.local_path) == {"model.onnx": b"a" * 100, "sub/extra.bin": b"b" * 23}
        assert copy.size_bytes == 123
        packed = await puller.stage(StorageRef(storage_uri=str(tree / "packed.tar")))
        assert files_under(packed.local_path) == {"m1/model.onnx": b"a" * 100, "m1/sub/extra.bin": b"b" * 23}
        assert puller.cache_usage().used_bytes == 246
        assert not (cache / "staging").exists() or list((cache / "staging").iterdir()) == []
    finally:
        await puller.close()


async def test_unusable_cache_dir_is_a_typed_error(tmp_path: Path) -> None:
    from puller import LocalDiskError

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    puller = Puller(settings(blocker / "cache"))
    try:
        with pytest.raises(LocalDiskError, match="not usable"):
            await puller.start()
    finally:
        await puller.close()
