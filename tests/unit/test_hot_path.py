"""The follow-up's hot path: the turn's bookkeeping waits for its reader; the edge's fast path.

The bookkeeping tests drive real (fake-agent) processes through ``Hotsession``; what they watch
is when the hub's turn-boundary hook (``Hotsession.turn_finished``, the session listener's call
that ends ``Session._finish_turn``) runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.conftest import wait_until

from hotsession import Config, Hotsession, session
from hotsession.api import events as sse
from hotsession.api import fastpath
from hotsession.events import Event
from hotsession.registry import TurnRecord


@pytest.fixture
async def hub(tmp_path: Path, fake_cli: str) -> AsyncIterator[Hotsession]:
    config = Config(state_dir=tmp_path / "state", cli_path=fake_cli, pool_enabled=False)
    async with Hotsession(config) as hs:
        yield hs


@pytest.fixture
def boundaries(hub: Hotsession, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The turn numbers whose bookkeeping has finished, in order."""
    seen: list[int] = []
    after_turn = hub.turn_finished

    async def spy(s: session.Session) -> None:
        await after_turn(s)
        seen.append(s.last_turn)

    monkeypatch.setattr(hub, "turn_finished", spy)
    return seen


async def test_bookkeeping_waits_until_the_reader_took_the_result(
    hub: Hotsession, boundaries: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session.turn, "HANDOVER_S", 30.0)
    s = await hub.open(str(tmp_path))
    turn = s.send("[[say:held]]")
    reader = turn.__aiter__()
    while not (await anext(reader)).terminal:
        pass
    # The reader holds the result (an SSE stream writing its frame): no bookkeeping yet, but
    # the turn's own record already says how it ended (the API overlays it on the registry's).
    await asyncio.sleep(0.3)
    assert boundaries == []
    assert turn.record.status == "done" and turn.record.ended_at is not None
    assert list(s.recent_turns) == [turn.record]
    with pytest.raises(StopAsyncIteration):
        await anext(reader)  # the reader comes back for more: the frame is out
    await wait_until(lambda: boundaries == [1])


async def test_bookkeeping_does_not_wait_without_a_reader(
    hub: Hotsession, boundaries: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session.turn, "HANDOVER_S", 30.0)
    s = await hub.open(str(tmp_path))
    await s.send("[[say:unread]]").wait()  # a library caller that never iterates the turn
    await wait_until(lambda: boundaries == [1])


async def test_bookkeeping_waits_a_bounded_time_for_a_reader_that_stalls(
    hub: Hotsession, boundaries: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session.turn, "HANDOVER_S", 0.2)
    s = await hub.open(str(tmp_path))
    reader = s.send("[[say:stalled]]").__aiter__()
    while not (await anext(reader)).terminal:
        pass
    # never asks again, never closes: the limit releases the bookkeeping, and the next turn runs
    await wait_until(lambda: boundaries == [1])
    assert (await asyncio.wait_for(s.send("[[say:next]]").wait(), 10)).type == "result"
    await reader.aclose()


def test_fast_path_matches_only_turn_posts() -> None:
    def scope(method: str, path: str) -> dict[str, str]:
        return {"method": method, "path": path}

    assert fastpath.match(scope("POST", "/v1/sessions/hs_abc/turns")) == "hs_abc"
    assert fastpath.match(scope("GET", "/v1/sessions/hs_abc/turns")) is None
    assert fastpath.match(scope("POST", "/v1/sessions/hs_abc/turns/x")) is None
    assert fastpath.match(scope("POST", "/v1/sessions//turns")) is None
    assert fastpath.match(scope("POST", "/v1/sessions/a/b/turns")) is None
    assert fastpath.match(scope("POST", "/v1/ask")) is None


def test_fast_path_opens_only_bodies_the_route_accepts() -> None:
    assert fastpath.is_open({"method": "POST", "path": "/v1/sessions"})
    assert not fastpath.is_open({"method": "GET", "path": "/v1/sessions"})
    assert not fastpath.is_open({"method": "POST", "path": "/v1/sessions/x"})
    assert fastpath.options_of(b"") == fastpath.SessionOptionsIn()  # every default
    got = fastpath.options_of(b'{"model": "sonnet", "include_partial_messages": true}')
    assert got is not None and got.model == "sonnet" and got.include_partial_messages
    # the route answers these (400 / 422), word for word
    for body in (b"{", b"null", b"[]", b'"x"', b'{"nope": 1}', b'{"model": ""}', b"\xff"):
        assert fastpath.options_of(body) is None, body


@pytest.mark.parametrize(
    ("body", "prompt"),
    [
        (b'{"prompt": "hello"}', "hello"),
        (b'{"prompt": "   "}', "   "),  # Session.send answers that one (422), like the route
        (b'{"prompt": "\\u00e9"}', "\u00e9"),
        (b'{"prompt": "x", "extra": 1}', None),  # unknown field: the route's 422
        (b'{"prompt": 1}', None),
        (b"{}", None),
        (b'["prompt"]', None),
        (b'"prompt"', None),
        (b'{"prompt": ', None),  # malformed: the route's 400
        (b"\xff\xfe", None),
        (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),  # RecursionError
        (b'{"prompt": "x\\ud800"}', None),  # lone surrogate: the route's 422
    ],
)
def test_fast_path_takes_only_well_formed_bodies(body: bytes, prompt: str | None) -> None:
    assert fastpath.prompt_of(body) == prompt


