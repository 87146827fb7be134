"""The daemon on the Postgres registry (``database_url``), with the real CLI: its state outlives
the daemon and its state dir, and while Postgres is down the API answers 503
``registry_unavailable`` (never 500), then recovers."""

from __future__ import annotations

import asyncio

from tests.api.conftest import Running, new_session, read_sse, stream_post

from hotsession.registry.postgres import PostgresRegistry
from hotsession.testing.postgres import PrivatePostgres


async def test_state_lives_in_postgres_across_daemons(
    start_daemon, postgres_server: PrivatePostgres, pg_schema: str
) -> None:
    pg = {"database_url": postgres_server.url, "database_schema": pg_schema}
    first: Running = await start_daemon(**pg)
    assert isinstance(first.daemon.hub.registry, PostgresRegistry)
    c = first.alice
    sid = (await new_session(c, metadata={"where": "pg"}))["id"]
    events = await stream_post(c, f"/v1/sessions/{sid}/turns", {"prompt": "[[say:one]]"})
    assert events[-1].type == "result" and events[-1].data["result"] == "one"
    first.daemon.request_shutdown()
    await asyncio.wait_for(first.task, 30)

    # Another daemon, another state dir (another machine): the same sessions and events.
    second: Running = await start_daemon(**pg)
    c2 = second.alice
    listed = (await c2.get("/v1/sessions")).json()["sessions"]
    assert [s["id"] for s in listed] == [sid] and listed[0]["metadata"] == {"where": "pg"}
    async with c2.stream("GET", f"/v1/sessions/{sid}/events?follow=false") as r:
        replay = await read_sse(r)
    assert [e.id for e in replay] == [e.id for e in events]
    more = await stream_post(c2, f"/v1/sessions/{sid}/turns", {"prompt": "[[say:two]]"})
    assert more[-1].type == "result" and more[-1].data["result"] == "two"
    assert more[0].id == events[-1].id + 1


async def test_postgres_down_answers_503_then_recovers(
    start_daemon, postgres_server: PrivatePostgres, pg_schema: str
) -> None:
    d: Running = await start_daemon(
        database_url=postgres_server.url, database_schema=pg_schema, database_retry_s=0.5
    )
    c = d.alice
    sid = (await new_session(c))["id"]
    await asyncio.to_thread(postgres_server.stop)
    try:
        r = await c.get(f"/v1/sessions/{sid}")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "registry_unavailable"
        assert r.headers["retry-after"] == "1"
        r = await c.get("/v1/sessions?include_closed=true")
        assert r.status_code == 503 and r.json()["error"]["code"] == "registry_unavailable"
        r = await c.post("/v1/sessions", json={"permission_mode": "bypassPermissions"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "registry_unavailable"
    finally:
        await asyncio.to_thread(postgres_server.start)
    r = await c.get(f"/v1/sessions/{sid}")
    assert r.status_code == 200, r.text
    # A prompt is refused (503, the client retries) until a probe wrote to the store again.
    for _ in range(100):
        async with c.stream(
            "POST", f"/v1/sessions/{sid}/turns", json={"prompt": "[[say:back]]"}
        ) as r:
            if r.status_code == 200:
                events = await read_sse(r)
                break
            await r.aread()
            assert r.status_code == 503 and r.json()["error"]["code"] == "registry_unavailable"
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("prompts still refused after Postgres came back")
    assert events[-1].type == "result" and events[-1].data["result"] == "back"
