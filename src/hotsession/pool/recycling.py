"""Recycling: a session's process replaced by a fresh ``--resume`` one at a turn boundary.

At the turn boundary (``after_turn``, before the next queued prompt runs) a process over
``agent_max_turns``, ``agent_max_age_s`` (both with up to ``agent_recycle_jitter`` of random extra
per process, so a fleet does not recycle in lockstep) or ``agent_memory_cap_mb`` (its own
anonymous memory, tool children included) is replaced: the replacement is started first, then
swapped in (``replace_process``) and the old process retired. If the replacement cannot start,
the old process keeps serving. The recycler decides, so it counts (``recycles`` by reason,
``failures``).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter

from hotsession.agent import AgentProcess
from hotsession.errors import HotsessionError
from hotsession.host import Placement
from hotsession.memory import sample
from hotsession.pool.budget import MemoryBudget
from hotsession.pool.context import PoolContext, PooledSession

log = logging.getLogger(__name__)


class Recycler:
    """Replaces processes over their limits, at turn boundaries."""

    def __init__(self, context: PoolContext, budget: MemoryBudget, busy: set[str]) -> None:
        self._ctx = context
        self._budget = budget
        self._busy = busy  # sessions the pool is evicting or recycling right now
        self._limits: dict[int, tuple[float | None, float | None]] = {}
        self.recycles: Counter[str] = Counter()
        self.failures = 0

    def _limits_for(self, proc: AgentProcess) -> tuple[float | None, float | None]:
        limits = self._limits.get(proc.pid)
        if limits is None:
            cfg = self._ctx.config
            jitter = max(0.0, cfg.agent_recycle_jitter)
            turns = (
                cfg.agent_max_turns * (1 + random.uniform(0, jitter))
                if cfg.agent_max_turns
                else None
            )
            age = (
                cfg.agent_max_age_s * (1 + random.uniform(0, jitter))
                if cfg.agent_max_age_s
                else None
            )
            limits = self._limits[proc.pid] = (turns, age)
            children = self._ctx.host.child_pids()
            if len(self._limits) > 4 * max(16, len(children)):
                live = set(children)
                self._limits = {k: v for k, v in self._limits.items() if k in live}
        return limits

    def reason(self, proc: AgentProcess) -> str | None:
        """Why this process should be replaced at its turn boundary (None: keep it)."""
        max_turns, max_age = self._limits_for(proc)
        if max_turns is not None and proc.turns >= max_turns:
            return "max_turns"
        if max_age is not None and time.monotonic() - proc.started_mono >= max_age:
            return "max_age"
        cap = self._ctx.config.agent_memory_cap_mb
        if cap is not None:
            mem = sample(proc.pid, tree=True)
            if mem is not None:
                self._budget.note(proc.pid, mem.anon_mb)
                if mem.anon_mb > cap:
                    return "memory"
        return None

    async def after_turn(self, session: PooledSession) -> None:
        """Turn boundary: recycle the session's process if it is over a limit."""
        proc = session.process
        if proc is None or session.closed or self._ctx.shutting_down:
            return
        reason = self.reason(proc)
        if reason is not None:
            await self.recycle(session, reason)

    async def recycle(self, session: PooledSession, reason: str) -> bool:
        """Start the ``--resume`` replacement, then swap it in and retire the old process."""
        ctx = self._ctx
        self._busy.add(session.id)
        try:
            try:
                proc = await ctx.host.spawn(
                    session.options,
                    role="session",
                    session_id=session.id,
                    cli_session_id=session.cli_session_id,
                    resume=True,
                )
            except HotsessionError as exc:
                self.failures += 1
                log.warning("pool: cannot recycle %s (%s): %s", session.id, reason, exc.message)
                return False
            if session.closed or ctx.shutting_down:
                await proc.close()
                return False
            old = session.process
            await session.replace_process(Placement(proc, session.cli_session_id, "resume"))
            if old is not None:
                self._budget.forget(old.pid)
                self._limits.pop(old.pid, None)
            self.recycles[reason] += 1
            return True
        finally:
            self._busy.discard(session.id)
