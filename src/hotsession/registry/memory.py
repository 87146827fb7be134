"""An in-memory registry for the unit tests of other components.

Same semantics as :class:`~hotsession.registry.sqlite.SqliteRegistry`: records are copied in
and out (mutating a record after ``put_session`` does not change the stored one), sessions are
listed newest first, ``include_closed`` hides closed sessions, a later event with the same
``(session_id, seq)`` replaces the earlier one, and using the registry before ``open`` or after
``close`` raises :class:`~hotsession.errors.RegistryError`. Ownership epochs and fenced writes
behave as described in :mod:`hotsession.registry.base`.

Fault injection: set :attr:`MemoryRegistry.broken` to ``True`` and every write (and ``flush``)
raises ``RegistryError`` as a full disk would; ``add_events`` still accepts events, which are
kept and written by the first ``flush`` after ``broken`` is reset, like the SQLite store does.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence

from hotsession.errors import RegistryError
from hotsession.registry.base import stale_epoch, stale_events
from hotsession.registry.records import (
    EventRecord,
    Ownership,
    ProcessRecord,
    SessionRecord,
    TurnRecord,
    now,
)

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
        self._pending: list[tuple[EventRecord, int | None]] = []  # (event, fencing epoch)
        self._lock = threading.Lock()  # add_events may be called from any thread
        self._processes: dict[int, ProcessRecord] = {}
        self._owners: dict[str, Ownership] = {}
        self._stale: dict[tuple[str, int], int] = {}  # fenced events dropped, for the next flush

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

    async def put_session(self, rec: SessionRecord, *, epoch: int | None = None) -> None:
        self._check_write()
        self._check_epoch(rec.id, epoch)
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

    async def put_turn(self, turn: TurnRecord, *, epoch: int | None = None) -> None:
        self._check_write()
        self._check_epoch(turn.session_id, epoch)
        self._turns.setdefault(turn.session_id, {})[turn.turn] = copy.deepcopy(turn)

    async def list_turns(self, session_id: str, limit: int | None = None) -> list[TurnRecord]:
        self._check_open()
        turns = self._turns.get(session_id, {})
        keys = sorted(turns)
        if limit is not None:
            keys = keys[len(keys) - limit :] if limit > 0 else []
        return [copy.deepcopy(turns[k]) for k in keys]

    def add_events(self, events: Sequence[EventRecord], *, epoch: int | None = None) -> None:
        self._check_open()
        with self._lock:
            self._pending.extend((ev, epoch) for ev in events)
        if not self.broken:
            self._commit_pending()

    async def flush(self) -> None:
        self._check_write()
        self._commit_pending()
        if self._stale:
            dropped, self._stale = self._stale, {}
            raise stale_events(dropped)

    async def end_turn(
        self, turn: TurnRecord, session: SessionRecord, *, epoch: int | None = None
    ) -> None:
        self._check_write()
        self._commit_pending()
        self._check_epoch(session.id, epoch)
        await self.put_turn(turn, epoch=epoch)
        await self.put_session(session, epoch=epoch)
        if self._stale:
            dropped, self._stale = self._stale, {}
            raise stale_events(dropped)

    async def events_after(
        self, session_id: str, after_seq: int, limit: int = 1000
    ) -> list[EventRecord]:
        self._check_open()
        by_seq = {s: ev for s, ev in self._events.get(session_id, {}).items() if s > after_seq}
        with self._lock:
            pending = [ev for ev, _ in self._pending]
        for ev in pending:
            if ev.session_id == session_id and ev.seq > after_seq:
                by_seq[ev.seq] = ev
        return [by_seq[s] for s in sorted(by_seq)[: max(limit, 0)]]

    async def last_seq(self, session_id: str) -> int:
        self._check_open()
        with self._lock:
            pending = [ev.seq for ev, _ in self._pending if ev.session_id == session_id]
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

    # ------------------------------------------------------------------ ownership

    async def owner(self, session_id: str) -> Ownership | None:
        self._check_open()
        return self._owners.get(session_id)

    async def claim(self, session_id: str, node: str, *, expect_epoch: int) -> Ownership:
        self._check_write()
        current = self._owners.get(session_id)
        if (0 if current is None else current.epoch) != expect_epoch:
            raise stale_epoch(session_id, expect_epoch, current)
        t = now()
        new = Ownership(session_id, node, expect_epoch + 1, t, t)
        self._owners[session_id] = new
        return new

    async def renew(self, session_id: str, node: str, epoch: int) -> Ownership:
        self._check_write()
        current = self._held(session_id, node, epoch)
        renewed = Ownership(session_id, node, epoch, current.claimed_at, now())
        self._owners[session_id] = renewed
        return renewed

    async def release(self, session_id: str, node: str, epoch: int) -> None:
        self._check_write()
        current = self._owners.get(session_id)
        if current is not None and current.epoch == epoch and current.node is None:
            return  # released already
        current = self._held(session_id, node, epoch)
        self._owners[session_id] = Ownership(
            session_id, None, epoch, current.claimed_at, current.renewed_at
        )

    async def list_owned(self, node: str) -> list[Ownership]:
        self._check_open()
        return [o for sid, o in sorted(self._owners.items()) if o.node == node]

    # ------------------------------------------------------------------ helpers

    def _held(self, session_id: str, node: str, epoch: int) -> Ownership:
        current = self._owners.get(session_id)
        if current is None or current.epoch != epoch or current.node != node:
            raise stale_epoch(session_id, epoch, current)
        return current

    def _is_current(self, session_id: str, epoch: int | None) -> bool:
        if epoch is None:
            return True
        current = self._owners.get(session_id)
        return current is not None and current.node is not None and current.epoch == epoch

    def _check_epoch(self, session_id: str, epoch: int | None) -> None:
        if not self._is_current(session_id, epoch):
            assert epoch is not None
            raise stale_epoch(session_id, epoch, self._owners.get(session_id))

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
        for ev, epoch in batch:
            if self._is_current(ev.session_id, epoch):
                self._events.setdefault(ev.session_id, {})[ev.seq] = ev
            else:
                key = (ev.session_id, epoch if epoch is not None else 0)
                self._stale[key] = self._stale.get(key, 0) + 1
