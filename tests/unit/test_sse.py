"""The one SSE decoder (``hotsession.sse``) of the CLI client, the tests and the bench."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from hotsession.sse import SSEDecoder, SseFrame, adecode, decode, decode_text


def test_events_with_ids_comments_and_multiline_data() -> None:
    comments: list[str] = []
    lines = [": keep-alive", "event: session", 'data: {"id": "hs_1"}', "", "id: 7"]
    lines += ["event: message", "data: line one", "data:line two", "", "", "event: result"]
    lines += ["data: {}"]  # not finished by a blank line: no event (the SSE rules)
    frames = list(decode(lines, SSEDecoder(on_comment=comments.append)))
    assert frames == [
        SseFrame("session", '{"id": "hs_1"}', None),  # an untracked frame: no id of its own
        SseFrame("message", "line one\nline two", "7"),
    ]
    assert comments == [": keep-alive"]
    assert frames[0].json() == {"id": "hs_1"}


def test_an_id_belongs_to_its_own_event_only() -> None:
    """Unlike a browser's EventSource, the next event without ``id:`` has none."""
    text = "id: 3\ndata: {}\n\nevent: error\ndata: {}\n\n"
    assert [f.id for f in decode_text(text)] == ["3", None]


def test_line_ends_and_frames_without_data() -> None:
    frames = list(decode(["event: x\r\n", "\r\n", "data: 1\r\n", "\n"]))
    assert frames == [SseFrame("message", "1", None)]  # the first frame had no data


def test_async_lines() -> None:
    async def lines() -> AsyncIterator[str]:
        for line in ["data: a", "", "data: b", ""]:
            yield line

    async def collect() -> list[str]:
        return [f.data async for f in adecode(lines())]

    assert asyncio.run(collect()) == ["a", "b"]
