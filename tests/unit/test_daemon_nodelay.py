"""The daemon's listening socket gives every accepted connection TCP_NODELAY.

asyncio sets TCP_NODELAY only on sockets whose ``proto`` is IPPROTO_TCP, and accepted sockets
inherit the listener's. Without it, Nagle holds each SSE frame until the previous one is
acknowledged, which delayed streamed events by 10-30 ms (found by ``hotsession bench``).
"""

from __future__ import annotations

import asyncio
import socket

from hotsession.daemon import bind


async def test_accepted_connections_have_tcp_nodelay():
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
        assert await asyncio.wait_for(accepted, 10) != 0
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
