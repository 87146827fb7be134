"""SQLite specifics of the registry: the file, its modes, locks, a full disk, kill -9."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest
from regtools import event, eventually, seqs, session

import hotsession.registry.sqlite as sqlite_module
from hotsession.errors import RegistryError
from hotsession.registry import EventRecord, ProcessRecord, SqliteRegistry, TurnRecord
from hotsession.registry.sqlite import BATCH_MAX, SCHEMA_VERSION


def stored_event_count(path: Path, sid: str | None = None) -> int:
    """Events committed to the file, seen by an independent connection."""
    conn = sqlite3.connect(path)
    try:
        if sid is None:
            (n,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
        else:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM events WHERE session_id = ?", (sid,)
            ).fetchone()
        return int(n)
    finally:
        conn.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "registry.db"


async def test_sqlite_data_survives_close_and_reopen(db_path: Path) -> None:
    reg = SqliteRegistry(db_path, flush_interval=10.0)  # only close() can write the events
    await reg.open()
    rec = session("s1", metadata={"k": "v"}, last_timing={"a": 1})
    turn = TurnRecord("s1", 1, "hello", status="done", timing={"ms": 3})
    proc = ProcessRecord(123, 4.5, "session", "s1", "cli-s1")
    await reg.put_session(rec)
    await reg.put_turn(turn)
    await reg.put_process(proc)
    reg.add_events([event("s1", n) for n in range(1, 101)])
    await reg.close()

    again = SqliteRegistry(db_path)
    await again.open()
    try:
        assert await again.get_session("s1") == rec
        assert await again.list_turns("s1") == [turn]
        assert await again.list_processes() == [proc]
        assert seqs(await again.events_after("s1", 0)) == list(range(1, 101))
        assert await again.last_seq("s1") == 100
    finally:
        await again.close()


async def test_sqlite_open_is_idempotent_and_records_schema_version(db_path: Path) -> None:
    reg = SqliteRegistry(db_path)
    await reg.open()
    await reg.open()  # a second open of the same instance is a no-op
    await reg.put_session(session("s1"))
    await reg.close()

    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"sessions", "turns", "events", "processes"} <= tables
        indexes = {
            r[0]
            for r in conn.execute(
                "SELECT sql FROM sqlite_master WHERE type='index' AND tbl_name='sessions'"
            )
            if r[0]
        }
        assert any("tenant" in sql for sql in indexes)
        assert any("updated_at" in sql for sql in indexes)
    finally:
        conn.close()

    # Migrating an up-to-date database again changes nothing and keeps the data.
    again = SqliteRegistry(db_path)
    await again.open()
    try:
        assert await again.get_session("s1") is not None
    finally:
        await again.close()


async def test_sqlite_refuses_a_newer_schema(db_path: Path) -> None:
    db_path.parent.mkdir()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()

    reg = SqliteRegistry(db_path)
    with pytest.raises(RegistryError, match="newer") as info:
        await reg.open()
    assert info.value.details["schema_version"] == SCHEMA_VERSION + 1
    with pytest.raises(RegistryError):  # not half-open
        await reg.get_session("s1")
    await reg.close()

    conn = sqlite3.connect(db_path)
    try:  # left untouched
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    finally:
        conn.close()


async def test_sqlite_file_and_directory_modes(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state" / "registry.db"
    reg = SqliteRegistry(path)
    await reg.open()
    try:
        reg.add_events([event("s1", 1)])
        await reg.flush()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        wal = path.with_name(path.name + "-wal")
        assert wal.exists()
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600
    finally:
        await reg.close()


async def test_sqlite_timer_commits_without_flush(db_path: Path) -> None:
    reg = SqliteRegistry(db_path, flush_interval=0.3)
    await reg.open()
    try:
        reg.add_events([event("s1", n) for n in range(1, 11)])
        assert stored_event_count(db_path) == 0  # batched, not written at once
        await eventually(lambda: stored_event_count(db_path) == 10, timeout=5.0)
    finally:
        await reg.close()


async def test_sqlite_full_batch_commits_before_the_timer(db_path: Path) -> None:
    reg = SqliteRegistry(db_path, flush_interval=60.0)
    await reg.open()
    try:
        reg.add_events([event("s1", n) for n in range(1, BATCH_MAX)])
        await asyncio.sleep(0.2)
        assert stored_event_count(db_path) == 0  # below the size trigger: waits for the timer
        reg.add_events([event("s1", BATCH_MAX)])
        await eventually(lambda: stored_event_count(db_path) == BATCH_MAX, timeout=5.0)
    finally:
        await reg.close()


async def test_sqlite_locked_database_fails_then_recovers_without_loss(db_path: Path) -> None:
    reg = SqliteRegistry(db_path, flush_interval=0.02, busy_timeout=0.1)
    await reg.open()
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        reg.add_events([event("s1", n) for n in range(1, 51)])
        await reg.flush()
        other.execute("BEGIN EXCLUSIVE")

        reg.add_events([event("s1", n) for n in range(51, 101)])
        with pytest.raises(RegistryError) as info:
            await reg.flush()
        assert "locked" in info.value.details["cause"]
        assert info.value.code == "registry_error"
        with pytest.raises(RegistryError):
            await reg.put_session(session("s1"))
        # The failed batch is kept, and replay still sees it.
        reg.add_events([event("s1", n) for n in range(101, 121)])
        assert seqs(await reg.events_after("s1", 40)) == list(range(41, 121))
        assert await reg.last_seq("s1") == 120
        with pytest.raises(RegistryError):
            await reg.flush()  # still broken

        other.execute("ROLLBACK")
        await reg.flush()
        assert stored_event_count(db_path) == 120
        await reg.put_session(session("s1"))
        assert await reg.get_session("s1") is not None
    finally:
        other.close()
        await reg.close()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


async def test_sqlite_timer_retries_after_lock_clears(db_path: Path) -> None:
    reg = SqliteRegistry(db_path, flush_interval=0.02, busy_timeout=0.05)
    await reg.open()
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        reg.add_events([event("s1", n) for n in range(1, 31)])
        await asyncio.sleep(0.3)  # several automatic attempts fail meanwhile
        other.execute("ROLLBACK")
        # Nobody calls flush: the thread's own retries write the kept batch.
        await eventually(lambda: stored_event_count(db_path) == 30, timeout=10.0)
    finally:
        other.close()
        await reg.close()


async def test_sqlite_full_disk_fails_then_recovers_without_loss(db_path: Path) -> None:
    reg = SqliteRegistry(db_path, flush_interval=60.0)
    await reg.open()

    async def on_thread(sql: str) -> Any:
        # Fault injection on the registry's own connection (a private hook, on purpose).
        return await reg._submit(lambda c: c.execute(sql).fetchone(), "test")

    try:
        reg.add_events([event("s1", 1)])
        await reg.flush()
        (pages,) = await on_thread("PRAGMA page_count")
        await on_thread(f"PRAGMA max_page_count = {pages}")  # "the disk" is now full

        blob = "x" * 2000
        reg.add_events([event("s1", n, blob=blob) for n in range(2, 202)])
        with pytest.raises(RegistryError, match="full") as info:
            await reg.flush()
        assert "full" in info.value.details["cause"]
        assert await reg.last_seq("s1") == 201

        await on_thread("PRAGMA max_page_count = 1073741823")  # space freed
        await reg.flush()
        assert stored_event_count(db_path) == 201
        assert seqs(await reg.events_after("s1", 0)) == list(range(1, 202))
        assert (await on_thread("PRAGMA integrity_check"))[0] == "ok"
    finally:
        await reg.close()


async def test_sqlite_end_turn_on_a_full_disk_writes_nothing_and_loses_nothing(
    db_path: Path,
) -> None:
    reg = SqliteRegistry(db_path, flush_interval=60.0)
    await reg.open()

    async def on_thread(sql: str) -> Any:
        return await reg._submit(lambda c: c.execute(sql).fetchone(), "test")

    try:
        await reg.put_turn(TurnRecord("s1", 1, "hi"))
        (pages,) = await on_thread("PRAGMA page_count")
        await on_thread(f"PRAGMA max_page_count = {pages}")  # "the disk" is now full
        reg.add_events([event("s1", n, blob="x" * 2000) for n in range(1, 101)])
        done = TurnRecord("s1", 1, "hi", status="done")
        with pytest.raises(RegistryError, match="full"):
            await reg.end_turn(done, session("s1", turns=1))
        # One transaction: neither record landed, and the events wait in memory, in order.
        assert [t.status for t in await reg.list_turns("s1")] == ["queued"]
        assert await reg.get_session("s1") is None
        assert stored_event_count(db_path) == 0
        assert seqs(await reg.events_after("s1", 0)) == list(range(1, 101))

        await on_thread("PRAGMA max_page_count = 1073741823")  # space freed
        await reg.end_turn(done, session("s1", turns=1))
        assert stored_event_count(db_path) == 100
        assert [t.status for t in await reg.list_turns("s1")] == ["done"]
    finally:
        await reg.close()


async def test_sqlite_close_reports_unwritten_events(db_path: Path) -> None:
    reg = SqliteRegistry(db_path, flush_interval=60.0, busy_timeout=0.05)
    await reg.open()
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        reg.add_events([event("s1", n) for n in range(1, 4)])
        with pytest.raises(RegistryError) as info:
            await reg.close()
        assert info.value.details["lost_events"] == 3
        await reg.close()  # already closed: no error
        with pytest.raises(RegistryError, match="closed"):
            await reg.get_session("s1")
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_sqlite_concurrent_sessions_and_events_hit_the_file(db_path: Path) -> None:
    reg = SqliteRegistry(db_path, flush_interval=0.01)
    await reg.open()
    try:

        async def worker(i: int) -> None:
            sid = f"s{i}"
            await reg.put_session(session(sid, created_at=float(i)))
            for s in range(1, 201):
                reg.add_events([event(sid, s)])
                if s % 50 == 0:
                    await reg.put_session(session(sid, created_at=float(i), turns=s))

        await asyncio.gather(*(worker(i) for i in range(25)))
        await reg.flush()
        assert stored_event_count(db_path) == 25 * 200
        assert all(s.turns == 200 for s in await reg.list_sessions())
    finally:
        await reg.close()


async def test_sqlite_malformed_event_does_not_poison_the_batch(db_path: Path) -> None:
    reg = SqliteRegistry(db_path, flush_interval=60.0)
    await reg.open()
    try:
        circular: dict[str, Any] = {}
        circular["self"] = circular
        bad_turn = EventRecord("s1", 2, cast(Any, None), "assistant", {}, 1.0)  # NOT NULL
        odd_data = EventRecord("s1", 3, 1, "assistant", circular, 1.0)  # not JSON
        reg.add_events([event("s1", 1), bad_turn, odd_data, event("s1", 4)])
        await reg.flush()
        got = await reg.events_after("s1", 0)
        # The bad row alone is dropped; the unserialisable one is kept (no hole in the replay).
        assert seqs(got) == [1, 3, 4]
        assert "unserialisable" in got[1].data
        reg.add_events([event("s1", 5)])
        await reg.flush()  # nothing left stuck
        assert stored_event_count(db_path) == 4
    finally:
        await reg.close()


_KILLED_CHILD = """
import asyncio, sys, time
from hotsession.registry import EventRecord, SqliteRegistry

