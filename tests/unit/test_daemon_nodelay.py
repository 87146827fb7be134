"""The daemon's listening socket gives every accepted connection TCP_NODELAY.

asyncio sets TCP_NODELAY only on sockets whose ``proto`` is IPPROTO_TCP, and accepted sockets
inherit the listener's. Without it, Nagle holds each SSE frame until the previous one is
acknowledged, which delayed streamed events by 10-30 ms (found by ``hotsession bench``).
The uvloop variant is in test_daemon_loop.py; this one runs on the default asyncio loop.
"""

from __future__ import annotations

from tests.unit.test_daemon_loop import _nodelay_of_accepted


async def test_accepted_connections_have_tcp_nodelay():
    assert await _nodelay_of_accepted() != 0
