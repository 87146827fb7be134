"""``hotsession serve --cluster ray://host:port``: a daemon joined through Ray Client.

Ray Client does not carry Ray's streaming generators (ray-project/ray#43357), so such a daemon
pulls a node's streams with plain actor calls (``hotsession.cluster.streams``). These tests
run the daemon as a real process against the tier's cluster through a Ray Client server on
its head (what ``ray start --head`` runs on port 10001), with the real CLI client.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from tests.api.conftest import read_sse, stream_post
from tests.cluster.conftest import TOKEN, cli_ask, serve_process

from hotsession.cluster.actors import NAMESPACE, PREFIX
from hotsession.testing.model_server import ModelServer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_client_address(ray_cluster: Any) -> Iterator[str]:
    """A Ray Client server (proxy mode, as ``ray start --head`` runs it) on the tier's head."""
    from ray._private import services

    head = ray_cluster.head_node
    port = _free_port()
    info = services.start_ray_client_server(
        head.address,
        "127.0.0.1",
        port,
        runtime_env_agent_address=head.runtime_env_agent_address,
        node_id=head.node_id,
    )
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert info.process.poll() is None, "the Ray Client server exited"
        assert time.monotonic() < deadline, "the Ray Client server did not listen"
        time.sleep(0.1)
    yield f"ray://127.0.0.1:{port}"
    info.process.terminate()
    info.process.wait(30)


@pytest.mark.timeout(300)  # a daemon start and a node spawn on a loaded CI machine
async def test_serve_through_ray_client(
    ray_client_address: str,
    cluster_pg: Any,
    workdir: Path,
    tmp_path: Path,
    model_server: ModelServer,
) -> None:
    """Every streaming call of the API through a ``ray://`` daemon: ``/v1/ask`` (open and first
    turn in one call), a follow-up hot with its context, a token-streamed turn, a
    ``Last-Event-ID`` replay, the tenant's ``/v1/stream``, ``hotsession ask``, and a node lost
    under the session."""
    conf = tmp_path / "hotsession.toml"
    conf.write_text(
        f'[[tenants]]\nname = "alice"\ntoken = "{TOKEN}"\nroots = [{json.dumps(str(workdir))}]\n'
    )
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with serve_process(ray_client_address, cluster_pg.url, conf, tmp_path / "state") as url:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as c:
            assert (await c.get("/healthz")).json()["nodes"] == 3
            body = {"prompt": "[[say:alpha]]", "cwd": str(workdir)}
            first = await stream_post(c, "/v1/ask", {**body, "include_partial_messages": True})
            assert first[0].type == "session" and first[0].data["node"]
            assert first[-1].type == "result" and first[-1].data["result"] == "alpha"
            sid = first[0].data["id"]

            model_server.clear()
            model_server.record_bodies = True
            try:
                second = await stream_post(
                    c, f"/v1/sessions/{sid}/turns", {"prompt": "[[stream:30:2]]"}
                )
            finally:
                model_server.record_bodies = False
            assert second[-1].type == "result" and second[-1].data["timing"]["source"] == "hot"
            assert "alpha" in json.dumps(model_server.main_requests()[-1]["body"])
            deltas = [e for e in second if e.data.get("type") == "stream_event"]
            assert len(deltas) >= 30  # every token delta crossed, pulled in batches
            ids = [e.id for e in second]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)

            async with c.stream(
                "GET",
                f"/v1/sessions/{sid}/events?follow=false",
                headers={"Last-Event-ID": str(first[-1].id)},
            ) as resp:
                replay = await read_sse(resp)
            assert [e.id for e in replay] == [e.id for e in second]

            async with c.stream("GET", "/v1/stream?pool_interval=60") as feed:
                seen = await read_sse(feed, limit=1)
                while seen[-1].type != "pool":
                    seen += await read_sse(feed, limit=1)
            assert any(e.type == "session" and e.data["id"] == sid for e in seen)

            assert "from the cli" in await cli_ask(url, "[[say:from the cli]]", workdir)

            # The session's node is lost (its host actor killed): over Ray Client too, the
            # daemon sees the actor's death, re-homes the session, and it goes on with its
            # context on another node.
            ray.kill(ray.get_actor(PREFIX + first[0].data["node"], namespace=NAMESPACE))
            model_server.clear()
            model_server.record_bodies = True
            try:
                third = await stream_post(c, f"/v1/sessions/{sid}/turns", {"prompt": "[[say:on]]"})
            finally:
                model_server.record_bodies = False
            assert third[-1].type == "result" and third[-1].data["result"] == "on"
            assert "alpha" in json.dumps(model_server.main_requests()[-1]["body"])
            moved = (await c.get(f"/v1/sessions/{sid}")).json()
            assert moved["node"] != first[0].data["node"]
            assert (await c.delete(f"/v1/sessions/{sid}")).status_code == 200
