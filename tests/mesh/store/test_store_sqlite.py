"""What only the durable store promises: it keeps what it acknowledged across restarts and
kill -9, never writes lease-bound keys (they die with the process), owns its directory alone and never does I/O on the loop."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mesh._store import (
    Compacted,
    Compare,
    Delete,
    Put,
    SqliteStore,
    StoreLocked,
    StoreResourceExhausted,
    StoreUnavailable,
)
from mesh._store._sqlite import _Db
from tests.mesh.store.sqlite_writer import value

ROOT = Path(__file__).resolve().parents[3]


async def test_reopen_keeps_keys_revisions_and_versions(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path)
    await s.put("a", b"1")
    r2 = await s.put("a", b"2")
    ok, _ = await s.txn([Compare("b", 0)], [Put("b", b"x"), Put("c", b"y")])
    assert ok
    await s.delete("c")
    before, rev = await s.get_prefix("")
    await s.close()

    s2 = SqliteStore(tmp_path)
    try:
        after, rev2 = await s2.get_prefix("")
        assert after == before and rev2 == rev
        a = await s2.get("a")
        assert a is not None and (a.value, a.mod_revision, a.version) == (b"2", r2, 2)
        assert await s2.put("d", b"z") == rev + 1  # the counter continues
        assert await s2.cas("a", b"3", r2) == rev + 2  # CAS against a revision from before
    finally:
        await s2.close()


def _rows_on_disk(directory: Path) -> dict[str, int]:
    """key -> lease of every row in the store's SQLite file (read by a second connection)."""
    conn = sqlite3.connect(directory / "store.sqlite")
    try:
        return dict(conn.execute("SELECT key, lease FROM kv"))
    finally:
        conn.close()


async def test_lease_keys_do_not_come_back_and_old_revisions_are_compacted(
    tmp_path: Path,
) -> None:
    s = SqliteStore(tmp_path)
    await s.put("model/m", b"kept")
    lease = await s.grant_lease(30)
    rev = await s.put("inst/1", b"alive", lease=lease)  # the last write is lease-bound
    await s.close()

    s2 = SqliteStore(tmp_path)
    try:
        kvs, rev2 = await s2.get_prefix("")
        assert [kv.key for kv in kvs] == ["model/m"]
        assert rev2 == rev  # closing recorded the counter past the lease-only write
        assert await s2.put("model/n", b"x") == rev + 1  # and it continues from there
        assert await s2.get("inst/1") is None
        watch = s2.watch_prefix("", rev)
        assert await anext(watch) == []
        with pytest.raises(Compacted):
            await anext(watch)
        await watch.aclose()
    finally:
        await s2.close()


async def test_lease_bound_keys_stay_in_memory_and_cost_no_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits: list[tuple[list[str], list[str]]] = []
    real_commit = _Db.commit

    def commit(self: _Db, revision: int, puts: list, deletes: list) -> None:  # type: ignore[type-arg]
        commits.append(([p[0] for p in puts], list(deletes)))
        real_commit(self, revision, puts, deletes)

    monkeypatch.setattr(_Db, "commit", commit)
    s = SqliteStore(tmp_path)
    try:
        r0 = await s.put("reg/a", b"1")
        lease = await s.grant_lease(30)
        commits.clear()
        revs = [await s.put(f"live/{i % 3}", str(i).encode(), lease=lease) for i in range(30)]
        ok, r_txn = await s.txn([Compare("reg/a", r0)], [Put("live/x", b"y", lease)])
        assert ok
        await s.keepalive(lease)
        assert commits == []  # lease-bound writes: no SQLite transaction at all
        assert [*revs, r_txn] == list(range(r0 + 1, r0 + 32))  # one shared counter
        assert set(_rows_on_disk(tmp_path)) == {"reg/a"}
        kvs, _ = await s.get_prefix("")  # one key space: reads merge both kinds
        assert [kv.key for kv in kvs] == ["live/0", "live/1", "live/2", "live/x", "reg/a"]
        # a compare on a lease-bound key guards a durable write, and the other way round
        live0 = await s.get("live/0")
        assert live0 is not None
        ok, r_mixed = await s.txn(
            [Compare("live/0", live0.mod_revision)],
            [Put("reg/b", b"2"), Put("live/0", b"z", lease), Put("reg/a", b"attached", lease)],
        )
        assert ok and commits == [(["reg/b"], ["reg/a"])]  # the durable part only
        ok, _ = await s.txn([Compare("live/0", live0.mod_revision)], [Put("reg/c", b"no")])
        assert not ok  # live/0 moved on
        # detaching a lease-bound key makes it durable
        commits.clear()
        r_detach = await s.put("live/1", b"kept")
        assert commits == [(["live/1"], [])] and r_detach == r_mixed + 1
        assert _rows_on_disk(tmp_path) == {"reg/b": 0, "live/1": 0}
        watch = s.watch_prefix("", r_detach + 1)
        assert await anext(watch) == []
        commits.clear()
        await s.revoke_lease(lease)  # deletes every lease-bound key, with events, no commit
        events = await anext(watch)
        assert sorted(e.key for e in events) == ["live/0", "live/2", "live/x", "reg/a"]
        assert {e.kind for e in events} == {"delete"} and {e.mod_revision for e in events} == {
            r_detach + 1
        }
        assert commits == []
        await watch.aclose()
        kvs, rev = await s.get_prefix("")
        assert [kv.key for kv in kvs] == ["live/1", "reg/b"] and rev == r_detach + 1
    finally:
        await s.close()
    s2 = SqliteStore(tmp_path)
    try:
        kvs2, rev2 = await s2.get_prefix("")
        assert [(kv.key, kv.value) for kv in kvs2] == [("live/1", b"kept"), ("reg/b", b"2")]
        assert rev2 == rev
    finally:
        await s2.close()


