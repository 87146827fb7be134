"""The registry: behaviour shared by SqliteRegistry and MemoryRegistry, then SQLite specifics."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from hotsession.errors import RegistryError
from hotsession.registry import (
    EventRecord,
    MemoryRegistry,
    ProcessRecord,
    Registry,
    SessionRecord,
    SqliteRegistry,
    TurnRecord,
)
from hotsession.registry.sqlite import BATCH_MAX, SCHEMA_VERSION

# ---------------------------------------------------------------------------- helpers


def session(
    sid: str, *, tenant: str = "acme", created_at: float = 1000.0, **kw: Any
) -> SessionRecord:
    base: dict[str, Any] = {
        "cli_session_id": f"cli-{sid}",
        "cwd": "/srv/work",
        "options": {"model": "sonnet", "allowed_tools": ["Read", "Bash"]},
        "profile_key": "p1",
        "state": "idle",
        "updated_at": created_at,
        "last_active_at": created_at,
    }
    base.update(kw)
    return SessionRecord(id=sid, tenant=tenant, created_at=created_at, **base)


def event(sid: str, seq: int, *, turn: int = 1, **data: Any) -> EventRecord:
    return EventRecord(
        session_id=sid,
        seq=seq,
        turn=turn,
        type="assistant",
        data={"n": seq, **data},
        t=1000.0 + seq,
    )


def seqs(events: list[EventRecord]) -> list[int]:
    return [e.seq for e in events]


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


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


@pytest.fixture(params=["sqlite", "memory"])
async def registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Registry]:
    reg: Registry
    if request.param == "sqlite":
        reg = SqliteRegistry(tmp_path / "state" / "registry.db", flush_interval=0.02)
    else:
        reg = MemoryRegistry()
    await reg.open()
    yield reg
    await reg.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "registry.db"


# ---------------------------------------------------------------------------- sessions


async def test_get_unknown_session_is_none(registry: Registry) -> None:
    assert await registry.get_session("nope") is None


async def test_session_round_trip_keeps_every_field(registry: Registry) -> None:
    rec = session(
        "s1",
        state="running",
        turns=3,
        metadata={"title": "fix the bug", "tags": ["a", "b"], "nested": {"x": 1.5}},
        pid=4242,
        last_timing={"ttft_ms": 812.5, "total_ms": 2000},
        error="previous spawn failed",
        closed_at=None,
        updated_at=1001.0,
        last_active_at=1002.0,
    )
    await registry.put_session(rec)
    assert await registry.get_session("s1") == rec

    bare = session("s2", last_timing=None, pid=None, metadata={}, closed_at=1234.5)
    await registry.put_session(bare)
    assert await registry.get_session("s2") == bare


async def test_stored_session_is_a_copy(registry: Registry) -> None:
    rec = session("s1")
    await registry.put_session(rec)
    rec.state = "closed"
    rec.options["model"] = "changed"
    got = await registry.get_session("s1")
    assert got is not None
    assert got.state == "idle"
    assert got.options["model"] == "sonnet"


async def test_put_session_replaces(registry: Registry) -> None:
    await registry.put_session(session("s1"))
    await registry.put_session(session("s1", state="evicted", turns=7, pid=None, error="x"))
    got = await registry.get_session("s1")
    assert got is not None
    assert (got.state, got.turns, got.error) == ("evicted", 7, "x")
    assert [s.id for s in await registry.list_sessions()] == ["s1"]


async def test_list_sessions_newest_first_by_created_at(registry: Registry) -> None:
    # Inserted out of order, with updated_at in the opposite order to created_at.
    for sid, created in [("b", 2000.0), ("a", 1000.0), ("d", 4000.0), ("c", 3000.0)]:
        await registry.put_session(session(sid, created_at=created, updated_at=10_000 - created))
    assert [s.id for s in await registry.list_sessions()] == ["d", "c", "b", "a"]
    # An update does not move a session.
    await registry.put_session(session("a", created_at=1000.0, updated_at=99_999.0))
    assert [s.id for s in await registry.list_sessions()] == ["d", "c", "b", "a"]


async def test_list_sessions_filters_by_tenant(registry: Registry) -> None:
    await registry.put_session(session("a1", tenant="acme", created_at=1.0))
    await registry.put_session(session("b1", tenant="beta", created_at=2.0))
    await registry.put_session(session("a2", tenant="acme", created_at=3.0))
    assert [s.id for s in await registry.list_sessions("acme")] == ["a2", "a1"]
    assert [s.id for s in await registry.list_sessions("beta")] == ["b1"]
    assert await registry.list_sessions("nobody") == []
    assert [s.id for s in await registry.list_sessions()] == ["a2", "b1", "a1"]


async def test_list_sessions_hides_closed_unless_asked(registry: Registry) -> None:
    await registry.put_session(session("open", created_at=1.0))
    await registry.put_session(session("shut", created_at=2.0, state="closed", closed_at=5.0))
    await registry.put_session(session("gone", created_at=3.0, state="evicted"))
    assert [s.id for s in await registry.list_sessions()] == ["gone", "open"]
    assert [s.id for s in await registry.list_sessions(include_closed=True)] == [
        "gone",
        "shut",
        "open",
    ]
    assert [s.id for s in await registry.list_sessions("acme", include_closed=True)] == [
        "gone",
        "shut",
        "open",
    ]


# ---------------------------------------------------------------------------- turns


async def test_turns_upsert_order_and_limit(registry: Registry) -> None:
    for n in (3, 1, 2, 4):
        await registry.put_turn(TurnRecord("s1", n, f"prompt {n}", queued_at=float(n)))
    await registry.put_turn(TurnRecord("other", 1, "elsewhere"))
    assert [t.turn for t in await registry.list_turns("s1")] == [1, 2, 3, 4]

    done = TurnRecord(
        "s1",
        2,
        "prompt 2",
        status="done",
        queued_at=2.0,
        started_at=2.5,
        ended_at=3.0,
        timing={"ttft_ms": 100.0, "turns": [1, 2]},
        error_code=None,
    )
    await registry.put_turn(done)
    turns = await registry.list_turns("s1")
    assert len(turns) == 4
    assert turns[1] == done

    failed = TurnRecord("s1", 4, "p", status="error", error_code="agent_died", error_message="x")
    await registry.put_turn(failed)
    assert [t.turn for t in await registry.list_turns("s1", limit=2)] == [3, 4]
    assert (await registry.list_turns("s1", limit=1)) == [failed]
    assert [t.turn for t in await registry.list_turns("s1", limit=10)] == [1, 2, 3, 4]
    assert await registry.list_turns("s1", limit=0) == []
    assert await registry.list_turns("nope") == []


# ---------------------------------------------------------------------------- events


async def test_events_visible_before_and_after_flush(registry: Registry) -> None:
    registry.add_events([event("s1", n) for n in range(1, 6)])
    registry.add_events([event("s2", 1)])
    # Not flushed yet: a replay must still see them.
    assert seqs(await registry.events_after("s1", 0)) == [1, 2, 3, 4, 5]
    assert await registry.last_seq("s1") == 5
    await registry.flush()
    got = await registry.events_after("s1", 0)
    assert got == [event("s1", n) for n in range(1, 6)]
    assert seqs(await registry.events_after("s1", 3)) == [4, 5]
    assert seqs(await registry.events_after("s1", 1, limit=2)) == [2, 3]
    assert await registry.events_after("s1", 5) == []
    assert seqs(await registry.events_after("s2", 0)) == [1]
    assert await registry.last_seq("s1") == 5
    assert await registry.last_seq("s2") == 1
    assert await registry.last_seq("unknown") == 0

    # Half flushed, half pending: one ordered answer.
    registry.add_events([event("s1", n) for n in range(6, 9)])
    assert seqs(await registry.events_after("s1", 4)) == [5, 6, 7, 8]
    assert seqs(await registry.events_after("s1", 4, limit=3)) == [5, 6, 7]
    assert await registry.last_seq("s1") == 8


async def test_event_data_round_trips(registry: Registry) -> None:
    ev = EventRecord(
        "s1", 1, 2, "tool_use", {"name": "Bash", "input": {"cmd": "ls"}, "ok": True, "v": None}, 5.5
    )
    registry.add_events([ev])
    await registry.flush()
    assert await registry.events_after("s1", 0) == [ev]


async def test_event_with_same_seq_replaces(registry: Registry) -> None:
    registry.add_events([event("s1", 1, v="old")])
    await registry.flush()
    registry.add_events([event("s1", 1, v="new")])
    assert [e.data["v"] for e in await registry.events_after("s1", 0)] == ["new"]
    await registry.flush()
    assert [e.data["v"] for e in await registry.events_after("s1", 0)] == ["new"]


async def test_many_events_across_batches_stay_in_order(registry: Registry) -> None:
    total = 5_000
    n = 0
    while n < total:
        chunk = [event("s1", s) for s in range(n + 1, min(n + 38, total) + 1)]
        registry.add_events(chunk)
        n += len(chunk)
        if n % 190 == 0:
            await asyncio.sleep(0)  # let the timer and size triggers commit some batches
    assert await registry.last_seq("s1") == total
    await registry.flush()

    got: list[EventRecord] = []
    after = 0
    while page := await registry.events_after("s1", after, limit=1000):
        assert len(page) <= 1000
        got.extend(page)
        after = page[-1].seq
    assert seqs(got) == list(range(1, total + 1))
    assert got[1234] == event("s1", 1235)


# ---------------------------------------------------------------------------- processes


async def test_processes_put_forget_list(registry: Registry) -> None:
    assert await registry.list_processes() == []
    p1 = ProcessRecord(300, 1.5, "session", "s1", "cli-1")
    p2 = ProcessRecord(100, 2.5, "spare")
    p3 = ProcessRecord(200, 3.5, "warm")
    for p in (p1, p2, p3):
        await registry.put_process(p)
    assert await registry.list_processes() == [p2, p3, p1]
    # The same pid again (a reused pid): replaced.
    p1b = ProcessRecord(300, 9.5, "session", "s9", "cli-9")
    await registry.put_process(p1b)
    await registry.forget_process(100)
    await registry.forget_process(999)  # unknown: no error
    assert await registry.list_processes() == [p3, p1b]


# ---------------------------------------------------------------------------- lifecycle


async def test_closed_registry_refuses_and_close_is_idempotent(registry: Registry) -> None:
    await registry.put_session(session("s1"))
    await registry.close()
    await registry.close()
    with pytest.raises(RegistryError):
        await registry.get_session("s1")
    with pytest.raises(RegistryError):
        registry.add_events([event("s1", 1)])
    with pytest.raises(RegistryError):
        await registry.flush()


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_unopened_registry_refuses(kind: str, db_path: Path) -> None:
    reg: Registry = SqliteRegistry(db_path) if kind == "sqlite" else MemoryRegistry()
    with pytest.raises(RegistryError, match="not open"):
        await reg.get_session("s1")
    with pytest.raises(RegistryError, match="not open"):
        reg.add_events([event("s1", 1)])
    await reg.close()


# ---------------------------------------------------------------------------- concurrency


async def test_many_coroutines_at_once(registry: Registry) -> None:
    n_sessions, n_events = 40, 150

    async def worker(i: int) -> None:
        sid = f"s{i:02d}"
        await registry.put_session(session(sid, created_at=float(i)))
        for start in range(1, n_events + 1, 10):
            registry.add_events([event(sid, s) for s in range(start, start + 10)])
            if start % 30 == 1:
                await asyncio.sleep(0)
                assert await registry.last_seq(sid) == start + 9
        await registry.put_turn(TurnRecord(sid, 1, "p", status="done"))
        await registry.list_sessions()

    await asyncio.gather(*(worker(i) for i in range(n_sessions)))
    await registry.flush()
    sessions = await registry.list_sessions()
    assert [s.id for s in sessions] == [f"s{i:02d}" for i in reversed(range(n_sessions))]
    for i in range(n_sessions):
        sid = f"s{i:02d}"
        assert seqs(await registry.events_after(sid, 0)) == list(range(1, n_events + 1))
        assert len(await registry.list_turns(sid)) == 1


async def test_add_events_from_threads(registry: Registry) -> None:
    def producer(sid: str) -> None:
        for s in range(1, 1001):
            registry.add_events([event(sid, s)])

    threads = [threading.Thread(target=producer, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        await asyncio.to_thread(t.join)
    await registry.flush()
    for i in range(4):
        assert seqs(await registry.events_after(f"t{i}", 0, limit=5000)) == list(range(1, 1001))


# ---------------------------------------------------------------------------- SQLite only


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


# ---------------------------------------------------------------------------- MemoryRegistry


async def test_memory_fault_injection_keeps_events_until_repaired() -> None:
    reg = MemoryRegistry()
    await reg.open()
    reg.broken = True
    with pytest.raises(RegistryError):
        await reg.put_session(session("s1"))
    reg.add_events([event("s1", 1), event("s1", 2)])
    with pytest.raises(RegistryError):
        await reg.flush()
    assert seqs(await reg.events_after("s1", 0)) == [1, 2]
    reg.broken = False
    await reg.flush()
    await reg.put_session(session("s1"))
    assert seqs(await reg.events_after("s1", 0)) == [1, 2]
    await reg.close()
