"""Cluster mode's pure parts: placement, the wire form of errors, the node registry's order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("ray")

from hotsession.cluster.node import NodeRegistry
from hotsession.cluster.placement import SESSION_MB, NodeFigures, choose
from hotsession.cluster.wire import NodeLost, error_in, error_out, raise_if_error
from hotsession.errors import NotFound, PromptTooLarge, QueueFull, StaleEpoch
from hotsession.registry import MemoryRegistry, SessionRecord, TurnRecord


def test_placement_prefers_a_node_with_a_ready_spare() -> None:
    nodes = [
        NodeFigures("a", spares={}, headroom_mb=5000),
        NodeFigures("b", spares={"p": 1}, headroom_mb=100),
    ]
    assert choose(nodes, "p") is nodes[1]
    # That spare is taken: the next one of the profile goes by headroom.
    assert nodes[1].spares["p"] == 0
    assert choose(nodes, "p") is nodes[0]


def test_placement_without_spares_takes_the_most_headroom_and_spreads_a_burst() -> None:
    nodes = [NodeFigures("a", headroom_mb=1000), NodeFigures("b", headroom_mb=1000 - SESSION_MB)]
    picks = [choose(nodes, "q") for _ in range(4)]
    assert [n.node for n in picks if n is not None] == ["a", "b", "a", "b"]
    assert choose([], "q") is None


def test_errors_keep_their_class_and_code_across_the_wire() -> None:
    for exc in (
        NotFound("no such session", session_id="s"),
        PromptTooLarge("too big", limit=5),
        QueueFull("full", limit=2),
        StaleEpoch("moved", session_id="s", epoch=1),
        NodeLost("gone"),
    ):
        back = error_in(error_out(exc)["error"])
        assert type(back) is type(exc)
        assert (back.code, back.status, back.message) == (exc.code, exc.status, exc.message)
        with pytest.raises(type(exc)):
            raise_if_error(error_out(exc))
    assert raise_if_error({"turn": 3}) == {"turn": 3}
    unknown = error_in({"code": "brand_new", "message": "m"})
    assert unknown.code == "brand_new" and unknown.status == 500


class _SlowFirst(MemoryRegistry):
    """A store on a pool of connections: the first write of a turn commits last."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def put_turn(self, turn: TurnRecord, *, epoch: int | None = None) -> None:
        self.calls += 1
        snapshot = TurnRecord(**vars(turn))
        await asyncio.sleep(0.05 if self.calls == 1 else 0)
        await super().put_turn(snapshot, epoch=epoch)


async def test_turn_writes_of_a_session_land_in_call_order(tmp_path: Any) -> None:
    from hotsession.registry.sqlite import SqliteRegistry

    shared = _SlowFirst()
    registry = NodeRegistry(shared, SqliteRegistry(tmp_path / "p.db"))
    await registry.open()
    turn = TurnRecord(session_id="s", turn=1, prompt="hi")
    first = asyncio.create_task(registry.put_turn(TurnRecord(**vars(turn))))
    turn.status = "running"
    second = asyncio.create_task(registry.put_turn(TurnRecord(**vars(turn))))
    await asyncio.gather(first, second)
    stored = await shared.list_turns("s")
    assert [t.status for t in stored] == ["running"]
    await registry.close()


async def test_end_turn_carries_the_nodes_epoch_and_waits_for_earlier_turn_writes(
    tmp_path: Any,
) -> None:
    from hotsession.registry.sqlite import SqliteRegistry

    shared = _SlowFirst()
    registry = NodeRegistry(shared, SqliteRegistry(tmp_path / "p.db"))
    stale: list[str] = []
    registry.on_stale = stale.append
    await registry.open()
    held = await shared.claim("s", "n1", expect_epoch=0)
    registry.epochs["s"] = held.epoch
    rec = SessionRecord(
        id="s", tenant="t", cli_session_id="c", cwd="/", options={}, profile_key="p"
    )
    turn = TurnRecord(session_id="s", turn=1, prompt="hi")
    first = asyncio.create_task(registry.put_turn(TurnRecord(**vars(turn))))  # slow
    turn.status = "done"
    second = asyncio.create_task(registry.end_turn(TurnRecord(**vars(turn)), rec))
    await asyncio.gather(first, second)
    assert [t.status for t in await shared.list_turns("s")] == ["done"]

    await shared.claim("s", "n2", expect_epoch=held.epoch)  # the session moved
    with pytest.raises(StaleEpoch):
        await registry.end_turn(TurnRecord(session_id="s", turn=2, prompt="late"), rec)
    assert stale == ["s"]
    assert [t.turn for t in await shared.list_turns("s")] == [1]
    await registry.close()


