"""The turn's SSE response (``api.turnstream``), the turn's doorbell, and the edge's send limit.

The response is driven as an ASGI app over real (fake-agent) turns through ``Hotsession``; what
it writes is compared with what the generic generator (``api.events.stream``) writes for a turn.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hotsession import Config, Hotsession
from hotsession.api import app as edge
from hotsession.api import events as sse
from hotsession.api.turnstream import TurnStream
from hotsession.events import Event


@pytest.fixture
async def hub(tmp_path: Path, fake_cli: str) -> AsyncIterator[Hotsession]:
    config = Config(state_dir=tmp_path / "state", cli_path=fake_cli, pool_enabled=False)
    async with Hotsession(config) as hs:
        yield hs


class Client:
    """An ASGI server's side of one response: collects what is sent."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.left = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    async def receive(self) -> dict[str, Any]:
        await self.left.wait()
        return {"type": "http.disconnect"}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return self.messages[1:]


async def run(response: TurnStream, client: Client) -> None:
    await asyncio.wait_for(response({"type": "http"}, client.receive, client.send), 20)


def frames(body: bytes) -> list[bytes]:
    return [f for f in body.split(b"\n\n") if f]


async def answer_when_asked(s: Any, client: Client) -> None:
    """Deny the turn's permission request once its frame went out (the turn then ends)."""
    while b"event: permission_request" not in client.body:
        await asyncio.sleep(0.02)
    frame = next(f for f in frames(client.body) if b"event: permission_request" in f)
    request = json.loads(frame.split(b"\ndata: ", 1)[1])
    s.answer_permission(request["request_id"], "deny", message="no")


