"""The real HTTP API and the real CLI client against cluster-mode daemons."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api.conftest import read_sse, stream_post
from tests.cluster.conftest import TOKEN, ApiDaemon, cli_ask, serve_process

from hotsession.testing.model_server import ModelServer

Start = Callable[[], Awaitable[ApiDaemon]]


async def test_two_daemons_serve_one_session_in_turn(
    api_daemons: Start, workdir: Path, model_server: ModelServer
) -> None:
    a, b = await api_daemons(), await api_daemons()
    async with a.client() as ca, b.client() as cb:
        r = await ca.post("/v1/sessions", json={"cwd": str(workdir)})
        assert r.status_code == 201, r.text
        sid, node = r.json()["id"], r.json()["node"]
        first = await stream_post(ca, f"/v1/sessions/{sid}/turns", {"prompt": "[[say:alpha]]"})
        assert first[-1].type == "result" and first[-1].data["result"] == "alpha"

        # The other daemon knows the session (it lives in the store) and drives it, on its node.
        listed = (await cb.get("/v1/sessions")).json()["sessions"]
        assert [s["node"] for s in listed if s["id"] == sid] == [node]
        model_server.clear()
        model_server.record_bodies = True
        try:
            second = await stream_post(cb, f"/v1/sessions/{sid}/turns", {"prompt": "[[say:beta]]"})
        finally:
            model_server.record_bodies = False
        assert second[-1].data["result"] == "beta"
        assert second[-1].data["timing"]["source"] == "hot"
        assert "alpha" in json.dumps(model_server.main_requests()[-1]["body"])

        # A reconnect to either daemon with Last-Event-ID replays the rest exactly once.
        cut = first[-1].id
        async with ca.stream(
            "GET", f"/v1/sessions/{sid}/events?follow=false", headers={"Last-Event-ID": str(cut)}
        ) as resp:
            replay = await read_sse(resp)
        assert [e.id for e in replay] == [e.id for e in second]

        # Errors keep their codes across the wire.
        r = await cb.post(f"/v1/sessions/{sid}/turns", json={"prompt": "x" * (2 * 1024 * 1024)})
        assert r.status_code in (413, 422)
        r = await cb.post("/v1/sessions/hs_unknown/turns", json={"prompt": "hi"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        pool = (await cb.get("/v1/pool")).json()
        assert len([n for n in pool["nodes"] if n["alive"]]) == 3
        # The tenant's stream (the dashboard's): the session with its node, then the pool.
        async with cb.stream("GET", "/v1/stream?pool_interval=0.5") as resp:
            head = await read_sse(resp, limit=1)
            while head[-1].type != "pool":
                head += await read_sse(resp, limit=1)
        views = {e.data["id"]: e.data for e in head if e.type == "session"}
        assert views[sid]["node"] == node
        assert len(head[-1].data["nodes"]) >= 3
        metrics = (await cb.get("/metrics")).text
        assert "hotsession_node_sessions{" in metrics

        r = await cb.delete(f"/v1/sessions/{sid}")
        assert r.status_code == 200 and r.json()["state"] == "closed"
        r = await ca.post(f"/v1/sessions/{sid}/turns", json={"prompt": "again"})
        assert r.status_code == 409


async def test_cli_client_against_a_cluster_daemon(api_daemons: Start, workdir: Path) -> None:
    """``hotsession ask`` (the real CLI client) through a cluster-mode daemon."""
    daemon = await api_daemons()
    assert "from the cli" in await cli_ask(daemon.url, "[[say:from the cli]]", workdir)
    async with daemon.client() as c:
        sessions = (await c.get("/v1/sessions")).json()["sessions"]
    assert sessions and all(s["node"] for s in sessions)


async def test_interrupt_and_permission_answers_reach_the_node(
    api_daemons: Start, workdir: Path, model_server: ModelServer
) -> None:
    """A permission answer and an interrupt sent to another daemon reach the session's node."""
    a, b = await api_daemons(), await api_daemons()
    async with a.client() as ca, b.client() as cb:
        body = {"cwd": str(workdir), "permission_mode": "default"}
        sid = (await ca.post("/v1/sessions", json=body)).json()["id"]
        async with ca.stream(
            "POST",
            f"/v1/sessions/{sid}/turns",
            json={"prompt": "[[bash:echo hi > p1.txt]][[say:ran]]"},
        ) as resp:
            seen = await read_sse(resp, limit=1)
            while seen[-1].type != "permission_request":
                assert seen[-1].type not in ("result", "error"), seen[-1].data
                seen += await read_sse(resp, limit=1)
            request_id = seen[-1].data["request_id"]
            r = await cb.post(
                f"/v1/sessions/{sid}/permissions/{request_id}", json={"behavior": "allow"}
            )
            assert r.status_code == 200, r.text
            rest = await read_sse(resp)
        assert rest[-1].type == "result" and rest[-1].data["result"] == "ran"
        r = await cb.post(
            f"/v1/sessions/{sid}/permissions/{request_id}", json={"behavior": "allow"}
        )
        assert r.status_code == 409  # already resolved, as on one machine

        async with ca.stream(
            "POST", f"/v1/sessions/{sid}/turns", json={"prompt": "[[marker:intr]][[hang]]"}
        ) as resp:
            await asyncio.to_thread(
                model_server.wait_for,
                lambda log: any("intr" in (e.get("markers") or []) for e in log),
                30,
            )
            r = await cb.post(f"/v1/sessions/{sid}/interrupt")
            assert r.json()["interrupted"] is True
            end = (await read_sse(resp))[-1]
        assert end.type == "error" and end.data["code"] == "interrupted"


