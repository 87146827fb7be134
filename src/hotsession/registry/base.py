"""The registry interface: where sessions, turns and the event log live.

The embedded default is SQLite (:mod:`hotsession.registry.sqlite`); the multi-machine mode will
put Postgres behind the same interface. Writes of events are buffered: ``add_events`` never
blocks the caller (it is on a turn's hot path) and ``flush`` makes everything added so far
durable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from hotsession.registry.records import EventRecord, ProcessRecord, SessionRecord, TurnRecord


class Registry(Protocol):
    """Durable state of the daemon. Every method may raise ``RegistryError``."""

    async def open(self) -> None:
        """Create or migrate the store; must be called before anything else."""

    async def close(self) -> None:
        """Flush and close."""

    async def put_session(self, rec: SessionRecord) -> None:
        """Insert or replace a session."""

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """One session, or None."""

    async def list_sessions(
        self, tenant: str | None = None, *, include_closed: bool = False
    ) -> list[SessionRecord]:
        """Sessions (of one tenant when given), newest first."""

    async def put_turn(self, turn: TurnRecord) -> None:
        """Insert or replace the turn ``(session_id, turn)``."""

    async def list_turns(self, session_id: str, limit: int | None = None) -> list[TurnRecord]:
        """Turns of a session, oldest first (the last ``limit`` when given)."""

    def add_events(self, events: Sequence[EventRecord]) -> None:
        """Queue events for writing; returns at once."""

    async def flush(self) -> None:
        """Wait until every event queued so far is written."""

    async def events_after(
        self, session_id: str, after_seq: int, limit: int = 1000
    ) -> list[EventRecord]:
        """Events with ``seq > after_seq``, in order."""

    async def last_seq(self, session_id: str) -> int:
        """The highest stored seq of a session, 0 when none."""

    async def put_process(self, rec: ProcessRecord) -> None:
        """Remember a live child process."""

    async def forget_process(self, pid: int) -> None:
        """The child is gone."""

    async def list_processes(self) -> list[ProcessRecord]:
        """Every child remembered (after a crash: possible orphans)."""
