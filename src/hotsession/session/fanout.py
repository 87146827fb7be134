"""The event fan-out of a session: numbering, the log, the turn's stream, live subscribers.

Every event of a session goes through :meth:`EventFanout.emit`, on the daemon's loop and on the
turn's path: it takes the session's next sequence number, hands the event to the registry's
buffered log (non-blocking), to the turn's own stream and to every live :class:`Subscription`.
``events(after)`` is replay from the log followed by live events, each exactly once;
:func:`replay` is the replay alone, for a session that is no longer open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from hotsession.events import Event
from hotsession.registry import EventRecord, Registry
from hotsession.session.turn import Turn

SUBSCRIBER_BUFFER = 10_000
_REPLAY_BATCH = 1000


async def replay(
    registry: Registry, session_id: str, after: int = 0
) -> AsyncGenerator[Event, None]:
    """The stored events of a session after seq ``after``, in order (the one replay)."""
    last = after
    while True:
        batch = await registry.events_after(session_id, last, limit=_REPLAY_BATCH)
        for rec in batch:
            last = rec.seq
            yield Event(rec.session_id, rec.seq, rec.turn, rec.type, rec.data, rec.t)
        if len(batch) < _REPLAY_BATCH:
            return


class Subscription:
    """Live events of a session for one listener; bounded, dropped when it falls behind.

    Subclass it and override ``push`` to do something else with the events (``push`` runs on
    the turn's path: keep it quick)."""

    def __init__(self, fanout: EventFanout, maxsize: int = SUBSCRIBER_BUFFER) -> None:
        self.fanout = fanout
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=maxsize)
        self.dropped = False

    @property
    def session_id(self) -> str:
        """The session this subscription listens to."""
        return self.fanout.session_id

    def push(self, event: Event | None) -> None:
        """Deliver, or drop this subscriber if it is too slow (it must reconnect and replay)."""
        if self.dropped:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped = True
            self.fanout.unsubscribe(self)

    def close(self) -> None:
        """Stop listening."""
        self.fanout.unsubscribe(self)

    async def get(self) -> Event | None:
        """The next live event; None when the session ended the stream."""
        return await self.queue.get()


class EventFanout:
    """One session's event numbering and delivery (see the module docstring)."""

    def __init__(self, session_id: str, registry: Registry, *, last_seq: int = 0) -> None:
        self.session_id = session_id
        self.registry = registry
        self.seq = last_seq
        self._subscribers: set[Subscription] = set()

    @property
    def subscribers(self) -> int:
        """How many live subscriptions there are."""
        return len(self._subscribers)

    def emit(
        self, turn: Turn | None, kind: str, data: dict[str, Any], *, turn_no: int = 0
    ) -> Event:
        """Number an event and hand it to the log, the turn and the subscribers."""
        self.seq += 1
        event = Event(self.session_id, self.seq, turn.number if turn else turn_no, kind, data)
        self.registry.add_events(
            [EventRecord(self.session_id, event.seq, event.turn, kind, data, event.t)]
        )
        if turn is not None:
            if event.terminal:
                turn.record.ended_at = event.t
            turn._push(event)
        for sub in list(self._subscribers):
            sub.push(event)
        return event

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
            last = after
            async with contextlib.aclosing(replay(self.registry, self.session_id, after)) as old:
                async for event in old:
                    last = event.seq
                    yield event
            if sub is None:
                return
            while True:
                live = await sub.get()
                if live is None or sub.dropped and sub.queue.empty():
                    return
                if live.seq > last:
                    last = live.seq
                    yield live
        finally:
            if sub is not None:
                sub.close()
