"""The SSE response of a turn (``POST …/turns``, ``POST /v1/ask``): an ASGI app of its own.

Design
======
What it writes is what :func:`hotsession.api.events.stream` writes for a turn, byte for byte: an
optional head frame, then (once the prompt is recorded: ``Turn.recorded``) the turn's events as
SSE frames, the events that are ready together in one write (``_batches``), up to the turn's
terminal ``result``/``error``; a ``: keep-alive`` comment after ``keepalive_s`` without a write;
the ``shutting_down`` error frame when the daemon stops first. The difference is how it gets
there, and it is why the module exists (hand-written where Starlette's ``StreamingResponse``
around that generator was measured to cost the most of the turn's HTTP side: py-spy of the
daemon under ``bench --cpu``, 2026-11-30, docs/benchmarks.md):

* It waits on the turn's doorbell (``Turn.waiter``: one future per batch of events that arrived
  together) instead of a task per event raced against the shutdown future by ``asyncio.wait``
  with a timeout.
* One keep-alive timer per stream, re-armed only when it fires (``call_at`` the last write plus
  ``keepalive_s``), instead of a timeout per wait. The daemon's shutdown rings the same doorbell
  (a done-callback on ``closing``).
* No task group: ``StreamingResponse`` runs the body and a ``receive`` listener as two tasks of
  an anyio task group per response, with cancel scopes, to notice a client that went away. A
  turn's stream ends by itself with the turn; writes to a client that went away are dropped by
  the server; a client that stays connected but stops reading meets the send limit of the
  edge's bounded send. So nothing listens for the disconnect while the turn runs; at each
  keep-alive (a turn idle for ``keepalive_s``, e.g. waiting for a permission answer) a listener
  is started once, so a stream whose client left ends then instead of at the turn's end.
* Partial messages (token deltas) that come soon after a write are held for up to
  ``COALESCE_S`` (5 ms) and written together; every other event goes out at once (see there),
  but for the CLI's ``result`` message: hotsession's ``result`` event follows it within a loop
  pass or two (the session's runner wakes on it), so the CLI's is held until then (at most
  ``COALESCE_S``) and both go out in one write.
* The last frame goes out with ``more_body=False``: the server writes it and the end of the
  chunked body in one write (``StreamingResponse`` sends an empty last body: one write more).

A plain follow-up wrote six times (the head; the CLI's ``system/init``, ``system/status``,
``assistant`` and ``result``; hotsession's ``result``): now five. Holding other complete messages
for ``COALESCE_S`` was tried and dropped (2026-11-30): it merged no more writes of a plain turn,
and the hold's timer woke the daemon once more a turn for ``system/status`` (the CLI writes it
~3 ms after ``system/init``), which cost more than the write it saved (a wake-up after a sleep
costs the loop's thread far more CPU than a write within one; docs/benchmarks.md). The head
stays a write of its own: uvloop's transport writes at once when its buffer is empty, so a head
held back to go with the first frame was still two system calls (tried, strace).

It is a reader of the turn (``attach``/``detach``): the turn's bookkeeping waits (bounded) until
the stream has written the terminal frame (``Turn.handed_over``).

:class:`FollowStream` is the same writer for ``GET …/events`` on an open session that follows
live events (a dashboard, a reconnecting client): the replay (``EventFanout.replayed``, one write
per batch of the log), then the live events of a subscription made before the replay (its
doorbell, ``Subscription.waiter``), each event once (by seq), the deltas held as above; it ends
when the session does (or the subscription was dropped for falling behind), and listens for the
client's disconnect from the start (it may run for hours). A follower through the generic
generator cost the daemon ~12–16 µs per event, more than the turn's own stream (measured with
one follower during 500-delta turns, docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from hotsession.api.events import KEEPALIVE, SHUTDOWN_FRAME, _batches
from hotsession.events import Event
from hotsession.session import EventFanout, Subscription
from hotsession.session.turn import Turn

COALESCE_S = 0.005
"""Partial messages (token deltas) that follow a write within this time are held back until
it has passed, and written together. Any other event (the complete message, the result) is
written at once, with the deltas held before it (the CLI's ``result`` message waits for
hotsession's ``result``, at most this long: ``_is_cli_result``). So a delta reaches the client
at most 5 ms later than the CLI wrote it, a client sees at most ~200 writes a second of text,
and the first delta after a pause (or the stream's first events) goes out at once. Measured
(``bench --cpu``, 2026-11-30): the CLI writes a 500-delta reply in ~50–100 ms, and a write per
delta (the stream's wake-up, framing, the server's send, the syscall) was most of the daemon's
~20 µs a delta on this side."""

HEADERS = [
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
]
"""As ``StreamingResponse(media_type="text/event-stream", headers=SSE_HEADERS)`` sends them."""


def _is_cli_result(event: Event) -> bool:
    """The CLI's ``result`` message: hotsession's ``result`` (or ``error``) event follows it at
    once, so it is held for that and both go out in one write (see the module docstring)."""
    return event.type == "message" and event.raw is None and event.data.get("type") == "result"


async def _disconnect(receive: Receive) -> None:
    """Returns when the client went away (a body not read yet is skipped)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class _Source(Protocol):
    def take_ready(self) -> list[Any]: ...

    def waiter(self, *, partials: bool = True) -> asyncio.Future[None]: ...


class _LiveStream(Response):
    """What a turn's and a follower's SSE response share (see the module docstring).

    A Starlette ``Response`` by type only, so a FastAPI route can return it; nothing of
    ``Response.__init__`` is needed."""

    media_type = "text/event-stream"

    def __init__(
        self,
        closing: asyncio.Future[None],
        *,
        keepalive_s: float,
        head: bytes = b"",
        opened: Callable[[], Any] | None = None,
        closed: Callable[[], Any] | None = None,
    ) -> None:
        self.closing = closing
        self.keepalive_s = keepalive_s
        self.head = head
        self.opened = opened  # the open-streams gauge
        self.closed = closed
        self.status_code = 200
        self.raw_headers = list(HEADERS)
        self.background = None  # what a Starlette response would run after it: nothing
        self._waiter: asyncio.Future[None] | None = None
        self._last_out = 0.0
        self._keepalive_due = False
        self._left = False  # the client went away
        self._listener: asyncio.Future[Any] | None = None
        self._receive: Receive | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._flush: asyncio.TimerHandle | None = None  # ends the hold of events
        self._flush_due = False
        self._counted = False  # ``opened`` was called
        self._wrote = False  # events went out (the first ones are never held back)

    def _wake(self, _: object = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        due = self._last_out + self.keepalive_s
        if loop.time() >= due:
            self._keepalive_due = True
            self._timer = loop.call_at(loop.time() + self.keepalive_s, self._tick)
            self._wake()
            self._listen()  # idle this long: notice a client that went away (module docstring)
        else:
            self._timer = loop.call_at(due, self._tick)

    def _listen(self) -> None:
        if self._listener is None and self._receive is not None:
            self._listener = asyncio.ensure_future(_disconnect(self._receive))
            self._listener.add_done_callback(self._gone)

    def _flush_now(self) -> None:
        self._flush = None
        self._flush_due = True
        self._wake()

    def _gone(self, listener: asyncio.Future[Any]) -> None:
        if not listener.cancelled():
            self._left = True
            self._wake()

    def _accept(self, taken: list[Any]) -> tuple[list[Event], bool]:
        """The events of ``taken`` to write, and whether the stream ends after them."""
        raise NotImplementedError

    async def _start(self, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        self._receive = receive
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        if self.opened is not None:
            self.opened()
            self._counted = True
        self.closing.add_done_callback(self._wake)
        self._last_out = loop.time()
        self._timer = loop.call_at(self._last_out + self.keepalive_s, self._tick)
        if self.head:
            await send({"type": "http.response.body", "body": self.head, "more_body": True})

    def _stop(self) -> None:
        self._waiter = None
        self.closing.remove_done_callback(self._wake)
        if self._timer is not None:
            self._timer.cancel()
        if self._flush is not None:
            self._flush.cancel()
        listener = self._listener
        if listener is not None:
            listener.remove_done_callback(self._gone)
            if not listener.done():
                listener.cancel()
        if self.closed is not None and self._counted:
            self.closed()

    async def _relay(self, source: _Source, send: Send) -> None:
        """Write ``source``'s events until ``_accept`` says the stream ends, the client left or
        the daemon stops (see the module docstring)."""
        loop = asyncio.get_running_loop()
        closing = self.closing
        pending: list[Event] = []  # events held back (see COALESCE_S, _is_cli_result)
        while True:
            ready, end = self._accept(source.take_ready())
            if (
                ready
                and not end
                and not self._flush_due
                and (
                    (
                        self._wrote  # the first events go out at once
                        # nothing but partial messages, soon after a write (or already
                        # held: the timer ends the hold)
                        and (self._flush is not None or loop.time() - self._last_out < COALESCE_S)
                        and all(e.raw is not None for e in ready)
                    )
                    or _is_cli_result(ready[-1])  # hotsession's result follows (module doc)
                )
            ):
                pending += ready
                if self._flush is None:
                    due = self._last_out + COALESCE_S
                    now = loop.time()
                    self._flush = loop.call_at(
                        due if due > now else now + COALESCE_S, self._flush_now
                    )
                self._waiter = source.waiter(partials=False)
                await self._waiter
                continue
            if pending and (ready or end or self._flush_due):
                ready = pending + ready
                pending = []
            if ready or end:
                if self._flush is not None:
                    self._flush.cancel()
                    self._flush = None
                self._flush_due = False
                chunks = list(_batches(ready)) or [b""]
                last = len(chunks) - 1
                for i, chunk in enumerate(chunks):
                    await send(
                        {
                            "type": "http.response.body",
                            "body": chunk,
                            "more_body": not (end and i == last),
                        }
                    )
                self._last_out = loop.time()
                self._wrote = True
                if end:
                    return
                continue
            if pending:  # woken early (keep-alive, shutdown): the held ones go out first
                self._waiter = source.waiter(partials=False)
                await self._waiter
                continue
            if self._left:
                return
            if closing.done():
                await send(
                    {"type": "http.response.body", "body": SHUTDOWN_FRAME, "more_body": False}
                )
                return
            if self._keepalive_due:
                self._keepalive_due = False
                await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
                self._last_out = loop.time()
                continue
            self._waiter = source.waiter()
            await self._waiter


class TurnStream(_LiveStream):
    """The SSE response of one turn (see the module docstring)."""

    def __init__(
        self,
        turn: Turn,
        closing: asyncio.Future[None],
        *,
        keepalive_s: float,
        head: bytes = b"",
        opened: Callable[[], Any] | None = None,
        closed: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(closing, keepalive_s=keepalive_s, head=head, opened=opened, closed=closed)
        self.turn = turn

    def _accept(self, taken: list[Any]) -> tuple[list[Event], bool]:
        return taken, bool(taken) and taken[-1].terminal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        turn = self.turn
        turn.attach()
        try:
            await self._start(receive, send)
            await turn.recorded()
            await self._relay(turn, send)
        finally:
            self._stop()
            turn.detach()


class FollowStream(_LiveStream):
    """``GET …/events`` that follows an open session: replay, then live (module docstring)."""

    def __init__(
        self,
        fanout: EventFanout,
        after: int,
        closing: asyncio.Future[None],
        *,
        keepalive_s: float,
        opened: Callable[[], Any] | None = None,
        closed: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(closing, keepalive_s=keepalive_s, opened=opened, closed=closed)
        self.fanout = fanout
        self.after = after
        self._sub: Subscription | None = None

    def _accept(self, taken: list[Any]) -> tuple[list[Event], bool]:
        out: list[Event] = []
        last = self.after
        for event in taken:
            if event is None:  # the session ended the stream
                self.after = last
                return out, True
            if event.seq > last:
                last = event.seq
                out.append(event)
        self.after = last
        sub = self._sub
        return out, sub is not None and sub.dropped and sub.empty()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sub = self._sub = self.fanout.subscribe()  # before the replay: nothing falls between
        try:
            await self._start(receive, send)
            self._listen()
            cursor = [self.after]
            async for old in self.fanout.replayed(self.after, cursor):
                for chunk in _batches(old):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if self._left:
                    return
            self.after = cursor[0]
            self._last_out = asyncio.get_running_loop().time()
            await self._relay(sub, send)
        finally:
            sub.close()
            self._stop()
