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
two). The single-machine and ``auto`` / ``host:port`` paths are unchanged.
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

STREAMED = frozenset({"send", "ask", "follow", "watch"})
"""The host actor's methods that may be pulled (its async generators)."""

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
    """The daemon's side: one of the host actor's streaming calls, pulled (see module doc)."""

    def __init__(
        self, actor: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._actor = actor
        self._call = (method, args, kwargs)
        self._id: int | None = None
        self._ready: deque[Any] = deque()
        self._done = False

    def __aiter__(self) -> PulledStream:
        return self

    async def __anext__(self) -> asyncio.Future[Any]:
        """The next item as a done future (awaitable as Ray's ``ObjectRef`` of an item)."""
        while not self._ready:
            if self._done:
                raise StopAsyncIteration
            if self._id is None:
                self._id, items, self._done = await self._actor.stream_open.remote(*self._call)
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
            self._actor.stream_close.remote(self._id)


def remote_stream(actor: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """``actor.method.remote(*args, **kwargs)`` for one of its async generators: Ray's
    ``ObjectRefGenerator``, or a :class:`PulledStream` when this process is a Ray Client."""
    from hotsession.cluster.actors import via_client

    if via_client():
        return PulledStream(actor, method, args, kwargs)
    return getattr(actor, method).remote(*args, **kwargs)


def cancel_stream(gen: Any) -> None:
    """Stop a stream its reader leaves (``ray.cancel`` for Ray's generator)."""
    if isinstance(gen, PulledStream):
        gen.close()
        return
    import ray

    with contextlib.suppress(Exception):
        ray.cancel(gen)
