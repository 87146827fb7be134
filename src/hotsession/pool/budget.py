"""The memory budget and eviction: how much the processes use, how much room is left, and which
idle sessions lose their process when there is none (or when they idled past the keep-alive).

Memory budget. ``memory_budget_mb``, or ``memory_budget_fraction`` of the memory available when
the pool starts. Each process is sampled (``RssAnon`` of it and its children, one ``/proc`` pass
for all) at most every two seconds. Spares are only spawned while the sampled total plus the
in-flight spawns (each counted at the current per-process estimate) leaves room for one more, and
while the spares stay within their share of the budget (``SPARE_SHARE``), so spares alone never
push the total over the budget nor crowd out sessions. Over it, the pool retires spares first (cheap
to re-create), then :class:`Evictor` evicts the least recently used idle sessions (their next turn
resumes).

The evictor is the one place that decides evictions, so it counts them (``evictions``, by
reason: ``memory_budget``, ``keep_alive``, ``warm_unused``).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable

from hotsession.memory import sample_many
from hotsession.pool.context import PoolContext, PooledSession

DEFAULT_PROCESS_MB = 150.0  # per-process estimate until something was measured
_MEMORY_SAMPLE_S = 2.0
SPARE_SHARE = 0.5
"""The share of the memory budget spares may hold: the rest is kept for sessions."""


class MemoryBudget:
    """Sampled memory per process, the budget, and the room left in it."""

    def __init__(
        self,
        budget_mb: float,
        *,
        children: Callable[[], Collection[int]],
        spares: Callable[[], Iterable[int]],
    ) -> None:
        self.budget_mb = budget_mb
        self._children = children
        self._spares = spares
        self._mb: dict[int, float] = {}
        self._sampled_at = 0.0

    async def sample(self, now: float) -> None:
        """Sample every child process (at most every two seconds)."""
        if now - self._sampled_at < _MEMORY_SAMPLE_S:
            return
        self._sampled_at = now
        samples = await asyncio.to_thread(sample_many, list(self._children()))
        self._mb = {pid: m.anon_mb for pid, m in samples.items()}

    def note(self, pid: int, mb: float) -> None:
        """A fresh measurement of one process."""
        self._mb[pid] = mb

    def forget(self, pid: int) -> None:
        """The process is gone (or going)."""
        self._mb.pop(pid, None)

    def of(self, pid: int, default: float) -> float:
        """The last sample of a process, or ``default``."""
        return self._mb.get(pid, default)

    def estimate_mb(self) -> float:
        """A process's expected memory: the median spare, else the median process."""
        values = [self._mb[pid] for pid in self._spares() if pid in self._mb]
        if not values:
            values = list(self._mb.values())
        return max(1.0, statistics.median(values)) if values else DEFAULT_PROCESS_MB

    def used_mb(self, *, measured_only: bool = False) -> float:
        """Sampled memory of every child process (unsampled ones at the estimate).

        Admission counts a process not sampled yet at the estimate (cautious); eviction acts on
        measurements only (``measured_only``), so a guess never ends a session.
        """
        est = 0.0 if measured_only else self.estimate_mb()
        return sum(self._mb.get(pid, est) for pid in self._children())

    def spares_mb(self) -> float:
        """Memory of the ready spares."""
        est = self.estimate_mb()
        return sum(self._mb.get(pid, est) for pid in self._spares())

    def room(self, spawning: int) -> int:
        """How many more spares fit: in the budget, and in the spares' share of it
        (``SPARE_SHARE``), with the ``spawning`` ones in flight counted."""
        est = self.estimate_mb()
        free = self.budget_mb - self.used_mb() - spawning * est
        share = SPARE_SHARE * self.budget_mb - self.spares_mb() - spawning * est
        return max(0, int(min(free, share) // est))

    def spares_over_share(self) -> float:
        """How far the ready spares' measured memory is over their share (MiB; ≤ 0: not)."""
        measured = sum(self._mb.get(pid, 0.0) for pid in self._spares())
        return measured - SPARE_SHARE * self.budget_mb


class Evictor:
    """Ends the processes of idle sessions (the sessions stay) and counts why."""

    def __init__(self, context: PoolContext, busy: set[str]) -> None:
        self._ctx = context
        self._busy = busy  # sessions the pool is evicting or recycling right now
        self.evictions: Counter[str] = Counter()

    def idle_sessions(self) -> list[PooledSession]:
        """Sessions with a process, idle, nothing queued, not already being handled."""
        return [
            s
            for s in self._ctx.pooled_sessions()
            if s.process is not None
            and s.state == "idle"
            and s.current is None
            and not s.queued
            and s.id not in self._busy
        ]

    def evict_least_recent(self, over_mb: float, mb_of: Callable[[int], float]) -> None:
        """Evict idle sessions, least recently active first, until ``over_mb`` is freed."""
        for session in sorted(self.idle_sessions(), key=last_active):
            if over_mb <= 0:
                break
            proc = session.process
            if proc is None:
                continue
            over_mb -= mb_of(proc.pid)
            self.evict(session, "memory_budget")

    def evict_idle(self, keep_alive_s: float) -> None:
        """Evict sessions idle beyond the keep-alive, and retire resume-ahead processes left
        unused that long."""
        wall = time.time()
        for session in self.idle_sessions():
            if wall - last_active(session) > keep_alive_s:
                self.evict(session, "keep_alive")
        for session in list(self._ctx.pooled_sessions()):
            placement = session.take_unused_warm(unused_for_s=keep_alive_s)
            if placement is not None:
                self.evictions["warm_unused"] += 1
                self._ctx.spawn_task(self._ctx.host.retire(placement), name="retire-warm")

    def evict(self, session: PooledSession, reason: str) -> None:
        """End the session's process in the background (counted once it is done)."""
        self._busy.add(session.id)

        async def run() -> None:
            try:
                if await session.evict():
                    self.evictions[reason] += 1
            finally:
                self._busy.discard(session.id)

        self._ctx.spawn_task(run(), name=f"evict-{session.id}")


def last_active(session: PooledSession) -> float:
    """When the session was last used (its creation if never)."""
    rec = session.record
    return max(rec.last_active_at or 0.0, rec.created_at or 0.0)
