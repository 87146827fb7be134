"""A tenant's sessions on one node, pushed to an API daemon as they change (``/v1/stream``).

Design
======
The cluster daemon's ``/v1/stream`` (the dashboard's feed) must show every session of a tenant
on every node, their turn milestones as they happen, and the pool. Polling each node's views
every ``pool_interval`` showed a change up to that late and carried no ``turn`` events; instead
each connection opens one streaming call per node (``NodeHost.watch``), which pushes what
changed there, the way :mod:`hotsession.api.feed` does on one machine:

* Session changes. A state listener of the node's engine stores the session by id and wakes
  the writer, which builds the views when it runs: a burst of changes of one session is one view
  (its latest), and what waits is bounded by the number of sessions.
* Turn milestones. A tap on each of the tenant's sessions here forwards ``result`` / ``error`` /
  ``permission_request`` / ``permission_resolved`` (nothing else: a ``message`` costs one type
  check); sessions that open or arrive (adopted from a lost node) later are tapped when the
  listener first sees them.

The first batch is a snapshot (the views of the tenant's open sessions here). A batch is
``{"sessions": [view, ...], "turns": [milestone, ...]}``, turns first (a result comes before
the state it leaves its session in). A daemon that falls ``MAX_BACKLOG`` milestones behind gets
``{"resync": True}`` and the stream ends (it opens a new one: a fresh snapshot). The stream ends
when the daemon cancels the call (its client went away) or the node stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from hotsession.events import Event
from hotsession.hub import Hotsession
from hotsession.session import Session, Subscription

TURN_TYPES = frozenset({"result", "error", "permission_request", "permission_resolved"})
MAX_BACKLOG = 1000

__all__ = ["MAX_BACKLOG", "TURN_TYPES", "NodeWatch"]


def milestone(event: Event) -> dict[str, Any]:
    """A turn milestone as ``/v1/stream`` sends it (the ``data`` of a ``turn`` event)."""
    return {
        "session_id": event.session_id,
        "seq": event.seq,
        "turn": event.turn,
        "type": event.type,
        "data": event.data,
    }


class _Tap(Subscription):
    """Forwards one session's turn milestones to a watch (and nothing else)."""

    def __init__(self, session: Session, watch: NodeWatch) -> None:
        super().__init__(session.fanout, maxsize=1)
        self.watch = watch

    def push(self, event: Event | None) -> None:
        if event is None:  # the session was closed, dropped, or the node stops
            self.close()
            self.watch.taps.pop(self.session_id, None)
        elif event.type in TURN_TYPES:
            self.watch.turn_event(event)


class NodeWatch:
    """One daemon connection's view of a tenant on this node (see the module docstring)."""

    def __init__(
        self,
        hub: Hotsession,
        tenant: str,
        view: Callable[[Session], dict[str, Any]],
        *,
        max_backlog: int = MAX_BACKLOG,
    ) -> None:
        self.hub = hub
        self.tenant = tenant
        self.view = view
        self.max_backlog = max_backlog
        self.taps: dict[str, _Tap] = {}
        self.dirty: dict[str, Session] = {}
        self.turns: list[dict[str, Any]] = []
        self.overflowed = False
        self._wake = asyncio.Event()

    def on_state(self, session: Session) -> None:
        """The engine's state listener (on the turn's path: only notes the session)."""
        if session.record.tenant != self.tenant:
            return
        self.dirty[session.id] = session
        if session.id not in self.taps and not session.closed:
            self._tap(session)
        self._wake.set()

    def turn_event(self, event: Event) -> None:
        """A milestone of one of the tenant's turns here."""
        if len(self.turns) >= self.max_backlog:
            self.overflowed = True
        else:
            self.turns.append(milestone(event))
        self._wake.set()

    def _tap(self, session: Session) -> None:
        self.taps[session.id] = tap = _Tap(session, self)
        session.subscribe(tap)

    async def batches(self) -> AsyncIterator[dict[str, Any]]:
        """The snapshot, then a batch per wake-up (see the module docstring)."""
        self.hub.add_state_listener(self.on_state)
        try:
            for session in self.hub.list(tenant=self.tenant):
                self.dirty[session.id] = session
                self._tap(session)
            yield self._take()
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self.overflowed:
                    yield {"resync": True}
                    return
                batch = self._take()
                if batch["sessions"] or batch["turns"]:
                    yield batch
        finally:
            self.hub.remove_state_listener(self.on_state)
            for tap in list(self.taps.values()):
                tap.close()
            self.taps.clear()

    def _take(self) -> dict[str, Any]:
        turns, self.turns = self.turns, []
        sessions = list(self.dirty.values())
        self.dirty.clear()
        return {"sessions": [self.view(s) for s in sessions], "turns": turns}
