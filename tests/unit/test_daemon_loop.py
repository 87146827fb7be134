"""The daemon runs on uvloop with uvicorn's httptools parser (both dependencies), and its API
connections keep TCP_NODELAY on that loop.

Measured with ``hotsession bench --concurrency 50`` (docs/benchmarks.md): with the asyncio loop
and h11 the daemon added ~0.5 s to each of 50 concurrent follow-ups, with uvloop + httptools
~40 ms. A missing or silently unused dependency would only show in the benchmark, so check it.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hotsession.daemon import bind, loop_factory


async def _nodelay_of_accepted() -> int:
    listener = bind("127.0.0.1", 0)
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
    host, port = listener.getsockname()[:2]
    _, writer = await asyncio.open_connection(host, port)
    try:
        return await asyncio.wait_for(accepted, 10)
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


def test_daemon_loop_is_uvloop_with_tcp_nodelay():
    factory = loop_factory()
    assert factory is not None
    with asyncio.Runner(loop_factory=factory) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
        assert runner.run(_nodelay_of_accepted()) != 0


def test_uvicorn_picks_httptools():
    config = uvicorn.Config(app=lambda scope, receive, send: None)  # as the daemon builds it
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol


async def test_the_servers_main_loop_ticks_slowly_but_stops_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hotsession.daemon import _Server

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("no request expected")

    monkeypatch.setattr(_Server, "TICK_S", 3600.0)  # a stop must not wait for the next tick
    server = _Server(uvicorn.Config(app, lifespan="off"))
    ticks: list[int] = []
    on_tick = server.on_tick

    async def counted(counter: int) -> bool:
        ticks.append(counter)
        return await on_tick(counter)

    server.on_tick = counted  # type: ignore[method-assign]
    running = asyncio.create_task(server.main_loop())
    await asyncio.sleep(0.1)
    assert not running.done() and ticks == [0]
    assert any(name == b"date" for name, _ in server.server_state.default_headers)
    server.should_exit = True
    await asyncio.wait_for(running, 5)
    assert ticks[-1] % 10 == 0  # each tick renews the Date header, as uvicorn's tenth did
