"""Client faults: disconnects mid-stream, and a client that never reads.

A turn never depends on its stream (the session's runner feeds the turn whether or not anybody
reads), so a vanished or stalled client must not slow the agent, lose an event or block others.
"""

from __future__ import annotations

import asyncio
import socket
import time

from tests.api.conftest import (  # noqa: F401 - fixtures
    ALICE_TOKEN,
    Running,
    new_session,
    read_sse,
    start_daemon,
    stream_post,
)
from tests.conftest import wait_until

from hotsession.testing.faults import Ledger

DISCONNECTS = 20


async def _replay(d: Running, sid: str) -> list:
    async with d.alice.stream("GET", f"/v1/sessions/{sid}/events", params={"follow": "false"}) as r:
        return await read_sse(r)


async def test_disconnect_mid_stream(start_daemon, ledger: Ledger):  # noqa: F811
    d: Running = await start_daemon()
    c = d.alice
    sid = (await new_session(c))["id"]
    other = (await new_session(c))["id"]
    session = d.daemon.hub.get(sid)  # type: ignore[union-attr]
    tally = ledger.tally(
        "client disconnects mid-stream", "close the SSE response after its first event"
    )
    for i in range(DISCONNECTS):
        tally.injected += 1
        seen: list = []
        async with c.stream(
            "POST", f"/v1/sessions/{sid}/turns", json={"prompt": f"[[delay:150]] [[say:d{i}]]"}
        ) as r:
            seen = await read_sse(r, limit=1)  # then the client goes away
        by = await stream_post(c, f"/v1/sessions/{other}/turns", {"prompt": "[[say:other]]"})
        await wait_until(lambda: session.current is None and session.queued == 0, timeout=20)
        replay = await _replay(d, sid)
        results = [e for e in replay if e.type == "result"]
        ok = (
            seen
            and results
            and results[-1].data["result"] == f"d{i}"
            and by[-1].type == "result"
            and all(e.id in {x.id for x in replay} for e in seen)
        )
        tally.client_saw["stream closed by the client; turn completed (replay)"] += 1
        tally.recovered += int(bool(ok))
    assert tally.recovered == DISCONNECTS


def _drain_until_closed(s: socket.socket, timeout: float) -> bytes:
    """Everything the server sent, once it closes the connection (socket.timeout if it never)."""
    s.settimeout(timeout)
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    return got


async def test_client_that_never_reads(start_daemon, ledger: Ledger):  # noqa: F811
    d: Running = await start_daemon(sse_send_timeout_s=2)
    c = d.alice
    sid = (await new_session(c))["id"]
    other = (await new_session(c))["id"]
    session = d.daemon.hub.get(sid)  # type: ignore[union-attr]
    tally = ledger.tally(
        "client never reads a 16 MB turn stream",
        "raw socket, 4 KiB receive buffer, never reads; another client works meanwhile; "
        "the daemon drops it after sse_send_timeout_s",
    )
    host, port = d.url.removeprefix("http://").rsplit(":", 1)
    body = b'{"prompt": "[[big:16000000]]"}'
    request = (
        f"POST /v1/sessions/{sid}/turns HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {ALICE_TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    stuck: list[socket.socket] = []
    try:
        for _ in range(3):
            tally.injected += 1
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((host, int(port)))
            s.sendall(request)
            stuck.append(s)
            began = time.monotonic()
            await wait_until(lambda: session.current is not None, timeout=20)
            # others are served while the turn runs and its client reads nothing
            by = await stream_post(c, f"/v1/sessions/{other}/turns", {"prompt": "[[say:ok]]"})
            assert by[-1].type == "result"
            # the turn completes although nobody reads it; its events are all recorded
            await wait_until(lambda: session.current is None, timeout=60)
            took = time.monotonic() - began
            replay = await _replay(d, sid)
            done = [e for e in replay if e.type == "result"]
            # the stuck connection was dropped (bounded buffers): it ends before the result
            got = await asyncio.to_thread(_drain_until_closed, s, 30)
            dropped = b"event: result" not in got
            ok = dropped and bool(done) and len(done[-1].data["result"]) == 16_000_000 and took < 60
            tally.client_saw["connection dropped; turn completed, replay has it"] += 1
            tally.recovered += int(ok)
    finally:
        for s in stuck:
            s.close()
    assert tally.recovered == tally.injected
    await asyncio.sleep(0)
