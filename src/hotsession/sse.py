"""Server-sent events, decoded: the one SSE decoder of hotsession's Python clients.

The CLI client, the tests and the bench's httpx mode read the daemon's streams with it (the
bench's lean socket client, ``bench/wire.py``, parses whole frames on its own socket path).

Hand-written rather than ``httpx-sse``: that library keeps the last ``id:`` across events, as a
browser's EventSource does, while our clients must tell the daemon's untracked frames (``session``,
the shutdown ``error``: no ``id:``, not in the session's log) from logged ones; and the tests must
see the keep-alive comments. The daemon's streams use only ``event:``, ``data:`` and ``id:`` lines.
Per the SSE rules an event is dispatched at its blank line (an unfinished one at the end of the
stream is dropped), a frame without ``data:`` is no event, and ``data:`` lines join with ``\\n``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, NamedTuple


class SseFrame(NamedTuple):
    """One event: its type (``message`` unless named), its data text and its own ``id:``."""

    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        """The data decoded as JSON (raises ``ValueError`` if it is not)."""
        return json.loads(self.data)


class SSEDecoder:
    """Incremental: ``feed`` one line at a time, get a frame when one ends.

    ``on_comment`` receives comment lines (``:`` keep-alives), which are otherwise skipped.
    """

    __slots__ = ("_data", "_event", "_id", "on_comment")

    def __init__(self, on_comment: Callable[[str], None] | None = None) -> None:
        self._event = "message"
        self._data: list[str] = []
        self._id: str | None = None
        self.on_comment = on_comment

    def feed(self, raw: str) -> SseFrame | None:
        """Take one line (with or without its line end); the event it completes, if any."""
        line = raw.rstrip("\r\n")
        if not line:
            frame = SseFrame(self._event, "\n".join(self._data), self._id) if self._data else None
            self._event, self._data, self._id = "message", [], None
            return frame
        if line[0] == ":":
            if self.on_comment is not None:
                self.on_comment(line)
            return None
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None


def decode(lines: Iterable[str], decoder: SSEDecoder | None = None) -> Iterator[SseFrame]:
    """The events in a stream of lines."""
    decoder = decoder or SSEDecoder()
    for line in lines:
        frame = decoder.feed(line)
        if frame is not None:
            yield frame


async def adecode(
    lines: AsyncIterable[str], decoder: SSEDecoder | None = None
) -> AsyncIterator[SseFrame]:
    """The events in an async stream of lines (``httpx.Response.aiter_lines()``)."""
    decoder = decoder or SSEDecoder()
    async for line in lines:
        frame = decoder.feed(line)
        if frame is not None:
            yield frame


def decode_text(text: str) -> list[SseFrame]:
    """Every event of a whole response body."""
    return list(decode(text.splitlines()))
