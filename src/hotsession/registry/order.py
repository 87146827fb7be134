"""One session's writes, one at a time and in call order.

A store on a pool of connections (Postgres) runs concurrent writes on different connections, so
two writes of one session made in a row can commit in the other order: the engine writes a turn
"queued" and then "running" from two background tasks, and the turn would be left "queued" (a
re-homed session runs its "queued" turns again); a turn's end could land after, and undo, the
session's "closed". :class:`SessionOrder` lets one write of a session run at a time, in the order
the writes were called: ``asyncio.Lock`` wakes its waiters first come first served, and a write
asks for the lock before its first ``await`` (a task's first step runs in creation order).
Writes of different sessions do not wait for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["SessionOrder"]


class SessionOrder:
    """Per-session FIFO locks; a session's entry lives while one of its writes runs or waits."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, session_id: str) -> AsyncIterator[None]:
        """Run the block after every earlier write of ``session_id`` (and before later ones)."""
        entry = self._held.get(session_id)
        if entry is None:
            entry = self._held[session_id] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._held[session_id]

    def __len__(self) -> int:
        """Sessions with a write running or waiting."""
        return len(self._held)
