"""Sessions over HTTP with the real CLI: turns, events, quick turns, control, tenants."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import psutil
from tests.api.conftest import Running, new_session, poll, read_sse, state_is, stream_post
from tests.conftest import wait_until

from hotsession.testing.model_server import ModelServer


def mark() -> str:
    return uuid.uuid4().hex[:10]


def main_with(ms: ModelServer, marker: str) -> list[dict[str, Any]]:
    return [e for e in ms.log() if marker in e["markers"] and e.get("main")]


def n_messages(ms: ModelServer, marker: str) -> int:
    """How many messages the model got with the last request of the turn holding ``marker``."""
    return int(main_with(ms, marker)[-1]["n_messages"])


async def test_session_lifecycle_over_http(start_daemon, model_server: ModelServer):
    d: Running = await start_daemon()
    c = d.alice
    s = await new_session(c, metadata={"ticket": 7})
    sid = s["id"]
    assert s["state"] == "idle" and s["source"] == "spawn" and s["pid"]
    assert s["metadata"] == {"ticket": 7} and s["cli_session_id"]
    assert s["memory"]["rss_mb"] > 0 and s["memory"]["anon_mb"] > 0  # as documented (item 21)

    m1, m2 = mark(), mark()
    events = await stream_post(
        c, f"/v1/sessions/{sid}/turns", {"prompt": f"[[marker:{m1}]] [[say:alpha]]"}
    )
    assert events[-1].type == "result", events[-1]
    assert events[-1].data["result"] == "alpha"
    assert {"ttfe_ms", "thinking_ms", "tools_ms", "total_ms"} <= set(events[-1].data["timing"])
    assert all(e.type == "message" for e in events[:-1]) and events[0].data["type"]
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and None not in ids

    # a follow-up on the same hot process keeps the conversation
    second = await stream_post(c, f"/v1/sessions/{sid}/turns", {"prompt": f"[[marker:{m2}]]"})
    assert second[-1].type == "result" and second[0].id == events[-1].id + 1
    assert (
        main_with(model_server, m1)[-1]["n_messages"]
        < main_with(model_server, m2)[-1]["n_messages"]
    )

    one = (await c.get(f"/v1/sessions/{sid}")).json()
    assert one["pid"] == s["pid"] and one["turns"] == 2 and one["state"] == "idle"
    assert one["memory"]["anon_mb"] > 0 and one["memory"]["rss_mb"] > 0
    assert one["last_timing"]["total_ms"] > 0
    assert [t["turn"] for t in one["recent_turns"]] == [1, 2]
    assert all(t["status"] == "done" for t in one["recent_turns"])
    listed = (await c.get("/v1/sessions")).json()["sessions"]
    assert [x["id"] for x in listed] == [sid]

    # the whole history replays (no follow), in order, once
    async with c.stream("GET", f"/v1/sessions/{sid}/events?follow=false") as r:
        replay = await read_sse(r)
    assert [e.id for e in replay] == [e.id for e in events + second]

    # warm: already hot, nothing to do
    assert (await c.post(f"/v1/sessions/{sid}/warm")).json() == {"id": sid, "warming": False}
    assert (await c.post(f"/v1/sessions/{sid}/interrupt")).json()["interrupted"] is False

    pid = s["pid"]
    r = await c.delete(f"/v1/sessions/{sid}")
    assert r.status_code == 200 and r.json()["state"] == "closed"
    await wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie")
    # a closed session: 409 for anything that needs it open, still readable
    for method, path, body in [
        ("POST", f"/v1/sessions/{sid}/turns", {"prompt": "x"}),
        ("DELETE", f"/v1/sessions/{sid}", None),
        ("POST", f"/v1/sessions/{sid}/interrupt", None),
        ("POST", f"/v1/sessions/{sid}/warm", None),
        ("POST", f"/v1/sessions/{sid}/permissions/x", {"behavior": "deny"}),
    ]:
        r = await c.request(method, path, json=body)
        assert r.status_code == 409 and r.json()["error"]["code"] == "conflict", (path, r.text)
    closed = (await c.get(f"/v1/sessions/{sid}")).json()
    assert closed["state"] == "closed" and closed["closed_at"] and closed["turns"] == 2
    assert (await c.get("/v1/sessions")).json()["sessions"] == []
    with_closed = (await c.get("/v1/sessions?include_closed=true")).json()["sessions"]
    assert [x["id"] for x in with_closed] == [sid]
    async with c.stream("GET", f"/v1/sessions/{sid}/events") as r:  # ends: nothing can follow
        after_close = await read_sse(r)
    assert [e.id for e in after_close][: len(replay)] == [e.id for e in replay]


async def test_ask_is_a_quick_turn_on_a_session_that_stays(start_daemon, model_server):
    d: Running = await start_daemon()
    c = d.alice
    m = mark()
    events = await stream_post(
        c,
        "/v1/ask",
        {
            "prompt": f"[[bash:echo hi > asked.txt]] [[say:done it]] [[marker:{m}]]",
            "permission_mode": "bypassPermissions",
        },
    )
    head = events[0]
    assert head.type == "session" and head.id is None
    sid = head.data["id"]
    assert head.data["source"] == "spawn" and head.data["cli_session_id"]
    assert events[-1].type == "result" and events[-1].data["result"] == "done it"
    assert events[-1].data["timing"]["tool_calls"] == 1
    assert (d.alice_root / "asked.txt").read_text().strip() == "hi"  # full tools, tenant's root
    follow = await stream_post(c, f"/v1/sessions/{sid}/turns", {"prompt": f"again [[marker:{m}x]]"})
    assert follow[-1].type == "result"
    assert (
        main_with(model_server, m)[-1]["n_messages"]
        < main_with(model_server, m + "x")[-1]["n_messages"]
    )


async def test_queue_full_and_interrupt(start_daemon):
    d: Running = await start_daemon(queue_max=1)
    c = d.alice
    sid = (await new_session(c))["id"]
    # a long turn holds the session; one prompt may wait behind it, the next gets 429
    async with c.stream(
        "POST", f"/v1/sessions/{sid}/turns", json={"prompt": "[[delay:60000]]"}
    ) as running:
        assert running.status_code == 200
        await poll(lambda: state_is(c, sid, "running"))
        async with c.stream(
            "POST", f"/v1/sessions/{sid}/turns", json={"prompt": "queued"}
        ) as queued:
            assert queued.status_code == 200
            first = await read_sse(queued, limit=1)
            assert first[0].type == "queued"
            r = await c.post(f"/v1/sessions/{sid}/turns", json={"prompt": "too many"})
            assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
            r = await c.post(f"/v1/sessions/{sid}/interrupt")
            assert r.json()["interrupted"] is True
            events = await read_sse(running)
            assert events[-1].type == "error" and events[-1].data["code"] == "interrupted"
            rest = await read_sse(queued)
            assert rest[-1].type == "result"  # the queued prompt ran after the interrupt


async def test_warm_resumes_ahead(start_daemon, model_server):
    d: Running = await start_daemon()
    c = d.alice
    sid = (await new_session(c))["id"]
    m = mark()
    await stream_post(c, f"/v1/sessions/{sid}/turns", {"prompt": f"[[marker:{m}]]"})
    hub = d.daemon.hub
    assert hub is not None
    assert await hub.get(sid).evict() is True  # what the pool does to an idle session
    assert (await c.get(f"/v1/sessions/{sid}")).json()["state"] == "evicted"
    r = await c.post(f"/v1/sessions/{sid}/warm")
    assert r.json() == {"id": sid, "warming": True}
    events = await stream_post(c, f"/v1/sessions/{sid}/turns", {"prompt": f"[[marker:{m}2]]"})
    assert events[-1].data["timing"]["source"] == "warm"
    assert (
        main_with(model_server, m)[-1]["n_messages"]
        < main_with(model_server, m + "2")[-1]["n_messages"]
    )


async def test_warm_after_a_keep_alive_eviction_is_kept_for_the_next_turn(
    start_daemon, model_server
):
    """The usual evicted session was idle beyond the keep-alive: its resume-ahead must not be
    retired as unused at the pool's next tick (it was, so ``warm`` did nothing)."""
    d: Running = await start_daemon(pool_enabled=True, keep_alive_s=3.0, pool_tick_s=0.1)
    c = d.alice
    sid = (await new_session(c))["id"]
    await stream_post(c, f"/v1/sessions/{sid}/turns", {"prompt": "[[say:one]]"})
    await poll(lambda: state_is(c, sid, "evicted"), timeout=30)
    assert (await c.post(f"/v1/sessions/{sid}/warm")).json()["warming"] is True
    hub = d.daemon.hub
    assert hub is not None
    session = hub.get(sid)
    # the resume-ahead has its process (or was already retired: then the check below fails)
    await wait_until(lambda: session._warming is None or session._warming.done(), timeout=60)
    await asyncio.sleep(1.0)  # ten pool ticks, inside the keep-alive counted from the warm
    pool = (await c.get("/v1/pool")).json()
    assert "warm_unused" not in pool["evictions"], pool["evictions"]
    events = await stream_post(c, f"/v1/sessions/{sid}/turns", {"prompt": "[[say:two]]"})
    assert events[-1].data["timing"]["source"] == "warm"