async def test_lease_bound_rows_an_older_version_wrote_are_dropped_on_open(
    tmp_path: Path,
) -> None:
    s = SqliteStore(tmp_path)
    rev = await s.put("model/m", b"kept")
    await s.close()
    conn = sqlite3.connect(tmp_path / "store.sqlite")  # as the first release wrote them
    conn.execute("INSERT INTO kv VALUES ('inst/1', x'00', 2, 2, 1, 4096)")
    conn.commit()
    conn.close()
    s2 = SqliteStore(tmp_path)
    try:
        kvs, rev2 = await s2.get_prefix("")
        assert [kv.key for kv in kvs] == ["model/m"] and rev2 == rev
        assert s2.dropped_lease_keys == 1 and _rows_on_disk(tmp_path) == {"model/m": 0}
    finally:
        await s2.close()


async def test_second_owner_is_refused_in_process_and_by_another_process(
    tmp_path: Path,
) -> None:
    s = SqliteStore(tmp_path)
    await s.put("k", b"v")
    with pytest.raises(
        StoreLocked, match=rf"in use by another modelmux process \(pid {os.getpid()}\)"
    ):
        SqliteStore(tmp_path)
    code = (
        "import sys\nfrom pathlib import Path\nfrom mesh._store import SqliteStore, StoreLocked\n"
        "try:\n    SqliteStore(Path(sys.argv[1]))\nexcept StoreLocked as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", code, str(tmp_path)], env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "in use by another modelmux process" in proc.stdout
    assert (await s.get("k")) is not None  # the owner is untouched
    await s.close()
    s2 = SqliteStore(tmp_path)  # closing released the lock
    try:
        kv = await s2.get("k")
        assert kv is not None and kv.value == b"v"
    finally:
        await s2.close()


