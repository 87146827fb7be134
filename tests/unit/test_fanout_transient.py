"""Transient events (partial messages) in the fan-out: kept out of the log, replayed from memory,
their seqs never handed out twice, not even by a daemon that died without writing them."""

from __future__ import annotations

import json
from typing import Any

from hotsession.registry.memory import MemoryRegistry
from hotsession.session.fanout import RESERVED, SEQ_RESERVE, EventFanout, replay
from hotsession.session.turn import Turn


def delta(text: str) -> dict[str, Any]:
    return {
        "type": "stream_event",
        "event": {"type": "content_block_delta", "delta": {"type": "text_delta", "text": text}},
    }


async def test_transient_events_replay_from_memory_merged_by_seq() -> None:
    reg = MemoryRegistry()
    await reg.open()
    fan = EventFanout("s1", reg)
    fan.emit(None, "message", {"type": "system"}, turn_no=1)
    for i in range(5):
        fan.emit(None, "message", delta(str(i)), turn_no=1)
    fan.emit(None, "message", {"type": "assistant"}, turn_no=1)
    fan.emit(None, "result", {"turn": 1}, turn_no=1)
    got = [e async for e in fan.events(0, follow=False)]
    assert [e.seq for e in got] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [e.data.get("type") for e in got[1:6]] == ["stream_event"] * 5
    assert [e.seq for e in [e async for e in fan.events(4, follow=False)]] == [5, 6, 7, 8]
    stored = [r async for r in replay(reg, "s1")]  # the log alone: no deltas, no reservation
    assert [e.seq for e in stored] == [1, 7, 8]
    await reg.close()


async def test_a_restart_never_reuses_a_transient_seq() -> None:
    reg = MemoryRegistry()
    await reg.open()
    fan = EventFanout("s1", reg)
    fan.emit(None, "message", {"type": "system"}, turn_no=1)
    handed = [fan.emit(None, "message", delta("x"), turn_no=1).seq for _ in range(2 * SEQ_RESERVE)]
    # the daemon dies here: nothing after the last durable event was written but reservations
    restarted = EventFanout("s1", reg, last_seq=await reg.last_seq("s1"))
    fresh = restarted.emit(None, "error", {"code": "daemon_restarted"}, turn_no=1)
    assert fresh.seq > max(handed)
    # the fan-out skipped the seqs its reservations hold: none of them was handed out
    reserved = {r.seq for r in await reg.events_after("s1", 0, 10_000) if r.type == RESERVED}
    assert len(reserved) == 2 and not reserved & set(handed)
    await reg.close()


async def test_only_the_running_and_previous_turns_deltas_are_kept() -> None:
    reg = MemoryRegistry()
    await reg.open()
    fan = EventFanout("s1", reg)
    for turn in (1, 2, 3):
        for _ in range(3):
            fan.emit(None, "message", delta("x"), turn_no=turn)
    kept = [e async for e in fan.events(0, follow=False)]
    assert [e.turn for e in kept] == [2, 2, 2, 3, 3, 3]
    await reg.close()


async def test_partials_emitted_together_are_numbered_kept_and_delivered_as_one_by_one() -> None:
    """``emit_partials`` (a reader's chunk of deltas at once) against ``emit`` per delta: the
    same seqs (reservation rows skipped), the same replay, the same events to the turn and to
    subscribers, in order; older turns' deltas dropped the same way."""
    lines = [
        json.dumps(delta(str(i)), separators=(",", ":")).encode() for i in range(SEQ_RESERVE + 5)
    ]
    seen: dict[str, list[tuple[int, int, Any]]] = {}
    for way in ("one by one", "together"):
        reg = MemoryRegistry()
        await reg.open()
        fan = EventFanout("s1", reg)
        sub = fan.subscribe()
        for number in (1, 2, 3):
            turn = Turn("s1", number, "p")
            fan.emit(turn, "message", {"type": "system"})
            if way == "together":
                fan.emit_partials(turn, lines[:7])
                fan.emit_partials(turn, lines[7:])
            else:
                for line in lines:
                    fan.emit(turn, "message", {"type": "stream_event"}, raw=line)
            fan.emit(turn, "result", {"turn": number})
            pushed = turn.take_ready()
            assert [e.seq for e in pushed] == sorted(e.seq for e in pushed)
            assert pushed[-1].terminal and len(pushed) == len(lines) + 2
        live = [e for e in sub.take_ready() if e is not None]
        replayed = [e async for e in fan.events(0, follow=False)]
        stored = await reg.events_after("s1", 0, 100_000)
        seen[way] = [(e.seq, e.turn, e.data) for e in live + replayed] + [
            (r.seq, r.turn, r.type) for r in stored
        ]
        assert {e.turn for e in replayed if e.raw is not None} == {2, 3}
        await reg.close()
    assert seen["together"] == seen["one by one"]