class _Gated(MemoryRegistry):
    """A store whose turn ends wait for ``gate`` (a slow round trip), recording write order."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.order: list[str] = []

    async def end_turn(
        self, turn: TurnRecord, session: SessionRecord, *, epoch: int | None = None
    ) -> None:
        await self.gate.wait()
        await super().end_turn(turn, session, epoch=epoch)
        self.order.append(f"end {turn.turn}")

    async def put_session(self, rec: SessionRecord, *, epoch: int | None = None) -> None:
        await super().put_session(rec, epoch=epoch)
        self.order.append(f"session {rec.state}")


async def test_a_turns_end_is_written_in_the_background_in_the_sessions_order(
    tmp_path: Any,
) -> None:
    """The session's next prompt does not wait for the store's write of the last turn's end
    (the runner awaits ``end_turn`` before taking it), and later writes of the session still
    land after it: a "closed" written next is not undone by the older turn end."""
    from hotsession.registry.sqlite import SqliteRegistry

    shared = _Gated()
    registry = NodeRegistry(shared, SqliteRegistry(tmp_path / "p.db"))
    tasks: set[asyncio.Task[None]] = set()
    registry.spawn = lambda coro: tasks.add(asyncio.create_task(coro))
    stale: list[str] = []
    registry.on_stale = stale.append
    await registry.open()
    held = await shared.claim("s", "n1", expect_epoch=0)
    registry.epochs["s"] = held.epoch
    rec = SessionRecord(
        id="s", tenant="t", cli_session_id="c", cwd="/", options={}, profile_key="p"
    )
    done = TurnRecord(session_id="s", turn=1, prompt="hi", status="done")
    await asyncio.wait_for(registry.end_turn(done, rec), 1.0)  # returns with the store blocked
    closing = asyncio.create_task(
        registry.put_session(SessionRecord(**{**vars(rec), "state": "closed"}))
    )
    await asyncio.sleep(0.01)
    assert shared.order == [] and not closing.done()  # queued behind the turn's end
    shared.gate.set()
    await closing
    await asyncio.gather(*tasks)
    # (the store's own end_turn writes the session first: "starting")
    assert shared.order == ["session starting", "end 1", "session closed"]
    assert (await shared.get_session("s")).state == "closed"  # type: ignore[union-attr]

    # A turn end the store refuses (the session moved) drops the session, raising nowhere.
    await shared.claim("s", "n2", expect_epoch=held.epoch)
    await registry.end_turn(TurnRecord(session_id="s", turn=2, prompt="late"), rec)
    await asyncio.gather(*tasks)
    assert stale == ["s"]
    await registry.close()


def test_events_cross_the_wire_with_a_cli_line_kept_as_it_came() -> None:
    from hotsession.cluster.wire import event_in, event_out
    from hotsession.events import Event

    line = b'{"type":"stream_event","event":{"delta":{"text":"hi \\u00e9"}}}'
    back = event_in(event_out(Event("s", 7, 2, "message", None, 1.5, raw=line)))
    assert back.raw == line and back.data["event"]["delta"]["text"] == "hi \u00e9"
    assert (back.session_id, back.seq, back.turn, back.type, back.t) == ("s", 7, 2, "message", 1.5)
    plain = event_in(event_out(Event("s", 8, 2, "result", {"result": "ok"}, 2.0)))
    assert plain.raw is None and plain.data == {"result": "ok"}
    # A parsed CLI message crosses as its line too (not its dict), and is framed from it.
    msg = b'{"type":"assistant","message":{"content":[{"type":"text","text":"\\u00e9"}]}}'
    out = event_out(Event("s", 9, 2, "message", {"type": "assistant"}, 3.0, line=msg))
    assert out[4] == msg
    back = event_in(out)
    assert back.line == msg and back.data["message"]["content"][0]["text"] == "\u00e9"


async def test_a_turn_record_waiting_while_its_session_is_dropped_stays_fenced(
    tmp_path: Any,
) -> None:
    """A prompt's record is a node's check that it still owns the session (``NodeHost.send``):
    one that waits behind the session's earlier write while the node drops the session (it
    moved) is written with the epoch it was made under, and refused, not written unfenced; once
    the session is dropped, a new prompt's record is refused outright, a drop's own bookkeeping
    (an ended turn) is not sent."""
    from hotsession.registry.sqlite import SqliteRegistry

    shared = _Gated()
    registry = NodeRegistry(shared, SqliteRegistry(tmp_path / "p.db"))
    tasks: set[asyncio.Task[None]] = set()
    registry.spawn = lambda coro: tasks.add(asyncio.create_task(coro))
    await registry.open()
    held = await shared.claim("s", "n1", expect_epoch=0)
    registry.epochs["s"] = held.epoch
    rec = SessionRecord(
        id="s", tenant="t", cli_session_id="c", cwd="/", options={}, profile_key="p"
    )
    await registry.end_turn(TurnRecord(session_id="s", turn=1, prompt="hi", status="done"), rec)
    prompt = asyncio.create_task(registry.put_turn(TurnRecord(session_id="s", turn=2, prompt="x")))
    await asyncio.sleep(0.01)
    assert not prompt.done()  # behind the turn's end, whose round trip is slow
    await shared.claim("s", "n2", expect_epoch=held.epoch)  # the session moves ...
    registry.epochs.pop("s")  # ... and the node drops it (as NodeHost._drop does)
    registry.fenced.add("s")
    shared.gate.set()
    with pytest.raises(StaleEpoch):
        await prompt
    await asyncio.gather(*tasks)
    assert await shared.list_turns("s") == []

    with pytest.raises(StaleEpoch):
        await registry.put_turn(TurnRecord(session_id="s", turn=3, prompt="y"))
    ended = TurnRecord(session_id="s", turn=3, prompt="y", status="error", ended_at=1.0)
    await registry.put_turn(ended)  # not sent, no error
    assert await shared.list_turns("s") == []
    await registry.close()
