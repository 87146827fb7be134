"""Sessions on every node, routed by the API daemon's hub, with the real CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hotsession.cluster.hub import ClusterHub
from hotsession.testing.model_server import ModelServer


async def test_sessions_on_every_node(chub: ClusterHub, workdir: Path) -> None:
    nodes = [n.name for n in chub.live_nodes()]
    assert len(nodes) == 3
    sessions = [await chub.open(workdir, tenant="t1", node=name) for name in nodes]
    assert [s.owner.node for s in sessions] == nodes
    for i, s in enumerate(sessions):
        turn = await s.send(f"[[say:hello {i}]]")
        end = await turn.wait()
        assert end.type == "result", end.data
        assert end.data["result"] == f"hello {i}"
        turn = await s.send("[[say:again]]")
        end = await turn.wait()
        assert end.data["result"] == "again"
        assert end.data["timing"]["source"] == "hot"


async def test_follow_up_keeps_context(
    chub: ClusterHub, workdir: Path, model_server: ModelServer
) -> None:
    s = await chub.open(workdir, tenant="t1")
    await (await s.send("[[say:one]]")).wait()
    model_server.clear()
    await (await s.send("[[say:two]]")).wait()
    mains = model_server.main_requests()
    assert mains and mains[-1]["n_messages"] >= 3


async def test_placement_prefers_a_ready_spare(chub: ClusterHub, workdir: Path) -> None:
    """A profile with a ready spare on some node opens there, from the spare."""
    first = await chub.open(workdir, tenant="t1", append_system_prompt="spare-test")
    profile = first.view["profile"]
    home = first.owner.node

    async def spare_ready() -> bool:
        await chub.refresh_nodes()
        return chub.nodes[home].figures.spares.get(profile, 0) > 0

    deadline = asyncio.get_running_loop().time() + 30
    while not await spare_ready():
        assert asyncio.get_running_loop().time() < deadline, "no spare came up"
        await asyncio.sleep(0.2)
    second = await chub.open(workdir, tenant="t1", append_system_prompt="spare-test")
    assert second.owner.node == home
    assert second.view["source"] == "spare"
