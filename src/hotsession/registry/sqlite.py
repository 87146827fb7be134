"""The embedded default registry: one SQLite file, WAL mode, with a batched event log.

Threading model
    ONE :class:`sqlite3.Connection`, created by a dedicated thread (``hotsession-registry``) and
    used by whoever holds ``_conn_lock``. Two ways in:

    * **The thread** (every read, the event batches, ``flush``, and any write that cannot run
      inline): an async method wraps its work in a callable, puts it on a
      :class:`queue.SimpleQueue` and awaits an :class:`asyncio.Future` that the thread resolves
      with ``loop.call_soon_threadsafe``. Jobs run one at a time in submission order, with the
      full ``busy_timeout``, so the event loop never waits for another process's lock.
    * **Inline** (the per-turn writes: ``put_turn``, ``put_session``, ``end_turn``): the write
      runs on the caller's thread (the event loop) at once, with a busy timeout of 0, when no
      job is queued or running ahead of it (``_submitted == _finished``) and the connection is
      free (a non-blocking acquire of the lock). If not, or if SQLite says anything at all
      (the database is locked by another process, the disk is full ...), the transaction is
      rolled back and the same callable goes to the thread as above, which waits the busy
      timeout and reports the error as it always did. So the order of writes is the order
      they were made in, whichever way each went.

    Why inline (measured, docs/benchmarks.md, 2026-11-30): a plain follow-up makes two
    transactions (the prompt's record, the turn's end) of ~90 µs of SQL together, and the
    hand-off to the thread cost ~0.3 ms of CPU beyond that: the thread's wake-ups and its fight
    for the GIL with the busy loop thread (sqlite3 drops and retakes the GIL at every
    statement). What it gives up: nothing of durability (the same transactions, committed
    before the awaited call returns), ~50-90 µs of the loop's time per write, and a write
    never waits for a lock on the loop (busy timeout 0: a locked database sends it to the
    thread, which is what the "database locked" faults exercise).

    Checkpoints stay off the loop: the connection runs with ``wal_autocheckpoint = 0``
    (SQLite would otherwise copy the WAL into the database inside whichever COMMIT crosses
    1000 pages, an inline one included), and the thread runs a PASSIVE checkpoint once
    ``CHECKPOINT_CHANGES`` rows were written since the last one (the loop asks it to with a
    queue item when an inline write crosses that line).

Batching
    ``add_events`` is synchronous and costs a lock and a list append: it is called on a turn's
    hot path. The thread commits the pending events in ONE transaction when the oldest of them
    has waited ``flush_interval`` seconds (a timer on the event loop, rather than a wake-up of
    the thread at the first event; when it fires and nothing waits ahead, it commits them on
    the loop itself, as an inline write, and wakes the thread only otherwise), or as soon as
    ``BATCH_MAX`` are pending;
    ``end_turn`` commits them with a turn's records, in the same transaction. ``flush()``
    is a job like any other, so when it returns every event added before the call is committed.
    Reads of the event log (``events_after``, ``last_seq``) merge the events still in memory,
    so a replay never misses an event, whether or not it was flushed. The bookkeeping (pending
    events, the failed batch and its backoff, stale-event counts) is
    :class:`~hotsession.registry.backlog.EventBacklog`, shared with the Postgres registry; its
    writer is whoever holds the connection's lock.

Failures
    Every :class:`sqlite3.Error` (database is locked, database or disk is full, read-only file,
    ...) becomes a :class:`~hotsession.errors.RegistryError` whose ``cause`` is SQLite's text.
    A batch of events that cannot be written is never dropped: it stays in memory, in order,
    and is retried first by the next flush (the timer retries with a backoff of up to
    ``MAX_RETRY_DELAY``). ``flush()`` raises while the store is broken and succeeds once it
    clears. Each write is one transaction, rolled back on failure, so a full disk or a lock
    never leaves a half-written batch.

Durability
    ``synchronous=NORMAL`` in WAL mode: a committed transaction survives a crash of the process
    (a power loss may roll back the last transactions, never corrupt the file). Events are
    durable once ``flush()`` has returned; a daemon killed with ``kill -9`` loses at most the
    events added during the last ``flush_interval`` that nobody flushed. Sessions, turns and
    processes are written synchronously: durable when the awaited call returns.

Fencing
    Ownership (see :mod:`hotsession.registry.base`) lives in the ``ownership`` table. A fenced
    write checks the session's epoch inside its own ``BEGIN IMMEDIATE`` transaction (SQLite has
    one writer at a time, so no claim can commit in between); a batch of events checks the
    epochs it carries the same way and leaves the stale events out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from hotsession.errors import RegistryError, StaleEpoch
from hotsession.registry.backlog import BATCH_MAX, EventBacklog, Pending
from hotsession.registry.base import stale_epoch, stale_events
from hotsession.registry.records import (
    EventRecord,
    Ownership,
    ProcessRecord,
    SessionRecord,
    SessionState,
    TurnRecord,
    TurnStatus,
)
from hotsession.registry.rows import dumps as _dumps
from hotsession.registry.rows import event_row as _event_row

__all__ = ["BATCH_MAX", "MIGRATIONS", "SCHEMA_VERSION", "SqliteRegistry"]

log = logging.getLogger(__name__)

T = TypeVar("T")


# Ordered schema migrations: ``MIGRATIONS[i]`` takes the database from ``user_version`` i to
# i + 1. Never edit a released entry: append a new one. Each script runs in one transaction
# together with the bump of ``user_version``, so a migration is applied entirely or not at all.
MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: initial schema
    """
    CREATE TABLE sessions (
        id              TEXT PRIMARY KEY,
        tenant          TEXT NOT NULL,
        cli_session_id  TEXT NOT NULL,
        cwd             TEXT NOT NULL,
        options         TEXT NOT NULL,  -- JSON object
        profile_key     TEXT NOT NULL,
        state           TEXT NOT NULL,
        created_at      REAL NOT NULL,
        updated_at      REAL NOT NULL,
        last_active_at  REAL NOT NULL,
        turns           INTEGER NOT NULL,
        metadata        TEXT NOT NULL,  -- JSON object
        pid             INTEGER,
        last_timing     TEXT,           -- JSON object or NULL
        error           TEXT,
        closed_at       REAL
    );
    CREATE INDEX sessions_tenant_created ON sessions (tenant, created_at);
    CREATE INDEX sessions_updated ON sessions (updated_at);
    CREATE INDEX sessions_created ON sessions (created_at);

    CREATE TABLE turns (
        session_id      TEXT NOT NULL,
        turn            INTEGER NOT NULL,
        prompt          TEXT NOT NULL,
        status          TEXT NOT NULL,
        queued_at       REAL NOT NULL,
        started_at      REAL,
        ended_at        REAL,
        timing          TEXT,           -- JSON object or NULL
        error_code      TEXT,
        error_message   TEXT,
        PRIMARY KEY (session_id, turn)
    );

    CREATE TABLE events (
        session_id      TEXT NOT NULL,
        seq             INTEGER NOT NULL,
        turn            INTEGER NOT NULL,
        type            TEXT NOT NULL,
        data            TEXT NOT NULL,  -- JSON object
        t               REAL NOT NULL,
        PRIMARY KEY (session_id, seq)
    );

    CREATE TABLE processes (
        pid             INTEGER PRIMARY KEY,
        create_time     REAL NOT NULL,
        role            TEXT NOT NULL,
        session_id      TEXT,
        cli_session_id  TEXT
    );
    """,
    # 2: session ownership epochs (fencing)
    """
    CREATE TABLE ownership (
        session_id      TEXT PRIMARY KEY,
        node            TEXT,           -- NULL once released
        epoch           INTEGER NOT NULL,
        claimed_at      REAL NOT NULL,
        renewed_at      REAL NOT NULL
    );
    CREATE INDEX ownership_node ON ownership (node);
    """,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

_SESSION_COLS: Final = (
    "id, tenant, cli_session_id, cwd, options, profile_key, state, created_at, updated_at,"
    " last_active_at, turns, metadata, pid, last_timing, error, closed_at"
)
# An upsert, not INSERT OR REPLACE: the row keeps its rowid (the tie-break of the listing order)
# and is never deleted (which future foreign keys would cascade).
_SESSION_UPSERT: Final = (
    f"INSERT INTO sessions ({_SESSION_COLS}) VALUES ({', '.join('?' * 16)})"
    " ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _SESSION_COLS.replace(" ", "").split(",")[1:])
)
_TURN_COLS: Final = (
    "session_id, turn, prompt, status, queued_at, started_at, ended_at, timing, error_code,"
    " error_message"
)
_TURN_UPSERT: Final = f"INSERT OR REPLACE INTO turns ({_TURN_COLS}) VALUES ({', '.join('?' * 10)})"
_EVENT_COLS: Final = "session_id, seq, turn, type, data, t"
_PROCESS_COLS: Final = "pid, create_time, role, session_id, cli_session_id"
_OWNERSHIP_COLS: Final = "session_id, node, epoch, claimed_at, renewed_at"


_STOP: Final = object()  # queue item: leave the thread loop
_WAKE: Final = object()  # queue item: look at the pending events (and the checkpoint) now

CHECKPOINT_CHANGES: Final = 500
LOOP_TIMER_GRACE_S: Final = 0.25
"""How much later than the loop's timer the thread commits due events on its own."""
"""Rows written (``total_changes``) between two of the thread's WAL checkpoints: a plain turn
writes ~7 rows in ~15-30 WAL pages, so this is about the 1000 pages of SQLite's own
auto-checkpoint, which is off (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class _JobRequest:
    """Queue item: run ``fn(conn)`` and resolve ``fut`` on ``loop`` with its result."""

    fn: Callable[[sqlite3.Connection], Any]
    doing: str  # for error messages: "registry cannot <doing>: ..."
    fut: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    opens: bool = False  # the job that creates the connection


@dataclass(frozen=True, slots=True)
class _TurnEnd:
    """What ``end_turn`` writes with the event batch: a turn's and its session's rows."""

    session_id: str
    epoch: int | None
    turn_row: tuple[Any, ...]
    session_row: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class _CloseRequest:
    """Queue item: flush, close the connection and leave the thread loop."""

    fut: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


def _split_statements(script: str) -> list[str]:
    """Split a script into complete statements (``executescript`` would COMMIT first)."""
    out: list[str] = []
    acc = ""
    for piece in script.split(";"):
        acc += piece + ";"
        if sqlite3.complete_statement(acc):
            if acc.strip(" \t\r\n;"):
                out.append(acc.strip())
            acc = ""
    if acc.strip(" \t\r\n;"):
        out.append(acc.strip())
    return out


def _loads_opt(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _session_row(rec: SessionRecord) -> tuple[Any, ...]:
    return (
        rec.id,
        rec.tenant,
        rec.cli_session_id,
        rec.cwd,
        _dumps(rec.options),
        rec.profile_key,
        rec.state,
        rec.created_at,
        rec.updated_at,
        rec.last_active_at,
        rec.turns,
        _dumps(rec.metadata),
        rec.pid,
        None if rec.last_timing is None else _dumps(rec.last_timing),
        rec.error,
        rec.closed_at,
    )


def _turn_row(turn: TurnRecord) -> tuple[Any, ...]:
    return (
        turn.session_id,
        turn.turn,
        turn.prompt,
        turn.status,
        turn.queued_at,
        turn.started_at,
        turn.ended_at,
        None if turn.timing is None else _dumps(turn.timing),
        turn.error_code,
        turn.error_message,
    )


def _session_from_row(row: sqlite3.Row) -> SessionRecord:
    return SessionRecord(
        id=row["id"],
        tenant=row["tenant"],
        cli_session_id=row["cli_session_id"],
        cwd=row["cwd"],
        options=json.loads(row["options"]),
        profile_key=row["profile_key"],
        state=cast(SessionState, row["state"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_active_at=row["last_active_at"],
        turns=row["turns"],
        metadata=json.loads(row["metadata"]),
        pid=row["pid"],
        last_timing=_loads_opt(row["last_timing"]),
        error=row["error"],
        closed_at=row["closed_at"],
    )


def _turn_from_row(row: sqlite3.Row) -> TurnRecord:
    return TurnRecord(
        session_id=row["session_id"],
        turn=row["turn"],
        prompt=row["prompt"],
        status=cast(TurnStatus, row["status"]),
        queued_at=row["queued_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        timing=_loads_opt(row["timing"]),
        error_code=row["error_code"],
        error_message=row["error_message"],
    )


def _event_from_row(row: sqlite3.Row) -> EventRecord:
    return EventRecord(
        session_id=row["session_id"],
        seq=row["seq"],
        turn=row["turn"],
        type=row["type"],
        data=json.loads(row["data"]),
        t=row["t"],
    )


def _process_from_row(row: sqlite3.Row) -> ProcessRecord:
    return ProcessRecord(
        pid=row["pid"],
        create_time=row["create_time"],
        role=row["role"],
        session_id=row["session_id"],
        cli_session_id=row["cli_session_id"],
    )


def _ownership_from_row(row: sqlite3.Row) -> Ownership:
    return Ownership(
        session_id=row["session_id"],
        node=row["node"],
        epoch=row["epoch"],
        claimed_at=row["claimed_at"],
        renewed_at=row["renewed_at"],
    )


def _read_owner(conn: sqlite3.Connection, session_id: str) -> Ownership | None:
    row = conn.execute(
        f"SELECT {_OWNERSHIP_COLS} FROM ownership WHERE session_id = ?", (session_id,)
    ).fetchone()
    return None if row is None else _ownership_from_row(row)


def _is_current(owner: Ownership | None, epoch: int) -> bool:
    return owner is not None and owner.node is not None and owner.epoch == epoch


def _fenced_write(
    conn: sqlite3.Connection, session_id: str, epoch: int | None, sql: str, row: tuple[Any, ...]
) -> None:
    """Run one write, in a transaction that first checks ``epoch`` when given."""
    if epoch is None:
        conn.execute(sql, row)
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        owner = _read_owner(conn, session_id)
        if not _is_current(owner, epoch):
            raise stale_epoch(session_id, epoch, owner)
        conn.execute(sql, row)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _registry_error(exc: Exception, doing: str) -> RegistryError:
    text = str(exc)
    low = text.lower()
    if "locked" in low or "busy" in low:
        why = "the database is locked by another process"
    elif "full" in low:
        why = "the disk is full"
    elif "readonly" in low or "read-only" in low:
        why = "the database is read-only"
    else:
        why = text
    return RegistryError(f"registry cannot {doing}: {why}", cause=text)


def _resolve(fut: asyncio.Future[T], value: T) -> None:
    if not fut.done():
        fut.set_result(value)


def _reject(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


class SqliteRegistry:
    """The :class:`~hotsession.registry.base.Registry` kept in one SQLite file (see module doc)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_interval: float = 0.05,
        busy_timeout: float = 5.0,
    ) -> None:
        if flush_interval <= 0:
            raise ValueError("flush_interval must be > 0")
        if busy_timeout < 0:
            raise ValueError("busy_timeout must be >= 0")
        self.path = os.fspath(path)
        self.flush_interval = flush_interval
        self.busy_timeout = busy_timeout

        # Why a thread of our own rather than aiosqlite: ONE connection serialises every access
        # (no lock juggling between connections of the same process), and batching the event
        # log needs a thread that commits on its own timer, not only when a coroutine awaits.
        self._jobs: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None  # owned by the thread
        self._state = "new"  # new -> open -> closed
        self._state_lock = threading.Lock()

        # Events added but not written yet (any thread may add; the thread writes).
        self._backlog = EventBacklog(flush_interval)

        # Inline writes (see the module docstring): the connection's user holds the lock; jobs
        # put on the queue and finished by the thread (a write runs inline only when equal).
        self._conn_lock = threading.Lock()
        self._submitted = 0
        self._finished = 0
        self._busy_ms = -1  # the connection's busy timeout now (ms): full on the thread, 0 inline
        self._inline_now = False  # an inline write runs (its failure is not the store's yet)
        self._checkpointed = 0  # ``total_changes`` at the last checkpoint
        self._checkpoint_asked = False
        self._timer: asyncio.TimerHandle | None = None  # the pending events' flush timer

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create the file (0600) and its directory (0700), set the pragmas, migrate."""
        with self._state_lock:
            if self._state == "open":
                return
            if self._state == "closed":
                raise RegistryError("registry is closed")
            self._state = "open"
            self._thread = threading.Thread(
                target=self._run, name="hotsession-registry", daemon=True
            )
            self._thread.start()
        try:
            await self._submit(self._open_db, "open the database", opens=True)
        except BaseException:
            with self._state_lock:
                self._state = "closed"
            self._jobs.put(_STOP)
            raise

    async def close(self) -> None:
        """Flush, stop the thread, close the connection. Idempotent.

        Raises ``RegistryError`` (after releasing everything) when events could not be written.
        """
        with self._state_lock:
            if self._state != "open":
                self._state = "closed"
                return
            self._state = "closed"
        thread = self._thread
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._jobs.put(_CloseRequest(fut, loop))
        try:
            await asyncio.shield(fut)
        finally:
            if thread is not None:
                await asyncio.to_thread(thread.join)

    # ------------------------------------------------------------------ sessions

    async def put_session(self, rec: SessionRecord, *, epoch: int | None = None) -> None:
        row = _session_row(rec)
        sql = _SESSION_UPSERT

        def job(conn: sqlite3.Connection) -> None:
            _fenced_write(conn, rec.id, epoch, sql, row)

        await self._write(job, "write a session")

    async def get_session(self, session_id: str) -> SessionRecord | None:
        def job(conn: sqlite3.Connection) -> SessionRecord | None:
            row = conn.execute(
                f"SELECT {_SESSION_COLS} FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            return None if row is None else _session_from_row(row)

        return await self._submit(job, "read a session")

    async def list_sessions(
        self, tenant: str | None = None, *, include_closed: bool = False
    ) -> list[SessionRecord]:
        where: list[str] = []
        args: list[Any] = []
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        if not include_closed:
            where.append("state != 'closed'")
        sql = f"SELECT {_SESSION_COLS} FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, rowid DESC"

        def job(conn: sqlite3.Connection) -> list[SessionRecord]:
            return [_session_from_row(r) for r in conn.execute(sql, args)]

        return await self._submit(job, "list sessions")

    # ------------------------------------------------------------------ turns

    async def put_turn(self, turn: TurnRecord, *, epoch: int | None = None) -> None:
        row = _turn_row(turn)

        def job(conn: sqlite3.Connection) -> None:
            _fenced_write(conn, turn.session_id, epoch, _TURN_UPSERT, row)

        await self._write(job, "write a turn")

    async def list_turns(self, session_id: str, limit: int | None = None) -> list[TurnRecord]:
        def job(conn: sqlite3.Connection) -> list[TurnRecord]:
            if limit is None:
                rows = conn.execute(
                    f"SELECT {_TURN_COLS} FROM turns WHERE session_id = ? ORDER BY turn",
                    (session_id,),
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {_TURN_COLS} FROM turns WHERE session_id = ?"
                    " ORDER BY turn DESC LIMIT ?",
                    (session_id, max(limit, 0)),
                ).fetchall()
                rows.reverse()
            return [_turn_from_row(r) for r in rows]

        return await self._submit(job, "list turns")

    # ------------------------------------------------------------------ events

    def add_events(self, events: Sequence[EventRecord], *, epoch: int | None = None) -> None:
        """Queue events for the next batch; never blocks on the disk."""
        if self._state != "open":
            raise RegistryError(
                "registry is closed" if self._state == "closed" else "registry is not open"
            )
        if not events:
            return
        if not self._backlog.add(events, epoch):
            return
        if self._backlog.next_timeout() == 0.0:
            self._jobs.put(_WAKE)  # a full batch (or a retry that is due): now
        else:
            self._arm_timer()  # the first pending event: they are due in flush_interval

    def _arm_timer(self) -> None:
        """Have the thread commit the pending events once they are due.

        On the event loop this is a timer of the loop's, not a wake-up of the thread: waking it
        only to start its clock was a hand-off (the thread takes the GIL, the loop waits) on
        every turn, and most turns end sooner, their ``end_turn`` committing the events (see
        docs/benchmarks.md). Off the loop (another thread adds events), the thread is woken.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._jobs.put(_WAKE)
            return
        self._timer = loop.call_later(self._backlog.flush_interval, self._due)

    def _due(self) -> None:
        """The pending events are due: committed here on the loop when nothing waits ahead and
        the connection is free (as the per-turn writes are, see the module docstring), else,
        or when SQLite refuses, by the thread. Any turn longer than ``flush_interval`` (with a
        real model, every one) reaches this with its first events pending; waking the thread
        for them cost its wake-up and the GIL hand-off on top of the transaction (measured,
        docs/benchmarks.md, 2026-11-30)."""
        self._timer = None
        backlog = self._backlog
        if self._state != "open" or backlog.next_timeout() is None:
            return
        ran = False
        if not backlog.failures:  # a failed batch's retries and backoff stay the thread's
            try:
                ran, _ = self._inline(self._commit_events)
            except Exception:  # not SQLite's refusal: the batch is back; the thread reports
                ran = False
        if not ran or backlog.next_timeout() is not None:
            self._jobs.put(_WAKE)

    async def flush(self) -> None:
        """Commit every event added so far; raises ``RegistryError`` while the store is broken,
        ``StaleEpoch`` when fenced events were dropped since the last flush."""

        def job(conn: sqlite3.Connection) -> None:
            self._commit_events(conn)
            dropped = self._backlog.take_stale()
            if dropped:
                raise stale_events(dropped)

        await self._submit(job, "write events")

    async def end_turn(
        self, turn: TurnRecord, session: SessionRecord, *, epoch: int | None = None
    ) -> None:
        """The event batch, the turn and the session in one job and one transaction."""
        records = _TurnEnd(session.id, epoch, _turn_row(turn), _session_row(session))

        def job(conn: sqlite3.Connection) -> None:
            refused = self._commit_events(conn, records)
            if refused is not None:
                raise refused
            dropped = self._backlog.take_stale()
            if dropped:
                raise stale_events(dropped)

        await self._write(job, "record a turn's end")

    async def events_after(
        self, session_id: str, after_seq: int, limit: int = 1000
    ) -> list[EventRecord]:
        if limit <= 0:
            self._check_open()
            return []

        def job(conn: sqlite3.Connection) -> list[EventRecord]:
            rows = conn.execute(
                f"SELECT {_EVENT_COLS} FROM events WHERE session_id = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (session_id, after_seq, limit),
            )
            by_seq = {ev.seq: ev for ev in map(_event_from_row, rows)}
            # Events not committed yet replace stored ones (INSERT OR REPLACE when written).
            for ev in self._backlog.unwritten():
                if ev.session_id == session_id and ev.seq > after_seq:
                    by_seq[ev.seq] = ev
            return [by_seq[s] for s in sorted(by_seq)[:limit]]

        return await self._submit(job, "read events")

    async def last_seq(self, session_id: str) -> int:
        def job(conn: sqlite3.Connection) -> int:
            (stored,) = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM events WHERE session_id = ?", (session_id,)
            ).fetchone()
            unwritten = (ev.seq for ev in self._backlog.unwritten() if ev.session_id == session_id)
            return max(int(stored), *unwritten, 0)

        return await self._submit(job, "read events")

    # ------------------------------------------------------------------ processes

    async def put_process(self, rec: ProcessRecord) -> None:
        row = (rec.pid, rec.create_time, rec.role, rec.session_id, rec.cli_session_id)

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT OR REPLACE INTO processes ({_PROCESS_COLS}) VALUES ({_marks(5)})", row
            )

        await self._submit(job, "write a process")

    async def forget_process(self, pid: int) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM processes WHERE pid = ?", (pid,))

        await self._submit(job, "forget a process")

    async def list_processes(self) -> list[ProcessRecord]:
        def job(conn: sqlite3.Connection) -> list[ProcessRecord]:
            rows = conn.execute(f"SELECT {_PROCESS_COLS} FROM processes ORDER BY pid")
            return [_process_from_row(r) for r in rows]

        return await self._submit(job, "list processes")

    # ------------------------------------------------------------------ ownership

    async def owner(self, session_id: str) -> Ownership | None:
        return await self._submit(lambda conn: _read_owner(conn, session_id), "read an owner")

    async def claim(self, session_id: str, node: str, *, expect_epoch: int) -> Ownership:
        def job(conn: sqlite3.Connection) -> Ownership:
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = _read_owner(conn, session_id)
                if (0 if current is None else current.epoch) != expect_epoch:
                    raise stale_epoch(session_id, expect_epoch, current)
                t = time.time()
                new = Ownership(session_id, node, expect_epoch + 1, t, t)
                conn.execute(
                    f"INSERT OR REPLACE INTO ownership ({_OWNERSHIP_COLS}) VALUES ({_marks(5)})",
                    (new.session_id, new.node, new.epoch, new.claimed_at, new.renewed_at),
                )
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            return new

        return await self._submit(job, "claim a session")

    async def renew(self, session_id: str, node: str, epoch: int) -> Ownership:
        def job(conn: sqlite3.Connection) -> Ownership:
            t = time.time()
            cur = conn.execute(
                "UPDATE ownership SET renewed_at = ? WHERE session_id = ? AND node = ?"
                " AND epoch = ?",
                (t, session_id, node, epoch),
            )
            owner = _read_owner(conn, session_id)
            if cur.rowcount != 1 or owner is None:
                raise stale_epoch(session_id, epoch, owner)
            return owner

        return await self._submit(job, "renew an owner")

    async def release(self, session_id: str, node: str, epoch: int) -> None:
        def job(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE ownership SET node = NULL WHERE session_id = ? AND node = ? AND epoch = ?",
                (session_id, node, epoch),
            )
            if cur.rowcount == 1:
                return
            current = _read_owner(conn, session_id)
            if current is not None and current.epoch == epoch and current.node is None:
                return  # released already
            raise stale_epoch(session_id, epoch, current)

        await self._submit(job, "release an owner")

    async def list_owned(self, node: str) -> list[Ownership]:
        def job(conn: sqlite3.Connection) -> list[Ownership]:
            rows = conn.execute(
                f"SELECT {_OWNERSHIP_COLS} FROM ownership WHERE node = ? ORDER BY session_id",
                (node,),
            )
            return [_ownership_from_row(r) for r in rows]

        return await self._submit(job, "list owners")

    # ------------------------------------------------------------------ plumbing (event loop)

    def _check_open(self) -> None:
        if self._state != "open":
            raise RegistryError(
                "registry is closed" if self._state == "closed" else "registry is not open"
            )

    async def _submit(
        self, fn: Callable[[sqlite3.Connection], T], doing: str, *, opens: bool = False
    ) -> T:
        """Run ``fn(conn)`` on the registry thread; sqlite3 errors become RegistryError."""
        self._check_open()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._submitted += 1
        self._jobs.put(_JobRequest(fn, doing, fut, loop, opens))
        return await fut

    async def _write(self, fn: Callable[[sqlite3.Connection], T], doing: str) -> T:
        """A small write: inline when it can be, else on the thread (see the module docstring)."""
        self._check_open()
        ran, value = self._inline(fn)
        if ran:
            return cast(T, value)
        return await self._submit(fn, doing)

    def _inline(self, fn: Callable[[sqlite3.Connection], T]) -> tuple[bool, T | None]:
        """Run ``fn(conn)`` here and now if nothing is queued ahead and the connection is free;
        ``(False, None)`` when it did not run or SQLite refused (rolled back: the thread then
        runs it again, waiting out a lock, and reports what it finds)."""
        if self._submitted != self._finished:
            return False, None
        lock = self._conn_lock
        if not lock.acquire(blocking=False):
            return False, None
        try:
            conn = self._conn
            if conn is None or self._submitted != self._finished:
                return False, None
            if self._busy_ms != 0:
                conn.execute("PRAGMA busy_timeout = 0")  # never wait for a lock on the loop
                self._busy_ms = 0
            self._inline_now = True
            try:
                result = fn(conn)
            except sqlite3.Error:
                _rollback(conn)
                return False, None
            except BaseException:
                _rollback(conn)
                raise
            finally:
                self._inline_now = False
            if self._backlog.next_timeout() is None and self._timer is not None:
                self._timer.cancel()  # the events it was armed for are written
                self._timer = None
            if (
                conn.total_changes - self._checkpointed >= CHECKPOINT_CHANGES
                and not self._checkpoint_asked
            ):
                self._checkpoint_asked = True
                self._jobs.put(_WAKE)  # the thread checkpoints (never the loop)
            return True, result
        finally:
            lock.release()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        lock = self._conn_lock
        try:
            while True:
                timeout = self._backlog.next_timeout()
                if timeout is not None and self._timer is not None:
                    # The loop's timer commits due events itself (``_due``); the thread is the
                    # fallback for a loop that cannot (stopped, or busy far past the interval),
                    # later, so the two do not race for every batch a late loop is due.
                    timeout += LOOP_TIMER_GRACE_S
                try:
                    item = self._jobs.get(timeout=timeout)
                except queue.Empty:
                    item = _WAKE
                if item is _STOP:
                    return
                if isinstance(item, _CloseRequest):
                    with lock:
                        self._close_in_thread(item.fut, item.loop)
                    return
                if isinstance(item, _JobRequest):
                    with lock:
                        self._full_busy()
                        try:
                            outcome = self._run_job(item)
                        finally:
                            self._finished += 1
                    # Resolved once the lock is free: the woken caller's next write can run
                    # inline at once.
                    self._call_soon(item.loop, *outcome)
                with lock:
                    self._full_busy()
                    self._maybe_commit()
                    self._maybe_checkpoint()
        finally:
            with lock:
                self._close_conn()

    def _full_busy(self) -> None:
        """The thread's work waits out another process's lock for the whole busy timeout."""
        conn = self._conn
        if conn is not None and self._busy_ms != self._full_busy_ms:
            conn.execute(f"PRAGMA busy_timeout = {self._full_busy_ms}")
            self._busy_ms = self._full_busy_ms

    @property
    def _full_busy_ms(self) -> int:
        return int(self.busy_timeout * 1000)

    def _maybe_checkpoint(self) -> None:
        """A PASSIVE checkpoint once ``CHECKPOINT_CHANGES`` rows were written since the last
        (auto-checkpoints are off: see the module docstring). Never fails the thread."""
        conn = self._conn
        if conn is None or conn.total_changes - self._checkpointed < CHECKPOINT_CHANGES:
            return
        self._checkpointed = conn.total_changes
        self._checkpoint_asked = False
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # the next one tries again; the WAL only grows meanwhile
            log.warning("registry: WAL checkpoint failed: %s", exc)

    def _run_job(self, item: _JobRequest) -> tuple[Callable[..., None], asyncio.Future[Any], Any]:
        """Run a job; returns how to resolve its future (done on the caller's loop)."""
        fn, doing, fut = item.fn, item.doing, item.fut
        try:
            if self._conn is None and not item.opens:
                raise RegistryError("registry is not open")
            result = fn(cast(sqlite3.Connection, self._conn))
        except sqlite3.Error as exc:
            if self._conn is not None:
                _rollback(self._conn)
            return _reject, fut, _registry_error(exc, doing)
        except RegistryError as exc:
            return _reject, fut, exc
        except BaseException as exc:  # a bug: hand it to the caller, keep the thread alive
            if self._conn is not None:
                _rollback(self._conn)
            return _reject, fut, exc
        return _resolve, fut, result

    @staticmethod
    def _call_soon(loop: asyncio.AbstractEventLoop, cb: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop was closed: nobody is waiting
            loop.call_soon_threadsafe(cb, *args)

    def _maybe_commit(self) -> None:
        if self._conn is None:
            return
        timeout = self._backlog.next_timeout()
        if timeout is None or timeout > 0:
            return
        try:
            self._commit_events(self._conn)
        except Exception as exc:  # kept in the backlog; the thread must live on
            log.warning(
                "registry: %d events not written yet (attempt %d, will retry): %s",
                len(self._backlog.failed),
                self._backlog.failures,
                exc,
            )

    def _commit_events(
        self, conn: sqlite3.Connection, records: _TurnEnd | None = None
    ) -> StaleEpoch | None:
        """Commit the failed batch, then everything pending, in one transaction (with a turn's
        end ``records`` when given: see :func:`_write_events`).

        On failure the whole batch is kept (in order) for the next attempt and the error is
        re-raised. Returns the refusal of ``records`` when their epoch was stale.
        """
        backlog = self._backlog
        batch = backlog.take()
        if not batch and records is None:
            return None
        try:
            stale, refused = _write_events(conn, batch, records)
        except BaseException:
            _rollback(conn)
            if self._inline_now:
                backlog.put_back(batch)  # the thread tries it next: not a failure of the store
            else:
                backlog.write_failed(batch)
            raise
        backlog.written(batch, stale)
        return refused

    def _open_db(self, _conn: sqlite3.Connection | None) -> None:
        if self.path != ":memory:" and not self.path.startswith("file:"):
            p = Path(self.path)
            try:
                p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                try:
                    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    pass
                else:
                    os.close(fd)
                    p.chmod(0o600)  # whatever the umask
            except OSError as exc:
                raise RegistryError(
                    f"registry cannot create {self.path}: {exc.strerror}", cause=str(exc)
                ) from exc
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,  # autocommit; transactions are explicit
            check_same_thread=False,  # the thread's, or an inline writer's under _conn_lock
            uri=self.path.startswith("file:"),
        )
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {self._full_busy_ms}")
            self._busy_ms = self._full_busy_ms
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the thread's (``_maybe_checkpoint``)
            conn.execute("PRAGMA foreign_keys = ON")
            _migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._checkpointed = conn.total_changes
        self._conn = conn

    def _close_in_thread(self, fut: asyncio.Future[None], loop: asyncio.AbstractEventLoop) -> None:
        err: BaseException | None = None
        if self._conn is not None:
            try:
                self._commit_events(self._conn)
            except Exception as exc:  # whatever it is, close() must not hang
                lost = len(self._backlog.failed)
                err = RegistryError(
                    f"registry closed with {lost} events not written: "
                    + _registry_error(exc, "write events").message,
                    cause=str(exc),
                    lost_events=lost,
                )
                log.error("%s", err.message)
        self._close_conn()
        if err is None:
            self._call_soon(loop, _resolve, fut, None)
        else:
            self._call_soon(loop, _reject, fut, err)

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