@pytest.mark.timeout(300)  # a node spawn or a daemon start on a loaded CI machine
async def test_serve_with_cluster_and_database_url(
    ray_cluster: Any, cluster_pg: Any, workdir: Path, tmp_path: Path
) -> None:
    """``hotsession serve --cluster ADDRESS --database-url postgresql://…`` as a real process."""
    conf = tmp_path / "hotsession.toml"
    conf.write_text(
        f'[[tenants]]\nname = "alice"\ntoken = "{TOKEN}"\nroots = [{json.dumps(str(workdir))}]\n'
    )
    async with serve_process(ray_cluster.address, cluster_pg.url, conf, tmp_path / "state") as url:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as c:
            health = (await c.get("/healthz")).json()
            assert health["nodes"] == 3
            r = await c.post("/v1/sessions", json={"cwd": str(workdir)})
            assert r.status_code == 201, r.text
            assert r.json()["node"]
            events = await stream_post(
                c, f"/v1/sessions/{r.json()['id']}/turns", {"prompt": "[[say:served]]"}
            )
            assert events[-1].data["result"] == "served"


async def test_serve_refuses_cluster_without_database(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "hotsession"),
        "serve",
        "--cluster",
        "auto",
        "--state-dir",
        str(tmp_path / "state"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode != 0
    assert "database-url" in err.decode()


async def test_the_tenants_stream_pushes_changes_and_turn_milestones(
    api_daemons: Start, workdir: Path
) -> None:
    """``/v1/stream`` on one daemon shows a session another daemon opens and its turn's
    ``result`` as they happen (pushed by the session's node), not at the next ``pool`` tick."""
    a, b = await api_daemons(), await api_daemons()
    async with a.client() as ca, b.client() as cb:
        async with ca.stream("GET", "/v1/stream?pool_interval=60") as feed:
            head = await read_sse(feed, limit=1)
            while head[-1].type != "pool":
                head += await read_sse(feed, limit=1)
            r = await cb.post("/v1/sessions", json={"cwd": str(workdir)})
            assert r.status_code == 201, r.text
            sid, node = r.json()["id"], r.json()["node"]
            done = await stream_post(cb, f"/v1/sessions/{sid}/turns", {"prompt": "[[say:pushed]]"})
            assert done[-1].type == "result"

            seen: list[Any] = []

            async def until_result() -> None:
                while not any(
                    e.type == "turn" and e.data["session_id"] == sid and e.data["type"] == "result"
                    for e in seen
                ):
                    seen.extend(await read_sse(feed, limit=1))

            await asyncio.wait_for(until_result(), 30)  # well before the next pool event
            await a.hub.refresh_nodes()
            assert all(n.stats.get("watchers") == 1 for n in a.hub.live_nodes())
        assert [e.type for e in seen].count("pool") == 0

        # The stream's end (the client went away) ends its calls on the nodes.
        async def unwatched() -> None:
            while True:
                await a.hub.refresh_nodes()
                if all(n.stats.get("watchers") == 0 for n in a.hub.live_nodes()):
                    return
                await asyncio.sleep(0.1)

        await asyncio.wait_for(unwatched(), 30)
        views = [e.data for e in seen if e.type == "session" and e.data["id"] == sid]
        assert views and views[-1]["node"] == node
        result = next(e.data for e in seen if e.type == "turn" and e.data["type"] == "result")
        assert result["data"]["result"] == "pushed" and result["turn"] == 1
        await cb.delete(f"/v1/sessions/{sid}")


async def test_a_streamed_turn_through_the_cluster_delivers_every_delta(
    api_daemons: Start, workdir: Path
) -> None:
    """``include_partial_messages`` across Ray: every token delta in order before the result,
    each passed through as the CLI wrote it (the node sends its line, not a parsed copy)."""
    from tests.api.test_api_partial_messages import assistant_text, text_deltas, words

    d = await api_daemons()
    async with d.client() as c:
        r = await c.post(
            "/v1/sessions", json={"cwd": str(workdir), "include_partial_messages": True}
        )
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        events = await stream_post(c, f"/v1/sessions/{sid}/turns", {"prompt": "[[stream:40:2]]"})
        assert text_deltas(events) == words(40)
        assert assistant_text(events) == "".join(words(40))
        assert events[-1].type == "result"
        ids = [e.id for e in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        async with c.stream("GET", f"/v1/sessions/{sid}/events?follow=false") as resp:
            replay = await read_sse(resp)
        assert text_deltas(replay) == words(40)
        await c.delete(f"/v1/sessions/{sid}")
        # A closed session replays from the store: its events, none of the engine's own
        # bookkeeping records (a streamed turn reserves event numbers there).
        async with c.stream("GET", f"/v1/sessions/{sid}/events?follow=false") as resp:
            stored = await read_sse(resp)
        assert stored and stored[-1].type == "result"
        assert "seq_reserved" not in {e.type for e in stored}


async def test_ask_opens_and_runs_its_first_turn_on_a_node(
    api_daemons: Start, workdir: Path
) -> None:
    """``/v1/ask`` in one call to the node: the ``session`` head names it and its node, the turn
    runs there, and the session goes on through another daemon with its context."""
    a, b = await api_daemons(), await api_daemons()
    async with a.client() as ca, b.client() as cb:
        events = await stream_post(ca, "/v1/ask", {"prompt": "[[say:asked]]", "cwd": str(workdir)})
        assert events[0].type == "session" and events[0].data["node"]
        assert events[-1].type == "result" and events[-1].data["result"] == "asked"
        assert events[-1].data["turn"] == 1
        sid = events[0].data["id"]
        listed = (await cb.get("/v1/sessions")).json()["sessions"]
        assert [s["node"] for s in listed if s["id"] == sid] == [events[0].data["node"]]
        again = await stream_post(cb, f"/v1/sessions/{sid}/turns", {"prompt": "[[say:next]]"})
        assert again[-1].data["result"] == "next" and again[-1].data["turn"] == 2
        r = await ca.post("/v1/ask", json={"prompt": "hi", "cwd": str(workdir), "fork": True})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
        await cb.delete(f"/v1/sessions/{sid}")