async def test_a_warmed_session_lists_as_idle_with_its_pid(start_daemon, model_server):
    """After ``warm`` the listings show what the next turn finds (a running process), not
    ``evicted`` with no pid; a warmed process that dies before any turn is ``evicted`` again."""
    d: Running = await start_daemon()
    c = d.alice
    sid = (await new_session(c))["id"]
    await stream_post(c, f"/v1/sessions/{sid}/turns", {"prompt": "[[say:one]]"})
    hub = d.daemon.hub
    assert hub is not None
    assert await hub.get(sid).evict() is True
    assert (await c.post(f"/v1/sessions/{sid}/warm")).json()["warming"] is True
    await poll(lambda: state_is(c, sid, "idle"), timeout=60)
    pid = (await c.get(f"/v1/sessions/{sid}")).json()["pid"]
    assert isinstance(pid, int) and psutil.pid_exists(pid)
    assert (await c.post(f"/v1/sessions/{sid}/warm")).json()["warming"] is False
    psutil.Process(pid).kill()
    await poll(lambda: state_is(c, sid, "evicted"), timeout=30)
    assert (await c.get(f"/v1/sessions/{sid}")).json()["pid"] is None
    assert (await c.post(f"/v1/sessions/{sid}/warm")).json()["warming"] is True
    await poll(lambda: state_is(c, sid, "idle"), timeout=60)
    events = await stream_post(c, f"/v1/sessions/{sid}/turns", {"prompt": "[[say:two]]"})
    assert events[-1].data["timing"]["source"] == "warm"


