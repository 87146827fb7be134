"""A turn: one prompt's run, as a stream of events its readers iterate.

The session's runner pushes the turn's events (``push``) whether or not anybody reads them; a
reader iterates the turn (``async for event in turn``) until its terminal ``result`` or ``error``
event. ``handed_over`` lets the runner wait (bounded) until the reader has handled that last
event before the turn's bookkeeping runs, so the bookkeeping does not compete with the reader's
write of the result (see ``Session._run``).

Events wait in a plain deque with a *doorbell* (``waiter``): one future, resolved by the first
``push`` after a reader went to sleep, so a reader wakes once per batch of events that arrived
together and takes them all with ``take_ready``. Anyone may resolve the waiter early to wake the
reader for a reason of its own (the API's SSE response: its keep-alive timer, the daemon's
shutdown). Why not an ``asyncio.Queue``: its ``get`` per event, with the SSE writer's task and
``asyncio.wait`` per event on top, was the per-event cost of the turn's stream (measured with
``bench --cpu``, docs/benchmarks.md, 2026-11-30).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from hotsession.errors import HotsessionError, InvalidRequest, PromptTooLarge, RegistryError
from hotsession.events import Event, TurnClock
from hotsession.registry import TurnRecord

HANDOVER_S = 0.1
"""How long a finished turn's bookkeeping waits for its reader to take the result."""


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def check_prompt(prompt: object, limit_bytes: int) -> str:
    """The one prompt check: a non-empty string of at most ``limit_bytes`` UTF-8 bytes."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("the prompt must be a non-empty string", field="prompt")
    if len(prompt.encode("utf-8", errors="surrogatepass")) > limit_bytes:
        raise prompt_too_large(limit_bytes)
    return prompt


def prompt_too_large(limit_bytes: int) -> PromptTooLarge:
    """The error of a prompt over the limit: ``check_prompt``'s, and the API's for a prompt
    body over the body cap (which never gets as far as the check)."""
    return PromptTooLarge(f"the prompt is over the {limit_bytes} byte limit", limit=limit_bytes)


class Turn:
    """One prompt's run; iterate it for its events (ends after ``result`` or ``error``)."""

    def __init__(
        self,
        session_id: str,
        number: int,
        prompt: str,
        *,
        since: float | None = None,
        message: dict[str, Any] | None = None,
    ) -> None:
        self.number = number
        self.prompt = prompt
        self.message = message  # the user message to write as is (else one made of ``prompt``)
        self.since = since
        self.clock = TurnClock(since if since is not None else time.monotonic())
        self.record = TurnRecord(session_id=session_id, turn=number, prompt=prompt)
        self.done = asyncio.Event()
        self.interrupted = False
        self.terminal: Event | None = None
        self._events: collections.deque[Event] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._partials_ring = True  # does a partial message resolve the waiter?
        self._readers = 0
        self._drained: asyncio.Future[None] | None = None  # ``handed_over`` waits on it
        self._terminal_taken = False
        self.accepted: asyncio.Task[Any] | None = None  # the write that records the prompt
        # The prompt reaches the process only once ``accepted`` succeeded (``Session.send``).
        self.gated = False

    def push(self, event: Event) -> None:
        """Add one of the turn's events (the session's fan-out calls this)."""
        self._events.append(event)
        if event.terminal:
            self.terminal = event
            self.done.set()
        waiter = self._waiter
        if waiter is not None and (self._partials_ring or event.raw is None):
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def push_partials(self, events: list[Event]) -> None:
        """``push`` of a run of partial messages (never terminal), at once."""
        if not events:
            return
        self._events.extend(events)
        waiter = self._waiter
        if waiter is not None and self._partials_ring:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def waiter(self, *, partials: bool = True) -> asyncio.Future[None]:
        """A future resolved at the turn's next event (already resolved when the turn holds
        events not taken yet); one per batch, shared by every reader waiting now. Resolving it
        early wakes them (for another reason of the reader's: check ``take_ready`` after).

        ``partials=False``: partial messages (token deltas, the events with ``raw``) pushed
        meanwhile do not resolve it; they wait in the turn for a reader that holds them back on
        purpose and wakes itself (the API's SSE response, which writes deltas in batches)."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        self._partials_ring = partials
        events = self._events
        if events and not self._terminal_taken and (partials or events[-1].raw is None):
            waiter.set_result(None)
            self._waiter = None
        return waiter

    def attach(self) -> None:
        """A reader begins: the turn's bookkeeping waits (bounded) until it ``detach``es."""
        self._readers += 1

    def detach(self) -> None:
        """The reader has handled the turn's last event, or went away (see ``handed_over``)."""
        self._readers -= 1
        drained = self._drained
        if not self._readers and drained is not None and not drained.done():
            drained.set_result(None)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        self.attach()
        try:
            events = self._events
            while not self._terminal_taken:
                if not events:
                    await self.waiter()
                    continue
                event = events.popleft()
                if event.terminal:
                    self._terminal_taken = True
                yield event
                if event.terminal:
                    return
        finally:
            # Back here after the terminal event: the reader has handled it (an SSE stream has
            # written its frame), or the reader went away.
            self.detach()

    async def recorded(self) -> None:
        """Wait until the accepted prompt is in the registry (at once if that write failed:
        the store's trouble is reported by the hub, and the turn runs regardless)."""
        if self.accepted is not None and not self.accepted.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self.accepted)

    def refusal(self) -> HotsessionError | None:
        """The error the write that records the prompt failed with; None while it runs, once
        it succeeded, or without one (what a gated turn ends with instead of running)."""
        accepted = self.accepted
        if accepted is None or not accepted.done() or accepted.cancelled():
            return None
        exc = accepted.exception()
        if exc is None or isinstance(exc, HotsessionError):
            return exc
        return RegistryError(f"the prompt could not be recorded: {exc}")

    def take_ready(self) -> list[Event]:
        """The events this turn already holds (up to its terminal one), without waiting.

        For a reader that iterates the turn and wants to batch its writes (``api.events``); the
        iteration goes on after them, and ends when the terminal event was among them."""
        events = self._events
        if not events or self._terminal_taken:
            return []
        if self.terminal is None or events[-1] is self.terminal:
            # The usual case: nothing follows the terminal event (``push`` never adds after it).
            out = list(events)
            events.clear()
            self._terminal_taken = self.terminal is not None
            return out
        out = []
        while events:
            event = events.popleft()
            out.append(event)
            if event.terminal:
                self._terminal_taken = True
                break
        return out

    async def handed_over(self, limit: float | None = None) -> None:
        """Wait until this turn's reader has handled its last event (at most ``limit`` s,
        default ``HANDOVER_S``; at once when nobody iterates the turn). See ``Session._run``.

        One future and one timer (``asyncio.timeout`` around an ``asyncio.Event`` was a
        timeout scope, an event and its future per turn)."""
        if not self._readers:
            return
        loop = asyncio.get_running_loop()
        drained = self._drained = loop.create_future()
        timer = loop.call_later(HANDOVER_S if limit is None else limit, _wake, drained)
        try:
            await drained
        finally:
            timer.cancel()
            self._drained = None

    async def wait(self) -> Event:
        """Wait for the turn to end; returns its ``result`` or ``error`` event."""
        await self.done.wait()
        assert self.terminal is not None
        return self.terminal
