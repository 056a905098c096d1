"""Safe unpacking: hostile archives are rejected and nothing lands outside the target."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Literal

import pytest

from puller import Puller, StorageRef, UnsafeArchive, unpack
from tests.puller.pullhelp import files_under, settings, visible

LIMITS = {"max_bytes": 1 << 20, "max_entries": 100}


def tar_bytes(entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]], mode: Literal["w", "w:gz"] = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for entry in entries:
            if isinstance(entry, tuple):
                info, data = entry
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(entry)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode
    return info


def zip_bytes(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def zip_symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """(dest, outside): dest is where we unpack; outside must stay empty whatever happens."""
    outside = tmp_path / "outside"
    dest = tmp_path / "box" / "dest"
    outside.mkdir()
    dest.mkdir(parents=True)
    return dest, outside


def run(data: bytes, name: str, dest: Path, **limits: int) -> int:
    archive = dest.parent / name
    archive.write_bytes(data)
    kind = "zip" if name.endswith(".zip") else "tar"
    return unpack(archive, dest, kind=kind, **{**LIMITS, **limits})  # type: ignore[arg-type]


def test_good_archives_unpack_with_internal_links(sandbox: tuple[Path, Path]) -> None:
    dest, _ = sandbox
    data = tar_bytes(
        [
            member("model/", tarfile.DIRTYPE, mode=0o755),
            (member("model/weights.bin", mode=0o4755), b"w" * 1000),
            (member("./model/config.json"), b"{}"),
            member("model/latest", tarfile.SYMTYPE, linkname="weights.bin"),
            member("model/copy.bin", tarfile.LNKTYPE, linkname="model/weights.bin"),
        ],
        mode="w:gz",
    )
    assert run(data, "m.tar.gz", dest) == 1000 + 2 + 1000  # weights + config + hard-link copy
    assert files_under(dest) == {"model/config.json": b"{}", "model/weights.bin": b"w" * 1000, "model/copy.bin": b"w" * 1000}
    assert os.readlink(dest / "model" / "latest") == "weights.bin"
    assert not (dest / "model" / "weights.bin").stat().st_mode & stat.S_ISUID  # setuid dropped

    zdest = dest.parent / "z"
    zdest.mkdir()
    run(zip_bytes([("a/b.txt", b"hello"), ("a\\c.txt", b"win")]), "m.zip", zdest)
    assert files_under(zdest) == {"a/b.txt": b"hello", "a/c.txt": b"win"}


HOSTILE_TARS = {
    "tar-slip ../": ([(member("../../outside/evil"), b"x")], r"'\.\.'"),
    "absolute path": ([(member("/tmp/evil-abs"), b"x")], "absolute"),
    "symlink out": ([member("link", tarfile.SYMTYPE, linkname="../../outside")], "points outside"),
    "absolute symlink": ([member("link", tarfile.SYMTYPE, linkname="/etc")], "absolute"),
    "write through symlink": (
        [member("d", tarfile.SYMTYPE, linkname="."), (member("d/x"), b"ok")],
        "non-directory",
    ),
    "through symlinked dir": (
        [member("sub", tarfile.DIRTYPE), member("sub/up", tarfile.SYMTYPE, linkname=".."), (member("sub/up/x"), b"x")],
        "non-directory",
    ),
    "hardlink out": ([member("h", tarfile.LNKTYPE, linkname="../../outside/x")], r"'\.\.'"),
    "hardlink to nothing": ([member("h", tarfile.LNKTYPE, linkname="etc/passwd")], "no earlier file"),
    "device": ([member("dev", tarfile.CHRTYPE)], "device"),
    "fifo": ([member("fifo", tarfile.FIFOTYPE)], "device"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_hostile_tar_is_rejected(sandbox: tuple[Path, Path], case: str) -> None:
    dest, outside = sandbox
    entries, fragment = HOSTILE_TARS[case]
    with pytest.raises(UnsafeArchive, match=fragment):
        run(tar_bytes(entries), "evil.tar", dest)  # type: ignore[arg-type]
    assert list(outside.iterdir()) == []
    assert not Path("/tmp/evil-abs").exists()
    for p in dest.rglob("*"):  # whatever was written before the bad entry stayed inside
        assert p.resolve().is_relative_to(dest.resolve()) or p.is_symlink()


HOSTILE_ZIPS = {
    "zip-slip": ([("../../outside/evil", b"x")], r"'\.\.'"),
    "zip-slip backslash": ([("..\\..\\outside\\evil", b"x")], r"'\.\.'"),
    "absolute": ([("/tmp/evil-abs-zip", b"x")], "absolute"),
    "drive letter": ([("C:/evil", b"x")], "absolute"),
    "symlink out": ([zip_symlink("link", "../../outside")], "points outside"),
    "symlink then write": ([zip_symlink("link", "/"), ("link/tmp/x", b"x")], "absolute"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ZIPS))
def test_hostile_zip_is_rejected(sandbox: tuple[Path, Path], case: str) -> None:
    dest, outside = sandbox
    entries, fragment = HOSTILE_ZIPS[case]
    with pytest.raises(UnsafeArchive, match=fragment):
        run(zip_bytes(entries), "evil.zip", dest)  # type: ignore[arg-type]
    assert list(outside.iterdir()) == []
    assert not Path("/tmp/evil-abs-zip").exists()


def test_decompression_bombs_and_entry_counts(sandbox: tuple[Path, Path]) -> None:
    dest, _ = sandbox
    zeros = b"\0" * (8 << 20)  # 8 MiB inflating from a few KiB, against a 1 MiB limit
    bomb_zip = zip_bytes([("a", zeros)])
    assert len(bomb_zip) < 64 << 10
    with pytest.raises(UnsafeArchive, match="decompression bomb"):
        run(bomb_zip, "bomb.zip", dest)
    bomb_tar = tar_bytes([(member("a"), zeros)], mode="w:gz")
    with pytest.raises(UnsafeArchive, match="decompression bomb"):
        run(bomb_tar, "bomb.tar.gz", dest)
    # many small entries whose sum passes the limit: counted on bytes actually written
    many = tar_bytes([(member(f"f{i}"), b"\1" * (200 << 10)) for i in range(8)])
    with pytest.raises(UnsafeArchive, match="max_unpacked_bytes"):
        run(many, "many.tar", dest)
    entries = zip_bytes([(f"e{i}", b"") for i in range(101)])
    with pytest.raises(UnsafeArchive, match="max_archive_entries"):
        run(entries, "entries.zip", dest)
    with pytest.raises(UnsafeArchive, match="max_archive_entries"):
        run(tar_bytes([(member(f"e{i}"), b"") for i in range(101)]), "entries.tar", dest)
    # a lying zip header: declared small, inflates big -> bytes counted as written
    with pytest.raises(UnsafeArchive, match="corrupt"):
        run(b"PK\x03\x04 definitely not a zip", "broken.zip", dest)


async def test_puller_rejects_hostile_archive_and_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / "evil.tar.gz").write_bytes(tar_bytes([(member("ok"), b"fine"), (member("../../../../escape"), b"x")], mode="w:gz"))
    (root / "good.zip").write_bytes(zip_bytes([("model/model.onnx", b"onnx")]))
    cache = tmp_path / "cache"
    puller = Puller(settings(cache, allowed_roots=[root]))
    try:
        with pytest.raises(UnsafeArchive, match=r"'\.\.'"):
            await puller.stage(StorageRef(storage_uri=str(root / "evil.tar.gz")))
        assert visible(cache) == []
        assert not (tmp_path / "escape").exists()
        staged = await puller.stage(StorageRef(storage_uri=str(root / "good.zip")))
        assert not staged.in_place and staged.local_path.is_relative_to(cache)
        assert files_under(staged.local_path) == {"model/model.onnx": b"onnx"}
        assert staged.size_bytes == 4
    finally:
        await puller.close()
