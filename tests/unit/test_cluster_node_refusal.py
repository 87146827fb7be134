"""A node that refuses to start (it cannot set its tenants up) in ``ClusterHub.refresh_nodes``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from ray.exceptions import RayTaskError  # noqa: E402

from hotsession.cluster import actors  # noqa: E402
from hotsession.cluster.hub import ClusterConfig, ClusterHub, Node  # noqa: E402
from hotsession.cluster.placement import NodeFigures  # noqa: E402
from hotsession.config import Config  # noqa: E402
from hotsession.isolation import IsolationError  # noqa: E402


class Refusing:
    """A host actor whose ``start`` fails as a node without a tenant's account does."""

    class _Start:
        def remote(self, *_: Any) -> asyncio.Future[Any]:
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            cause = IsolationError("node n2: tenant a: no OS user 'x'")
            done.set_exception(RayTaskError("start", "traceback", cause).as_instanceof_cause())
            return done

    start = _Start()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ClusterHub:
    monkeypatch.setattr(actors, "alive_nodes", lambda: ["n2"])
    monkeypatch.setattr(actors, "host_actor", lambda spec: Refusing())
    lost: list[str] = []
    config = ClusterConfig(store=lambda: None)  # type: ignore[arg-type,return-value]
    out = ClusterHub(Config(state_dir=tmp_path), config)
    out.lost = lost  # type: ignore[attr-defined]

    async def node_lost(name: str) -> None:
        lost.append(name)
        out.nodes[name].alive = False

    monkeypatch.setattr(out, "node_lost", node_lost)
    return out


async def test_at_start_the_refusal_is_the_daemons_one_line(hub: ClusterHub) -> None:
    with pytest.raises(IsolationError, match="^node n2: tenant a: no OS user 'x'$"):
        await hub.refresh_nodes()


async def test_later_a_refusing_node_does_not_stop_the_round(hub: ClusterHub) -> None:
    """A node joining a running cluster that refuses is skipped; the round still sees the
    other nodes' losses (here: n1, gone from the cluster)."""
    hub.started = True
    hub.nodes["n1"] = Node("n1", object(), NodeFigures("n1"))
    await hub.refresh_nodes()
    assert "n2" not in hub.nodes
    assert hub.lost == ["n1"]  # type: ignore[attr-defined]
