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


class Pushed:
    """Ray's generator of an actor's async generator method: the generator runs in a task of
    its own and its items are pushed as they come; ``ray.cancel`` cancels that task."""

    def __init__(self, agen: AsyncIterator[Any]) -> None:
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._run(agen))

    async def _run(self, agen: AsyncIterator[Any]) -> None:
        try:
            async for item in agen:
                self.queue.put_nowait(("item", item))
        except Exception as exc:
            self.queue.put_nowait(("error", exc))
        else:
            self.queue.put_nowait(("end", None))

    def __aiter__(self) -> Pushed:
        return self

    async def __anext__(self) -> asyncio.Future[Any]:
        kind, value = await self.queue.get()
        if kind == "end":
            raise StopAsyncIteration
        ref: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if kind == "error":
            ref.set_exception(value)
        else:
            ref.set_result(value)
        return ref


class GenMethod:
    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls: list[Pushed] = []

    def remote(self, *args: Any) -> Pushed:
        self.calls.append(Pushed(self.fn(*args)))
        return self.calls[-1]


class Handle:
    def __init__(self, source: Source) -> None:
        self.stream_open = Method(source.stream_open)
        self.stream_next = Method(source.stream_next)
        self.stream_close = Method(source.stream_close)
        self.stream_rest = GenMethod(source.stream_rest)
        self.follow = GenMethod(source.follow)


@pytest.fixture
def ray_cancel(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ray.cancel`` of a stand-in generator: its task is cancelled."""
    monkeypatch.setattr(streams, "_cancel", lambda gen: gen.task.cancel())


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


async def test_a_turn_that_ends_with_its_first_items_is_one_call() -> None:
    source = Source()
    source.gate.set()
    handle = Handle(source)
    got = [await ref async for ref in PulledStream(handle, "send", (2,), {}, push_rest=True)]
    assert got == [{"turn": 1}, [0], [1]]
    assert handle.stream_rest.calls == []  # everything came in stream_open's reply
    assert source._pumps == {}


async def test_the_rest_of_a_turn_is_pushed_in_order_then_the_end() -> None:
    source = Source()
    handle = Handle(source)
    stream = PulledStream(handle, "send", (3,), {}, push_rest=True)
    assert await (await stream.__anext__()) == {"turn": 1}
    source.gate.set()  # the rest comes after the first call's reply
    got = [await ref async for ref in stream]
    assert got == [[0], [1], [2]]
    assert len(handle.stream_rest.calls) == 1  # one generator, no pulls
    assert source._pumps == {}


async def test_a_pushed_rest_raises_the_error_after_the_items_before_it() -> None:
    source = Source()
    stream = PulledStream(Handle(source), "send", (2, True), {}, push_rest=True)
    got = [await (await stream.__anext__())]
    source.gate.set()
    with pytest.raises(RuntimeError, match="boom"):
        async for ref in stream:
            got.append(await ref)
    assert got == [{"turn": 1}, [0], [1]]
    assert source._pumps == {}


@pytest.mark.usefixtures("ray_cancel")
async def test_closing_a_pushed_rest_ends_the_generator_on_the_node() -> None:
    source = Source()
    stream = PulledStream(Handle(source), "follow", (), {}, push_rest=True)
    assert await (await stream.__anext__()) == {"ok": True}
    waiting = asyncio.ensure_future(stream.__anext__())  # the rest's generator is open
    while not source._pumps[1].pulling:
        await asyncio.sleep(0.01)
    stream.close()
    await asyncio.wait_for(source.closed.wait(), 5)
    assert source._pumps == {}
    waiting.cancel()


async def test_a_driver_opens_turns_by_call_and_follows_by_generator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hotsession.cluster import actors

    monkeypatch.setattr(actors, "via_client", lambda: False)
    handle = Handle(Source())
    turn = streams.remote_stream(handle, "send", 1)
    assert isinstance(turn, PulledStream) and turn._push_rest
    follow = streams.remote_stream(handle, "follow")
    assert isinstance(follow, Pushed)
    follow.task.cancel()
    monkeypatch.setattr(actors, "via_client", lambda: True)
    pulled = streams.remote_stream(handle, "send", 1)
    assert isinstance(pulled, PulledStream) and not pulled._push_rest
