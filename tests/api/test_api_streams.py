"""Event streams: reconnect mid-turn with Last-Event-ID, live following, keep-alives, a turn
that nobody listens to, and the final event when the daemon shuts down."""

from __future__ import annotations

import asyncio

from tests.api.conftest import Event, Running, new_session, poll, read_sse
from tests.conftest import wait_until

# Four tool calls, each model request delayed: a turn of a dozen events over ~1.5 s.
LONG_TURN = (
    "[[delay:250]] [[bash:echo 1]] [[bash:echo 2]] [[bash:echo 3]] [[bash:echo 4]] [[say:end]]"
)


async def replay_all(c, sid: str) -> list[Event]:
    async with c.stream("GET", f"/v1/sessions/{sid}/events?follow=false") as r:
        return await read_sse(r)


async def test_reconnect_mid_turn_loses_and_doubles_nothing(start_daemon):
    d: Running = await start_daemon()
    c = d.alice
    sid = (await new_session(c))["id"]
    seen: list[Event] = []
    async with c.stream("POST", f"/v1/sessions/{sid}/turns", json={"prompt": LONG_TURN}) as r:
        seen += await read_sse(r, limit=3)
    # the connection is gone mid-turn; the turn goes on
    assert (await c.get(f"/v1/sessions/{sid}")).json()["state"] == "running"
    last = seen[-1].id
    headers = {"Last-Event-ID": str(last)}
    async with c.stream("GET", f"/v1/sessions/{sid}/events", headers=headers) as r:
        while not seen or seen[-1].type != "result":
            batch = await read_sse(r, limit=1)
            assert batch, "stream ended before the result"
            seen += batch
    ids = [e.id for e in seen]
    assert len(ids) == len(set(ids)), "an event came twice"
    full = await replay_all(c, sid)
    assert ids == [e.id for e in full], "an event was lost"
    assert [e.type for e in seen] == [e.type for e in full]
    assert sum(1 for e in full if e.type == "message" and e.data.get("type") == "assistant") >= 5
    # ?after= is the same as the header
    async with c.stream("GET", f"/v1/sessions/{sid}/events?after={last}&follow=false") as r:
        assert [e.id for e in await read_sse(r)] == ids[3:]


async def test_a_turn_nobody_reads_still_completes(start_daemon):
    d: Running = await start_daemon()
    c = d.alice
    sid = (await new_session(c))["id"]
    async with c.stream(
        "POST", f"/v1/sessions/{sid}/turns", json={"prompt": "[[bash:echo x > unread.txt]]"}
    ) as r:
        assert r.status_code == 200  # headers only; the body is never read

    async def done() -> bool:
        body = (await c.get(f"/v1/sessions/{sid}")).json()
        return body["state"] == "idle" and body["last_timing"] is not None

    await poll(done)
    full = await replay_all(c, sid)
    assert full[-1].type == "result"
    assert (d.alice_root / "unread.txt").exists()


async def test_follow_live_and_keepalive(start_daemon):
    d: Running = await start_daemon(sse_keepalive_s=0.2)
    c = d.alice
    sid = (await new_session(c))["id"]
    comments: list[str] = []
    async with c.stream("GET", f"/v1/sessions/{sid}/events") as follower:
        # idle: only keep-alive comments arrive
        reader = asyncio.create_task(read_sse(follower, limit=2, comments=comments))
        await wait_until(lambda: len(comments) >= 2)
        assert not reader.done()
        async with c.stream("POST", f"/v1/sessions/{sid}/turns", json={"prompt": "hi"}) as r:
            own = await read_sse(r)
        live = await reader
        rest = await read_sse(follower, limit=len(own) - 2)
    assert comments[0] == ": keep-alive"
    assert [e.id for e in live + rest] == [e.id for e in own]


async def test_shutdown_ends_open_streams_with_a_final_event(start_daemon):
    d: Running = await start_daemon()
    c = d.alice
    sid = (await new_session(c))["id"]
    async with c.stream("GET", f"/v1/sessions/{sid}/events") as follower:
        async with c.stream(
            "POST", f"/v1/sessions/{sid}/turns", json={"prompt": "[[delay:60000]]"}
        ) as turn:
            first = await read_sse(turn, limit=1)
            assert first
            hub = d.daemon.hub
            assert hub is not None
            pid = hub.get(sid).process.pid  # type: ignore[union-attr]
            d.daemon.request_shutdown()
            rest = await asyncio.wait_for(read_sse(turn), 20)
            followed = await asyncio.wait_for(read_sse(follower), 20)
    for events in (rest, followed):
        assert events[-1].type == "error" and events[-1].data["code"] == "shutting_down"
        assert events[-1].id is None
    await asyncio.wait_for(d.task, 30)
    import psutil

    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
