"""Pulled streams (``hotsession.cluster.streams``): a host actor's generators over Ray Client,
here without Ray (the actor is called directly through a stand-in handle)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hotsession.cluster import streams
from hotsession.cluster.streams import PulledStream, StreamSource


class Source(StreamSource):
    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.closed = asyncio.Event()

    async def send(self, n: int, fail: bool = False) -> AsyncIterator[Any]:
        try:
            yield {"turn": 1}
            await self.gate.wait()
            for i in range(n):
                yield [i]
            if fail:
                raise RuntimeError("boom")
        finally:
            self.closed.set()

    async def follow(self) -> AsyncIterator[Any]:
        try:
            yield {"ok": True}
            await asyncio.Event().wait()  # never ends by itself
        finally:
            self.closed.set()

    async def close(self) -> None:  # not a streaming call
        pass


class Method:
    """``actor.method.remote(...)``: a coroutine, awaitable as a Ray ObjectRef is."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> asyncio.Task[Any]:
        return asyncio.ensure_future(self.fn(*args))


class Handle:
    def __init__(self, source: Source) -> None:
        self.stream_open = Method(source.stream_open)
        self.stream_next = Method(source.stream_next)
        self.stream_close = Method(source.stream_close)


async def test_items_arrive_in_order_and_ready_ones_in_one_pull() -> None:
    source = Source()
    stream = PulledStream(Handle(source), "send", (3,), {})
    assert await (await stream.__anext__()) == {"turn": 1}  # in stream_open's reply
    source.gate.set()
    await asyncio.sleep(0)
    items, done = await source.stream_next(1)  # the whole rest in one pull
    assert items == [[0], [1], [2]] and done
    assert source._pumps == {}


async def test_the_reader_sees_every_item_then_the_end() -> None:
    source = Source()
    source.gate.set()
    got = [await ref async for ref in PulledStream(Handle(source), "send", (4,), {})]
    assert got == [{"turn": 1}, [0], [1], [2], [3]]
    assert source._pumps == {}


async def test_an_error_reaches_the_reader_after_the_items_before_it() -> None:
    source = Source()
    source.gate.set()
    got: list[Any] = []
    with pytest.raises(RuntimeError, match="boom"):
        async for ref in PulledStream(Handle(source), "send", (2, True), {}):
            got.append(await ref)
    assert got == [{"turn": 1}, [0], [1]]


async def test_close_ends_the_generator_on_the_node() -> None:
    source = Source()
    stream = PulledStream(Handle(source), "follow", (), {})
    assert await (await stream.__anext__()) == {"ok": True}
    stream.close()
    await asyncio.wait_for(source.closed.wait(), 5)
    assert source._pumps == {}


async def test_an_unpulled_stream_is_closed_and_a_pull_waits_at_most_pull_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(streams, "PULL_WAIT_S", 0.05)
    monkeypatch.setattr(streams, "IDLE_S", 0.2)
    source = Source()
    stream_id, items, done = await source.stream_open("follow", (), {})
    assert items == [{"ok": True}] and not done
    assert await source.stream_next(stream_id) == ([], False)  # nothing yet: an empty answer
    await asyncio.wait_for(source.closed.wait(), 5)  # nobody pulled since: reaped
    assert await source.stream_next(stream_id) == ([], True)


async def test_only_streaming_calls_can_be_opened() -> None:
    with pytest.raises(ValueError, match="not a streaming call"):
        await Source().stream_open("close", (), {})
