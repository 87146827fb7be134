"""The registry on Postgres: the state every machine of a cluster must see.

Same interface and semantics as :class:`~hotsession.registry.sqlite.SqliteRegistry` (the
conformance suite in tests/registry runs against both); what differs is said here.

Why psycopg 3 (with psycopg-pool) rather than asyncpg: it is typed (mypy strict without stubs),
its pool tests and replaces the connections a server restart broke, ``executemany`` sends a
batch in pipeline mode (one round trip), and the same library has a sync API for tools and
tests. asyncpg is faster per query, but the event log is written in batches, off the hot path.

Connections and faults
    See :mod:`hotsession.registry.pgconn`: a pool of autocommit connections in the
    registry's own schema; connection faults are retried for ``retry_for`` seconds, then
    raise :class:`~hotsession.errors.RegistryUnavailable` (HTTP 503, never a 500). Every write
    is idempotent, so a retried one cannot apply twice; a ``claim`` carries a random token so
    that a claim whose COMMIT was lost is recognised as ours when it is retried.

Batching
    As in SQLite (the same :class:`~hotsession.registry.backlog.EventBacklog`): ``add_events``
    appends to a list under a thread lock and returns. A task on
    the event loop that opened the registry commits the pending events when the oldest has
    waited ``flush_interval`` or ``BATCH_MAX`` are pending, in one transaction: one statement
    for the whole batch (``unnest`` of its columns), pipelined with BEGIN and COMMIT, so one
    round trip; ``end_turn`` adds the turn and the session to that same transaction.
    ``flush()`` commits everything added before it. A batch that cannot be
    written stays in memory, in order, and is retried first; reads of the event log merge the
    events not committed yet (pending, being written, or failed).

Fencing
    ``claim`` is one conditional statement (``INSERT .. ON CONFLICT DO NOTHING`` for epoch 1,
    ``UPDATE .. WHERE epoch = expected`` after): Postgres row locks make exactly one of racing
    claimants win. A fenced ``put_session``/``put_turn`` is one ``INSERT .. SELECT .. WHERE
    EXISTS (SELECT .. FROM ownership .. FOR SHARE)``: the share lock holds off a concurrent claim
    until the write commits, and a claim that committed first makes the write affect no row.
    A batch of events writes each fenced row only while its session is owned with the row's
    epoch (the same ``EXISTS .. FOR SHARE``, row by row in the one statement); the rows it
    returns tell which were left out as stale.

Clock
    Ownership times come from the server's clock, so lease ages compare across machines. The
    records' own timestamps are the writers' (as in SQLite).

Processes
    Child processes are per machine: the registry's ``node`` (default: the host name) scopes
    ``put_process``/``list_processes``, so a restarted daemon never sees, let alone ends,
    another machine's pids.

Text
    Postgres text cannot hold NUL characters; a prompt or an error text may. Those columns are
    ``json`` (a JSON string, where NUL is ``\\u0000``), as are the JSON objects; ``json``
    rather than ``jsonb`` also keeps NUL and the key order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import threading
from collections.abc import Sequence
from typing import Any, Final, cast

import psycopg

from hotsession.errors import RegistryError
from hotsession.registry.backlog import BATCH_MAX, EventBacklog, Pending
from hotsession.registry.base import stale_epoch, stale_events
from hotsession.registry.order import SessionOrder
from hotsession.registry.pgconn import Conn, PgPool
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

__all__ = ["BATCH_MAX", "MIGRATIONS", "PostgresRegistry"]

log = logging.getLogger(__name__)


# Ordered migrations: MIGRATIONS[i] takes the schema from version i to i + 1. Never edit a
# released entry: append a new one.
MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: initial schema
    """
    CREATE TABLE sessions (
        id              text PRIMARY KEY,
        ins             bigint GENERATED ALWAYS AS IDENTITY,  -- tie-break of the listing order
        tenant          text NOT NULL,
        cli_session_id  text NOT NULL,
        cwd             text NOT NULL,
        options         json NOT NULL,
        profile_key     text NOT NULL,
        state           text NOT NULL,
        created_at      double precision NOT NULL,
        updated_at      double precision NOT NULL,
        last_active_at  double precision NOT NULL,
        turns           integer NOT NULL,
        metadata        json NOT NULL,
        pid             integer,
        last_timing     json,
        error           json,            -- a JSON string or NULL
        closed_at       double precision
    );
    CREATE INDEX sessions_tenant_created ON sessions (tenant, created_at);
    CREATE INDEX sessions_created ON sessions (created_at);
    CREATE INDEX sessions_updated ON sessions (updated_at);

    CREATE TABLE turns (
        session_id      text NOT NULL,
        turn            integer NOT NULL,
        prompt          json NOT NULL,   -- a JSON string
        status          text NOT NULL,
        queued_at       double precision NOT NULL,
        started_at      double precision,
        ended_at        double precision,
        timing          json,
        error_code      text,
        error_message   json,            -- a JSON string or NULL
        PRIMARY KEY (session_id, turn)
    );

    CREATE TABLE events (
        session_id      text NOT NULL,
        seq             bigint NOT NULL,
        turn            integer NOT NULL,
        type            text NOT NULL,
        data            json NOT NULL,
        t               double precision NOT NULL,
        PRIMARY KEY (session_id, seq)
    );

    CREATE TABLE processes (
        node            text NOT NULL,
        pid             integer NOT NULL,
        create_time     double precision NOT NULL,
        role            text NOT NULL,
        session_id      text,
        cli_session_id  text,
        PRIMARY KEY (node, pid)
    );

    CREATE TABLE ownership (
        session_id      text PRIMARY KEY,
        node            text,            -- NULL once released
        epoch           bigint NOT NULL,
        claimed_at      double precision NOT NULL,
        renewed_at      double precision NOT NULL,
        token           text NOT NULL    -- the claim's random token (a retried claim knows it won)
    );
    CREATE INDEX ownership_node ON ownership (node);
    """,
)

_NOW: Final = "extract(epoch from statement_timestamp())::double precision"

_SESSION_COLS: Final = (
    "id, tenant, cli_session_id, cwd, options, profile_key, state, created_at, updated_at,"
    " last_active_at, turns, metadata, pid, last_timing, error, closed_at"
)
_SESSION_CASTS: Final = (
    "%s, %s, %s, %s, %s::json, %s, %s, %s, %s, %s, %s, %s::json, %s, %s::json, %s::json, %s"
)
_SESSION_UPDATE: Final = ", ".join(
    f"{c} = excluded.{c}" for c in _SESSION_COLS.replace(" ", "").split(",")[1:]
)
_TURN_COLS: Final = (
    "session_id, turn, prompt, status, queued_at, started_at, ended_at, timing, error_code,"
    " error_message"
)
_TURN_CASTS: Final = "%s, %s, %s::json, %s, %s, %s, %s, %s::json, %s, %s::json"
_TURN_UPDATE: Final = ", ".join(
    f"{c} = excluded.{c}" for c in _TURN_COLS.replace(" ", "").split(",")[2:]
)
_EVENT_COLS: Final = "session_id, seq, turn, type, data, t"
_EVENT_UPSERT: Final = (
    f"INSERT INTO events ({_EVENT_COLS}) VALUES (%s, %s, %s, %s, %s::json, %s)"
    " ON CONFLICT (session_id, seq) DO UPDATE SET turn = excluded.turn,"
    " type = excluded.type, data = excluded.data, t = excluded.t"
)
_PROCESS_COLS: Final = "pid, create_time, role, session_id, cli_session_id"
_OWNERSHIP_COLS: Final = "session_id, node, epoch, claimed_at, renewed_at"
# A fenced write happens only while the session is held at the given epoch (see module doc).
_FENCE: Final = (
    "WHERE EXISTS (SELECT 1 FROM ownership WHERE session_id = %s AND epoch = %s"
    " AND node IS NOT NULL FOR SHARE)"
)


# Errors of one malformed row (a caller's bug): written row by row, only the bad one is dropped.
_MALFORMED: Final = (
    psycopg.DataError,
    psycopg.IntegrityError,
    OverflowError,
    TypeError,
    ValueError,
)


def _dumps_opt(value: Any) -> str | None:
    return None if value is None else _dumps(value)


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
        _dumps_opt(rec.last_timing),
        _dumps_opt(rec.error),
        rec.closed_at,
    )


def _turn_row(turn: TurnRecord) -> tuple[Any, ...]:
    return (
        turn.session_id,
        turn.turn,
        _dumps(turn.prompt),
        turn.status,
        turn.queued_at,
        turn.started_at,
        turn.ended_at,
        _dumps_opt(turn.timing),
        turn.error_code,
        _dumps_opt(turn.error_message),
    )


def _session_from_row(r: Sequence[Any]) -> SessionRecord:
    return SessionRecord(
        id=r[0],
        tenant=r[1],
        cli_session_id=r[2],
        cwd=r[3],
        options=r[4],
        profile_key=r[5],
        state=cast(SessionState, r[6]),
        created_at=r[7],
        updated_at=r[8],
        last_active_at=r[9],
        turns=r[10],
        metadata=r[11],
        pid=r[12],
        last_timing=r[13],
        error=r[14],
        closed_at=r[15],
    )


def _turn_from_row(r: Sequence[Any]) -> TurnRecord:
    return TurnRecord(
        session_id=r[0],
        turn=r[1],
        prompt=r[2],
        status=cast(TurnStatus, r[3]),
        queued_at=r[4],
        started_at=r[5],
        ended_at=r[6],
        timing=r[7],
        error_code=r[8],
        error_message=r[9],
    )


def _event_from_row(r: Sequence[Any]) -> EventRecord:
    return EventRecord(session_id=r[0], seq=r[1], turn=r[2], type=r[3], data=r[4], t=r[5])


def _ownership_from_row(r: Sequence[Any]) -> Ownership:
    return Ownership(session_id=r[0], node=r[1], epoch=r[2], claimed_at=r[3], renewed_at=r[4])


async def _read_owner(conn: Conn, session_id: str) -> Ownership | None:
    cur = await conn.execute(
        f"SELECT {_OWNERSHIP_COLS} FROM ownership WHERE session_id = %s", (session_id,)
    )
    row = await cur.fetchone()
    return None if row is None else _ownership_from_row(row)


def _upsert(
    table: str,
    cols: str,
    casts: str,
    key: str,
    update: str,
    row: tuple[Any, ...],
    session_id: str,
    epoch: int | None,
) -> tuple[str, tuple[Any, ...]]:
    """An ``INSERT … ON CONFLICT (key) DO UPDATE`` of ``row``, fenced by ``epoch`` when given
    (the row is written only while ``session_id`` is owned with that epoch); its arguments."""
    if epoch is None:
        values, args = f"VALUES ({casts})", row
    else:
        values, args = f"SELECT {casts} {_FENCE}", (*row, session_id, epoch)
    sql = f"INSERT INTO {table} ({cols}) {values} ON CONFLICT ({key}) DO UPDATE SET {update}"
    return sql, args


def _session_upsert(rec: SessionRecord, epoch: int | None) -> tuple[str, tuple[Any, ...]]:
    """The statement that writes a session (fenced by ``epoch`` when given) and its arguments."""
    return _upsert(
        "sessions",
        _SESSION_COLS,
        _SESSION_CASTS,
        "id",
        _SESSION_UPDATE,
        _session_row(rec),
        rec.id,
        epoch,
    )


def _turn_upsert(turn: TurnRecord, epoch: int | None) -> tuple[str, tuple[Any, ...]]:
    """The statement that writes a turn (fenced by ``epoch`` when given) and its arguments."""
    return _upsert(
        "turns",
        _TURN_COLS,
        _TURN_CASTS,
        "session_id, turn",
        _TURN_UPDATE,
        _turn_row(turn),
        turn.session_id,
        epoch,
    )


class PostgresRegistry:
    """The :class:`~hotsession.registry.base.Registry` on Postgres (see module doc)."""

    def __init__(
        self,
        url: str,
        *,
        schema: str = "hotsession",
        node: str | None = None,
        flush_interval: float = 0.05,
        retry_for: float = 5.0,
        connect_timeout: float = 5.0,
        pool_min: int = 1,
        pool_max: int = 8,
    ) -> None:
        if flush_interval <= 0:
            raise ValueError("flush_interval must be > 0")
        self.url = url
        self.node = node or socket.gethostname()
        self.flush_interval = flush_interval
        self._db = PgPool(
            url,
            schema=schema,
            min_size=pool_min,
            max_size=pool_max,
            retry_for=retry_for,
            connect_timeout=connect_timeout,
            name="hotsession-registry",
        )
        self._state = "new"  # new -> open -> closed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._wake: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._commit_lock: asyncio.Lock | None = None

        # Events added but not written yet (any thread may add; the loop writes).
        self._backlog = EventBacklog(flush_interval)
        # A session's records are written one at a time, in call order (registry.order).
        self._order = SessionOrder()

    @property
    def schema(self) -> str:
        return self._db.schema

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect, create or migrate the schema, start the batch writer."""
        if self._state == "open":
            return
        if self._state == "closed":
            raise RegistryError("registry is closed")
        self._state = "open"
        try:
            await self._db.open()
            await self._db.migrate(MIGRATIONS, what="registry")
        except BaseException:
            self._state = "closed"
            with contextlib.suppress(Exception):
                await self._db.close()
            raise
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._flusher = self._loop.create_task(self._flush_loop(), name="hotsession-registry")

    async def close(self) -> None:
        """Flush, stop the writer, close the pool. Idempotent.

        Raises ``RegistryError`` (after releasing everything) when events could not be written.
        """
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closed"
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        err: RegistryError | None = None
        try:
            assert self._commit_lock is not None
            async with self._commit_lock:
                await self._commit_events()
        except Exception as exc:
            lost = len(self._backlog.failed)
            err = RegistryError(
                f"registry closed with {lost} events not written: {exc}",
                cause=str(exc),
                lost_events=lost,
            )
            log.error("%s", err.message)
        finally:
            await self._db.close()
        if err is not None:
            raise err

    # ------------------------------------------------------------------ sessions

    async def put_session(self, rec: SessionRecord, *, epoch: int | None = None) -> None:
        sql, args = _session_upsert(rec, epoch)
        async with self._order.hold(rec.id):
            await self._fenced(sql, args, rec.id, epoch, "write a session")

    async def get_session(self, session_id: str) -> SessionRecord | None:
        self._check_open()

        async def job(conn: Conn) -> SessionRecord | None:
            cur = await conn.execute(
                f"SELECT {_SESSION_COLS} FROM sessions WHERE id = %s", (session_id,)
            )
            row = await cur.fetchone()
            return None if row is None else _session_from_row(row)

        return await self._db.run(job, "read a session")

    async def list_sessions(
        self, tenant: str | None = None, *, include_closed: bool = False
    ) -> list[SessionRecord]:
        self._check_open()
        where: list[str] = []
        args: list[Any] = []
        if tenant is not None:
            where.append("tenant = %s")
            args.append(tenant)
        if not include_closed:
            where.append("state <> 'closed'")
        sql = f"SELECT {_SESSION_COLS} FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, ins DESC"

        async def job(conn: Conn) -> list[SessionRecord]:
            cur = await conn.execute(sql, args)
            return [_session_from_row(r) for r in await cur.fetchall()]

        return await self._db.run(job, "list sessions")

    # ------------------------------------------------------------------ turns

    async def put_turn(self, turn: TurnRecord, *, epoch: int | None = None) -> None:
        sql, args = _turn_upsert(turn, epoch)
        async with self._order.hold(turn.session_id):
            await self._fenced(sql, args, turn.session_id, epoch, "write a turn")

    async def list_turns(self, session_id: str, limit: int | None = None) -> list[TurnRecord]:
        self._check_open()

        async def job(conn: Conn) -> list[TurnRecord]:
            if limit is None:
                cur = await conn.execute(
                    f"SELECT {_TURN_COLS} FROM turns WHERE session_id = %s ORDER BY turn",
                    (session_id,),
                )
                return [_turn_from_row(r) for r in await cur.fetchall()]
            cur = await conn.execute(
                f"SELECT {_TURN_COLS} FROM turns WHERE session_id = %s ORDER BY turn DESC LIMIT %s",
                (session_id, max(limit, 0)),
            )
            rows = await cur.fetchall()
            rows.reverse()
            return [_turn_from_row(r) for r in rows]

        return await self._db.run(job, "list turns")

    # ------------------------------------------------------------------ events

    def add_events(self, events: Sequence[EventRecord], *, epoch: int | None = None) -> None:
        """Queue events for the next batch; never blocks on the network."""
        self._check_open()
        if not events:
            return
        if self._backlog.add(events, epoch):
            self._poke()

    async def flush(self) -> None:
        """Commit every event added so far; raises ``RegistryError`` while the store is
        unreachable, ``StaleEpoch`` when fenced events were dropped since the last flush."""
        self._check_open()
        assert self._commit_lock is not None
        async with self._commit_lock:
            await self._commit_events()
            dropped = self._backlog.take_stale()
            if dropped:
                raise stale_events(dropped)

    async def end_turn(
        self, turn: TurnRecord, session: SessionRecord, *, epoch: int | None = None
    ) -> None:
        """The event batch (every session's: its own transaction, as ``flush``), then the turn
        and the session in one transaction."""
        async with self._order.hold(session.id):
            await self._end_turn(turn, session, epoch)

    async def _end_turn(self, turn: TurnRecord, session: SessionRecord, epoch: int | None) -> None:
        # One transaction, pipelined (one round trip): the event batch (every session's), the
        # turn and the session. Fenced records that wrote no row were refused (the session
        # moved); the fence makes both refused together, and the events of that session too.
        records = [_turn_upsert(turn, epoch), _session_upsert(session, epoch)]
        assert self._commit_lock is not None
        async with self._commit_lock:
            counts = await self._commit_events(records, "record a turn's end")
            dropped = self._backlog.take_stale()
        if epoch is not None and counts[0] == 0:
            current = await self.owner(session.id)
            raise stale_epoch(session.id, epoch, current)
        if dropped:  # other events' fence: raised after the records are written
            raise stale_events(dropped)

    async def events_after(
        self, session_id: str, after_seq: int, limit: int = 1000
    ) -> list[EventRecord]:
        self._check_open()
        if limit <= 0:
            return []
        # Taken before the query: an event committed meanwhile is then in one of the two.
        backlog = self._backlog.unwritten()
        unwritten = [ev for ev in backlog if ev.session_id == session_id and ev.seq > after_seq]

        async def job(conn: Conn) -> list[EventRecord]:
            cur = await conn.execute(
                f"SELECT {_EVENT_COLS} FROM events WHERE session_id = %s AND seq > %s"
                " ORDER BY seq LIMIT %s",
                (session_id, after_seq, limit),
            )
            return [_event_from_row(r) for r in await cur.fetchall()]

        by_seq = {ev.seq: ev for ev in await self._db.run(job, "read events")}
        for ev in unwritten:  # not committed yet: replaces a stored one, as an upsert would
            by_seq[ev.seq] = ev
        return [by_seq[s] for s in sorted(by_seq)[:limit]]

    async def last_seq(self, session_id: str) -> int:
        self._check_open()
        unwritten = [ev.seq for ev in self._backlog.unwritten() if ev.session_id == session_id]

        async def job(conn: Conn) -> int:
            cur = await conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM events WHERE session_id = %s", (session_id,)
            )
            row = await cur.fetchone()
            return 0 if row is None else int(row[0])

        return max(await self._db.run(job, "read events"), *unwritten, 0)

    # ------------------------------------------------------------------ processes

    async def put_process(self, rec: ProcessRecord) -> None:
        self._check_open()
        args = (self.node, rec.pid, rec.create_time, rec.role, rec.session_id, rec.cli_session_id)

        async def job(conn: Conn) -> None:
            await conn.execute(
                f"INSERT INTO processes (node, {_PROCESS_COLS}) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (node, pid) DO UPDATE SET create_time = excluded.create_time,"
                " role = excluded.role, session_id = excluded.session_id,"
                " cli_session_id = excluded.cli_session_id",
                args,
            )

        await self._db.run(job, "write a process")

    async def forget_process(self, pid: int) -> None:
        self._check_open()

        async def job(conn: Conn) -> None:
            await conn.execute(
                "DELETE FROM processes WHERE node = %s AND pid = %s", (self.node, pid)
            )

        await self._db.run(job, "forget a process")

    async def list_processes(self) -> list[ProcessRecord]:
        self._check_open()

        async def job(conn: Conn) -> list[ProcessRecord]:
            cur = await conn.execute(
                f"SELECT {_PROCESS_COLS} FROM processes WHERE node = %s ORDER BY pid",
                (self.node,),
            )
            return [ProcessRecord(*r) for r in await cur.fetchall()]

        return await self._db.run(job, "list processes")

    # ------------------------------------------------------------------ ownership

    async def owner(self, session_id: str) -> Ownership | None:
        self._check_open()
        return await self._db.run(lambda conn: _read_owner(conn, session_id), "read an owner")

    async def claim(self, session_id: str, node: str, *, expect_epoch: int) -> Ownership:
        self._check_open()
        token = secrets.token_hex(16)

        async def job(conn: Conn) -> Ownership:
            if expect_epoch == 0:
                cur = await conn.execute(
                    f"INSERT INTO ownership ({_OWNERSHIP_COLS}, token)"
                    f" VALUES (%s, %s, 1, {_NOW}, {_NOW}, %s)"
                    f" ON CONFLICT (session_id) DO NOTHING RETURNING {_OWNERSHIP_COLS}",
                    (session_id, node, token),
                )
            else:
                cur = await conn.execute(
                    f"UPDATE ownership SET node = %s, epoch = epoch + 1, claimed_at = {_NOW},"
                    f" renewed_at = {_NOW}, token = %s WHERE session_id = %s AND epoch = %s"
                    f" RETURNING {_OWNERSHIP_COLS}",
                    (node, token, session_id, expect_epoch),
                )
            row = await cur.fetchone()
            if row is not None:
                return _ownership_from_row(row)
            cur = await conn.execute(
                f"SELECT {_OWNERSHIP_COLS}, token FROM ownership WHERE session_id = %s",
                (session_id,),
            )
            found = await cur.fetchone()
            current = None if found is None else _ownership_from_row(found)
            if found is not None and found[5] == token:
                return cast(Ownership, current)  # our own claim, committed before a retry
            raise stale_epoch(session_id, expect_epoch, current)

        return await self._db.run(job, "claim a session")

    async def renew(self, session_id: str, node: str, epoch: int) -> Ownership:
        self._check_open()

        async def job(conn: Conn) -> Ownership:
            cur = await conn.execute(
                f"UPDATE ownership SET renewed_at = {_NOW} WHERE session_id = %s AND node = %s"
                f" AND epoch = %s RETURNING {_OWNERSHIP_COLS}",
                (session_id, node, epoch),
            )
            row = await cur.fetchone()
            if row is None:
                raise stale_epoch(session_id, epoch, await _read_owner(conn, session_id))
            return _ownership_from_row(row)

        return await self._db.run(job, "renew an owner")

    async def release(self, session_id: str, node: str, epoch: int) -> None:
        self._check_open()

        async def job(conn: Conn) -> None:
            cur = await conn.execute(
                "UPDATE ownership SET node = NULL WHERE session_id = %s AND node = %s"
                " AND epoch = %s",
                (session_id, node, epoch),
            )
            if cur.rowcount == 1:
                return
            current = await _read_owner(conn, session_id)
            if current is not None and current.epoch == epoch and current.node is None:
                return  # released already (a retry whose first COMMIT went through)
            raise stale_epoch(session_id, epoch, current)

        await self._db.run(job, "release an owner")

    async def list_owned(self, node: str) -> list[Ownership]:
        self._check_open()

        async def job(conn: Conn) -> list[Ownership]:
            cur = await conn.execute(
                f"SELECT {_OWNERSHIP_COLS} FROM ownership WHERE node = %s ORDER BY session_id",
                (node,),
            )
            return [_ownership_from_row(r) for r in await cur.fetchall()]

        return await self._db.run(job, "list owners")

    # ------------------------------------------------------------------ plumbing

    def _check_open(self) -> None:
        if self._state != "open":
            raise RegistryError(
                "registry is closed" if self._state == "closed" else "registry is not open"
            )

    async def _fenced(
        self, sql: str, args: tuple[Any, ...], session_id: str, epoch: int | None, doing: str
    ) -> None:
        """Run one upsert; a fenced one that wrote no row was refused: raise ``StaleEpoch``."""
        self._check_open()

        async def job(conn: Conn) -> None:
            cur = await conn.execute(sql, args)
            if epoch is not None and cur.rowcount == 0:
                raise stale_epoch(session_id, epoch, await _read_owner(conn, session_id))

        await self._db.run(job, doing)

    def _poke(self) -> None:
        """Wake the batch writer (from any thread)."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        if threading.get_ident() == self._loop_thread:
            wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: close() flushes
                loop.call_soon_threadsafe(wake.set)

    async def _flush_loop(self) -> None:
        assert self._wake is not None and self._commit_lock is not None
        wake = self._wake
        while True:
            timeout = self._backlog.next_timeout()
            if timeout is None:
                await wake.wait()
                wake.clear()
                continue
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
                wake.clear()
                continue
            async with self._commit_lock:
                try:
                    await self._commit_events()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # kept in the backlog; the writer must live on
                    log.warning(
                        "registry: %d events not written yet (attempt %d, will retry): %s",
                        len(self._backlog.failed),
                        self._backlog.failures,
                        exc,
                    )

    async def _commit_events(
        self,
        records: Sequence[tuple[str, tuple[Any, ...]]] = (),
        doing: str = "write events",
    ) -> list[int]:
        """Commit the failed batch, then everything pending, and ``records`` (statements and
        their arguments) in one transaction; returns the rows each record wrote.

        On failure the whole batch is kept (in order) for the next attempt and the error is
        re-raised. Hold ``_commit_lock``.
        """
        backlog = self._backlog
        batch = backlog.take()
        if not batch and not records:
            return []

        async def job(conn: Conn) -> tuple[dict[tuple[str, int], int], list[int]]:
            try:
                return await _write_pipelined(conn, batch, records)
            except _MALFORMED:
                # A malformed event (or record) must not poison the batch, which would be
                # retried forever: write the events the careful way, then the records.
                await conn.rollback()
            stale = await _write_events(conn, batch) if batch else {}
            counts = []
            async with conn.transaction():
                for sql, args in records:
                    counts.append((await conn.execute(sql, args)).rowcount)
            return stale, counts

        try:
            stale, counts = await self._db.run(job, doing)
        except BaseException:
            if batch:
                backlog.write_failed(batch)
            raise
        backlog.written(batch, stale)
        return counts


_EVENTS_UPSERT: Final = (
    f"INSERT INTO events ({_EVENT_COLS})"
    " SELECT e.session_id, e.seq, e.turn, e.type, e.data::json, e.t"
    " FROM unnest(%s::text[], %s::bigint[], %s::integer[], %s::text[], %s::text[],"
    " %s::double precision[], %s::bigint[]) AS e(session_id, seq, turn, type, data, t, epoch)"
    " WHERE e.epoch IS NULL OR EXISTS (SELECT 1 FROM ownership o WHERE o.session_id ="
    " e.session_id AND o.epoch = e.epoch AND o.node IS NOT NULL FOR SHARE)"
    " ON CONFLICT (session_id, seq) DO UPDATE SET turn = excluded.turn,"
    " type = excluded.type, data = excluded.data, t = excluded.t"
    " RETURNING session_id, seq"
)
"""A batch of events in one statement, each written only while its session is owned with the
epoch it was added under (none: always); the rows written come back."""


async def _write_pipelined(
    conn: Conn, batch: list[Pending], records: Sequence[tuple[str, tuple[Any, ...]]]
) -> tuple[dict[tuple[str, int], int], list[int]]:
    """The batch and ``records`` in one transaction, pipelined: BEGIN, the events (one
    statement, fenced row by row in SQL: no read of the owners first), the records, COMMIT in
    one round trip (were 6 for the events and 4 for a turn's end). Returns the stale counts and
    each record's rows; a malformed row raises (the caller writes the careful way)."""
    latest: dict[tuple[str, int], tuple[tuple[Any, ...], int | None]] = {}
    for ev, ep in batch:  # a seq twice in one statement is refused: the last one wins
        latest[(ev.session_id, ev.seq)] = (_event_row(ev), ep)
    cols: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
    for row, ep in latest.values():
        for col, value in zip(cols, (*row, ep), strict=True):
            col.append(value)
    async with conn.pipeline():
        async with conn.transaction():
            events = await conn.execute(_EVENTS_UPSERT, cols) if latest else None
            cursors = [await conn.execute(sql, args) for sql, args in records]
    written = {(str(r[0]), int(r[1])) for r in await events.fetchall()} if events else set()
    stale: dict[tuple[str, int], int] = {}
    for ev, ep in batch:
        if ep is not None and (ev.session_id, ev.seq) not in written:
            stale[(ev.session_id, ep)] = stale.get((ev.session_id, ep), 0) + 1
    return stale, [cur.rowcount for cur in cursors]


async def _write_events(conn: Conn, batch: list[Pending]) -> dict[tuple[str, int], int]:
    """Write a batch in one transaction; fenced events whose epoch is not current are left out
    (their counts by ``(session_id, epoch)`` are returned)."""
    stale: dict[tuple[str, int], int] = {}
    async with conn.transaction():
        fenced = sorted({ev.session_id for ev, ep in batch if ep is not None})
        current: dict[str, int] = {}
        if fenced:
            cur = await conn.execute(
                "SELECT session_id, epoch FROM ownership WHERE session_id = ANY(%s)"
                " AND node IS NOT NULL ORDER BY session_id FOR SHARE",
                (fenced,),
            )
            current = {str(sid): int(ep) for sid, ep in await cur.fetchall()}
        rows: list[tuple[Any, ...]] = []
        for ev, ep in batch:
            if ep is None or current.get(ev.session_id) == ep:
                rows.append(_event_row(ev))
            else:
                stale[(ev.session_id, ep)] = stale.get((ev.session_id, ep), 0) + 1
        try:
            async with conn.transaction(), conn.cursor() as cur:  # a savepoint
                await cur.executemany(_EVENT_UPSERT, rows)
        except _MALFORMED:
            # A malformed event must not poison the batch, which would be retried forever:
            # write row by row, each under its own savepoint, and drop only the bad ones.
            for row in rows:
                try:
                    async with conn.transaction():
                        await conn.execute(_EVENT_UPSERT, row)
                except _MALFORMED as exc:
                    log.error("registry: dropped malformed event %r: %s", row[:4], exc)
    return stale
