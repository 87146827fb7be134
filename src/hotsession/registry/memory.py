"""An in-memory registry for the unit tests of other components.

Same semantics as :class:`~hotsession.registry.sqlite.SqliteRegistry`: records are copied in
and out (mutating a record after ``put_session`` does not change the stored one), sessions are
listed newest first, ``include_closed`` hides closed sessions, a later event with the same
``(session_id, seq)`` replaces the earlier one, and using the registry before ``open`` or after
``close`` raises :class:`~hotsession.errors.RegistryError`.

Fault injection: set :attr:`MemoryRegistry.broken` to ``True`` and every write (and ``flush``)
raises ``RegistryError`` as a full disk would; ``add_events`` still accepts events, which are
kept and written by the first ``flush`` after ``broken`` is reset, like the SQLite store does.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence

from hotsession.errors import RegistryError
from hotsession.registry.records import EventRecord, ProcessRecord, SessionRecord, TurnRecord

__all__ = ["MemoryRegistry"]


class MemoryRegistry:
    """The :class:`~hotsession.registry.base.Registry` kept in dicts; nothing is durable."""

    def __init__(self) -> None:
        self.broken = False  #: when True, writes raise RegistryError (see module doc)
        self._state = "new"
        self._sessions: dict[str, tuple[int, SessionRecord]] = {}  # id -> (insertion no, rec)
        self._inserted = 0
        self._turns: dict[str, dict[int, TurnRecord]] = {}
        self._events: dict[str, dict[int, EventRecord]] = {}
        self._pending: list[EventRecord] = []
        self._lock = threading.Lock()  # add_events may be called from any thread
        self._processes: dict[int, ProcessRecord] = {}

    async def open(self) -> None:
        if self._state == "closed":
            raise RegistryError("registry is closed")
        self._state = "open"

    async def close(self) -> None:
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closed"
        if self.broken and self._pending:
            lost = len(self._pending)
            raise RegistryError(
                f"registry closed with {lost} events not written", cause="broken", lost_events=lost
            )
        self._commit_pending()

    async def put_session(self, rec: SessionRecord) -> None:
        self._check_write()
        old = self._sessions.get(rec.id)
        if old is None:
            self._inserted += 1
        no = self._inserted if old is None else old[0]
        self._sessions[rec.id] = (no, copy.deepcopy(rec))

    async def get_session(self, session_id: str) -> SessionRecord | None:
        self._check_open()
        entry = self._sessions.get(session_id)
        return None if entry is None else copy.deepcopy(entry[1])

    async def list_sessions(
        self, tenant: str | None = None, *, include_closed: bool = False
    ) -> list[SessionRecord]:
        self._check_open()
        entries = [
            (no, rec)
            for no, rec in self._sessions.values()
            if (tenant is None or rec.tenant == tenant)
            and (include_closed or rec.state != "closed")
        ]
        entries.sort(key=lambda e: (e[1].created_at, e[0]), reverse=True)
        return [copy.deepcopy(rec) for _, rec in entries]

    async def put_turn(self, turn: TurnRecord) -> None:
        self._check_write()
        self._turns.setdefault(turn.session_id, {})[turn.turn] = copy.deepcopy(turn)

    async def list_turns(self, session_id: str, limit: int | None = None) -> list[TurnRecord]:
        self._check_open()
        turns = self._turns.get(session_id, {})
        keys = sorted(turns)
        if limit is not None:
            keys = keys[len(keys) - limit :] if limit > 0 else []
        return [copy.deepcopy(turns[k]) for k in keys]

    def add_events(self, events: Sequence[EventRecord]) -> None:
        self._check_open()
        with self._lock:
            self._pending.extend(events)
        if not self.broken:
            self._commit_pending()

    async def flush(self) -> None:
        self._check_write()
        self._commit_pending()

    async def events_after(
        self, session_id: str, after_seq: int, limit: int = 1000
    ) -> list[EventRecord]:
        self._check_open()
        by_seq = {s: ev for s, ev in self._events.get(session_id, {}).items() if s > after_seq}
        with self._lock:
            pending = list(self._pending)
        for ev in pending:
            if ev.session_id == session_id and ev.seq > after_seq:
                by_seq[ev.seq] = ev
        return [by_seq[s] for s in sorted(by_seq)[: max(limit, 0)]]

    async def last_seq(self, session_id: str) -> int:
        self._check_open()
        with self._lock:
            pending = [ev.seq for ev in self._pending if ev.session_id == session_id]
        return max([0, *self._events.get(session_id, {}), *pending])

    async def put_process(self, rec: ProcessRecord) -> None:
        self._check_write()
        self._processes[rec.pid] = rec

    async def forget_process(self, pid: int) -> None:
        self._check_write()
        self._processes.pop(pid, None)

    async def list_processes(self) -> list[ProcessRecord]:
        self._check_open()
        return [self._processes[pid] for pid in sorted(self._processes)]

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._state != "open":
            raise RegistryError(
                "registry is closed" if self._state == "closed" else "registry is not open"
            )

    def _check_write(self) -> None:
        self._check_open()
        if self.broken:
            raise RegistryError(
                "registry cannot write: the store is broken (fault injection)", cause="broken"
            )

    def _commit_pending(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        for ev in batch:
            self._events.setdefault(ev.session_id, {})[ev.seq] = ev
