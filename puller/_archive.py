"""Safe unpacking of ``.tar`` (plain, gz, bz2, xz) and ``.zip`` archives.

Blocking; the puller runs it in a worker thread. Guarantees, whatever the archive holds:

* every entry lands under ``dest``: absolute names, drive letters, ``..`` components and NUL
  bytes are rejected (``UnsafeArchive``) — backslashes count as separators;
* nothing is written through a symlink: each parent directory is created component by
  component and must be a real directory, files are opened ``O_NOFOLLOW | O_EXCL``;
* symlinks are kept only when relative and pointing inside ``dest`` (judged lexically from
  the link's own directory); hard links must name an earlier regular file of the archive and
  are materialised as copies; devices and FIFOs are rejected;
* at most ``max_entries`` entries and ``max_bytes`` unpacked bytes, counted on the bytes
  actually written (declared sizes are checked first so a bomb fails before it is inflated);
* modes are normalised (0644 / 0755, no setuid);
* after unpacking, every symlink's real path (the whole chain resolved, as the kernel would)
  must lie inside ``dest`` — the lexical check above cannot see chains such as
  ``a -> .`` plus ``b -> a/..`` — else the archive is refused (``check_links``).

On any error the partially unpacked ``dest`` is left for the caller (a staging directory) to
remove.
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from ._errors import UnsafeArchive

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_DRIVE = re.compile(r"^[A-Za-z]:")
_MAX_LINK_BYTES = 4096


def archive_kind(name: str) -> str | None:
    """``"tar"``, ``"zip"`` or None, from an object's name."""
    lower = name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith(_TAR_SUFFIXES):
        return "tar"
    return None


def safe_relpath(name: str, *, what: str) -> PurePosixPath | None:
    """The entry name as a relative path with no escaping component; None for the root itself."""
    normalized = name.replace("\\", "/")
    if "\x00" in normalized:
        raise UnsafeArchive(f"{what}: entry name {name!r} contains a NUL byte")
    if normalized.startswith("/") or _DRIVE.match(normalized):
        raise UnsafeArchive(f"{what}: entry {name!r} has an absolute path")
    parts = [p for p in normalized.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{what}: entry {name!r} contains '..' (path traversal)")
    if not parts:
        return None
    return PurePosixPath(*parts)


class _Unpacker:
    def __init__(self, dest: Path, what: str, max_bytes: int, max_entries: int, chunk_bytes: int) -> None:
        self.dest = dest
        self.what = what
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.chunk_bytes = chunk_bytes
        self.bytes = 0
        self.entries = 0

    # -- limits ----------------------------------------------------------------

    def count_entry(self) -> None:
        self.entries += 1
        if self.entries > self.max_entries:
            raise UnsafeArchive(f"{self.what}: more than {self.max_entries} entries (limit max_archive_entries)")

    def _bomb(self) -> UnsafeArchive:
        return UnsafeArchive(
            f"{self.what}: unpacks to more than {self.max_bytes} bytes "
            "(limit max_unpacked_bytes; decompression bomb?)"
        )

    def expect(self, size: int) -> None:
        if self.bytes + max(size, 0) > self.max_bytes:
            raise self._bomb()

    # -- file system -----------------------------------------------------------

    def _parent(self, rel: PurePosixPath) -> Path:
        """Create ``rel``'s parent directories, refusing to pass through anything but real dirs."""
        cur = self.dest
        for part in rel.parts[:-1]:
            cur = cur / part
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                os.mkdir(cur, 0o755)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafeArchive(f"{self.what}: entry {str(rel)!r} goes through a non-directory ({part!r})")
        return cur

    def _clear(self, path: Path, rel: PurePosixPath) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise UnsafeArchive(f"{self.what}: entry {str(rel)!r} replaces a directory")
        os.unlink(path)  # a duplicate entry (or a symlink): replace it, never follow it

    def mkdir(self, rel: PurePosixPath) -> None:
        path = self._parent(rel) / rel.name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            os.mkdir(path, 0o755)
            return
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeArchive(f"{self.what}: directory entry {str(rel)!r} collides with a file or link")

    def write(self, rel: PurePosixPath, stream: IO[bytes], executable: bool) -> None:
        path = self._parent(rel) / rel.name
        self._clear(path, rel)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, 0o755 if executable else 0o644)
        with os.fdopen(fd, "wb") as out:
            while True:
                chunk = stream.read(self.chunk_bytes)
                if not chunk:
                    break
                self.bytes += len(chunk)
                if self.bytes > self.max_bytes:
                    raise self._bomb()
                out.write(chunk)

    def symlink(self, rel: PurePosixPath, target: str) -> None:
        if not target or target.startswith("/") or _DRIVE.match(target) or "\x00" in target:
            raise UnsafeArchive(f"{self.what}: symlink {str(rel)!r} -> {target!r} is absolute or empty")
        depth = len(rel.parts) - 1
        for part in target.replace("\\", "/").split("/"):
            if part == "..":
                depth -= 1
            elif part not in ("", "."):
                depth += 1
            if depth < 0:
                raise UnsafeArchive(f"{self.what}: symlink {str(rel)!r} -> {target!r} points outside the archive")
        path = self._parent(rel) / rel.name
        self._clear(path, rel)
        os.symlink(target, path)

    def hardlink(self, rel: PurePosixPath, target_name: str) -> None:
        target = safe_relpath(target_name, what=self.what)
        if target is None:
            raise UnsafeArchive(f"{self.what}: hard link {str(rel)!r} has an empty target")
        source = self.dest / target
        try:
            st = os.lstat(source)
        except FileNotFoundError:
            raise UnsafeArchive(
                f"{self.what}: hard link {str(rel)!r} -> {target_name!r} names no earlier file of the archive"
            ) from None
        if not stat.S_ISREG(st.st_mode) or Path(os.path.realpath(source)) != Path(
            os.path.realpath(self.dest)
        ) / target:
            raise UnsafeArchive(f"{self.what}: hard link {str(rel)!r} -> {target_name!r} is not a plain file")
        self.expect(st.st_size)
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as src:
            self.write(rel, src, executable=bool(st.st_mode & 0o100))