async def test_it_writes_what_the_generic_stream_writes_and_ends_in_one_write(
    hub: Hotsession, tmp_path: Path
) -> None:
    s = await hub.open(str(tmp_path))
    closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    client = Client()
    turn = s.send("[[say:hello there]]")
    await run(
        TurnStream(turn, closing, keepalive_s=60, head=b"event: session\ndata: {}\n\n"), client
    )
    start = client.messages[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    # the last frame ends the body: no empty write after it
    assert client.bodies[-1]["more_body"] is False and client.bodies[-1]["body"]
    assert all(m["more_body"] for m in client.bodies[:-1])
    assert all(m["body"] for m in client.bodies)
    got = frames(client.body)
    assert got[0] == b"event: session\ndata: {}"
    assert got[-1].startswith(b"id: ") and b"\nevent: result\n" in got[-1]
    # the same frames as the generic generator writes for the same events, in seq order
    replayed = [e async for e in s.events(0, follow=False) if e.turn == turn.number]
    assert got[1:] == [sse.frame(e).rstrip(b"\n") for e in replayed]
    assert [int(f.split(b"\n")[0][4:]) for f in got[1:]] == [e.seq for e in replayed]


async def test_keepalives_while_idle_then_the_shutdown_frame(
    hub: Hotsession, tmp_path: Path
) -> None:
    s = await hub.open(str(tmp_path))
    loop = asyncio.get_running_loop()
    closing: asyncio.Future[None] = loop.create_future()
    client = Client()
    turn = s.send("[[ask:Bash]]")  # the turn waits for a permission answer
    task = asyncio.ensure_future(run(TurnStream(turn, closing, keepalive_s=0.05), client))
    while client.body.count(sse.KEEPALIVE) < 3:
        await asyncio.sleep(0.02)
    assert not task.done()
    closing.set_result(None)
    await task
    assert client.bodies[-1] == {
        "type": "http.response.body",
        "body": sse.SHUTDOWN_FRAME,
        "more_body": False,
    }
    await answer_when_asked(s, client)
    assert (await asyncio.wait_for(turn.wait(), 10)).type == "result"


async def test_a_client_that_left_ends_an_idle_stream_at_the_next_keepalive(
    hub: Hotsession, tmp_path: Path
) -> None:
    s = await hub.open(str(tmp_path))
    closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    client = Client()
    opened: list[int] = []
    turn = s.send("[[ask:Bash]]")  # the turn waits for a permission answer
    stream = TurnStream(
        turn,
        closing,
        keepalive_s=0.05,
        opened=lambda: opened.append(1),
        closed=lambda: opened.append(-1),
    )
    task = asyncio.ensure_future(run(stream, client))
    await asyncio.sleep(0.2)
    assert not task.done() and sum(opened) == 1
    client.left.set()
    await asyncio.wait_for(task, 5)  # ends although the turn still runs
    assert sum(opened) == 0 and not turn.done.is_set()
    await answer_when_asked(s, client)
    # the turn ends, and its bookkeeping does not wait for the reader that is gone
    assert (await asyncio.wait_for(turn.wait(), 10)).type == "result"
    assert (await asyncio.wait_for(s.send("[[say:next]]").wait(), 10)).type == "result"


async def test_the_doorbell_rings_once_per_batch_and_at_once_when_events_wait() -> None:
    from hotsession.session import Turn

    turn = Turn("hs_x", 1, "p")
    waiter = turn.waiter()
    assert not waiter.done() and turn.waiter() is waiter  # one future for every reader now
    turn.push(Event("hs_x", 1, 1, "message", {"n": 1}))
    assert waiter.done()
    turn.push(Event("hs_x", 2, 1, "message", {"n": 2}))
    assert turn.waiter().done()  # events wait: no sleep
    assert [e.seq for e in turn.take_ready()] == [1, 2]
    later = turn.waiter()
    assert not later.done()
    turn.push(Event("hs_x", 3, 1, "result", {}))
    assert later.done()
    assert [e.seq for e in turn.take_ready()] == [3]
    assert turn.take_ready() == []


async def test_a_run_of_partials_rings_the_doorbell_only_for_a_reader_that_wants_them() -> None:
    from hotsession.session import Turn

    line = b'{"type":"stream_event","event":{"type":"content_block_delta"}}'
    run = [Event("hs_x", n, 1, "message", None, raw=line) for n in (1, 2, 3)]
    turn = Turn("hs_x", 1, "p")
    holding = turn.waiter(partials=False)
    turn.push_partials(run)
    assert not holding.done()  # held deltas wait without a wake-up (the SSE writer's hold)
    waiting = turn.waiter()
    assert waiting.done()  # a reader that wants deltas finds them at once
    assert turn.take_ready() == run
    later = turn.waiter()
    turn.push_partials(run[:1])
    assert later.done()


def test_partial_messages_are_framed_in_a_batch_as_frame_frames_them() -> None:
    line = b'{"type":"stream_event","event":{"type":"content_block_delta","t":"a\\nb"}}'
    events = [
        Event("hs_x", 1, 1, "message", {"type": "system"}),
        Event("hs_x", 2, 1, "message", None, raw=line),
        Event("hs_x", 3, 1, "message", None, raw=line + b"\n"),
        Event("hs_x", 4, 1, "message", None, raw=line, line=b'{"type":"other"}'),
        Event("hs_x", 5, 1, "result", {"turn": 1}),
    ]
    assert b"".join(sse._batches(events)) == b"".join(sse.frame(e) for e in events)


# -- the edge's send limit ---------------------------------------------------------------------


async def test_a_send_that_does_not_wait_is_written() -> None:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    bounded = edge._bounded_send(send, 0.1)
    await bounded({"type": "http.response.body", "body": b"x", "more_body": True})
    assert sent == [{"type": "http.response.body", "body": b"x", "more_body": True}]


async def test_a_send_that_waits_within_the_limit_is_written() -> None:
    sent: list[Any] = []
    drained = asyncio.Event()

    async def send(message: Any) -> Any:
        await drained.wait()  # the server's write buffer is full until the client reads
        await asyncio.sleep(0)
        sent.append(message)
        return "ignored"

    bounded = edge._bounded_send(send, 5)
    task = asyncio.ensure_future(bounded({"type": "http.response.body", "body": b"y"}))
    await asyncio.sleep(0.05)
    assert not task.done() and sent == []
    drained.set()
    await asyncio.wait_for(task, 5)
    assert sent == [{"type": "http.response.body", "body": b"y"}]


async def test_a_send_that_waits_past_the_limit_drops_the_client() -> None:
    cleaned: list[str] = []

    async def send(message: Any) -> None:
        try:
            await asyncio.Event().wait()  # the client never reads
        finally:
            cleaned.append("send ended")

    bounded = edge._bounded_send(send, 0.1)
    with pytest.raises(edge._SlowClient):
        await asyncio.wait_for(bounded({"type": "http.response.body", "body": b"z"}), 5)
    assert cleaned == ["send ended"]
    # the response start is never limited
    started: list[Any] = []

    async def start(message: Any) -> None:
        await asyncio.sleep(0.2)
        started.append(message)

    await edge._bounded_send(start, 0.05)({"type": "http.response.start"})
    assert started


async def test_a_send_that_fails_after_waiting_raises_its_error() -> None:
    async def send(message: Any) -> None:
        await asyncio.sleep(0.01)
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        await edge._bounded_send(send, 5)({"type": "http.response.body", "body": b""})


async def test_deltas_that_follow_a_write_go_out_together_within_the_coalescing_time() -> None:
    from hotsession.api import turnstream
    from hotsession.session import Turn

    loop = asyncio.get_running_loop()
    turn = Turn("hs_x", 1, "p")
    closing: asyncio.Future[None] = loop.create_future()
    client = Client()
    task = asyncio.ensure_future(run(TurnStream(turn, closing, keepalive_s=60), client))
    seq = iter(range(1, 1000))

    def delta(text: str) -> Event:
        line = b'{"type":"stream_event","event":{"delta":{"text":"%s"}}}' % text.encode()
        return Event("hs_x", next(seq), 1, "message", {"type": "stream_event"}, raw=line)

    def written() -> list[bytes]:
        return [m["body"] for m in client.bodies]

    await asyncio.sleep(turnstream.COALESCE_S * 2)
    turn.push(delta("a"))  # the first after a pause: at once
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(written()) == 1 and b'"a"' in written()[0]
    for text in "bcdef":  # right behind it: held ...
        turn.push(delta(text))
        await asyncio.sleep(0)
    assert len(written()) == 1
    began = loop.time()
    while len(written()) < 2:
        await asyncio.sleep(0.001)
    held = written()[1]  # ... and written together, in order, within the coalescing time
    assert loop.time() - began < 1.0
    assert [f.split(b'"text":"')[1][:1] for f in frames(held)] == [b"b", b"c", b"d", b"e", b"f"]
    turn.push(delta("g"))  # held again (soon after that write) ...
    await asyncio.sleep(0)
    turn.push(Event("hs_x", next(seq), 1, "message", {"type": "assistant"}))  # ... until this
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(written()) == 3
    assert b'"g"' in written()[2] and b"assistant" in written()[2]
    assert written()[2].index(b'"g"') < written()[2].index(b"assistant")
    turn.push(Event("hs_x", next(seq), 1, "result", {"ok": True}))
    await asyncio.wait_for(task, 5)
    assert client.bodies[-1]["more_body"] is False
    seqs = [int(f.split(b"\n")[0][4:]) for f in frames(client.body)]
    assert seqs == sorted(seqs) == list(range(1, len(seqs) + 1))  # every event, once, in order


async def test_the_clis_result_message_goes_out_with_hotsessions_result_in_one_write() -> None:
    """The CLI's ``result`` message is held for hotsession's ``result`` event, which follows it
    (the session's runner concludes the turn on it): one write for both. Other complete
    messages go out at once."""
    from hotsession.session import Turn

    loop = asyncio.get_running_loop()
    turn = Turn("hs_x", 1, "p")
    closing: asyncio.Future[None] = loop.create_future()
    client = Client()
    task = asyncio.ensure_future(run(TurnStream(turn, closing, keepalive_s=60), client))
    turn.push(Event("hs_x", 1, 1, "message", {"type": "system"}))
    for _ in range(3):
        await asyncio.sleep(0)
    turn.push(Event("hs_x", 2, 1, "message", {"type": "assistant"}))  # right behind: at once
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(client.bodies) == 2
    turn.push(Event("hs_x", 3, 1, "message", {"type": "result", "result": "ok"}))
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(client.bodies) == 2  # held ...
    turn.push(Event("hs_x", 4, 1, "result", {"turn": 1}))  # ... for this, written at once
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(client.bodies) == 3 and client.bodies[-1]["more_body"] is False
    assert [f.split(b"\n")[:2] for f in frames(client.bodies[-1]["body"])] == [
        [b"id: 3", b"event: message"],
        [b"id: 4", b"event: result"],
    ]
    await asyncio.wait_for(task, 5)


async def test_a_held_cli_result_goes_out_alone_if_nothing_follows_it() -> None:
    from hotsession.api import turnstream
    from hotsession.session import Turn

    loop = asyncio.get_running_loop()
    turn = Turn("hs_x", 1, "p")
    closing: asyncio.Future[None] = loop.create_future()
    client = Client()
    task = asyncio.ensure_future(run(TurnStream(turn, closing, keepalive_s=60), client))
    turn.push(Event("hs_x", 1, 1, "message", {"type": "result", "result": "ok"}))
    for _ in range(3):
        await asyncio.sleep(0)
    assert client.bodies == []
    await asyncio.sleep(turnstream.COALESCE_S * 4)
    assert len(client.bodies) == 1 and b"id: 1\n" in client.bodies[0]["body"]
    assert client.bodies[0]["more_body"] is True
    turn.push(Event("hs_x", 2, 1, "error", {"code": "x"}))
    await asyncio.wait_for(task, 5)
    assert client.bodies[-1]["more_body"] is False


# -- the follow stream (GET …/events on an open session) ----------------------------------------


async def test_a_follower_gets_the_replay_then_live_events_each_once_and_ends_with_the_session(
    hub: Hotsession, tmp_path: Path
) -> None:
    from hotsession.api.turnstream import FollowStream

    s = await hub.open(str(tmp_path))
    await s.send("[[say:before]]").wait()
    closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    client = Client()
    gauge: list[int] = []
    follow = FollowStream(
        s.fanout,
        1,  # Last-Event-ID 1: everything after it
        closing,
        keepalive_s=60,
        opened=lambda: gauge.append(1),
        closed=lambda: gauge.append(-1),
    )
    task = asyncio.ensure_future(run(follow, client))
    await s.send("[[say:after]]").wait()
    await asyncio.sleep(0.1)
    assert not task.done() and sum(gauge) == 1
    await hub.close_session(s.id)
    await asyncio.wait_for(task, 10)
    assert sum(gauge) == 0
    assert client.bodies[-1]["more_body"] is False
    seqs = [int(f.split(b"\n")[0][4:]) for f in frames(client.body)]
    stored = [e.seq async for e in s.events(1, follow=False)]
    assert seqs == stored and seqs[0] == 2  # every event after 1, once, in order
    assert b"before" in client.body and b"after" in client.body


async def test_a_follower_that_falls_behind_gets_what_was_delivered_then_ends(
    hub: Hotsession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hotsession.api.turnstream import FollowStream
    from hotsession.session import fanout

    monkeypatch.setattr(fanout.Subscription.__init__, "__defaults__", (2,))  # a 2-event buffer
    s = await hub.open(str(tmp_path))
    closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    client = Client()
    follow = FollowStream(s.fanout, 0, closing, keepalive_s=60)
    blocked = asyncio.Event()

    async def slow_send(message: dict[str, Any]) -> None:
        client.messages.append(message)
        if message["type"] == "http.response.start":
            await blocked.wait()  # the client reads nothing for a while

    task = asyncio.ensure_future(follow({"type": "http"}, client.receive, slow_send))
    await asyncio.sleep(0.05)
    await s.send("[[say:too much]]").wait()  # more events than the buffer holds
    blocked.set()
    await asyncio.wait_for(task, 10)  # dropped: it ends (the client must reconnect and replay)
    assert client.bodies[-1]["more_body"] is False
    got = [int(f.split(b"\n")[0][4:]) for f in frames(client.body)]
    assert got == sorted(set(got))  # what it got (here: the replay), each once, in order
    assert got == [e.seq async for e in s.events(0, follow=False)][: len(got)]


def test_a_subscriptions_doorbell() -> None:
    from hotsession.session import EventFanout

    class Store:
        def add_events(self, records: object) -> None:
            pass

    async def main() -> None:
        f = EventFanout("hs_x", Store())  # type: ignore[arg-type]
        sub = f.subscribe()
        waiter = sub.waiter(partials=False)
        f.emit(None, "message", {"type": "stream_event"}, raw=b'{"type":"stream_event"}')
        assert not waiter.done()  # a partial message waits without a wake-up
        f.emit(None, "message", {"type": "assistant"})
        assert waiter.done()
        assert [e.type if e else None for e in sub.take_ready()] == ["message", "message"]
        f.end()
        assert sub.waiter().done() and sub.take_ready() == [None]

    asyncio.run(main())
