"""A turn: one prompt's run, as a stream of events its readers iterate.

The session's runner pushes the turn's events (``push``) whether or not anybody reads them; a
reader iterates the turn (``async for event in turn``) until its terminal ``result`` or ``error``
event. ``handed_over`` lets the runner wait (bounded) until the reader has handled that last
event before the turn's bookkeeping runs, so the bookkeeping does not compete with the reader's
write of the result (see ``Session._run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from hotsession.errors import InvalidRequest, PromptTooLarge
from hotsession.events import Event, TurnClock
from hotsession.registry import TurnRecord

HANDOVER_S = 0.1
"""How long a finished turn's bookkeeping waits for its reader to take the result."""


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
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._readers = 0
        self._drained = asyncio.Event()
        self._terminal_taken = False
        self.accepted: asyncio.Task[Any] | None = None  # the write that records the prompt

    def push(self, event: Event) -> None:
        """Add one of the turn's events (the session's fan-out calls this)."""
        self._events.put_nowait(event)
        if event.terminal:
            self.terminal = event
            self.done.set()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        self._readers += 1
        try:
            while not self._terminal_taken:
                event = await self._events.get()
                yield event
                if event.terminal:
                    return
        finally:
            # Back here after the terminal event: the reader has handled it (an SSE stream has
            # written its frame), or the reader went away.
            self._readers -= 1
            if not self._readers:
                self._drained.set()

    async def recorded(self) -> None:
        """Wait until the accepted prompt is in the registry (at once if that write failed:
        the store's trouble is reported by the hub, and the turn runs regardless)."""
        if self.accepted is not None and not self.accepted.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self.accepted)

    def take_ready(self) -> list[Event]:
        """The events this turn already holds (up to its terminal one), without waiting.

        For a reader that iterates the turn and wants to batch its writes (``api.events``); the
        iteration goes on after them, and ends when the terminal event was among them."""
        out: list[Event] = []
        while not self._events.empty():
            event = self._events.get_nowait()
            out.append(event)
            if event.terminal:
                self._terminal_taken = True
                break
        return out

    async def handed_over(self, limit: float | None = None) -> None:
        """Wait until this turn's reader has handled its last event (at most ``limit`` s,
        default ``HANDOVER_S``; at once when nobody iterates the turn). See ``Session._run``."""
        if self._readers and not self._drained.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HANDOVER_S if limit is None else limit):
                    await self._drained.wait()

    async def wait(self) -> Event:
        """Wait for the turn to end; returns its ``result`` or ``error`` event."""
        await self.done.wait()
        assert self.terminal is not None
        return self.terminal
