"""A host actor's streaming calls over Ray Client (``--cluster ray://host:port``), pulled.

Design
======
A turn's events, a session's events and a tenant's changes cross from a host actor to an API
daemon as Ray streaming generators (an async-generator actor method; the daemon iterates the
``ObjectRefGenerator``). Ray Client does not carry streaming generators: Ray refuses them
("Streaming actor methods (num_returns="streaming") are not currently supported when using Ray
Client", ``ray/util/client/worker.py``; an async generator method fails with
``'ObjectRefGenerator' object has no attribute 'binary'``), and the maintainers closed the
request as *won't fix* (ray-project/ray#43357). Everything else hotsession uses works through
Ray Client (named detached actors, node affinity, async actor calls, ``ray.nodes()``).

So a daemon connected with ``ray://`` pulls instead, with plain actor calls, and its callers do
not notice: :func:`remote_stream` returns Ray's generator when the daemon is a Ray driver and a
:class:`PulledStream` (the same ``async for ref in gen: item = await ref`` interface) when it is
a Ray Client. On the node, :class:`StreamSource` (a mixin of the host actor) runs the generator
in a task that queues its items; ``stream_open`` starts it and returns its first items (a turn's
acknowledgement arrives in the same round trip as with Ray's generator), ``stream_next`` waits
for the next items and hands over everything that is ready at once (a batch of batches). A pull
waits at most ``PULL_WAIT_S`` and then answers with nothing, so a stream whose daemon went away
(a client that left, a daemon killed) is noticed: one that nobody has pulled for
``IDLE_S`` is closed on the node, which ends its generator as Ray's cancellation would.

Cost: one actor call per pull instead of Ray's pushed items, i.e. one more round trip for each
batch that is not ready when the previous pull returns (a follow-up's reply is typically one or
two).

A turn from a driver daemon (``auto`` / ``host:port``): first item by a plain call, the rest
pushed. Ray's streaming generator costs more than a plain actor call even for one item: the
call, the item (serialised on a thread of its own and reported to the caller by an RPC of its
own) and the end of the stream are three exchanges, where a plain call's reply is one. Measured
2026-11-30 (a Ray async actor on this machine, an item of ~8 KB, 150-300 calls, load 7-8): a
one-item generator cost the actor 1.63-1.83 ms and the caller 1.53-1.85 ms of CPU, a plain call
1.03 and 0.83-0.89, the stream's first item through ``stream_open`` (this module's pump) 1.35 and
1.05-1.13, and came ~1 ms sooner. A plain follow-up crosses as one item
(``hotsession.cluster.relay``), so a driver daemon opens ``send`` and ``ask`` with
``stream_open`` (:data:`FIRST_BY_CALL`); when the turn is not over with its first items, the
rest comes as Ray's generator over the same pump (``stream_rest``: pushed, as before, since a
turn's later batches, streamed token deltas, would each cost a pull's round trip; pulled, the
20 items of a streamed reply cost the actor ~40 % more). A daemon gone between the two calls
leaves a stream nobody pulls: closed after ``IDLE_S`` as above. ``follow`` and ``watch`` (long
streams) stay Ray's generators.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

PULL_WAIT_S = 15.0
"""How long one ``stream_next`` waits for an item before answering with none."""

IDLE_S = 60.0
"""A stream nobody pulled for this long is closed on the node (its daemon went away)."""

STREAMED = frozenset({"send", "ask", "follow", "watch", "dropin"})
"""The host actor's methods that may be pulled (its async generators)."""

FIRST_BY_CALL = frozenset({"send", "ask"})
"""Streams a driver daemon opens with a plain call, the rest pushed (see the module doc)."""

_END = object()


@dataclass
class _Pump:
    """One generator running on the node, its items queued for the pulls."""

    queue: asyncio.Queue[Any]
    task: asyncio.Task[None] | None = None
    error: BaseException | None = None
    pulling: int = 0
    last_pull: float = field(default_factory=time.monotonic)


