"""A node is lost: its sessions continue on live nodes, nothing a user sent is lost."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from tests.cluster.conftest import replace_node, worker_node

from hotsession.cluster.hub import ClusterHub
from hotsession.testing.model_server import ModelServer


async def wait_for_request(model_server: ModelServer, marker: str) -> None:
    await asyncio.to_thread(
        model_server.wait_for,
        lambda log: any(marker in (e.get("markers") or []) for e in log),
        30,
    )


@pytest.mark.timeout(300)  # a node spawn or a daemon start on a loaded CI machine
async def test_node_killed_mid_turn(
    chub: ClusterHub,
    ray_cluster: Any,
    node_env: dict[str, str],
    workdir: Path,
    model_server: ModelServer,
) -> None:
    """The running turn ends with a retryable node_lost error, the queued prompt runs on the
    session's new node with the conversation's context, and later turns go there too."""
    node = worker_node(ray_cluster)
    session = await chub.open(workdir, tenant="t1", node=node.node_id)
    first = await (await session.send("[[say:the password is swordfish]]")).wait()
    assert first.type == "result"

    running = await session.send("[[marker:mid-turn]][[hang]]")
    queued = await session.send("[[say:second]]")
    await wait_for_request(model_server, "mid-turn")
    await asyncio.to_thread(ray_cluster.remove_node, node)

    lost = await running.wait()
    assert lost.type == "error"
    assert lost.data["code"] == "node_lost"
    assert lost.data["retryable"] is True
    after = await queued.wait()
    assert after.type == "result", after.data
    assert after.data["result"] == "second"
    owner = await chub.owner(session.id)
    assert owner.node != node.node_id
    assert owner.epoch == 2

    # The new node resumed the conversation from the store: its model request carries the
    # first turn (the CLI's context), though that node never ran it.
    model_server.clear()
    model_server.record_bodies = True
    try:
        third = await (await session.send("[[say:third]]")).wait()
    finally:
        model_server.record_bodies = False
    assert third.data["result"] == "third"
    request = model_server.main_requests()[-1]
    assert "swordfish" in json.dumps(request["body"])
    events = [e async for e in session.events(0, follow=False)]
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs))
    assert [e.type for e in events if e.terminal] == ["result", "error", "result", "result"]
    replace_node(ray_cluster, node_env)  # Ray adds nodes from the main thread only
