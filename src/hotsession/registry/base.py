"""The registry interface: where sessions, turns and the event log live.

The embedded default is SQLite (:mod:`hotsession.registry.sqlite`); Postgres
(:mod:`hotsession.registry.postgres`) puts the same interface where several machines see it.
Writes of events are buffered: ``add_events`` never blocks the caller (it is on a turn's hot
path) and ``flush`` makes everything added so far durable.

Ownership and fencing
    With several nodes, one session must be driven by one node at a time. ``claim`` is a
    compare-and-set on the session's ownership epoch: it succeeds for exactly one of several
    claimants that offer the same ``expect_epoch`` and hands out ``expect_epoch + 1``. Writes
    may carry the epoch of the writer (``epoch=``): a write whose epoch is not the session's
    current one is refused with :class:`~hotsession.errors.StaleEpoch`, checked in the same
    transaction as the write, so a node that lost a session during a partition cannot change
    it afterwards. A write without an epoch is not fenced (the single-machine mode).
    Fenced events are checked when their batch is written: stale ones are dropped and the next
    ``flush`` raises ``StaleEpoch`` naming them.

A turn's end in one write
    ``end_turn`` is what a turn's end records — every event queued so far made durable, the
    turn's record and its session's — in one call, so the engine hands work to the store once
    per turn rather than three times (SQLite writes it inline on the event loop when it can, else
    on its thread: see :mod:`hotsession.registry.sqlite`; docs/benchmarks.md has the
    measurements). SQLite writes all three in one transaction; Postgres commits the
    event batch (shared by every session) and then the turn and session in one transaction.
    The turn and session are fenced by ``epoch`` like ``put_turn``/``put_session``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from hotsession.errors import StaleEpoch
from hotsession.registry.records import (
    EventRecord,
    Ownership,
    ProcessRecord,
    SessionRecord,
    TurnRecord,
)


class Registry(Protocol):
    """Durable state of the daemon. Every method may raise ``RegistryError``."""

    async def open(self) -> None:
        """Create or migrate the store; must be called before anything else."""

    async def close(self) -> None:
        """Flush and close."""

    async def put_session(self, rec: SessionRecord, *, epoch: int | None = None) -> None:
        """Insert or replace a session (fenced by ``epoch`` when given)."""

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """One session, or None."""

    async def list_sessions(
        self, tenant: str | None = None, *, include_closed: bool = False
    ) -> list[SessionRecord]:
        """Sessions (of one tenant when given), newest first."""

    async def put_turn(self, turn: TurnRecord, *, epoch: int | None = None) -> None:
        """Insert or replace the turn ``(session_id, turn)`` (fenced by ``epoch`` when given)."""

    async def list_turns(self, session_id: str, limit: int | None = None) -> list[TurnRecord]:
        """Turns of a session, oldest first (the last ``limit`` when given)."""

    def add_events(self, events: Sequence[EventRecord], *, epoch: int | None = None) -> None:
        """Queue events for writing; returns at once. ``epoch`` fences each of them."""

    async def flush(self) -> None:
        """Wait until every event queued so far is written (or dropped as stale: then raise
        ``StaleEpoch``)."""

    async def end_turn(
        self, turn: TurnRecord, session: SessionRecord, *, epoch: int | None = None
    ) -> None:
        """``flush``, ``put_turn(turn)`` and ``put_session(session)`` in one hand-off.

        When it returns, every event queued before the call is durable (or was dropped as
        stale) and both records are written. A stale ``epoch`` raises ``StaleEpoch`` and
        writes neither record (the events are still committed). Events dropped as stale raise
        ``StaleEpoch`` as ``flush`` does, after both records were written (their own fence held).
        A store that cannot be written raises ``RegistryError``: neither record is written and
        the events not written yet stay queued, as with ``flush``."""

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

    async def owner(self, session_id: str) -> Ownership | None:
        """The session's ownership, None when it was never claimed."""

    async def claim(self, session_id: str, node: str, *, expect_epoch: int) -> Ownership:
        """Take the session for ``node`` if its epoch is still ``expect_epoch`` (0: never
        claimed); the new epoch is ``expect_epoch + 1``. Raises ``StaleEpoch`` otherwise."""

    async def renew(self, session_id: str, node: str, epoch: int) -> Ownership:
        """Confirm ``node`` holds ``epoch`` and stamp ``renewed_at``; ``StaleEpoch`` if not."""

    async def release(self, session_id: str, node: str, epoch: int) -> None:
        """Give the session up (its epoch stays); ``StaleEpoch`` when not held at ``epoch``."""

    async def list_owned(self, node: str) -> list[Ownership]:
        """The sessions ``node`` holds, by session id."""


def stale_epoch(session_id: str, epoch: int, current: Ownership | None) -> StaleEpoch:
    """The error for a write or claim at ``epoch`` when ``current`` is the store's ownership."""
    cur_epoch = 0 if current is None else current.epoch
    holder = None if current is None else current.node
    return StaleEpoch(
        f"session {session_id}: epoch {epoch} is not the current one"
        f" ({cur_epoch}, held by {holder or 'nobody'})",
        session_id=session_id,
        epoch=epoch,
        current_epoch=cur_epoch,
        owner=holder,
    )


def stale_events(dropped: dict[tuple[str, int], int]) -> StaleEpoch:
    """The error ``flush`` raises for fenced events dropped as stale: ``{(sid, epoch): count}``."""
    total = sum(dropped.values())
    names = ", ".join(f"{sid}@{ep}" for sid, ep in sorted(dropped))
    return StaleEpoch(
        f"{total} events were dropped: their epoch is no longer current ({names})",
        dropped_events=total,
        sessions=sorted({sid for sid, _ in dropped}),
    )
