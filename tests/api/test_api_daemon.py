"""``hotsession serve`` as a real process: SIGTERM with a stream open, kill -9 and restart."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from typing import Any

import httpx
import pytest
from tests.api.conftest import gone, new_session, poll, read_sse, stream_post

from hotsession.testing.model_server import ModelServer


def n_messages(ms: ModelServer, marker: str) -> int:
    return int([e for e in ms.log() if marker in e["markers"] and e["main"]][-1]["n_messages"])


async def test_sigterm_ends_streams_and_agents(serve: Any):
    daemon = serve()
    await daemon.ready()
    async with daemon.client() as c:
        s = await new_session(c)
        sid, pid = s["id"], s["pid"]
        turns = f"/v1/sessions/{sid}/turns"
        async with c.stream("POST", turns, json={"prompt": "[[delay:60000]]"}) as r:
            assert await read_sse(r, limit=1)
            daemon.proc.send_signal(signal.SIGTERM)
            rest = await asyncio.wait_for(read_sse(r), 30)
    assert rest[-1].type == "error" and rest[-1].data["code"] == "shutting_down"
    assert await asyncio.to_thread(daemon.proc.wait, 30) == 0
    assert gone(pid)
    assert not (daemon.state_dir / "daemon.json").exists()
    # the interrupted turn is on record, and the session comes back on the next start
    again = serve()
    await again.ready()
    async with again.client() as c:
        listed = (await c.get("/v1/sessions")).json()["sessions"]
        assert [x["id"] for x in listed] == [sid]
        body = (await c.get(f"/v1/sessions/{sid}")).json()
        assert body["recent_turns"][-1]["status"] == "error"


async def test_kill_9_then_restart_resumes_with_context(serve: Any, model_server: ModelServer):
    daemon = serve()
    await daemon.ready()
    m1, m2 = uuid.uuid4().hex[:10], uuid.uuid4().hex[:10]
    async with daemon.client() as c:
        s = await new_session(c)
        sid = s["id"]
        turns = f"/v1/sessions/{sid}/turns"
        first = await stream_post(c, turns, {"prompt": f"remember [[marker:{m1}]] [[say:one]]"})
        assert first[-1].type == "result"
        other = await new_session(c)  # an idle agent too
        # kill the daemon in the middle of a turn
        async with c.stream("POST", turns, json={"prompt": "[[delay:60000]]"}) as r:
            assert await read_sse(r, limit=1)
            pids = [s["pid"], other["pid"]]
            assert all(not gone(p) for p in pids)
            os.kill(daemon.proc.pid, signal.SIGKILL)
            with pytest.raises(httpx.HTTPError):
                await asyncio.wait_for(read_sse(r), 30)
    daemon.proc.wait(10)
    # no agent outlives the daemon (parent-death signal)

    async def agents_gone() -> bool:
        return all(gone(p) for p in pids)

    await poll(agents_gone)

    again = serve()
    await again.ready()
    async with again.client() as c:
        listed = {x["id"]: x for x in (await c.get("/v1/sessions")).json()["sessions"]}
        assert set(listed) == {sid, other["id"]}
        assert listed[sid]["state"] == "evicted" and listed[sid]["pid"] is None
        body = (await c.get(f"/v1/sessions/{sid}")).json()
        assert [t["status"] for t in body["recent_turns"]] == ["done", "error"]
        assert body["recent_turns"][-1]["error_code"] == "daemon_restarted"
        third = await stream_post(c, turns, {"prompt": f"recall [[marker:{m2}]] [[say:two]]"})
        assert third[-1].type == "result" and third[-1].data["result"] == "two"
        assert third[-1].data["timing"]["source"] == "resume"
        assert n_messages(model_server, m2) > n_messages(model_server, m1)  # full context
        assert third[0].id > first[-1].id  # the event sequence continues
