"""How a turn's events leave a node: as few Ray items as its latency semantics allow.

Why. Every item of a Ray streaming generator is serialised, put in the node's object store and
reported to the caller over RPC on one side, and received, fetched and deserialised on the
other: per item, that was most of what a follow-up cost the cluster daemon and a good share of
what it cost the host actor (``bench --cluster``'s CPU per process, docs/cluster.md). A plain
follow-up made six: the acknowledgement, the CLI's ``system`` init and status lines, its
assistant message, its ``result`` line and the turn's ``result`` event, each a batch of its own
as the CLI wrote them a few milliseconds apart.

The rule (:func:`turn_items`):

* The first item carries the acknowledgement (``{"turn": n, ...}``) *and* the turn's events up
  to then; the daemon answers the HTTP request (or raises its error) when it arrives.
* Events are held at the node for at most ``hold_s`` (``HOLD_S``) after the first of them (after
  the acknowledgement for the first item) and then go together; so a plain follow-up, whose CLI
  answers within that time, crosses as one item.
* Never held: the terminal ``result`` / ``error`` (it goes the moment it is there, with
  everything held before it), a ``permission_request`` (a human is waiting for it) and the
  token deltas of a session that asked for them (partial messages: they stream as they come).

What a client sees: the same events in the same order, the turn's result as early as before,
and the events before it up to ``hold_s`` later than the CLI wrote them (on one machine, and
before this, as they came).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from hotsession.cluster.wire import EventTuple, event_out
from hotsession.events import Event
from hotsession.session.turn import Turn

HOLD_S = 0.05
"""How long a node holds a turn's non-urgent events to send them in one Ray item (above)."""

URGENT_TYPES = frozenset({"result", "error", "permission_request"})


def urgent(event: Event) -> bool:
    """An event that goes at once: terminal, a permission question, or a token delta."""
    return event.type in URGENT_TYPES or event.raw is not None


async def turn_items(
    turn: Turn,
    first: dict[str, Any],
    *,
    hold_s: float = HOLD_S,
    before_terminal: Callable[[], Awaitable[None]] | None = None,
    still_held: Callable[[], bool] = lambda: True,
    moved: Callable[[], dict[str, Any]] = dict,
) -> AsyncIterator[dict[str, Any] | list[EventTuple]]:
    """``first`` with the turn's first events (``"events"``), then lists of its events, up to
    its terminal one (see the module doc). ``before_terminal`` runs before the item holding the
    terminal event is handed over. Once ``still_held()`` is false (the session moved: what it
    emits since is not the conversation's) the last item is ``moved()`` (an error reply)."""
    loop = asyncio.get_running_loop()
    head: dict[str, Any] | None = first
    held: list[EventTuple] = []
    deadline = loop.time() + hold_s  # when the held item goes (the acknowledgement's first)
    timer: asyncio.TimerHandle | None = None
    turn.attach()  # the session's runner waits (bounded) for this reader to take the result
    try:
        while True:
            events = turn.take_ready()
            if not still_held():
                if head is not None:  # accepted here: the daemon follows it where it went
                    yield {**head, "events": []}
                yield moved()
                return
            go = False
            terminal = False
            if events:
                if not held and head is None:
                    deadline = loop.time() + hold_s
                for event in events:
                    held.append(event_out(event))
                    if urgent(event):
                        go = True
                terminal = events[-1].terminal
            if (go or loop.time() >= deadline) and (held or head is not None):
                if terminal and before_terminal is not None:
                    await before_terminal()
                if head is not None:
                    yield {**head, "events": held}
                    head = None
                elif held:
                    yield held
                held = []
                if terminal:
                    return
                continue
            waiter = turn.waiter()
            if not waiter.done() and (held or head is not None):
                timer = loop.call_at(deadline, _wake, waiter)
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
                    timer = None
    finally:
        turn.detach()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
