"""The bench's timing client (``hotsession.bench.wire``) against a real uvicorn server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hotsession.bench.environment import BenchError
from hotsession.bench.wire import WireClient
from hotsession.daemon import _Server, bind

TOKEN = "t0ken"


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/sse``: the body's ``frames`` as chunks (split however the test says); ``/err``: 418."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    auth = dict(scope["headers"]).get(b"authorization")
    if scope["path"] == "/err" or auth != f"Bearer {TOKEN}".encode():
        payload = json.dumps({"error": {"code": "teapot", "message": "no"}}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 418,
                "headers": [(b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        return
    chunks: list[str] = json.loads(body)["chunks"]
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, list[int]]]:
    """A uvicorn server on a free port; yields the port and a list of accepted connections."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    connections: list[int] = []

    class Counting(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:
            connections.append(1)
            super().connection_made(transport)

    config = uvicorn.Config(app, log_level="warning", http=Counting, lifespan="off")
    # The daemon's server class: no signal handlers (uvicorn's own replaced the test process's
    # SIGINT handler, and a later test that sends SIGINT to itself then got no KeyboardInterrupt).
    srv = _Server(config)
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    while not srv.started:
        await asyncio.sleep(0.01)
    yield port, connections
    srv.should_exit = True
    await task


async def _collect(client: WireClient, path: str, body: dict[str, Any]) -> list[tuple[str, bytes]]:
    return [event async for event in client.events(client.request_bytes(path, body))]


async def test_events_across_and_within_chunks(server: tuple[int, list[int]]) -> None:
    port, _ = server
    client = WireClient("127.0.0.1", port, TOKEN)
    chunks = [
        'id: 1\nevent: message\ndata: {"a":1}\n\n',
        "event: result\nda",  # a frame split across chunks
        'ta: {"b":2}\n\n: keep-alive\n\nid: 3\nevent: x\ndata: 3\n\n',  # comment + two frames
    ]
    events = await _collect(client, "/sse", {"chunks": chunks})
    assert events == [("message", b'{"a":1}'), ("result", b'{"b":2}'), ("x", b"3")]
    await client.aclose()


async def test_a_kept_alive_socket_is_reused(server: tuple[int, list[int]]) -> None:
    port, connections = server
    client = WireClient("127.0.0.1", port, TOKEN)
    for i in range(3):
        events = await _collect(client, "/sse", {"chunks": [f"data: {i}\n\n"]})
        assert events == [("message", str(i).encode())]
    assert len(connections) == 1
    await client.aclose()


async def test_an_error_status_raises_with_the_body(server: tuple[int, list[int]]) -> None:
    port, _ = server
    client = WireClient("127.0.0.1", port, TOKEN)
    with pytest.raises(BenchError, match="HTTP 418.*teapot"):
        await _collect(client, "/err", {})
    bad = WireClient("127.0.0.1", port, "wrong")
    with pytest.raises(BenchError, match="HTTP 418"):
        await _collect(bad, "/sse", {"chunks": []})
    # the client still works after an error answer
    assert await _collect(client, "/sse", {"chunks": ["data: ok\n\n"]}) == [("message", b"ok")]
    await client.aclose()
    await bad.aclose()


async def test_a_closed_server_is_a_bench_error() -> None:
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]

    async def close_at_once(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    srv = await asyncio.start_server(close_at_once, sock=sock)
    client = WireClient("127.0.0.1", port, TOKEN)
    with pytest.raises(BenchError):
        await _collect(client, "/sse", {"chunks": []})
    srv.close()
    await srv.wait_closed()


async def test_a_bench_stream_read_to_its_end_keeps_its_connection(
    server: tuple[int, list[int]],
) -> None:
    from hotsession.bench.daemon import Daemon
    from hotsession.bench.stats import Sample

    port, connections = server
    d = Daemon.__new__(Daemon)  # only its lean client: no daemon process
    d.wire = WireClient("127.0.0.1", port, TOKEN)
    body = {"chunks": ["event: result\ndata: {}\n\n", ": after the result\n\n"]}
    for _ in range(3):  # bench --cpu's turns: one connection (it connected anew every turn)
        s = Sample("cpu", 0, "", 0.0)
        await d.stream("/sse", body, s, to_end=True)
        assert s.t_result is not None and s.ok
    assert len(connections) == 1
    for _ in range(3):  # left at the result: the socket is not reused
        await d.stream("/sse", body, Sample("cpu", 0, "", 0.0))
    assert len(connections) == 3
    await d.wire.aclose()