def ev(seq):
    return EventRecord("s1", seq, 1, "assistant", {"n": seq}, 0.0)

async def main():
    reg = SqliteRegistry(sys.argv[1], flush_interval=0.05)
    await reg.open()
    reg.add_events([ev(n) for n in range(1, 101)])
    await reg.flush()                                   # durable: flushed
    reg.add_events([ev(n) for n in range(101, 201)])
    await asyncio.sleep(0.5)                            # durable: the timer wrote them
    print("ready", flush=True)
    while True:
        reg.add_events([ev(n) for n in range(201, 2_000)])  # in flight when killed
        await asyncio.sleep(0.001)

asyncio.run(main())
"""


async def test_sqlite_kill_9_keeps_flushed_events_and_a_sound_file(db_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _KILLED_CHILD,
        str(db_path),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert line.strip() == b"ready"
        await asyncio.sleep(0.1)
    finally:
        proc.kill()
        await proc.wait()

    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq LIMIT 200")]
        assert stored == list(range(1, 201))
    finally:
        conn.close()
    reg = SqliteRegistry(db_path)
    await reg.open()  # reopens (and recovers the WAL) without complaint
    try:
        assert (await reg.events_after("s1", 0, limit=200))[-1].seq == 200
    finally:
        await reg.close()


async def test_sqlite_writes_the_clis_line_as_the_events_json(db_path: Path) -> None:
    """The stored JSON of a CLI message's event is the CLI's line as it came (key order,
    spacing, escapes), not ``data`` encoded again; other events are encoded."""
    line = b'{"type":"assistant",  "z":1, "a":"caf\\u00e9"}'
    reg = SqliteRegistry(str(db_path))
    await reg.open()
    try:
        reg.add_events(
            [
                EventRecord(
                    "s1", 1, 1, "message", {"type": "assistant", "z": 1, "a": "café"}, 1.0, line
                ),
                EventRecord("s1", 2, 1, "result", {"turn": 1, "a": "café"}, 2.0),
            ]
        )
        await reg.flush()
    finally:
        await reg.close()
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute("SELECT data FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    assert rows == [(line.decode(),), ('{"turn":1,"a":"café"}',)]


# -- inline writes (the per-turn writes on the event loop, see the module docstring) ------------


def finished_at_once(coro: Any) -> bool:
    """True when the coroutine ends without ever waiting (no hand-off to another thread)."""
    try:
        coro.send(None)
    except StopIteration:
        return True
    coro.close()
    return False


async def test_sqlite_a_turns_writes_run_inline_when_the_thread_is_idle(db_path: Path) -> None:
    reg = SqliteRegistry(db_path, flush_interval=60.0)
    await reg.open()
    try:
        assert finished_at_once(reg.put_session(session("s1")))
        assert finished_at_once(reg.put_turn(TurnRecord("s1", 1, "hi", status="running")))
        reg.add_events([event("s1", n) for n in range(1, 6)])
        done = TurnRecord("s1", 1, "hi", status="done")
        assert finished_at_once(reg.end_turn(done, session("s1", turns=1)))
        # Committed, not merely queued: another connection sees every row.
        assert stored_event_count(db_path) == 5
        conn = sqlite3.connect(db_path)
        try:
            assert conn.execute("SELECT status FROM turns").fetchall() == [("done",)]
        finally:
            conn.close()
    finally:
        await reg.close()


def _record_event_writers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that commit event batches, in order."""
    writers: list[str] = []
    write_events = sqlite_module._write_events

    def recording(*args: Any, **kw: Any) -> Any:
        writers.append(threading.current_thread().name)
        return write_events(*args, **kw)

    monkeypatch.setattr(sqlite_module, "_write_events", recording)
    return writers


