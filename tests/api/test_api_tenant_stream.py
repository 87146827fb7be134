"""``GET /v1/stream``: the tenant's sessions, turn milestones and pool in one SSE stream; and the
memory figures of ``GET /v1/sessions``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
from tests.api.conftest import Event, Running, new_session, poll, read_sse, stream_post


async def read_until(
    r: httpx.Response, seen: list[Event], match: Callable[[Event], bool], timeout: float = 30
) -> Event:
    """Read events into ``seen`` until one matches; returns it."""

    async def go() -> Event:
        while True:
            batch = await read_sse(r, limit=1)
            assert batch, f"the stream ended before the event; got {[e.type for e in seen]}"
            seen.extend(batch)
            if match(batch[0]):
                return batch[0]

    return await asyncio.wait_for(go(), timeout)


def session_event(sid: str, state: str | None = None) -> Callable[[Event], bool]:
    return lambda e: (
        e.type == "session" and e.data["id"] == sid and (state is None or e.data["state"] == state)
    )


async def test_stream_follows_sessions_turns_and_pool_of_the_tenant_only(start_daemon):
    d: Running = await start_daemon()
    alice, bob = d.alice, d.bob
    early = (await new_session(alice))["id"]
    seen: list[Event] = []
    async with alice.stream("GET", "/v1/stream?pool_interval=0.5") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        # a snapshot first: the open session, then the pool
        first = await read_until(r, seen, session_event(early, "idle"))
        assert first.id is None and first.data["memory"]["anon_mb"] > 0
        await read_until(r, seen, lambda e: e.type == "pool")

        # a session created by another client of the tenant appears
        sid = (await new_session(alice))["id"]
        created = await read_until(r, seen, session_event(sid))
        assert created.data["state"] == "idle" and created.data["pid"]
        assert {"cwd", "model", "turns", "last_timing", "memory"} <= set(created.data)
        other = (await new_session(bob))["id"]  # bob's: never in alice's stream

        # its state changes show, and the turn's result is announced
        prompt = {"prompt": "[[delay:300]][[say:hi]]"}
        own = await stream_post(alice, f"/v1/sessions/{sid}/turns", prompt)
        result = next(e for e in own if e.type == "result")
        await read_until(r, seen, session_event(sid, "running"))
        mark = len(seen)
        idle = await read_until(r, seen, session_event(sid, "idle"))
        (turn,) = [e for e in seen[mark:] if e.type == "turn"]  # before the idle state
        assert turn.data["session_id"] == sid and turn.data["type"] == "result"
        assert turn.data["seq"] == result.id
        assert turn.data["data"]["timing"] == result.data["timing"]
        assert idle.data["turns"] == 1 and idle.data["last_timing"] is not None

        # pool events keep coming, each with a memory sample of the tenant's sessions
        pool = await read_until(r, seen, lambda e: e.type == "pool" and sid in str(e.data))
        assert set(pool.data) >= {"enabled", "profiles", "spawned_total", "sample"}
        assert pool.data["sample"]["sessions"][sid]["anon_mb"] > 0
        assert pool.data["sample"]["sessions_anon_mb"] > 0

        # closing shows too
        assert (await alice.delete(f"/v1/sessions/{sid}")).status_code == 200
        await read_until(r, seen, session_event(sid, "closed"))

        # bob's session and its turn never appear
        await stream_post(bob, f"/v1/sessions/{other}/turns", {"prompt": "[[say:bob]]"})
        await read_until(r, seen, lambda e: e.type == "pool")
        assert other not in str([e.data for e in seen])

        # the daemon's shutdown ends the stream with the final event of every stream
        d.daemon.request_shutdown()
        rest = await asyncio.wait_for(read_sse(r), 20)
    assert rest[-1].type == "error" and rest[-1].data["code"] == "shutting_down"
    assert rest[-1].id is None
    await asyncio.wait_for(d.task, 30)


async def test_stream_sends_keepalives_and_refuses_bad_intervals(start_daemon):
    d: Running = await start_daemon(sse_keepalive_s=0.2)
    c = d.alice
    for bad in ("0.1", "61", "x"):
        r = await c.get(f"/v1/stream?pool_interval={bad}")
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    comments: list[str] = []
    async with c.stream("GET", "/v1/stream?pool_interval=60") as r:
        first = await read_sse(r, limit=1, comments=comments)
        assert first[0].type == "pool"  # no sessions yet: the snapshot is the pool alone
        reader = asyncio.create_task(read_sse(r, limit=1, comments=comments))
        try:
            while len(comments) < 2:
                await asyncio.sleep(0.05)
        finally:
            reader.cancel()
    assert comments[0] == ": keep-alive"
    assert (await d.client(None).get("/v1/stream")).status_code == 401


async def test_listing_has_memory_and_the_stream_leaves_no_listener(start_daemon):
    d: Running = await start_daemon()
    c = d.alice
    sid = (await new_session(c))["id"]
    listing: dict[str, Any] = (await c.get("/v1/sessions")).json()
    (item,) = [s for s in listing["sessions"] if s["id"] == sid]
    assert item["memory"]["anon_mb"] > 0 and item["memory"]["rss_mb"] > 0
    one = (await c.get(f"/v1/sessions/{sid}")).json()
    assert one["memory"]["pss_mb"] > 0  # one session: pss too

    hub = d.daemon.hub
    assert hub is not None
    before = len(hub._state_listeners)
    async with c.stream("GET", "/v1/stream") as r:
        await read_sse(r, limit=1)
        assert len(hub._state_listeners) == before + 1
        assert hub.get(sid).fanout.subscribers == 1
    # the client went away: the listener and the session's tap are gone

    async def released() -> bool:
        return len(hub._state_listeners) == before and not hub.get(sid).fanout.subscribers

    await poll(released)


async def test_a_client_too_far_behind_is_dropped_not_buffered(start_daemon):
    from hotsession.api.feed import Feed
    from hotsession.events import Event as SessionEvent

    d: Running = await start_daemon()
    hub = d.daemon.hub
    assert hub is not None
    closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    feed = Feed(
        hub,
        "alice",
        view=lambda sessions: [],
        pool=lambda: {"enabled": False},
        pool_interval=60,
        keepalive_s=60,
        closing=closing,
        max_backlog=3,
    )
    frames = feed.frames()
    assert (await anext(frames)).startswith(b"event: pool")
    for seq in range(1, 10):  # the reader is not reading: the backlog is capped
        feed.turn_event(SessionEvent("hs_x", seq, 1, "result", {"turn": 1}))
    assert len(feed.turns) == 3
    assert b"slow_client" in await anext(frames)
    assert [f async for f in frames] == []
    assert feed.on_state not in hub._state_listeners