def _unpack_tar(u: _Unpacker, archive: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members: list[tarfile.TarInfo] = tf.members  # type: ignore[attr-defined]
        while (member := tf.next()) is not None:
            u.count_entry()
            rel = safe_relpath(member.name, what=u.what)
            if rel is None:
                continue
            if member.isdir():
                u.mkdir(rel)
            elif member.isreg():
                u.expect(member.size)
                stream = tf.extractfile(member)
                if stream is None:
                    raise UnsafeArchive(f"{u.what}: cannot read entry {member.name!r}")
                with stream:
                    u.write(rel, stream, executable=bool(member.mode & 0o100))
            elif member.issym():
                u.symlink(rel, member.linkname)
            elif member.islnk():
                u.hardlink(rel, member.linkname)
            else:
                raise UnsafeArchive(f"{u.what}: entry {member.name!r} is a device, FIFO or other special file")
            members.clear()  # tarfile remembers every member: keep memory flat


def _unpack_zip(u: _Unpacker, archive: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > u.max_entries:
            raise UnsafeArchive(f"{u.what}: {len(infos)} entries, more than {u.max_entries} (limit max_archive_entries)")
        u.expect(sum(i.file_size for i in infos))
        for info in infos:
            u.count_entry()
            rel = safe_relpath(info.filename, what=u.what)
            if rel is None:
                continue
            mode = info.external_attr >> 16
            if info.is_dir():
                u.mkdir(rel)
            elif stat.S_ISLNK(mode):
                if info.file_size > _MAX_LINK_BYTES:
                    raise UnsafeArchive(f"{u.what}: symlink entry {info.filename!r} is too long")
                target = zf.read(info).decode("utf-8", "strict")
                u.symlink(rel, target)
            elif stat.S_IFMT(mode) == 0 or stat.S_ISREG(mode):  # no type bits: a plain file
                with zf.open(info) as stream:
                    u.write(rel, stream, executable=bool(mode & 0o100))
            else:
                raise UnsafeArchive(f"{u.what}: entry {info.filename!r} is a device, FIFO or other special file")


def check_links(root: Path, *, what: str) -> None:
    """Refuse (``UnsafeArchive``) a tree holding a symlink whose resolved real path, chains
    included, lies outside ``root`` (blocking). Messages name the link by its path inside."""
    real_root = Path(os.path.realpath(root))
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    real = Path(os.path.realpath(entry.path))
                    if real != real_root and not real.is_relative_to(real_root):
                        rel = Path(entry.path).relative_to(root)
                        raise UnsafeArchive(f"{what}: symlink {str(rel)!r} resolves outside the artifact")
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))


def unpack(
    archive: Path,
    dest: Path,
    *,
    kind: str,
    max_bytes: int,
    max_entries: int,
    chunk_bytes: int = 1 << 20,
    what: str | None = None,
) -> int:
    """Unpack ``archive`` into the existing empty directory ``dest``; returns the bytes written."""
    u = _Unpacker(dest, what or f"archive {archive.name!r}", max_bytes, max_entries, chunk_bytes)
    try:
        if kind == "zip":
            _unpack_zip(u, archive)
        else:
            _unpack_tar(u, archive)
    except UnsafeArchive:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError) as exc:
        raise UnsafeArchive(f"{u.what}: corrupt or unreadable archive ({exc})") from exc
    except (NotImplementedError, RuntimeError) as exc:  # zip: unsupported compression / encryption
        raise UnsafeArchive(f"{u.what}: unsupported archive feature ({exc})") from exc
    check_links(dest, what=u.what)
    return u.bytes
