"""A node's watch of a tenant's sessions (``hotsession.cluster.watch``): changes that come
together cross as one batch; without Ray (a stand-in hub)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from hotsession.cluster.watch import NodeWatch


class Hub:
    def __init__(self) -> None:
        self.listeners: list[Any] = []

    def add_state_listener(self, fn: Any) -> None:
        self.listeners.append(fn)

    def remove_state_listener(self, fn: Any) -> None:
        self.listeners.remove(fn)

    def list(self, tenant: str) -> list[Any]:
        return []


def _session(sid: str) -> Any:
    return SimpleNamespace(id=sid, record=SimpleNamespace(tenant="t1"), closed=True)


async def test_changes_that_follow_within_the_hold_cross_in_one_batch() -> None:
    hub = Hub()
    watch = NodeWatch(hub, "t1", lambda s: {"id": s.id}, hold_s=0.2)  # type: ignore[arg-type]
    batches = watch.batches()
    assert await batches.__anext__() == {"sessions": [], "turns": []}  # the snapshot
    nxt = asyncio.ensure_future(batches.__anext__())
    await asyncio.sleep(0)
    (listener,) = hub.listeners
    listener(_session("s1"))  # a turn starts ...
    await asyncio.sleep(0.02)
    listener(_session("s2"))  # ... and another change follows within the hold
    batch = await asyncio.wait_for(nxt, 5)
    assert [v["id"] for v in batch["sessions"]] == ["s1", "s2"]
    await batches.aclose()
    assert hub.listeners == []