_MALFORMED: Final = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    OverflowError,
    TypeError,
    ValueError,
)


def _write_events(
    conn: sqlite3.Connection, batch: list[Pending], records: _TurnEnd | None = None
) -> tuple[dict[tuple[str, int], int], StaleEpoch | None]:
    """Write a batch in one transaction (idempotent: INSERT OR REPLACE), and a turn's end
    ``records`` (its turn and session rows) in the same transaction when given.

    Fenced events whose epoch is not current are left out; returns their counts by
    ``(session_id, epoch)``, and the refusal of ``records`` when their own epoch is stale (the
    events are committed all the same: the batch holds every session's).
    """
    sql = f"INSERT OR REPLACE INTO events ({_EVENT_COLS}) VALUES ({_marks(6)})"
    conn.execute("BEGIN IMMEDIATE")
    stale: dict[tuple[str, int], int] = {}
    fences = {(ev.session_id, ep) for ev, ep in batch if ep is not None}
    current = {key: _is_current(_read_owner(conn, key[0]), key[1]) for key in fences}
    events: list[EventRecord] = []
    for ev, ep in batch:
        if ep is None or current.get((ev.session_id, ep), False):
            events.append(ev)
        else:
            stale[(ev.session_id, ep)] = stale.get((ev.session_id, ep), 0) + 1
    try:
        conn.executemany(sql, map(_event_row, events))
    except _MALFORMED:
        # A malformed event (a caller's bug) must not poison the batch, which would be retried
        # forever: write row by row and drop only the bad ones. A failed statement is undone
        # alone, the transaction goes on.
        for ev in events:
            try:
                conn.execute(sql, _event_row(ev))
            except _MALFORMED as exc:
                log.error("registry: dropped malformed event %r: %s", ev, exc)
    refused: StaleEpoch | None = None
    if records is not None:
        owner = None if records.epoch is None else _read_owner(conn, records.session_id)
        if records.epoch is not None and not _is_current(owner, records.epoch):
            refused = stale_epoch(records.session_id, records.epoch, owner)
        else:
            conn.execute(_TURN_UPSERT, records.turn_row)
            conn.execute(_SESSION_UPSERT, records.session_row)
    conn.execute("COMMIT")
    return stale, refused


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply the missing migrations in one transaction; refuse a database from the future."""
    conn.execute("BEGIN IMMEDIATE")  # re-read the version under the write lock
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise RegistryError(
                f"registry database has schema version {version}, newer than the {SCHEMA_VERSION}"
                " this hotsession knows: upgrade hotsession or use another database",
                schema_version=version,
                supported_version=SCHEMA_VERSION,
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for stmt in _split_statements(MIGRATIONS[target - 1]):
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {target}")
            log.info("registry: migrated schema to version %d", target)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
