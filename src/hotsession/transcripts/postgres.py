"""A ``SessionStore`` on Postgres: transcripts every machine can resume from.

Tables (in the store's schema, next to the registry's):

* ``transcript_entries``: one row per transcript line, in commit order (``seq``, an identity),
  the line as ``json`` (``json`` keeps NUL characters and key order; ``jsonb`` would not), and
  its ``uuid``, unique per key where present: re-appending a line with a known uuid is a no-op
  (``ON CONFLICT DO NOTHING`` on a partial unique index), lines without one are never deduped.
* ``transcript_keys``: every key written, with ``mtime`` (epoch ms, the server's clock).
* ``transcript_summaries``: the SDK's ``fold_session_summary`` state per main transcript,
  folded inside ``append``'s transaction under a row lock, stamped with the same ``mtime``.

A main transcript's ``subpath`` is stored as ``''`` (the SDK never uses an empty subpath).
Every row also carries ``tenant``: one store instance serves one tenant (``project_key`` comes
from the CLI and cannot tell tenants apart), and two tenants never see each other's lines.

Faults are those of :class:`~hotsession.registry.pgconn.PgPool`: bounded retries, then
``RegistryUnavailable``. Every statement is idempotent or runs in one transaction, so a retried
``append`` never doubles a line that has a uuid; a line without one could be written twice if
the connection drops during COMMIT (the SDK's own retries have the same property).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Final, cast

from claude_agent_sdk import SessionStore, fold_session_summary
from claude_agent_sdk.types import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStoreEntry,
    SessionStoreListEntry,
    SessionSummaryEntry,
)

from hotsession.registry.pgconn import Conn, PgPool

__all__ = ["MIGRATIONS", "PostgresSessionStore"]

MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE transcript_entries (
        tenant          text NOT NULL,
        project_key     text NOT NULL,
        session_id      text NOT NULL,
        subpath         text NOT NULL,
        seq             bigint GENERATED ALWAYS AS IDENTITY,
        uuid            text,
        entry           json NOT NULL,
        PRIMARY KEY (tenant, project_key, session_id, subpath, seq)
    );
    CREATE UNIQUE INDEX transcript_entries_uuid
        ON transcript_entries (tenant, project_key, session_id, subpath, uuid)
        WHERE uuid IS NOT NULL;

    CREATE TABLE transcript_keys (
        tenant          text NOT NULL,
        project_key     text NOT NULL,
        session_id      text NOT NULL,
        subpath         text NOT NULL,
        mtime           bigint NOT NULL,
        PRIMARY KEY (tenant, project_key, session_id, subpath)
    );

    CREATE TABLE transcript_summaries (
        tenant          text NOT NULL,
        project_key     text NOT NULL,
        session_id      text NOT NULL,
        mtime           bigint NOT NULL,
        data            json,            -- NULL: placeholder row, nothing folded yet
        PRIMARY KEY (tenant, project_key, session_id)
    );
    """,
)

_NOW_MS: Final = "(extract(epoch from clock_timestamp()) * 1000)::bigint"
# An append is one statement (so one transaction, and no BEGIN / COMMIT of its own): the lines
# (``unnest`` of their uuids and texts, inserted in their order, so ``seq`` follows it; a uuid
# already stored, or twice in the batch, is skipped), the key's mtime, and then either nothing
# more (``_APPEND_ONLY``) or the summary this store folded last, folded further and stamped with
# the key's new mtime, written only while the stored summary is still that one
# (``_APPEND_FOLDED``). Data-modifying ``WITH`` parts run once, to completion, whatever the
# main part reads of them.
_APPEND_WITH: Final = (
    "WITH lines AS (INSERT INTO transcript_entries"
    " (tenant, project_key, session_id, subpath, uuid, entry)"
    " SELECT %(tenant)s, %(pk)s, %(sid)s, %(sub)s, e.uuid, e.entry::json"
    " FROM unnest(%(uuids)s::text[], %(entries)s::text[]) WITH ORDINALITY AS e(uuid, entry, n)"
    " ORDER BY e.n"
    " ON CONFLICT (tenant, project_key, session_id, subpath, uuid) WHERE uuid IS NOT NULL"
    " DO NOTHING),"
    " key AS (INSERT INTO transcript_keys (tenant, project_key, session_id, subpath, mtime)"
    f" VALUES (%(tenant)s, %(pk)s, %(sid)s, %(sub)s, {_NOW_MS})"
    " ON CONFLICT (tenant, project_key, session_id, subpath)"
    " DO UPDATE SET mtime = GREATEST(excluded.mtime, transcript_keys.mtime + 1)"
    " RETURNING mtime)"
)
_APPEND_ONLY: Final = f"{_APPEND_WITH} SELECT mtime FROM key"
_APPEND_FOLDED: Final = (
    f"{_APPEND_WITH} UPDATE transcript_summaries s SET data = %(data)s::json, mtime = key.mtime"
    " FROM key WHERE s.tenant = %(tenant)s AND s.project_key = %(pk)s"
    " AND s.session_id = %(sid)s AND s.mtime = %(known)s RETURNING s.mtime"
)
SUMMARIES_KEPT: Final = 4096
"""Main transcripts whose last folded summary a store remembers (``append``)."""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _parts(key: SessionKey) -> tuple[str, str, str]:
    return key["project_key"], key["session_id"], key.get("subpath") or ""


