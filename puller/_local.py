"""Local and PVC sources: walking a tree without leaving the allowed roots, and a provider that
copies local files into the cache (used when ``serve_local_in_place`` is off, or not at all
otherwise)."""

from __future__ import annotations

import asyncio
import os
import stat
from functools import partial
from pathlib import Path

from ._errors import ArtifactNotFound, InvalidStorageRef
from ._provider import Listing, ObjectSink, ProviderContext, RemoteObject
from ._resolve import Source, local_roots, within


def walk(root: Path, roots: list[Path], *, what: str) -> list[tuple[str, Path, int]]:
    """Every regular file under ``root`` as (relative path, real path, size) (blocking).

    Symlinks are followed only when they resolve under ``roots``: one that escapes raises
    ``InvalidStorageRef`` (the file is never read). Symlinked directories are not descended
    into (no cycles); their contents are not part of the artifact.
    """
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise ArtifactNotFound(f"{what}: no such file or directory") from None
    if stat.S_ISREG(st.st_mode):
        return [(root.name, root, st.st_size)]
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidStorageRef(f"{what}: not a regular file or directory")
    out: list[tuple[str, Path, int]] = []
    stack = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                rel = f"{prefix}{entry.name}"
                path = Path(entry.path)
                if entry.is_symlink():
                    real = Path(os.path.realpath(path))
                    if not within(real, roots):
                        raise InvalidStorageRef(f"{what}: symlink {rel!r} points outside the allowed roots")
                    if real.is_file():
                        out.append((rel, real, real.stat().st_size))
                elif entry.is_dir(follow_symlinks=False):
                    stack.append((path, f"{rel}/"))
                elif entry.is_file(follow_symlinks=False):
                    out.append((rel, path, entry.stat(follow_symlinks=False).st_size))
    return out


class LocalProvider:
    """Copies a checked local file or tree into the cache (the source is ``Source.local_path``,
    already resolved and checked by the puller)."""

    def __init__(self, ctx: ProviderContext) -> None:
        self._ctx = ctx

    async def list_objects(self, source: Source) -> Listing:
        assert source.local_path is not None
        root = source.local_path
        roots = local_roots(source, self._ctx.settings.allowed_roots)
        loop = asyncio.get_running_loop()
        files = await loop.run_in_executor(self._ctx.executor, partial(walk, root, roots, what=source.display))
        single = await loop.run_in_executor(self._ctx.executor, root.is_file)
        if not files:
            raise ArtifactNotFound(f"{source.display}: directory holds no files")
        objects = tuple(RemoteObject(rel_path=rel, name=str(real), size_bytes=size) for rel, real, size in files)
        return Listing(objects, single=single)

    def _copy(self, obj: RemoteObject, sink: ObjectSink) -> None:
        with open(obj.name, "rb") as src:
            while chunk := src.read(self._ctx.settings.chunk_bytes):
                sink.write(chunk)

    async def fetch(self, source: Source, obj: RemoteObject, sink: ObjectSink) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._ctx.executor, self._copy, obj, sink)

    async def aclose(self) -> None:
        return None
