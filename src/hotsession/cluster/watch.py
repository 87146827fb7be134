"""A tenant's sessions on one node, pushed to an API daemon as they change (``/v1/stream``).

Design
======
The cluster daemon's ``/v1/stream`` (the dashboard's feed) must show every session of a tenant
on every node, their turn milestones as they happen, and the pool. Polling each node's views
every ``pool_interval`` showed a change up to that late and carried no ``turn`` events; instead
each connection opens one streaming call per node (``NodeHost.watch``), which pushes what
changed there, the way :mod:`hotsession.api.feed` does on one machine:

* Session changes. A state listener of the node's engine stores the session by id and wakes
  the writer, which builds the views when it runs: a burst of changes of one session is one view
  (its latest), and what waits is bounded by the number of sessions.
* Turn milestones. A tap on each of the tenant's sessions here forwards ``result`` / ``error`` /
  ``permission_request`` / ``permission_resolved`` (nothing else: a ``message`` costs one type
  check); sessions that open or arrive (adopted from a lost node) later are tapped when the
  listener first sees them.

Batches are held ``HOLD_S`` after the change that wakes the writer, so that what follows
within it crosses in the same Ray item: a plain follow-up's turn start (its session
``running``), its ``result`` and its session ``idle`` came as two or three items, each ~0.2 ms
of the node's and ~0.1 ms of the daemon's CPU (measured with one ``/v1/stream`` client open,
2026-11-30); a dashboard sees a change up to ``HOLD_S`` later.

The first batch is a snapshot (the views of the tenant's open sessions here). A batch is
``{"sessions": [view, ...], "turns": [milestone, ...]}``, turns first (a result comes before
the state it leaves its session in). A daemon that falls ``MAX_BACKLOG`` milestones behind gets
``{"resync": True}`` and the stream ends (it opens a new one: a fresh snapshot). The stream ends
when the daemon cancels the call (its client went away) or the node stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from hotsession.api.feed import MAX_BACKLOG, TURN_TYPES, TenantWatch, milestone
from hotsession.hub import Hotsession
from hotsession.session import Session

__all__ = ["HOLD_S", "MAX_BACKLOG", "TURN_TYPES", "NodeWatch", "milestone"]

HOLD_S = 0.05
"""How long a batch waits after the change that woke it for the changes that follow."""


class NodeWatch(TenantWatch):
    """One daemon connection's view of a tenant on this node (see the module docstring); the
    gathering is the single machine's feed's (:class:`~hotsession.api.feed.TenantWatch`)."""

    def __init__(
        self,
        hub: Hotsession,
        tenant: str,
        view: Callable[[Session], dict[str, Any]],
        *,
        max_backlog: int = MAX_BACKLOG,
        hold_s: float = HOLD_S,
    ) -> None:
        super().__init__(hub, tenant, max_backlog=max_backlog)
        self.view = view
        self.hold_s = hold_s

    async def batches(self) -> AsyncIterator[dict[str, Any]]:
        """The snapshot, then a batch per wake-up (see the module docstring)."""
        self.start()
        try:
            yield self._take()
            while True:
                await self._wake.wait()
                await asyncio.sleep(self.hold_s)  # what follows goes in the same item
                self._wake.clear()
                if self.overflowed:
                    yield {"resync": True}
                    return
                batch = self._take()
                if batch["sessions"] or batch["turns"]:
                    yield batch
        finally:
            self.stop()

    def _take(self) -> dict[str, Any]:
        turns = self.take_turns()
        return {"sessions": [self.view(s) for s in self.take_sessions()], "turns": turns}