async def test_tenants_are_isolated(start_daemon, tmp_path: Path):
    d: Running = await start_daemon()
    alice, bob = d.alice, d.bob
    a = await new_session(alice)
    b = await new_session(bob)
    assert a["tenant"] == "alice" and b["tenant"] == "bob"
    sid = a["id"]
    # bob cannot tell alice's session from an unknown one
    for method, path, body in [
        ("GET", f"/v1/sessions/{sid}", None),
        ("DELETE", f"/v1/sessions/{sid}", None),
        ("POST", f"/v1/sessions/{sid}/turns", {"prompt": "steal"}),
        ("GET", f"/v1/sessions/{sid}/events?follow=false", None),
        ("POST", f"/v1/sessions/{sid}/interrupt", None),
        ("POST", f"/v1/sessions/{sid}/warm", None),
        ("POST", f"/v1/sessions/{sid}/permissions/x", {"behavior": "allow"}),
    ]:
        r = await bob.request(method, path, json=body)
        unknown = await bob.request(method, path.replace(sid, "hs_nope"), json=body)
        assert r.status_code == unknown.status_code == 404, (path, r.text)
        assert r.json()["error"]["code"] == unknown.json()["error"]["code"] == "not_found"
    assert [
        s["id"] for s in (await bob.get("/v1/sessions?include_closed=true")).json()["sessions"]
    ] == [b["id"]]
    assert [s["id"] for s in (await alice.get("/v1/sessions")).json()["sessions"]] == [sid]
    # alice's session is untouched
    assert (await alice.get(f"/v1/sessions/{sid}")).json()["state"] == "idle"
    # bob's agents use his own Claude config dir; alice's the daemon's
    env_b = psutil.Process(b["pid"]).environ()
    env_a = psutil.Process(a["pid"]).environ()
    assert env_b["CLAUDE_CONFIG_DIR"] == str(tmp_path / "d0" / "bob-claude")
    assert env_a["CLAUDE_CONFIG_DIR"] == str(tmp_path / "claude-config")
    events = await stream_post(bob, f"/v1/sessions/{b['id']}/turns", {"prompt": "[[say:bob]]"})
    assert events[-1].data["result"] == "bob"
    assert list((tmp_path / "d0" / "bob-claude").rglob(f"{b['cli_session_id']}.jsonl"))


async def test_pool_over_http(start_daemon):
    d: Running = await start_daemon(pool_enabled=True, pool_max=2)
    c, bob = d.alice, d.bob
    first = await new_session(c)
    assert first["source"] == "spawn"  # nothing was warm yet

    async def spare_ready() -> bool:
        pool = (await c.get("/v1/pool")).json()
        return any(p["ready"] >= 1 for p in pool["profiles"])

    await asyncio.sleep(1.0)
    assert not await spare_ready()  # a profile used once keeps no spare
    again = await new_session(c)
    assert again["source"] == "spawn"
    await poll(spare_ready, timeout=60)  # its demand repeats: the pool keeps one warm
    second = await new_session(c)
    assert second["source"] == "spare" and second["pid"] not in (first["pid"], again["pid"])
    events = await stream_post(c, f"/v1/sessions/{second['id']}/turns", {"prompt": "[[say:s]]"})
    assert events[-1].data["result"] == "s"
    pool = (await c.get("/v1/pool")).json()
    assert pool["enabled"] is True
    (profile,) = pool["profiles"]
    assert profile["tenant"] == "alice" and profile["hits"] >= 1 and profile["misses"] >= 1
    assert {"used_mb", "budget_mb", "spares_mb", "sessions_mb"} <= set(pool["memory"])
    assert (await bob.get("/v1/pool")).json()["profiles"] == []  # not bob's business
    metrics = (await c.get("/metrics")).text
    assert 'hotsession_api_sessions_created_total{source="spare"} 1.0' in metrics
    assert "hotsession_pool_ready{" in metrics