async def test_sqlite_thread_leaves_a_due_batch_to_the_loops_timer(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread going round its loop while events are pending (another job, a checkpoint)
    does not race the loop's timer for them: a loop late by a long callback still commits
    them itself. (The thread used to wait exactly ``flush_interval`` too and took the batch
    whenever the loop was late: CI at load 10 failed the test above that way.)"""
    writers = _record_event_writers(monkeypatch)
    reg = SqliteRegistry(db_path, flush_interval=0.05)
    await reg.open()
    try:
        reg.add_events([event("s1", n) for n in range(1, 4)])  # the loop's timer is armed
        reg._jobs.put(sqlite_module._WAKE)  # the thread goes round, the events pending
        time.sleep(0.12)  # the loop busy past flush_interval (a long callback)
        await eventually(lambda: stored_event_count(db_path) == 3, timeout=5.0)
        assert writers == [threading.current_thread().name]
    finally:
        await reg.close()


async def test_sqlite_timers_batch_is_committed_on_the_loop_when_the_thread_is_idle(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn that outlasts ``flush_interval`` (any turn of a real model) has its first events
    committed by the timer: on the loop, as the per-turn writes, not by waking the thread."""
    writers = _record_event_writers(monkeypatch)
    reg = SqliteRegistry(db_path, flush_interval=0.05)
    await reg.open()
    try:
        reg.add_events([event("s1", n) for n in range(1, 4)])
        await eventually(lambda: stored_event_count(db_path) == 3, timeout=5.0)
        assert writers == [threading.current_thread().name]
        # Behind a job on the thread's queue it is the thread's (the order of writes holds).
        reg.add_events([event("s1", 4)])
        blocked, release = threading.Event(), threading.Event()

        def slow(conn: sqlite3.Connection) -> None:
            blocked.set()
            release.wait(5)

        job = asyncio.ensure_future(reg._submit(slow, "wait"))
        await asyncio.to_thread(blocked.wait, 5)
        await asyncio.sleep(0.1)  # the timer fired meanwhile
        release.set()
        await job
        await eventually(lambda: stored_event_count(db_path) == 4, timeout=5.0)
        assert writers[1:] == ["hotsession-registry"]
    finally:
        await reg.close()


async def test_sqlite_inline_writes_keep_their_order_behind_queued_jobs(db_path: Path) -> None:
    """A write made while a job waits on the thread's queue is not run inline ahead of it,
    even while the connection is free (the thread is between two jobs)."""
    reg = SqliteRegistry(db_path, flush_interval=60.0)
    await reg.open()
    backlog = reg._backlog
    next_timeout = backlog.next_timeout
    between, release = threading.Event(), threading.Event()

    def held_between_jobs() -> float | None:
        # The thread asks this outside the connection's lock, before taking the next job.
        on_thread = threading.current_thread().name == "hotsession-registry"
        if on_thread and not between.is_set() and not reg._conn_lock.locked():
            between.set()
            release.wait(5)
        return next_timeout()

    def first_write(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO turns (session_id, turn, prompt, status, queued_at)"
            " VALUES ('s1', 1, 'hi', 'queued', 0)"
        )

    try:
        backlog.next_timeout = held_between_jobs  # type: ignore[method-assign]
        reg._jobs.put(sqlite_module._WAKE)
        await asyncio.to_thread(between.wait, 5)
        assert between.is_set() and not reg._conn_lock.locked()
        first = asyncio.ensure_future(reg._submit(first_write, "test"))
        await asyncio.sleep(0)  # queued, the thread does not take it yet
        second = asyncio.ensure_future(reg.put_turn(TurnRecord("s1", 1, "hi", status="done")))
        await asyncio.sleep(0.05)
        assert not second.done()  # behind the first, not inline
        release.set()
        await asyncio.gather(first, second)
        assert [t.status for t in await reg.list_turns("s1")] == ["done"]
    finally:
        release.set()
        backlog.next_timeout = next_timeout  # type: ignore[method-assign]
        await reg.close()


async def test_sqlite_inline_write_on_a_locked_database_waits_on_the_thread(
    db_path: Path,
) -> None:
    """The inline attempt never waits for a lock (busy timeout 0): it gives way to the thread,
    which waits the registry's busy timeout as before, and the write lands once the lock goes."""
    reg = SqliteRegistry(db_path, flush_interval=60.0, busy_timeout=5.0)
    await reg.open()
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        reg.add_events([event("s1", n) for n in range(1, 4)])
        write = asyncio.ensure_future(
            reg.end_turn(TurnRecord("s1", 1, "hi", status="done"), session("s1", turns=1))
        )
        await asyncio.sleep(0.2)
        assert not write.done()  # waiting for the lock on the thread, not failed at once
        other.execute("ROLLBACK")
        await write
        assert stored_event_count(db_path) == 3
        assert [t.status for t in await reg.list_turns("s1")] == ["done"]
        # The thread is idle again: the next write runs inline.
        assert finished_at_once(reg.put_session(session("s1", turns=2)))
    finally:
        other.close()
        await reg.close()


async def test_sqlite_checkpoints_the_wal_on_its_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's auto-checkpoint is off (it would run inside an inline COMMIT, on the loop); the
    registry's thread checkpoints instead, so the WAL is reused rather than growing."""

    async def wal_after_turns(path: Path) -> int:
        reg = SqliteRegistry(path, flush_interval=60.0)
        await reg.open()
        try:
            pragma = await reg._submit(
                lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone(), "test"
            )
            assert pragma[0] == 0
            for n in range(1, 301):
                await reg.put_turn(TurnRecord("s1", n, "hi", status="running"))
                reg.add_events([event("s1", n, turn=n, blob="x" * 3000)])
                done = TurnRecord("s1", n, "hi", status="done")
                await reg.end_turn(done, session("s1", turns=n))
                # The thread's turn, for sure: it checkpoints after each queue item, so once a
                # second job after this turn's writes is done, any checkpoint they asked for
                # ran (a bare ``sleep(0)`` left it to the scheduler: the test failed once under
                # load, the thread starved while the WAL grew).
                for _ in range(2):
                    await reg._submit(lambda c: None, "test: the thread's turn")
            return Path(f"{path}-wal").stat().st_size
        finally:
            await reg.close()

    monkeypatch.setattr(sqlite_module, "CHECKPOINT_CHANGES", 1_000_000)
    unchecked = await wal_after_turns(tmp_path / "a" / "registry.db")
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_CHANGES", 50)
    checked = await wal_after_turns(tmp_path / "b" / "registry.db")
    assert unchecked > 300 * 4096  # every turn's pages, never reused
    assert checked < unchecked / 3
