"""A ``SessionStore`` in one SQLite file (the single-machine counterpart of the Postgres one).

Same tables and semantics as :mod:`hotsession.transcripts.postgres` (entries in commit order
with uuids deduped per key, keys with an ``mtime`` in epoch ms, summaries folded in
``append``'s transaction), WAL mode. One connection serves every call, in a worker thread
(``asyncio.to_thread``) under a lock: calls never block the event loop and never interleave.
``mtime`` is strictly increasing within the store, so two appends in the same millisecond
still order.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

from claude_agent_sdk import SessionStore, fold_session_summary
from claude_agent_sdk.types import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStoreEntry,
    SessionStoreListEntry,
    SessionSummaryEntry,
)

from hotsession.errors import RegistryError

__all__ = ["SqliteSessionStore"]

T = TypeVar("T")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS transcript_entries (
    project_key     TEXT NOT NULL,
    session_id      TEXT NOT NULL,
    subpath         TEXT NOT NULL,
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid            TEXT,
    entry           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transcript_entries_key
    ON transcript_entries (project_key, session_id, subpath, seq);
CREATE UNIQUE INDEX IF NOT EXISTS transcript_entries_uuid
    ON transcript_entries (project_key, session_id, subpath, uuid) WHERE uuid IS NOT NULL;
CREATE TABLE IF NOT EXISTS transcript_keys (
    project_key     TEXT NOT NULL,
    session_id      TEXT NOT NULL,
    subpath         TEXT NOT NULL,
    mtime           INTEGER NOT NULL,
    PRIMARY KEY (project_key, session_id, subpath)
);
CREATE TABLE IF NOT EXISTS transcript_summaries (
    project_key     TEXT NOT NULL,
    session_id      TEXT NOT NULL,
    mtime           INTEGER NOT NULL,
    data            TEXT NOT NULL,
    PRIMARY KEY (project_key, session_id)
);
"""


def _parts(key: SessionKey) -> tuple[str, str, str]:
    return key["project_key"], key["session_id"], key.get("subpath") or ""


class SqliteSessionStore(SessionStore):
    """The Agent SDK's ``SessionStore`` in a SQLite file (see module doc)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._last_mtime = 0

    async def open(self) -> None:
        if self._conn is not None:
            return

        def connect() -> sqlite3.Connection:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.executescript(_SCHEMA)
            return conn

        try:
            self._conn = await asyncio.to_thread(connect)
        except sqlite3.Error as exc:
            raise RegistryError(f"transcript store cannot open {self.path}: {exc}") from exc

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.to_thread(conn.close)

    async def _run(self, fn: Callable[[sqlite3.Connection], T], doing: str) -> T:
        if self._conn is None:
            await self.open()
        conn = self._conn
        assert conn is not None

        def locked() -> T:
            with self._lock:
                return fn(conn)

        try:
            return await asyncio.to_thread(locked)
        except sqlite3.Error as exc:
            raise RegistryError(f"transcript store cannot {doing}: {exc}", cause=str(exc)) from exc

    def _next_mtime(self) -> int:
        now_ms = int(time.time() * 1000)
        self._last_mtime = max(now_ms, self._last_mtime + 1)
        return self._last_mtime

    # ------------------------------------------------------------------ required

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        if not entries:
            return
        pk, sid, sub = _parts(key)
        rows = []
        for entry in entries:
            uuid = entry.get("uuid") if isinstance(entry, dict) else None
            rows.append((pk, sid, sub, uuid if isinstance(uuid, str) else None, json.dumps(entry)))

        def job(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR IGNORE INTO transcript_entries"
                    " (project_key, session_id, subpath, uuid, entry) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                mtime = self._next_mtime()
                conn.execute(
                    "INSERT OR REPLACE INTO transcript_keys VALUES (?, ?, ?, ?)",
                    (pk, sid, sub, mtime),
                )
                if not sub:
                    found = conn.execute(
                        "SELECT mtime, data FROM transcript_summaries"
                        " WHERE project_key = ? AND session_id = ?",
                        (pk, sid),
                    ).fetchone()
                    prev: SessionSummaryEntry | None = None
                    if found is not None:
                        prev = {"session_id": sid, "mtime": found[0], "data": json.loads(found[1])}
                    folded = fold_session_summary(prev, key, entries)
                    conn.execute(
                        "INSERT OR REPLACE INTO transcript_summaries VALUES (?, ?, ?, ?)",
                        (pk, sid, mtime, json.dumps(folded["data"])),
                    )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        await self._run(job, "append a transcript")

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        pk, sid, sub = _parts(key)

        def job(conn: sqlite3.Connection) -> list[SessionStoreEntry] | None:
            rows = conn.execute(
                "SELECT entry FROM transcript_entries WHERE project_key = ? AND session_id = ?"
                " AND subpath = ? ORDER BY seq",
                (pk, sid, sub),
            ).fetchall()
            return [json.loads(r[0]) for r in rows] or None

        return await self._run(job, "load a transcript")

    # ------------------------------------------------------------------ optional

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        def job(conn: sqlite3.Connection) -> list[SessionStoreListEntry]:
            rows = conn.execute(
                "SELECT session_id, mtime FROM transcript_keys WHERE project_key = ?"
                " AND subpath = '' ORDER BY session_id",
                (project_key,),
            )
            return [{"session_id": r[0], "mtime": int(r[1])} for r in rows]

        return await self._run(job, "list transcripts")

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        def job(conn: sqlite3.Connection) -> list[SessionSummaryEntry]:
            rows = conn.execute(
                "SELECT session_id, mtime, data FROM transcript_summaries WHERE project_key = ?"
                " ORDER BY session_id",
                (project_key,),
            )
            return [
                {"session_id": r[0], "mtime": int(r[1]), "data": json.loads(r[2])} for r in rows
            ]

        return await self._run(job, "list transcript summaries")

    async def delete(self, key: SessionKey) -> None:
        pk, sid, sub = _parts(key)

        def job(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if sub:
                    for table in ("transcript_entries", "transcript_keys"):
                        conn.execute(
                            f"DELETE FROM {table} WHERE project_key = ? AND session_id = ?"
                            " AND subpath = ?",
                            (pk, sid, sub),
                        )
                else:
                    for table in ("transcript_entries", "transcript_keys", "transcript_summaries"):
                        conn.execute(
                            f"DELETE FROM {table} WHERE project_key = ? AND session_id = ?",
                            (pk, sid),
                        )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        await self._run(job, "delete a transcript")

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        def job(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT subpath FROM transcript_keys WHERE project_key = ? AND session_id = ?"
                " AND subpath <> '' ORDER BY subpath",
                (key["project_key"], key["session_id"]),
            )
            return [r[0] for r in rows]

        return await self._run(job, "list transcript subkeys")