class StreamSource:
    """The node's side: ``stream_open`` / ``stream_next`` / ``stream_close`` over the actor's
    async generators (a mixin of ``hotsession.cluster.node.NodeHost``)."""

    _pumps: dict[int, _Pump]
    _pump_ids: itertools.count[int]
    _reaper: asyncio.Task[None] | None

    def _stream_table(self) -> dict[int, _Pump]:
        if not hasattr(self, "_pumps"):
            self._pumps, self._pump_ids, self._reaper = {}, itertools.count(1), None
        return self._pumps

    async def stream_open(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[int, list[Any], bool]:
        """Start ``method(*args, **kwargs)`` (one of ``STREAMED``); its id and first items."""
        if method not in STREAMED:
            raise ValueError(f"{method} is not a streaming call")
        table = self._stream_table()
        gen: AsyncIterator[Any] = getattr(self, method)(*args, **kwargs)
        stream_id = next(self._pump_ids)
        pump = table[stream_id] = _Pump(asyncio.Queue())
        pump.task = asyncio.create_task(self._run_pump(pump, gen), name=f"stream-{method}")
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name="stream-reaper")
        items, done = await self.stream_next(stream_id)
        return stream_id, items, done

    async def stream_next(self, stream_id: int) -> tuple[list[Any], bool]:
        """The items ready (waiting up to ``PULL_WAIT_S`` for one) and whether it ended."""
        pump = self._stream_table().get(stream_id)
        if pump is None:
            return [], True  # closed (reaped, or closed by its reader)
        pump.pulling += 1
        try:
            async with asyncio.timeout(PULL_WAIT_S):  # (in this task: no item is lost)
                first = await pump.queue.get()
        except TimeoutError:
            return [], False
        finally:
            pump.pulling -= 1
            pump.last_pull = time.monotonic()
        items = [first]
        while not pump.queue.empty():
            items.append(pump.queue.get_nowait())
        if items[-1] is not _END:
            return items, False
        items.pop()
        if pump.error is not None and items:
            pump.queue.put_nowait(_END)  # the items first; the error at the next pull
            return items, False
        self._pumps.pop(stream_id, None)
        if pump.error is not None:
            raise pump.error
        return items, True

    async def stream_rest(self, stream_id: int) -> AsyncIterator[list[Any]]:
        """The rest of a stream opened with ``stream_open``, pushed: Ray streams each yielded
        list (the items ready together) to the caller as they come; an error of the
        generator is raised after the items before it. Cancelled (its reader left), it closes
        the stream."""
        pump = self._stream_table().get(stream_id)
        if pump is None:
            return  # closed (reaped, or closed by its reader)
        pump.pulling += 1
        try:
            while True:
                items = [await pump.queue.get()]
                while not pump.queue.empty():
                    items.append(pump.queue.get_nowait())
                ended = items[-1] is _END
                if ended:
                    items.pop()
                    self._pumps.pop(stream_id, None)
                if items:
                    yield items
                if ended:
                    if pump.error is not None:
                        raise pump.error
                    return
        finally:
            pump.pulling -= 1
            pump.last_pull = time.monotonic()
            if self._pumps.get(stream_id) is pump:  # left before the end: end its generator
                self._pumps.pop(stream_id, None)
                if pump.task is not None:
                    pump.task.cancel()

    async def stream_close(self, stream_id: int) -> None:
        """End a stream its reader left (its generator is cancelled)."""
        pump = self._stream_table().pop(stream_id, None)
        if pump is not None and pump.task is not None:
            pump.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump.task

    @staticmethod
    async def _run_pump(pump: _Pump, gen: AsyncIterator[Any]) -> None:
        try:
            async for item in gen:
                pump.queue.put_nowait(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reaches the reader, as a generator's error does through Ray
            pump.error = exc
        finally:
            pump.queue.put_nowait(_END)

    async def _reap(self) -> None:
        while self._pumps:
            await asyncio.sleep(IDLE_S / 4)
            now = time.monotonic()
            for stream_id, pump in list(self._pumps.items()):
                if not pump.pulling and now - pump.last_pull > IDLE_S:
                    await self.stream_close(stream_id)


class PulledStream:
    """The daemon's side: one of the host actor's streaming calls, pulled (see module doc);
    with ``push_rest``, only its first items are (``stream_open``), the rest come as Ray's
    generator (``stream_rest``)."""

    def __init__(
        self,
        actor: Any,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        push_rest: bool = False,
    ) -> None:
        self._actor = actor
        self._call = (method, args, kwargs)
        self._id: int | None = None
        self._ready: deque[Any] = deque()
        self._done = False
        self._push_rest = push_rest
        self._rest: Any = None  # Ray's generator of ``stream_rest``, once opened

    def __aiter__(self) -> PulledStream:
        return self

    async def __anext__(self) -> asyncio.Future[Any]:
        """The next item as a done future (awaitable as Ray's ``ObjectRef`` of an item)."""
        while not self._ready:
            if self._done:
                raise StopAsyncIteration
            if self._id is None:
                self._id, items, self._done = await self._actor.stream_open.remote(*self._call)
            elif self._push_rest:
                if self._rest is None:
                    self._rest = self._actor.stream_rest.remote(self._id)
                try:
                    items = await (await self._rest.__anext__())
                except StopAsyncIteration:
                    self._done = True
                    continue
            else:
                items, self._done = await self._actor.stream_next.remote(self._id)
            self._ready.extend(items)
        ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        ready.set_result(self._ready.popleft())
        return ready

    def close(self) -> None:
        """Tell the node the reader left (not waited for)."""
        if self._id is not None and not self._done:
            self._done = True
            if self._rest is not None:  # its cancellation closes the stream on the node
                _cancel(self._rest)
            else:
                self._actor.stream_close.remote(self._id)


def remote_stream(actor: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """``actor.method.remote(*args, **kwargs)`` for one of its async generators: Ray's
    ``ObjectRefGenerator``, or a :class:`PulledStream` when this process is a Ray Client, or
    one whose rest is pushed for a turn (:data:`FIRST_BY_CALL`)."""
    from hotsession.cluster.actors import via_client

    if via_client():
        return PulledStream(actor, method, args, kwargs)
    if method in FIRST_BY_CALL:
        return PulledStream(actor, method, args, kwargs, push_rest=True)
    return getattr(actor, method).remote(*args, **kwargs)


def cancel_stream(gen: Any) -> None:
    """Stop a stream its reader leaves (``ray.cancel`` for Ray's generator)."""
    if isinstance(gen, PulledStream):
        gen.close()
        return
    _cancel(gen)


def _cancel(gen: Any) -> None:
    import ray

    with contextlib.suppress(Exception):
        ray.cancel(gen)
