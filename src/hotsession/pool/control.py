"""The pool: its control loop, the ``SpareProvider`` the local host claims from, and its stats.

Control loop (one task, every ``pool_tick_s`` or when woken):

1. sample memory (``budget``);
2. discard broken spares (died, stray output, too old; ``spares``);
3. keep the budget: over it, retire spares first, then evict the least recently used idle
   sessions (``budget``);
4. evict live sessions idle beyond ``keep_alive_s``, and resume-ahead processes left unused;
5. per profile, refill to the target and retire the surplus (``spares``, ``sizing``).

At each turn boundary the hub calls ``after_turn`` (``recycling``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Any

from hotsession.agent import AgentProcess
from hotsession.config import Config
from hotsession.host import Placement
from hotsession.memory import available_mb
from hotsession.options import SessionOptions
from hotsession.pool.budget import Evictor, MemoryBudget
from hotsession.pool.context import PoolContext, PooledSession
from hotsession.pool.recycling import Recycler
from hotsession.pool.spares import Profile, Spares

log = logging.getLogger(__name__)


class Pool:
    """Warm spares per profile plus the memory, eviction and recycling policy of the host."""

    def __init__(self, context: PoolContext) -> None:
        self._ctx = context
        cfg = context.config
        budget_mb = float(
            cfg.memory_budget_mb
            if cfg.memory_budget_mb is not None
            else cfg.memory_budget_fraction * available_mb()
        )
        self.budget = MemoryBudget(
            budget_mb, children=context.host.child_pids, spares=lambda: self.spares.pids()
        )
        self.spares = Spares(context, self.budget, wake=self.wake)
        busy: set[str] = set()  # sessions being evicted or recycled
        self.evictor = Evictor(context, busy)
        self.recycler = Recycler(context, self.budget, busy)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def config(self) -> Config:
        """The engine's settings (read at use, so live tuning applies)."""
        return self._ctx.config

    @property
    def profiles(self) -> dict[str, Profile]:
        """Pool state per profile key."""
        return self.spares.profiles

    @property
    def evictions(self) -> Counter[str]:
        """Processes of idle sessions ended, by reason."""
        return self.evictor.evictions

    @property
    def recycles(self) -> Counter[str]:
        """Processes replaced at a turn boundary, by reason."""
        return self.recycler.recycles

    @property
    def spares_retired(self) -> Counter[str]:
        """Spares ended, by reason."""
        return self.spares.retired

    @property
    def spawning(self) -> int:
        """Spares being spawned now."""
        return self.spares.spawning

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the control loop (on the engine's loop)."""
        self._wake = asyncio.Event()
        self._task = self._ctx.spawn_task(self._run(), name="pool-control")

    async def stop(self) -> None:
        """Stop spawning, end every spare (sessions' processes are the hub's to end)."""
        self._stopping = True
        self.spares.stopping = True
        tasks = [t for t in (self._task, *self.spares.tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("pool: a task failed while the pool stopped")
        spares = self.spares.take_all()
        await asyncio.gather(*(s.process.close() for s in spares), return_exceptions=True)

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # pragma: no cover - a policy bug must not stop the pool
                log.exception("pool control loop failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.pool_tick_s):
                    await self._wake.wait()

    def wake(self) -> None:
        """Run the control loop now."""
        if self._wake is not None:
            self._wake.set()

    async def tick(self) -> None:
        """One pass of the control loop."""
        if self._stopping or self._ctx.shutting_down:
            return
        now = time.monotonic()
        await self.budget.sample(now)
        self.spares.discard_broken(now)
        self._keep_budget()
        self.evictor.evict_idle(self.config.keep_alive_s)
        for prof in self.spares.profiles.values():
            self.spares.refill(prof, now)

    def _keep_budget(self) -> None:
        spares_over = self.budget.spares_over_share()
        if spares_over > 0:
            self.spares.retire_for_memory(spares_over)
        over = self.budget.used_mb(measured_only=True) - self.budget.budget_mb
        if over <= 0:
            return
        over = self.spares.retire_for_memory(over)  # spares first: cheap to re-create
        if over > 0:
            est = self.budget.estimate_mb()
            self.evictor.evict_least_recent(over, lambda pid: self.budget.of(pid, est))

    # -- what the host and the hub call ----------------------------------------------------------

    async def claim(self, options: SessionOptions) -> Placement | None:
        """A ready spare of this profile (``SpareProvider``), or None on a miss."""
        return await self.spares.claim(options)

    def note_spawn(self, options: SessionOptions, seconds: float) -> None:
        """A direct spawn of this profile succeeded in ``seconds`` (``SpareProvider``)."""
        self.spares.note_spawn(options, seconds)

    def ensure_profile(
        self, options: SessionOptions, *, minimum: int | None = None, maximum: int | None = None
    ) -> Profile:
        """The pool state of this profile (created on first use)."""
        return self.spares.ensure_profile(options, minimum=minimum, maximum=maximum)

    def prewarm(self, options: SessionOptions, count: int = 1) -> None:
        """Keep at least ``count`` spares of this profile for the keep-alive (ahead of demand)."""
        self.spares.prewarm(options, count)

    def retire_tenant(self, tenant: str) -> int:
        """Retire ``tenant``'s spares now: its set-up (user, secrets, config dir) changed."""
        return self.spares.retire_tenant(tenant, "tenant_changed")

    def target(self, prof: Profile, now: float | None = None) -> int:
        """How many spares (ready + spawning) this profile should have now."""
        return self.spares.target(prof, now)

    def used_mb(self, *, measured_only: bool = False) -> float:
        """Sampled memory of every child process (see ``MemoryBudget.used_mb``)."""
        return self.budget.used_mb(measured_only=measured_only)

    def recycle_reason(self, proc: AgentProcess) -> str | None:
        """Why this process should be replaced at its turn boundary (None: keep it)."""
        return self.recycler.reason(proc)

    async def after_turn(self, session: PooledSession) -> None:
        """Turn boundary: release a replacement held for this profile, recycle the session's
        process if it is over a limit."""
        if not self._stopping:
            record = session.record
            self.spares.turn_ended(record.profile_key, record.last_active_at)
            await self.recycler.after_turn(session)

    async def recycle(self, session: PooledSession, reason: str) -> bool:
        """Replace the session's process now (see ``recycling``)."""
        return await self.recycler.recycle(session, reason)

    # -- stats -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Per-profile and global counters (the API and the dashboard read these)."""
        budget = self.budget
        est = budget.estimate_mb()
        live: Counter[str] = Counter()
        live_mb: dict[str, float] = {}
        for s in self._ctx.pooled_sessions():
            proc = s.process
            if proc is not None:
                key = s.record.profile_key
                live[key] += 1
                live_mb[key] = live_mb.get(key, 0.0) + budget.of(proc.pid, est)
        now = time.monotonic()
        profiles = [
            self._profile_stats(prof, now, est, live[prof.key], live_mb.get(prof.key, 0.0))
            for prof in self.spares.profiles.values()
        ]
        used = budget.used_mb()
        spares = budget.spares_mb()
        return {
            "profiles": profiles,
            "memory": {
                "used_mb": round(used, 1),
                "budget_mb": round(budget.budget_mb, 1),
                "spares_mb": round(spares, 1),
                "sessions_mb": round(max(0.0, used - spares), 1),
                "per_process_estimate_mb": round(est, 1),
            },
            "evictions": dict(self.evictions),
            "recycles": dict(self.recycles),
            "spares_retired": dict(self.spares_retired),
            "recycle_failures": self.recycler.failures,
            "spawned_total": self.spares.spawned_total,
        }

    def _profile_stats(
        self, prof: Profile, now: float, est: float, live: int, live_mb: float
    ) -> dict[str, Any]:
        opts = prof.options
        asked = prof.hits + prof.misses
        spares_mb = sum(self.budget.of(s.process.pid, est) for s in prof.ready)
        return {
            "profile": prof.key,
            "tenant": opts.tenant,
            "cwd": opts.cwd,
            "model": opts.model,
            "permission_mode": opts.permission_mode,
            "client": opts.client(),
            "flags": opts.flags(),
            "ready": len(prof.ready),
            "spawning": prof.spawning,
            "live_sessions": live,
            "hits": prof.hits,
            "misses": prof.misses,
            "hit_rate": round(prof.hits / asked, 4) if asked else None,
            "lambda_per_s": round(prof.sizer.arrivals.rate(now), 4),
            "tau_s": _round(prof.sizer.cold_starts.measured),
            "target": self.target(prof, now),
            "min": prof.minimum,
            "max": prof.maximum,
            "memory_mb": round(spares_mb + live_mb, 1),
            "failing": prof.failing,
            "last_error": prof.last_error,
            "spawned": prof.spawned,
            "switched": prof.switched,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
