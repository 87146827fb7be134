"""Sessions on every node, routed by the API daemon's hub, with the real CLI."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from hotsession.cluster.hub import ClusterConfig, ClusterHub
from hotsession.config import Config
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


async def test_a_nodes_figures_are_read_again_after_an_open(
    cluster_config: ClusterConfig, cluster_root: Path, workdir: Path
) -> None:
    """An open changes its node's figures (a spare taken); the hub reads them at once, not at
    its next refresh, so /v1/pool and placement do not count a spare that is gone."""
    slow = dataclasses.replace(cluster_config, refresh_s=3600.0)  # no background refresh here
    async with ClusterHub(Config(state_dir=cluster_root / "daemon-slow"), slow) as hub:
        first = await hub.open(workdir, tenant="t1", append_system_prompt="figures-test")
        profile, home = first.view["profile"], first.owner.node
        deadline = asyncio.get_running_loop().time() + 30
        while hub.nodes[home].figures.spares.get(profile, 0) == 0:
            assert asyncio.get_running_loop().time() < deadline, "no spare came up"
            await asyncio.sleep(0.2)
            await hub.refresh_nodes()
        hits = hub.nodes[home].stats["hits"]
        second = await hub.open(workdir, tenant="t1", append_system_prompt="figures-test")
        assert second.owner.node == home and second.view["source"] == "spare"
        while hub.nodes[home].stats["hits"] == hits:  # no refresh_nodes() call here
            assert asyncio.get_running_loop().time() < deadline, "figures not read again"
            await asyncio.sleep(0.05)
        for s in (first, second):
            await hub.close_session(s.id)


def _may_raise_priority() -> bool:
    """Whether a process of this user may go back to this test's niceness (root, or an
    ``RLIMIT_NICE`` allowance); a host actor without it keeps Ray's and warns."""
    import os
    import resource

    ceiling = 20 - resource.getrlimit(resource.RLIMIT_NICE)[0]
    return os.geteuid() == 0 or ceiling <= os.getpriority(os.PRIO_PROCESS, 0)


async def test_a_nodes_clis_run_at_the_raylets_priority(chub: ClusterHub, workdir: Path) -> None:
    """Ray starts host actors at its worker niceness (15); their CLIs inherited it and ran behind
    every other process of the machine. The raylets run at this test's niceness."""
    import os

    import pytest

    if not _may_raise_priority():
        pytest.skip("this user may not raise a process's priority")
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    for node in [n.name for n in chub.live_nodes()]:
        s = await chub.open(workdir, tenant="t1", node=node)
        await (await s.send("[[say:nice]]")).wait()
        view = await s.snapshot()
        assert view["pid"], view
        assert os.getpriority(os.PRIO_PROCESS, int(view["pid"])) == ours, node
        await chub.close_session(s.id)