async def test_take_ready_hands_over_what_the_turn_holds(hub: Hotsession, tmp_path: Path) -> None:
    s = await hub.open(str(tmp_path))
    turn = s.send("[[say:batch]]")
    await turn.wait()  # every event of the turn is queued now
    reader = turn.__aiter__()
    first = await anext(reader)
    rest = turn.take_ready()
    assert [first.type, *(e.type for e in rest)][-1] == "result" and rest[-1].terminal
    assert [e.seq for e in [first, *rest]] == list(range(first.seq, first.seq + 1 + len(rest)))
    assert turn.take_ready() == []
    with pytest.raises(StopAsyncIteration):  # the iteration ends: its terminal was taken
        await asyncio.wait_for(anext(reader), 5)


async def test_a_stream_shows_no_event_before_the_prompt_is_recorded(
    hub: Hotsession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await hub.open(str(tmp_path))
    release = asyncio.Event()
    put_turn = hub.registry.put_turn

    async def slow_put_turn(rec: TurnRecord) -> None:
        await release.wait()  # the store is slow (a loaded machine)
        await put_turn(rec)

    monkeypatch.setattr(hub.registry, "put_turn", slow_put_turn)
    turn = s.send("[[say:durable]]")
    closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    frames = sse.stream(turn, closing, keepalive_s=60)
    first = asyncio.ensure_future(anext(frames))
    await turn.wait()  # the turn ran to its end meanwhile
    await asyncio.sleep(0.1)
    assert not first.done()  # ... but the stream waits for the record
    release.set()
    assert b"event: message" in await asyncio.wait_for(first, 10)
    assert any(t.turn == turn.number for t in await hub.registry.list_turns(s.id))
    await frames.aclose()


def test_ready_frames_are_joined_up_to_the_batch_size() -> None:
    def ev(seq: int, size: int) -> Event:
        return Event("hs_x", seq, 1, "message", {"text": "x" * size})

    small = [ev(1, 100), ev(2, 100), ev(3, 100)]
    assert len(list(sse._batches(small))) == 1  # one write
    big = sse.BATCH_BYTES
    chunks = list(sse._batches([ev(1, 100), ev(2, big), ev(3, big), ev(4, 100)]))
    # a client that stops reading meets the send limit before the frames after a big one
    assert [c.count(b"\nevent: ") + c.startswith(b"event: ") for c in chunks] == [1, 1, 1, 1]
    assert b"".join(chunks) == b"".join(
        map(sse.frame, [ev(1, 100), ev(2, big), ev(3, big), ev(4, 100)])
    )


async def test_a_turns_cli_messages_are_framed_as_the_clis_own_lines(
    hub: Hotsession, tmp_path: Path
) -> None:
    """Each CLI message's event carries the CLI's line (``Event.line``) and its SSE frame is
    that line, not ``data`` encoded again; hotsession's own events are encoded."""
    s = await hub.open(str(tmp_path))
    events = [e async for e in s.send("[[say:café]]")]
    messages = [e for e in events if e.type == "message"]
    assert [e.data["type"] for e in messages] == ["system", "assistant", "result"]
    for e in messages:
        assert e.line is not None and json.loads(e.line) == e.data
        assert sse.frame(e) == b"id: %d\nevent: message\ndata: %s\n\n" % (e.seq, e.line)
    result = events[-1]
    assert result.type == "result" and result.line is None
    assert sse.frame(result).endswith(
        b"data: "
        + json.dumps(result.data, ensure_ascii=False, separators=(",", ":")).encode()
        + b"\n\n"
    )


class _QuietProc:
    """As much of a process as the watchdog reads."""

    def __init__(self) -> None:
        self.last_output = asyncio.get_running_loop().time()

    def stderr_tail(self) -> str:
        return "last words"


async def test_the_watchdog_fails_a_silent_turn_and_follows_output_and_permissions() -> None:
    """One timer per quiet spell (no timeout scope around the runner's wait): it fails the
    turn's delivery once the process said nothing for the limit, sleeps on when output came
    meanwhile, and does not count while a permission question waits for a human."""
    from hotsession.errors import AgentTimeout
    from hotsession.session.actor import _Watchdog

    loop = asyncio.get_running_loop()
    proc = _QuietProc()
    waiting = [False]
    done: asyncio.Future[dict[str, object]] = loop.create_future()
    dog = _Watchdog(proc, done, 0.2, lambda: waiting[0])  # type: ignore[arg-type]
    for _ in range(4):  # output every 0.1 s keeps it quiet
        await asyncio.sleep(0.1)
        proc.last_output = loop.time()
    assert not done.done()
    waiting[0] = True  # a permission question: the human takes 0.5 s
    dog.pause()
    await asyncio.sleep(0.5)
    assert not done.done()
    waiting[0] = False
    dog.resume()  # counts from the answer
    await asyncio.sleep(0.1)
    assert not done.done()
    with pytest.raises(AgentTimeout, match="no output from the agent for 0.2s") as info:
        await asyncio.wait_for(done, 2)
    assert info.value.details["stderr_tail"] == "last words"
    dog.stop()
    # A delivery that ended first is left alone.
    ended: asyncio.Future[dict[str, object]] = loop.create_future()
    ended.set_result({"type": "result"})
    _Watchdog(proc, ended, 0.05, lambda: False)  # type: ignore[arg-type]
    await asyncio.sleep(0.15)
    assert ended.result() == {"type": "result"}
