"""A process that writes registrations to a SqliteStore and prints each one once acknowledged.

``python -m tests.mesh.store.sqlite_writer DIR FIRST``: registration ``i`` (from FIRST on) is one
transaction of two keys (``reg/i`` and ``ref/i``, both created only if absent); after the
store acknowledged it, ``i`` is printed and flushed. A lease-bound key is written first and
``lease`` printed, so the parent can check it does not come back. The parent kills it with
SIGKILL at a random moment.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from mesh._store import Compare, Put, SqliteStore


def value(i: int) -> bytes:
    return (f"{i}:".encode() + bytes([i % 251]) * 3000) + b":end"


async def main(directory: Path, first: int) -> None:
    store = SqliteStore(directory)
    lease = await store.grant_lease(60)
    await store.put(f"live/{first}", b"alive", lease=lease)
    print("lease", flush=True)
    i = first
    while True:
        ok, _ = await store.txn(
            [Compare(f"reg/{i:08d}", 0)],
            [Put(f"reg/{i:08d}", value(i)), Put(f"ref/{i:08d}", str(i).encode())],
        )
        assert ok
        print(i, flush=True)
        i += 1


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