async def _fold_stored(
    conn: Conn, key: SessionKey, entries: list[SessionStoreEntry], ident: tuple[str, str, str]
) -> SessionSummaryEntry:
    """Fold ``entries`` into the stored summary of ``ident`` (tenant, project, session), under
    its row lock, stamped with the key's mtime; the summary written."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO transcript_summaries (tenant, project_key, session_id, mtime)"
            " VALUES (%s, %s, %s, 0) ON CONFLICT DO NOTHING",
            ident,
        )
        cur = await conn.execute(
            "SELECT s.mtime, s.data, k.mtime FROM transcript_summaries s LEFT JOIN"
            " transcript_keys k ON k.tenant = s.tenant AND k.project_key = s.project_key"
            " AND k.session_id = s.session_id AND k.subpath = '' WHERE s.tenant = %s"
            " AND s.project_key = %s AND s.session_id = %s FOR UPDATE OF s",
            ident,
        )
        found = await cur.fetchone()
        assert found is not None
        prev: SessionSummaryEntry | None = None
        if found[1] is not None:
            prev = {"session_id": ident[2], "mtime": int(found[0]), "data": found[1]}
        folded = fold_session_summary(prev, key, entries)
        mtime = int(found[2]) if found[2] is not None else int(found[0])
        await conn.execute(
            "UPDATE transcript_summaries SET mtime = %s, data = %s::json"
            " WHERE tenant = %s AND project_key = %s AND session_id = %s",
            (mtime, _dumps(folded["data"]), *ident),
        )
    return {"session_id": ident[2], "mtime": mtime, "data": folded["data"]}


class PostgresSessionStore(SessionStore):
    """The Agent SDK's ``SessionStore`` on Postgres (see module doc).

    Give it a URL (it then owns its connection pool) or a shared
    :class:`~hotsession.registry.pgconn.PgPool`; call :meth:`open` before use.
    """

    def __init__(
        self,
        db: str | PgPool,
        *,
        schema: str = "hotsession",
        tenant: str = "",
        retry_for: float = 5.0,
    ) -> None:
        self._owns_pool = isinstance(db, str)
        self._db = (
            PgPool(db, schema=schema, retry_for=retry_for, name="hotsession-transcripts")
            if isinstance(db, str)
            else db
        )
        self.tenant = tenant
        self._open = False
        # The summary this store wrote last per main transcript (oldest first, bounded).
        self._summaries: dict[tuple[str, str, str], SessionSummaryEntry] = {}

    async def open(self) -> None:
        """Connect (when the store owns its pool) and create or migrate the tables."""
        if self._open:
            return
        if self._owns_pool:
            await self._db.open()
        try:
            await self._db.migrate(MIGRATIONS, what="transcripts")
        except BaseException:
            if self._owns_pool:
                with contextlib.suppress(Exception):
                    await self._db.close()
            raise
        self._open = True

    async def close(self) -> None:
        if self._open and self._owns_pool:
            await self._db.close()
        self._open = False

    # ------------------------------------------------------------------ required

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        if not entries:
            return
        pk, sid, sub = _parts(key)
        tenant = self.tenant
        uuids: list[str | None] = []
        for entry in entries:
            uuid = entry.get("uuid") if isinstance(entry, dict) else None
            uuids.append(uuid if isinstance(uuid, str) else None)
        ident = (tenant, pk, sid)
        known = None if sub else self._summaries.get(ident)
        folded = None if known is None else fold_session_summary(known, key, entries)
        args: dict[str, Any] = {
            "tenant": tenant,
            "pk": pk,
            "sid": sid,
            "sub": sub,
            "uuids": uuids,
            "entries": [_dumps(entry) for entry in entries],
        }
        if folded is not None and known is not None:
            args["data"] = _dumps(folded["data"])
            args["known"] = known["mtime"]

        async def job(conn: Conn) -> SessionSummaryEntry | None:
            # One statement, one round trip (see ``_APPEND_WITH``): the lines, the key's mtime
            # and, when this store folded the session's summary last (``known``), that summary
            # folded further, written only if the stored one is still it. A node flushes a
            # turn's frames before its result leaves (hotsession.cluster.node): this is on a
            # follow-up's path (was BEGIN, a statement per line, the key, the summary and
            # COMMIT, pipelined).
            cur = await conn.execute(_APPEND_FOLDED if "known" in args else _APPEND_ONLY, args)
            row = await cur.fetchone()
            if row is None or folded is None:
                return None  # the stored summary is another one: fold it again (below)
            return {"session_id": sid, "mtime": int(row[0]), "data": folded["data"]}

        summary = await self._db.run(job, "append a transcript")
        if summary is None and not sub:
            # The session's first append here, or its summary moved on elsewhere: fold these
            # lines into the stored summary under its row lock (its own transaction: a retry
            # must not write the lines twice).
            summary = await self._db.run(
                lambda conn: _fold_stored(conn, key, entries, ident), "fold a transcript summary"
            )
        if summary is not None:
            self._summaries.pop(ident, None)
            self._summaries[ident] = summary
            while len(self._summaries) > SUMMARIES_KEPT:
                self._summaries.pop(next(iter(self._summaries)))

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        pk, sid, sub = _parts(key)

        async def job(conn: Conn) -> list[SessionStoreEntry] | None:
            cur = await conn.execute(
                "SELECT entry FROM transcript_entries WHERE tenant = %s AND project_key = %s"
                " AND session_id = %s AND subpath = %s ORDER BY seq",
                (self.tenant, pk, sid, sub),
            )
            rows = await cur.fetchall()
            return [cast(SessionStoreEntry, r[0]) for r in rows] or None

        return await self._db.run(job, "load a transcript")

    # ------------------------------------------------------------------ optional

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        async def job(conn: Conn) -> list[SessionStoreListEntry]:
            cur = await conn.execute(
                "SELECT session_id, mtime FROM transcript_keys WHERE tenant = %s"
                " AND project_key = %s AND subpath = '' ORDER BY session_id",
                (self.tenant, project_key),
            )
            return [{"session_id": r[0], "mtime": int(r[1])} for r in await cur.fetchall()]

        return await self._db.run(job, "list transcripts")

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        async def job(conn: Conn) -> list[SessionSummaryEntry]:
            cur = await conn.execute(
                "SELECT session_id, mtime, data FROM transcript_summaries WHERE tenant = %s"
                " AND project_key = %s AND data IS NOT NULL ORDER BY session_id",
                (self.tenant, project_key),
            )
            return [
                {"session_id": r[0], "mtime": int(r[1]), "data": r[2]} for r in await cur.fetchall()
            ]

        return await self._db.run(job, "list transcript summaries")

    async def delete(self, key: SessionKey) -> None:
        pk, sid, sub = _parts(key)
        args = (self.tenant, pk, sid)
        if not sub:
            self._summaries.pop(args, None)

        async def job(conn: Conn) -> None:
            async with conn.transaction():
                if sub:  # one subagent transcript
                    where = "tenant = %s AND project_key = %s AND session_id = %s AND subpath = %s"
                    for table in ("transcript_entries", "transcript_keys"):
                        await conn.execute(f"DELETE FROM {table} WHERE {where}", (*args, sub))
                    return
                where = "tenant = %s AND project_key = %s AND session_id = %s"
                for table in ("transcript_entries", "transcript_keys", "transcript_summaries"):
                    await conn.execute(f"DELETE FROM {table} WHERE {where}", args)

        await self._db.run(job, "delete a transcript")

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        async def job(conn: Conn) -> list[str]:
            cur = await conn.execute(
                "SELECT subpath FROM transcript_keys WHERE tenant = %s AND project_key = %s"
                " AND session_id = %s AND subpath <> '' ORDER BY subpath",
                (self.tenant, key["project_key"], key["session_id"]),
            )
            return [r[0] for r in await cur.fetchall()]

        return await self._db.run(job, "list transcript subkeys")
