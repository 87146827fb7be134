"""The event fan-out of a session: numbering, the log, the turn's stream, live subscribers.

Every event of a session goes through :meth:`EventFanout.emit` (a run of partial messages read
together through :meth:`EventFanout.emit_partials`, the same in one loop), on the daemon's loop
and on the turn's path: it takes the session's next sequence number, hands the event to the
registry's buffered log (non-blocking), to the turn's own stream and to every live
:class:`Subscription`.
``events(after)`` is replay from the log followed by live events, each exactly once;
:func:`replay` is the replay alone, for a session that is no longer open.

Partial messages (``include_partial_messages``). A streamed reply's ``stream_event`` messages
(one per token delta: hundreds a turn) are numbered like every event and reach the turn and the
subscribers the same way, but they are *transient*: they stay out of the durable log and are
kept in memory (``TRANSIENT_KEEP`` of them, of the running and the previous turn), and
``events(after)`` merges them into the replay by seq. Why: the complete ``assistant`` message
that follows the deltas carries the same content durably, and writing them cost ~10 ms of the
daemon's CPU per 500-delta turn (SQLite, measured 2026-11-30: 15 % of the CLI's own CPU for that
turn, against a target of 8 % for the whole daemon) and ~180 KB of log per streamed turn
(docs/benchmarks.md). So a reconnect during a turn, or soon after it, gets every delta it missed
exactly once; a replay of older history (or after a daemon restart) shows gaps in seq where the
deltas were, and the complete messages.

Seq numbers must never be reused across a restart, although the last transient ones were never
written. So before handing out a transient seq past ``_reserved``, a *reservation* row (type
``seq_reserved``, never replayed) is written at seq ``n + SEQ_RESERVE``, and the fan-out skips
that seq itself when it gets there: a restarted daemon continues after the highest stored seq,
which is at least the reservation (a reservation is as durable as any event: buffered like them).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from hotsession.events import Event
from hotsession.registry import EventRecord, Registry
from hotsession.session.turn import Turn

SUBSCRIBER_BUFFER = 10_000
_REPLAY_BATCH = 1000
TRANSIENT_KEEP = 20_000
"""Transient events kept for replay (those of the running and the previous turn, at most)."""
SEQ_RESERVE = 1024
"""How far ahead a reservation row covers the seqs of transient events (see the docstring)."""
RESERVED = "seq_reserved"


def is_transient(kind: str, data: dict[str, Any]) -> bool:
    """True for an event that stays out of the durable log: a partial message (token delta)."""
    return kind == "message" and data.get("type") == "stream_event"


async def replay(
    registry: Registry, session_id: str, after: int = 0
) -> AsyncGenerator[Event, None]:
    """The stored events of a session after seq ``after``, in order (the one replay)."""
    last = after
    while True:
        batch = await registry.events_after(session_id, last, limit=_REPLAY_BATCH)
        for rec in batch:
            last = rec.seq
            if rec.type != RESERVED:
                yield Event(rec.session_id, rec.seq, rec.turn, rec.type, rec.data, rec.t)
        if len(batch) < _REPLAY_BATCH:
            return


class Subscription:
    """Live events of a session for one listener; bounded, dropped when it falls behind.

    Subclass it and override ``push`` to do something else with the events (``push`` runs on
    the turn's path: keep it quick).

    The events wait in a deque with a doorbell, as a turn's do (``Turn.waiter``): a reader that
    writes them out in batches (the API's follow stream) takes what is there (``take_ready``)
    and sleeps on ``waiter`` without a task or an ``asyncio.Queue.get`` per event."""

    def __init__(self, fanout: EventFanout, maxsize: int = SUBSCRIBER_BUFFER) -> None:
        self.fanout = fanout
        self.maxsize = maxsize
        self.dropped = False
        self._events: collections.deque[Event | None] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._partials_ring = True

    @property
    def session_id(self) -> str:
        """The session this subscription listens to."""
        return self.fanout.session_id

    def push(self, event: Event | None) -> None:
        """Deliver, or drop this subscriber if it is too slow (it must reconnect and replay)."""
        if self.dropped:
            return
        if len(self._events) >= self.maxsize:
            self.dropped = True
            self.fanout.unsubscribe(self)
        else:
            self._events.append(event)
            if not self._partials_ring and event is not None and event.raw is not None:
                return
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def empty(self) -> bool:
        """True when no delivered event waits."""
        return not self._events

    def take_ready(self) -> list[Event | None]:
        """Every delivered event not taken yet (None: the session ended the stream)."""
        out = list(self._events)
        self._events.clear()
        return out

    def waiter(self, *, partials: bool = True) -> asyncio.Future[None]:
        """A future resolved at the next delivery (or the drop), as ``Turn.waiter``; resolved
        already when events wait. ``partials=False``: a partial message does not resolve it."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        self._partials_ring = partials
        if self._events or self.dropped:
            waiter.set_result(None)
            self._waiter = None
        return waiter

    def close(self) -> None:
        """Stop listening."""
        self.fanout.unsubscribe(self)

    async def get(self) -> Event | None:
        """The next live event; None when the session ended the stream (or it was dropped and
        every delivered event was taken)."""
        while not self._events:
            if self.dropped:
                return None
            await self.waiter()
        return self._events.popleft()


class EventFanout:
    """One session's event numbering and delivery (see the module docstring)."""

    def __init__(self, session_id: str, registry: Registry, *, last_seq: int = 0) -> None:
        self.session_id = session_id
        self.registry = registry
        self.seq = last_seq
        self._subscribers: set[Subscription] = set()
        self._transient: collections.deque[Event] = collections.deque(maxlen=TRANSIENT_KEEP)
        self._reserved = 0  # transient seqs up to this one are covered by a reservation row

    @property
    def subscribers(self) -> int:
        """How many live subscriptions there are."""
        return len(self._subscribers)

    def emit(
        self,
        turn: Turn | None,
        kind: str,
        data: dict[str, Any],
        *,
        turn_no: int = 0,
        raw: bytes | None = None,
        line: bytes | None = None,
    ) -> Event:
        """Number an event and hand it to the log, the turn and the subscribers (``raw``: the
        CLI's line of a message passed through unparsed; ``data`` then only names its type;
        ``line``: the CLI's line of a parsed message, see ``Event.line``)."""
        self.seq += 1
        if self.seq == self._reserved:
            self.seq += 1  # the reservation row holds that seq (see the module docstring)
        number = turn.number if turn else turn_no
        event = Event(self.session_id, self.seq, number, kind, data, raw=raw, line=line)
        if is_transient(kind, data):
            self._keep_transient(event)
        else:
            self.registry.add_events(
                [EventRecord(self.session_id, event.seq, event.turn, kind, data, event.t, line)]
            )
        if turn is not None:
            if event.terminal:
                turn.record.ended_at = event.t
            turn.push(event)
        for sub in list(self._subscribers):
            sub.push(event)
        return event

    def emit_partials(self, turn: Turn, lines: Sequence[bytes]) -> None:
        """``emit`` of partial messages (the CLI's lines, passed on unparsed) read together, in
        one loop: the same numbering, keeping and delivery. A streamed reply's deltas come in
        chunks of dozens, and ``emit`` was ~10 Python calls a delta (measured, cpureader's
        paragraph in docs/benchmarks.md)."""
        sid, number, t = self.session_id, turn.number, time.time()
        self._trim_transient(number)
        events: list[Event] = []
        add = events.append
        seq = self.seq
        for line in lines:
            seq += 1
            if seq == self._reserved:
                seq += 1  # the reservation row holds that seq (see the module docstring)
            event = Event(sid, seq, number, "message", None, t, raw=line)
            add(event)
            if seq >= self._reserved:
                self._reserve(event)
        self.seq = seq
        # The run is handed on at once: the ring and the turn take it whole (``Turn.push`` per
        # delta was a call, a deque append and a terminal check each: ~0.1 ms of a 500-delta
        # turn, measured 2026-11-30, docs/benchmarks.md).
        self._transient.extend(events)
        turn.push_partials(events)
        for sub in list(self._subscribers):
            for event in events:
                sub.push(event)

    def _keep_transient(self, event: Event) -> None:
        self._trim_transient(event.turn)
        self._transient.append(event)
        if event.seq >= self._reserved:
            self._reserve(event)

    def _trim_transient(self, turn: int) -> None:
        kept = self._transient
        if kept and kept[-1].turn != turn:
            # A new turn streams: only the previous turn's deltas stay with it.
            while kept and kept[0].turn < turn - 1:
                kept.popleft()

    def _reserve(self, event: Event) -> None:
        self._reserved = event.seq + SEQ_RESERVE
        self.registry.add_events(
            [EventRecord(self.session_id, self._reserved, event.turn, RESERVED, {}, event.t)]
        )

    def subscribe(self, sub: Subscription | None = None) -> Subscription:
        """Live events from now on (``sub``: a subclass whose ``push`` does something else)."""
        sub = sub if sub is not None else Subscription(self)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to ``sub`` (no error if it was not subscribed)."""
        self._subscribers.discard(sub)

    def end(self) -> None:
        """Tell every subscriber the stream ended (the session closed or the engine stops)."""
        for sub in list(self._subscribers):
            sub.push(None)

    async def events(self, after: int = 0, *, follow: bool = True) -> AsyncIterator[Event]:
        """Every event after ``after`` exactly once: replay from the log, then live ones."""
        sub = self.subscribe() if follow else None
        try:
            cursor = [after]
            async for old in self.replayed(after, cursor):
                for event in old:
                    yield event
            last = cursor[0]
            if sub is None:
                return
            while True:
                live = await sub.get()
                if live is None or sub.dropped and sub.empty():
                    return
                if live.seq > last:
                    last = live.seq
                    yield live
        finally:
            if sub is not None:
                sub.close()

    async def replayed(self, after: int, cursor: list[int]) -> AsyncIterator[list[Event]]:
        """The replay part of ``events``, in batches; ``cursor[0]`` ends as the seq it covered:
        a subscription made before it gives every later event (those up to the cursor it may
        also hold are to be skipped)."""
        last = after
        while True:
            # Every event up to ``upto`` is in the log or among the transient ones (both
            # are added synchronously by ``emit``); later ones come live (a subscription).
            upto = self.seq
            batch = await self.registry.events_after(self.session_id, last, limit=_REPLAY_BATCH)
            full = len(batch) >= _REPLAY_BATCH
            if full:
                upto = batch[-1].seq
            old = [
                Event(rec.session_id, rec.seq, rec.turn, rec.type, rec.data, rec.t)
                for rec in batch
                if rec.seq <= upto and rec.type != RESERVED
            ]
            if self._transient and self._transient[-1].seq > last:
                old += [e for e in self._transient if last < e.seq <= upto]
                old.sort(key=_seq)
            last = cursor[0] = max(last, upto)
            if old:
                yield old
            if not full:
                return


def _seq(event: Event) -> int:
    return event.seq