async def test_sqlite_runs_on_its_own_thread_not_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real_commit = _Db.commit

    def commit(self: _Db, *args: object) -> None:
        threads.append(threading.current_thread().name)
        real_commit(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(_Db, "commit", commit)
    s = SqliteStore(tmp_path)
    try:
        await s.put("a", b"1")
        await s.txn([], [Put("b", b"2"), Delete("a")])
        assert len(threads) == 2
        assert all(t.startswith("modelmux-store") for t in threads)
        assert threading.current_thread().name not in threads
    finally:
        await s.close()


async def test_a_cancelled_writer_still_completes_its_write(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path)
    try:
        await s.put("warm", b"0")
        task = asyncio.create_task(s.put("k", b"v"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the write went on: it is applied once, on disk and in memory, and the store works
        rev = await s.put("after", b"x")
        kv = await s.get("k")
        assert kv is not None and kv.mod_revision == rev - 1
    finally:
        await s.close()
    s2 = SqliteStore(tmp_path)
    try:
        assert [kv.key for kv in (await s2.get_prefix(""))[0]] == ["after", "k", "warm"]
    finally:
        await s2.close()


async def test_failed_commit_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = SqliteStore(tmp_path)
    try:
        r = await s.put("a", b"1")

        def full(self: _Db, *args: object) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(_Db, "commit", full)
        with pytest.raises(StoreResourceExhausted):
            await s.put("a", b"2")
        kv = await s.get("a")
        assert kv is not None and (kv.value, kv.mod_revision) == (b"1", r)

        def io_error(self: _Db, *args: object) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(_Db, "commit", io_error)
        with pytest.raises(StoreUnavailable):
            await s.put("b", b"1")
        monkeypatch.undo()
        # whether that write reached the disk is unknown: the store refuses until restarted
        with pytest.raises(StoreUnavailable, match="restart"):
            await s.get("a")
    finally:
        await s.close()
    s2 = SqliteStore(tmp_path)
    try:
        kvs, rev = await s2.get_prefix("")
        assert [(kv.key, kv.value) for kv in kvs] == [("a", b"1")] and rev == r
    finally:
        await s2.close()


def _read_acks(proc: subprocess.Popen[bytes], stop_after_s: float) -> tuple[list[int], bool]:
    """Read acknowledgements until ``stop_after_s`` after the first one, then SIGKILL; also
    the ones printed before the process died."""
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    buf = b""
    deadline: float | None = None
    hard = time.monotonic() + 60
    killed = False
    while True:
        chunk = proc.stdout.read()
        if chunk:
            buf += chunk
        if deadline is None and b"lease\n" in buf and buf.count(b"\n") >= 2:
            deadline = time.monotonic() + stop_after_s
        if not killed and (
            (deadline is not None and time.monotonic() >= deadline) or time.monotonic() > hard
        ):
            proc.send_signal(signal.SIGKILL)
            killed = True
        if killed and proc.poll() is not None:
            rest = proc.stdout.read()
            if rest:
                buf += rest
            proc.stdout.close()
            break
        if proc.poll() is not None and not killed:
            raise AssertionError(f"writer died by itself: {proc.returncode}")
        time.sleep(0.002)  # polling a pipe in a worker thread, not synchronising the test
    lines = buf.decode().split("\n")
    complete = lines[:-1]  # a line cut by the kill is not an acknowledgement
    return [int(x) for x in complete if x.isdigit()], "lease" in complete


@pytest.mark.slow  # 20 writer processes
async def test_kill_9_during_registrations_keeps_every_acknowledged_one(tmp_path: Path) -> None:
    rng = random.Random(17)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    acked: set[int] = set()
    first = 0
    for _round in range(20):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.mesh.store.sqlite_writer", str(tmp_path), str(first)],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        got, leased = await asyncio.to_thread(_read_acks, proc, rng.uniform(0.0, 0.4))
        assert leased and got, "the writer acknowledged nothing before the kill"
        acked.update(got)

        store = SqliteStore(tmp_path)  # opens cleanly (the lock died with the process)
        try:
            regs, _ = await store.get_prefix("reg/")
            refs, _ = await store.get_prefix("ref/")
            live, _ = await store.get_prefix("live/")
        finally:
            await store.close()
        present = {int(kv.key[4:]) for kv in regs}
        assert acked <= present, f"lost acknowledged registrations {sorted(acked - present)[:5]}"
        assert present == {int(kv.key[4:]) for kv in refs}  # no transaction half-applied
        for kv in regs:  # no torn value
            i = int(kv.key[4:])
            assert kv.value == value(i)
        assert live == []  # the lease-bound key did not come back
        first = max(present) + 1
    assert len(acked) >= 20


async def test_group_commit_keeps_each_write_its_own_revision_and_cas_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits: list[int] = []
    real_commit = _Db.commit

    def commit(self: _Db, revision: int, puts: list, deletes: list) -> None:  # type: ignore[type-arg]
        commits.append(len(puts) + len(deletes))
        real_commit(self, revision, puts, deletes)

    monkeypatch.setattr(_Db, "commit", commit)
    s = SqliteStore(tmp_path)
    try:
        r0 = await s.put("warm", b"0")
        n = 64
        # 64 concurrent writes: creates that race on 8 keys (one winner each), and puts
        results = await asyncio.gather(
            *(
                s.txn([Compare(f"race/{i % 8}", 0)], [Put(f"race/{i % 8}", str(i).encode())])
                for i in range(n)
            ),
            *(s.put(f"p/{i}", b"x") for i in range(n)),
        )
        txn_results, put_revs = results[:n], results[n:]
        winners = [i for i, (ok, _) in enumerate(txn_results) if ok]  # type: ignore[misc]
        assert len(winners) == 8 and sorted(i % 8 for i in winners) == list(range(8))
        revs = sorted([r for ok, r in txn_results if ok] + list(put_revs))  # type: ignore[misc]
        assert revs == list(range(r0 + 1, r0 + 1 + 8 + n))  # one revision per change, no gaps
        assert len(commits) < 1 + 8 + n  # and fewer fsyncs than writes
        for i in winners:
            kv = await s.get(f"race/{i % 8}")
            assert kv is not None and kv.value == str(i).encode()
        before = await s.get_prefix("")
    finally:
        await s.close()
    s2 = SqliteStore(tmp_path)
    try:
        assert await s2.get_prefix("") == before  # on disk exactly as acknowledged
    finally:
        await s2.close()
