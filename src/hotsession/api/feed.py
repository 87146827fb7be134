"""``GET /v1/stream``: every session of one tenant, their turns and the pool, as one SSE stream.

Design
======
A client that shows many sessions (the dashboard) must learn when *any* of its tenant's
sessions changes, without one connection per session (browsers allow six per origin). One
:class:`Feed` per connection gathers three sources and one writer turns them into frames:

* Session changes. A hub state listener (``add_state_listener``; the hub calls it on the
  turn's path) only stores the session in a dict keyed by id and wakes the writer, which builds
  the list views (``view``) later. So a burst of changes of one session becomes one ``session``
  event with its latest view, and the backlog is bounded by the number of sessions.
* Turn milestones. A :class:`~hotsession.session.Subscription` whose ``push`` forwards only
  ``result`` / ``error`` / ``permission_request`` / ``permission_resolved`` (as small ``turn``
  events) into a bounded deque, on every open session of the tenant; new sessions are tapped
  when the listener first sees them. Nothing is subscribed while nobody listens, so a turn
  costs nothing extra then; with listeners, a ``message`` event costs one type check each.
* The pool. Every ``pool_interval`` seconds, ``pool()`` (the ``/v1/pool`` payload with a memory
  sample of the tenant's processes).

It starts with a ``session`` event per open session and a ``pool`` event (a snapshot: a client
needs no other request to draw its list, and a reconnect simply starts over; these frames carry
no ``id:``, there is nothing to replay). It ends when the daemon shuts down (the final
``error`` event ``shutting_down`` of every stream), when the client disconnects (Starlette
cancels the generator; ``finally`` removes the listener and the subscriptions), or when the
client falls ``max_backlog`` turn events behind (a final ``error`` event ``slow_client``: nothing
is buffered forever). A client that stops reading altogether is dropped by the edge's
``sse_send_timeout_s``. While nothing happens a ``: keep-alive`` comment goes out every
``keepalive_s``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from hotsession.api.events import KEEPALIVE, SHUTDOWN_FRAME, frame_untracked
from hotsession.events import Event
from hotsession.hub import Hotsession
from hotsession.session import Session, Subscription

TURN_TYPES = frozenset({"result", "error", "permission_request", "permission_resolved"})
MAX_BACKLOG = 1000

SLOW_FRAME = frame_untracked(
    "error",
    {"code": "slow_client", "message": "the client fell too far behind; reconnect"},
)


def milestone(event: Event) -> dict[str, Any]:
    """A turn milestone as ``/v1/stream`` sends it (the ``data`` of a ``turn`` event)."""
    return {
        "session_id": event.session_id,
        "seq": event.seq,
        "turn": event.turn,
        "type": event.type,
        "data": event.data,
    }


class _TurnTap(Subscription):
    """Forwards a session's turn milestones to a watch (and nothing else)."""

    def __init__(self, session: Session, watch: TenantWatch) -> None:
        super().__init__(session.fanout, maxsize=1)
        self.watch = watch

    def push(self, event: Event | None) -> None:
        if event is None:  # the session was closed (or the daemon stops)
            self.close()
            self.watch.taps.pop(self.session_id, None)
        elif event.type in TURN_TYPES:
            self.watch.turn_event(event)


class TenantWatch:
    """What changed among one tenant's sessions of a hub: the sessions (by id, latest wins)
    and their turn milestones (bounded), with a wake-up for the writer. The one gatherer
    behind this module's :class:`Feed` and the cluster node's ``NodeWatch``."""

    def __init__(self, hub: Hotsession, tenant: str, *, max_backlog: int = MAX_BACKLOG) -> None:
        self.hub = hub
        self.tenant = tenant
        self.max_backlog = max_backlog
        self.taps: dict[str, _TurnTap] = {}
        self.dirty: dict[str, Session] = {}
        self.turns: collections.deque[dict[str, Any]] = collections.deque()
        self.overflowed = False
        self._wake = asyncio.Event()

    # -- producers (called on the daemon's loop, possibly on a turn's path) ---------------------

    def on_state(self, session: Session) -> None:
        """Hub state listener (on the turn's path: only notes the session)."""
        if session.record.tenant != self.tenant:
            return
        self.dirty[session.id] = session
        if session.id not in self.taps and not session.closed:
            self._tap(session)
        self._wake.set()

    def turn_event(self, event: Event) -> None:
        """A milestone of one of the tenant's turns."""
        if len(self.turns) >= self.max_backlog:
            self.overflowed = True
        else:
            self.turns.append(milestone(event))
        self._wake.set()

    def _tap(self, session: Session) -> None:
        self.taps[session.id] = tap = _TurnTap(session, self)
        session.subscribe(tap)

    # -- the writer's side -----------------------------------------------------------------------

    def start(self) -> None:
        """Listen, and note every open session of the tenant (the snapshot)."""
        self.hub.add_state_listener(self.on_state)
        for session in self.hub.list(tenant=self.tenant):
            self.dirty[session.id] = session
            self._tap(session)

    def stop(self) -> None:
        """Stop listening and drop every tap."""
        self.hub.remove_state_listener(self.on_state)
        for tap in list(self.taps.values()):
            tap.close()
        self.taps.clear()

    def take_turns(self) -> list[dict[str, Any]]:
        """The milestones gathered since the last call, in order."""
        turns = list(self.turns)
        self.turns.clear()
        return turns

    def take_sessions(self) -> list[Session]:
        """The sessions changed since the last call (each once)."""
        sessions = list(self.dirty.values())
        self.dirty.clear()
        return sessions


class Feed(TenantWatch):
    """One connection's view of a tenant: see the module docstring."""

    def __init__(
        self,
        hub: Hotsession,
        tenant: str,
        *,
        view: Callable[[list[Session]], list[dict[str, Any]]],
        pool: Callable[[], dict[str, Any]],
        pool_interval: float,
        keepalive_s: float,
        closing: asyncio.Future[None],
        max_backlog: int = MAX_BACKLOG,
    ) -> None:
        super().__init__(hub, tenant, max_backlog=max_backlog)
        self.view = view
        self.pool = pool
        self.pool_interval = pool_interval
        self.keepalive_s = keepalive_s
        self.closing = closing

    def _wake_on_close(self, _: object) -> None:
        self._wake.set()

    # -- the writer ------------------------------------------------------------------------------

    async def frames(self) -> AsyncIterator[bytes]:
        """The stream's bytes (ends as the module docstring says)."""
        loop = asyncio.get_running_loop()
        self.start()
        self.closing.add_done_callback(self._wake_on_close)
        try:
            next_pool = last_out = loop.time()
            while True:
                if self.closing.done():
                    yield SHUTDOWN_FRAME
                    return
                if self.overflowed:
                    yield SLOW_FRAME
                    return
                self._wake.clear()
                out: list[bytes] = []
                # Turns first: a result comes before the state it leaves the session in.
                out += [frame_untracked("turn", m) for m in self.take_turns()]
                if self.dirty:
                    out += [frame_untracked("session", v) for v in self.view(self.take_sessions())]
                now = loop.time()
                if now >= next_pool:
                    out.append(frame_untracked("pool", self.pool()))
                    next_pool = now + self.pool_interval
                if out:
                    yield b"".join(out)
                    last_out = loop.time()
                    continue
                if now - last_out >= self.keepalive_s:
                    yield KEEPALIVE
                    last_out = now
                delay = min(next_pool, last_out + self.keepalive_s) - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
        finally:
            self.stop()
            self.closing.remove_done_callback(self._wake_on_close)
