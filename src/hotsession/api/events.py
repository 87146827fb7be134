"""Server-sent events: framing, and the generator behind the API's streams.

A local turn's own stream (``POST …/turns``, ``POST /v1/ask``) and ``/events`` following an
open session are written by :mod:`hotsession.api.turnstream` instead (``TurnStream``,
``FollowStream``), with the same frames in the same order (measured cheaper; see there); this
generator serves ``/events`` that only replays (``follow=false``, a closed session), a turn of
another node in cluster mode, and the tests that drive a stream by hand.

Design
======
Framing is hand-written (three lines per event) rather than taken from ``sse-starlette``: each
event is serialised once with :mod:`json` straight into bytes (``id:`` = the session's seq,
``event:`` = its type, ``data:`` = one JSON line; JSON escapes newlines, so one ``data:`` line
is always enough), with no per-event object or validation, and the generator needs its own race
between the next event, the keep-alive timer and the daemon's shutdown anyway.

The source of a stream is an async iterator of :class:`~hotsession.events.Event` — a ``Turn``
(whose run never depends on the stream: the session's runner feeds the turn's queue whether or
not anybody reads it) or ``Session.events(after)`` (replay from the registry, then live). The
generator ends on whichever comes first:

* the source ends (after a turn's ``result``/``error``, or a closed session);
* for a turn: its terminal event went out (events a turn already holds when one arrives are
  taken with ``Turn.take_ready`` and written together, in one frame batch);
* the client disconnects (Starlette cancels the generator; the pending read is cancelled and the
  source closed, which unsubscribes it);
* the daemon shuts down (``closing`` resolves): a final ``error`` event with code
  ``shutting_down`` (no ``id:``, it is not one of the session's events) ends the stream.

While the source is idle a ``: keep-alive`` comment goes out every ``keepalive_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
)
from typing import Any

from hotsession.errors import HotsessionError
from hotsession.events import Event
from hotsession.session.turn import Turn

KEEPALIVE = b": keep-alive\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def frame(event: Event) -> bytes:
    """One session event as an SSE frame (a CLI line passed through goes out as it came: one
    line of JSON, newlines escaped by the CLI)."""
    raw = event.line
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (
        event.seq,
        event.type.encode(),
        raw.rstrip(b"\n") if raw is not None else _dumps(event.data).encode(),
    )


def frame_untracked(kind: str, data: dict[str, Any]) -> bytes:
    """A frame that is not one of the session's events (no ``id:``, replay does not repeat it)."""
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), _dumps(data).encode())


SHUTDOWN_FRAME = frame_untracked(
    "error", {"code": "shutting_down", "message": "the service is shutting down"}
)


BATCH_BYTES = 64 * 1024
"""Frames of ready events are joined into writes of about this size (a bigger frame: alone)."""


_PARTIAL_FRAME = b"id: %d\nevent: message\ndata: %s\n\n"


def _batches(events: list[Event]) -> Iterator[bytes]:
    chunk: list[bytes] = []
    size = 0
    for event in events:
        raw = event.raw
        # A partial message (hundreds a streamed turn): ``frame`` inlined, its type known
        # (~0.1 ms of a 500-delta turn, measured 2026-11-30, docs/benchmarks.md).
        if raw is not None and event.line is raw and event.type == "message":
            data = _PARTIAL_FRAME % (event.seq, raw.rstrip(b"\n"))
        else:
            data = frame(event)
        if chunk and size + len(data) > BATCH_BYTES:
            yield b"".join(chunk)
            chunk, size = [], 0
        chunk.append(data)
        size += len(data)
    if chunk:
        yield b"".join(chunk)


async def stream(
    source: AsyncIterable[Event],
    closing: asyncio.Future[None],
    *,
    keepalive_s: float,
    head: bytes = b"",
) -> AsyncIterator[bytes]:
    """SSE bytes of ``source`` (see the module docstring for when it ends)."""
    it: AsyncGenerator[Event, None] = source.__aiter__()  # type: ignore[assignment]
    # A turn (``Session.send``'s ``Turn``) can hand over the events it already has at once ...
    turn = source if isinstance(source, Turn) else None
    # (a turn of another node in cluster mode, ``RemoteTurn``, hands over the rest of the batch
    # its node sent the same way)
    take_ready: Callable[[], list[Event]] | None = (
        turn.take_ready if turn else getattr(source, "take_ready", None)
    )
    # ... and says when its prompt is recorded: a client that saw one of its events may rely on
    # the turn being in the registry (a daemon killed after that still knows of it).
    recorded: Callable[[], Awaitable[None]] | None = turn.recorded if turn else None
    getter: asyncio.Future[Event] | None = None
    try:
        if head:
            yield head
        if recorded is not None:
            await recorded()
        while True:
            if getter is None:
                getter = asyncio.ensure_future(it.__anext__())
            if not getter.done():
                await asyncio.wait(
                    (getter, closing), timeout=keepalive_s, return_when=asyncio.FIRST_COMPLETED
                )
            if getter.done():
                done, getter = getter, None
                try:
                    event = done.result()
                except StopAsyncIteration:
                    return
                except HotsessionError as exc:  # e.g. the store failed during a replay
                    yield frame_untracked("error", exc.to_dict())
                    return
                if take_ready is None or event.terminal:
                    yield frame(event)
                else:
                    # What the turn has ready goes out in one write: the CLI's result message
                    # and hotsession's ``result`` event come together, and a write per frame put
                    # one more syscall and loop pass before the client's result. Batches stop at
                    # BATCH_BYTES, so a client that stops reading still meets the send limit
                    # frame by frame for big ones (and is dropped before a big turn ends).
                    ready = [event, *take_ready()]
                    for chunk in _batches(ready):
                        yield chunk
                    event = ready[-1]
                if take_ready is not None and event.terminal:
                    return
            elif closing.done():
                yield SHUTDOWN_FRAME
                return
            else:
                yield KEEPALIVE
    finally:
        if getter is not None:
            getter.cancel()  # cancels the read inside the source, which closes it
        else:
            with contextlib.suppress(Exception):
                await it.aclose()
