"""How a turn's events leave a node (``hotsession.cluster.relay``): few Ray items, never a late
result, never a held permission question or token delta."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("ray")

from hotsession.cluster.relay import turn_items
from hotsession.events import Event
from hotsession.session.turn import Turn

LINE = b'{"type":"system","subtype":"init"}'


def _event(seq: int, kind: str, *, line: bytes | None = None, raw: bytes | None = None) -> Event:
    data = None if raw is not None else {"type": kind}
    return Event("s", seq, 1, kind, data, float(seq), raw=raw, line=line)


async def _collect(turn: Turn, **kw: Any) -> list[Any]:
    return [item async for item in turn_items(turn, {"turn": 1}, **kw)]


async def _push_later(turn: Turn, steps: list[tuple[float, Event]]) -> None:
    for delay, event in steps:
        await asyncio.sleep(delay)
        turn.push(event)


def _seqs(item: Any) -> list[int]:
    events = item["events"] if isinstance(item, dict) else item
    return [e[1] for e in events]


async def test_a_plain_turn_crosses_as_one_item_with_its_acknowledgement() -> None:
    turn = Turn("s", 1, "hi")
    pusher = asyncio.create_task(
        _push_later(
            turn,
            [
                (0.01, _event(1, "message", line=LINE)),
                (0.01, _event(2, "message", line=b'{"type":"assistant"}')),
                (0.01, _event(3, "result")),
            ],
        )
    )
    flushed: list[int] = []

    async def before_terminal() -> None:
        flushed.append(len(turn.take_ready()))

    items = await _collect(turn, hold_s=5.0, before_terminal=before_terminal)
    await pusher
    assert len(items) == 1
    assert items[0]["turn"] == 1 and _seqs(items[0]) == [1, 2, 3]
    assert items[0]["events"][0][4] == LINE  # the CLI's line, as it came
    assert flushed == [0]  # ran before the terminal item went


async def test_events_are_held_no_longer_than_the_hold() -> None:
    """The acknowledgement goes alone when nothing comes within the hold; a later event waits
    at most the hold for company; the result never waits."""
    turn = Turn("s", 1, "hi")
    pusher = asyncio.create_task(
        _push_later(
            turn,
            [
                (0.3, _event(1, "message", line=LINE)),
                (0.6, _event(2, "message", line=LINE)),
                (0.01, _event(3, "result")),
            ],
        )
    )
    items = await _collect(turn, hold_s=0.1)
    await pusher
    assert [_seqs(i) for i in items] == [[], [1], [2, 3]]
    assert items[0] == {"turn": 1, "events": []}


async def test_a_permission_question_and_token_deltas_go_at_once() -> None:
    turn = Turn("s", 1, "hi")
    got: list[tuple[float, list[int]]] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def read() -> None:
        async for item in turn_items(turn, {"turn": 1}, hold_s=30.0):
            got.append((loop.time() - t0, _seqs(item)))

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.05)
    turn.push(_event(1, "message", line=LINE))
    turn.push(_event(2, "permission_request"))
    await asyncio.sleep(0.05)
    turn.push(_event(3, "message", raw=b'{"type":"stream_event"}'))
    await asyncio.sleep(0.05)
    turn.push(_event(4, "error"))
    await asyncio.wait_for(reader, 5)
    assert [seqs for _, seqs in got] == [[1, 2], [3], [4]]
    assert got[-1][0] < 10  # nothing waited for the 30 s hold


async def test_a_session_that_moved_ends_the_items_after_the_acknowledgement() -> None:
    """The prompt was accepted here: the daemon gets its turn number (to follow it where the
    session went) and then the error, none of the events emitted since."""
    turn = Turn("s", 1, "hi")
    held = [True]

    async def later() -> None:
        await asyncio.sleep(0.02)
        held[0] = False
        turn.push(_event(1, "message", line=LINE))

    task = asyncio.create_task(later())
    items = [
        item
        async for item in turn_items(
            turn,
            {"turn": 1},
            hold_s=5.0,
            still_held=lambda: held[0],
            moved=lambda: {"error": {"code": "session_moved", "message": "moved"}},
        )
    ]
    await task
    assert items == [
        {"turn": 1, "events": []},
        {"error": {"code": "session_moved", "message": "moved"}},
    ]
