"""A node's figures as a daemon watches them (``NodeHost.figures``, ``figures_digest``) and the
node's ownership check when it holds nothing; without Ray (the host actor's body called
directly)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hotsession.cluster import node as node_module
from hotsession.cluster.node import NodeHost, NodeSpec, figures_digest


def _stats(ready: int = 1, headroom: float = 3000.0, rate: float = 0.5) -> dict[str, Any]:
    return {
        "node": "n1",
        "sessions": 2,
        "spares": {"p": ready},
        "memory": {"used_mb": 4000.0 - headroom, "headroom_mb": headroom, "available_mb": rate},
        "pool": {"profiles": [{"profile": "p", "ready": ready, "lambda_per_s": rate}]},
    }


def test_the_digest_changes_with_counts_and_headroom_steps_not_with_drifting_figures() -> None:
    base = figures_digest(_stats())
    assert figures_digest(_stats(rate=0.123)) == base  # rates, available memory: drift
    assert figures_digest(_stats(headroom=3005.0)) == base  # within a headroom step
    assert figures_digest(_stats(ready=0)) != base  # a spare taken
    assert figures_digest(_stats(headroom=2900.0)) != base  # a step of headroom


class Host(NodeHost):
    """The host actor's body with scripted ``stats``."""

    def __init__(self, figures: list[dict[str, Any]]) -> None:
        self.script = figures
        self.reads = 0

    async def stats(self) -> dict[str, Any]:
        self.reads += 1
        return dict(self.script[min(self.reads, len(self.script)) - 1])


async def test_figures_answer_at_once_for_a_caller_without_them() -> None:
    host = Host([_stats()])
    got = await asyncio.wait_for(host.figures(None), 1)
    assert got["digest"] == figures_digest(_stats()) and got["sessions"] == 2


async def test_figures_wait_for_a_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_module, "FIGURES_CHECK_S", 0.01)
    known = figures_digest(_stats())
    host = Host([_stats(), _stats(rate=0.9), _stats(ready=0)])
    got = await asyncio.wait_for(host.figures(known, wait_s=30), 5)
    assert got["spares"] == {"p": 0} and host.reads == 3


async def test_unchanged_figures_answer_after_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_module, "FIGURES_CHECK_S", 0.01)
    known = figures_digest(_stats())
    host = Host([_stats()])
    got = await asyncio.wait_for(host.figures(known, wait_s=0.05), 5)
    assert got["digest"] == known and host.reads > 1


class Store:
    def __init__(self) -> None:
        self.queries = 0

    async def list_owned(self, node: str) -> list[Any]:
        self.queries += 1
        return []


async def test_a_node_holding_nothing_does_not_ask_the_store() -> None:
    host = NodeHost(NodeSpec(name="n1", state_root="/nonexistent", store=Store, fence_check_s=0.01))  # type: ignore[arg-type]
    host.store = store = Store()  # type: ignore[assignment]
    task = asyncio.create_task(host._fence_loop())
    try:
        await asyncio.sleep(0.1)
        assert store.queries == 0
        host.epochs["s1"] = 1  # a session held here: checked every round
        host._drop = _no_drop  # type: ignore[method-assign]
        await asyncio.sleep(0.1)
        assert store.queries > 0
    finally:
        task.cancel()


async def _no_drop(session_id: str) -> bool:
    return True
