"""Read-only copies of staged artifacts for worker processes that run as another user.

When the instance runs as root its workers run as an unprivileged user, which cannot read the
instance's own folders (the data directory, the puller's cache, a 0700 temporary folder): and
those folders must stay closed, since they sit beside the storage configuration and the store.
So each load gets its own copy in a share folder this module owns:

- the share root is created by the supervisor, owned by the instance's user, mode 0711: the
  worker user may pass through it but not list it, so it cannot find other loads' folders;
- each load gets a folder with an unguessable name (128 random bits), its files mode 0444 and
  its folders 0555, owned by the instance's user: the worker reads, never writes or renames;
- only regular files are copied (opened without following a symlink, checked with ``fstat``
  after opening: a FIFO or device is skipped, never read); symlinks are re-created as they are
  (the worker follows them with its own, unprivileged, rights; a link out of the artifact is
  still refused by the adapter's own checks), so root never reads through a link for it;
- a load's folder is removed when the copy is unloaded or lost, or its load fails; the root
  when the supervisor closes.

What it does not do: every worker runs as the same user, so model code in one worker could read
another load's copy if it learned the folder's name (e.g. from another worker's
``/proc/<pid>/maps`` or open files). See docs/security.md.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path, PurePosixPath

from runtime_adapters import ModelSpec

SCHEMA_FILE = "schema.json"
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class ShareDir:
    """A share root and the per-load copies under it. Blocking: call off the event loop."""

    def __init__(self, base: str = "") -> None:
        self._base = base
        self.root: Path | None = None

    def _ensure_root(self) -> Path:
        if self.root is None:
            root = Path(tempfile.mkdtemp(prefix="mm-share-", dir=self._base or None))
            os.chmod(root, 0o711)
            self.root = root
        return self.root

    def add(self, spec: ModelSpec, local_path: Path) -> Path:
        """A read-only copy of ``local_path`` (a model file or folder); returns the path to load."""
        src = Path(os.path.realpath(local_path))  # the path the registration named (checked by the puller)
        folder = self._ensure_root() / secrets.token_hex(16)
        os.mkdir(folder, 0o700)
        try:
            if stat.S_ISDIR(os.lstat(src).st_mode):
                _copy_tree(src, folder)
                target = folder
            else:
                # a model file: it, and the schema the adapter would look for beside it
                _copy_entry(src, folder / src.name)
                for name in {SCHEMA_FILE, *_schema_name(spec)} - {src.name}:
                    _copy_entry(src.parent / name, folder / name, missing_ok=True)
                target = folder / src.name
            _seal(folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return target

    def remove(self, shared: Path) -> None:
        """Remove the folder of one load (given the path :meth:`add` returned)."""
        if self.root is None:
            return
        rel = Path(shared).relative_to(self.root)
        shutil.rmtree(self.root / rel.parts[0], ignore_errors=True)

    def close(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


def _schema_name(spec: ModelSpec) -> set[str]:
    """``schema_path`` when it names a file inside the model's folder (the adapter judges it again)."""
    given = spec.schema_path or ""
    rel = PurePosixPath(given.replace("\\", "/"))
    if not given or "\x00" in given or rel.is_absolute() or ".." in rel.parts or given[1:2] == ":":
        return set()
    return {str(rel)}


def _copy_tree(src: Path, dst: Path) -> None:
    with os.scandir(src) as entries:
        for entry in entries:
            _copy_entry(Path(entry.path), dst / entry.name)


def _copy_entry(src: Path, dst: Path, *, missing_ok: bool = False) -> None:
    try:
        mode = os.lstat(src).st_mode
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISDIR(mode):
        os.mkdir(dst, 0o700)
        _copy_tree(src, dst)
    elif stat.S_ISREG(mode):
        _copy_file(src, dst)
    # sockets, FIFOs, devices: not part of a model


def _copy_file(src: Path, dst: Path) -> None:
    fd = os.open(src, _READ_FLAGS)  # a link swapped in after the lstat fails here (ELOOP)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        os.set_blocking(fd, True)
        with open(dst, "xb") as out:
            shutil.copyfileobj(f, out, 1 << 20)


def _seal(folder: Path) -> None:
    """Files 0444, folders 0555 (bottom up), the worker user reads but cannot change anything."""
    for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o444)
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o555)
    os.chmod(folder, 0o555)
