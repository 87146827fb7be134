"""Spares and claims: ready processes per profile, handed out to new sessions.

Profiles. A profile is everything fixed at spawn (``SessionOptions.profile_key()``: tenant, cwd,
model, permission mode, tools, prompts, settings, MCP, env). Each profile in use keeps a queue of
*ready* spares: processes spawned with a pre-generated CLI session id, initialized and deep-warmed
(``warmup``). A spare belongs to one profile (so one tenant) for its whole life.

Claim. ``claim(options)`` pops the oldest ready spare of the profile, checks it (alive, no stray
output, not older than ``pool_spare_max_age_s``) and hands it out; the session adopts its CLI
session id. A miss returns None and the host spawns directly: a request never fails because the
pool is empty.

The replacement comes after the session's first turn. A CLI's start-up and a first turn each
take most of a core for a few hundred ms; on a small machine a replacement spawned at the moment
of the claim made the claimed session's first turn (or, on a miss, its own spawn) wait for the
CPU (issue 13: a miss reached the model 1.4× later than a fresh ``claude -p``). So a claim holds
the profile's refill until a turn of that profile ends (``turn_ended``) or ``HOLD_S`` passed,
whichever comes first; the third claim within one hold ends it (a burst refills at once).

Demand must repeat. A profile's first session gets no spare: a one-off profile (a directory
opened once, a bench's unique prompt) would otherwise keep an idle process for the keep-alive.
Spares are sized only while two arrivals of the profile fell within the keep-alive
(``pool_min`` and an explicit ``prewarm`` still apply at once).

Switching at claim time (``pool_switch_at_claim``, see ``switching``). With no ready spare of its
own, a claim may take a sibling profile's spare and switch its model and mode. It counts as a hit
of the requested profile (``switched`` in its stats; source ``spare-switched``); the sibling
refills as usual. A switch that fails or takes longer than two cold starts discards that spare
and the claim is a miss (a direct spawn). The session's options stay the requested ones, so
every later spawn (recycle, resume) uses the requested model and mode.

Refill. Per profile, the target S from ``sizing`` (base stock on λ̂τ, held for the keep-alive,
clamped to the profile's min/max, the ``prewarm`` floor and the room the memory budget leaves);
the deficit is spawned through a token bucket and at most ``max_concurrent_spawns`` at once; the
surplus is retired.

Failing profiles. Consecutive spawn failures back off exponentially; after
``pool_failing_after`` of them the profile is *failing*: no more spawns, the reason shows in the
stats, and ``claim`` raises ``ProfileFailing`` so requests get that error instead of a spawn each.
After ``pool_failing_retry_s`` one probe is allowed (a claim falls through to a direct spawn and
the loop tries one spare); any successful spawn of the profile clears the state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hotsession.agent import AgentProcess
from hotsession.config import Config
from hotsession.errors import AgentError, AgentProtocolError, HotsessionError, ProfileFailing
from hotsession.host import Placement
from hotsession.memory import sample
from hotsession.options import SessionOptions
from hotsession.pool import warmup
from hotsession.pool.budget import MemoryBudget
from hotsession.pool.context import PoolContext
from hotsession.pool.sizing import ProfileSizer, TokenBucket, clamp_target
from hotsession.pool.switching import switch, switch_plan

log = logging.getLogger(__name__)

HOLD_S = 2.0
"""The longest a claim holds its profile's refill back (see the module docstring)."""
BURST = 3
"""Claims within one hold that end it: a burst refills at once."""


@dataclass
class Spare:
    """A ready, idle process of one profile."""

    process: AgentProcess
    cli_session_id: str
    ready_at: float
    warmup: dict[str, Any] = field(default_factory=dict)  # its warm-up report (steps, errors)


@dataclass
class Profile:
    """Pool state of one profile."""

    key: str
    options: SessionOptions
    sizer: ProfileSizer
    minimum: int
    maximum: int
    ready: deque[Spare] = field(default_factory=deque)
    spawning: int = 0
    hits: int = 0
    misses: int = 0
    failures: int = 0  # consecutive spawn failures
    failing: str | None = None
    last_error: str | None = None
    retry_at: float = 0.0
    floor: int = 0
    floor_until: float = 0.0
    spawned: int = 0
    family: str = ""  # profiles equal but for model and permission mode share it
    switched: int = 0  # hits served by switching a sibling's spare
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=2))  # the last two
    held_until: float = 0.0  # refill held back after a claim (module docstring)
    held_since: float = 0.0  # when (wall clock) the latest claim of that hold came
    held_claims: int = 0  # claims during that hold

    def demand_repeats(self, now: float, keep_alive_s: float) -> bool:
        """True while the last two arrivals both fell within the keep-alive."""
        return len(self.arrivals) == 2 and now - self.arrivals[0] <= keep_alive_s


class Spares:
    """The ready spares of every profile: claims, refills, spawns, health (module docstring)."""

    def __init__(
        self, context: PoolContext, budget: MemoryBudget, *, wake: Callable[[], None]
    ) -> None:
        self._ctx = context
        self._budget = budget
        self._wake = wake
        cfg = context.config
        self.profiles: dict[str, Profile] = {}
        self.bucket = TokenBucket(cfg.pool_refill_per_s, max(1, cfg.max_concurrent_spawns))
        self.spawned_total = 0
        self.retired: Counter[str] = Counter()
        self.spawning = 0
        self.stopping = False
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def config(self) -> Config:
        """The engine's settings."""
        return self._ctx.config

    def pids(self) -> Iterator[int]:
        """The pids of every ready spare."""
        return (s.process.pid for p in self.profiles.values() for s in p.ready)

    # -- profiles --------------------------------------------------------------------------------

    def ensure_profile(
        self,
        options: SessionOptions,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> Profile:
        """The pool state of this profile (created on first use)."""
        key = options.profile_key()
        prof = self.profiles.get(key)
        if prof is None:
            cfg = self.config
            prof = Profile(
                key=key,
                options=options,
                sizer=ProfileSizer(
                    target_miss=cfg.pool_target_miss,
                    keep_alive_s=cfg.keep_alive_s,
                    stable_s=cfg.pool_rate_window_s,
                    panic_s=cfg.pool_rate_window_s / 10,
                    default_tau_s=cfg.pool_default_tau_s,
                ),
                minimum=cfg.pool_min,
                maximum=cfg.pool_max,
                family=options.replace(model=None, permission_mode=None).profile_key(),
            )
            self.profiles[key] = prof
        if minimum is not None:
            prof.minimum = max(0, minimum)
        if maximum is not None:
            prof.maximum = max(0, maximum)
        return prof

    def prewarm(self, options: SessionOptions, count: int = 1) -> None:
        """Keep at least ``count`` spares of this profile for the keep-alive (ahead of demand)."""
        prof = self.ensure_profile(options)
        now = time.monotonic()
        prof.floor = max(count, prof.floor if now < prof.floor_until else 0)
        prof.floor_until = now + self.config.keep_alive_s
        self._wake()

    def target(self, prof: Profile, now: float | None = None) -> int:
        """How many spares (ready + spawning) this profile should have now."""
        now = time.monotonic() if now is None else now
        prof.sizer.keep_alive_s = self.config.keep_alive_s  # live tuning applies at once
        floor = prof.floor if now < prof.floor_until else 0
        have = len(prof.ready) + prof.spawning
        sized = prof.sizer.target(now)
        if not prof.demand_repeats(now, self.config.keep_alive_s):
            sized = 0
        return clamp_target(
            sized,
            minimum=max(prof.minimum, floor),
            maximum=prof.maximum,
            room=have + self._budget.room(self.spawning),
        )

    # -- claims ----------------------------------------------------------------------------------

    async def claim(self, options: SessionOptions) -> Placement | None:
        """A ready spare of this profile (its CLI session id is adopted), or None on a miss."""
        prof = self.ensure_profile(options)
        now = time.monotonic()
        if prof.failing is not None and now < prof.retry_at:
            raise ProfileFailing(
                f"processes of this profile keep failing to start: {prof.failing}",
                profile=prof.key,
                reason=prof.failing,
            )
        prof.sizer.record_arrival(now)
        prof.arrivals.append(now)
        self._hold(prof, now)
        try:
            spare = self._take_ready(prof, now)
            if spare is not None:
                prof.hits += 1
                return Placement(spare.process, spare.cli_session_id, "spare")
            placement = await self._claim_switched(prof, now)
            if placement is not None:
                prof.hits += 1
                prof.switched += 1
                return placement
            prof.misses += 1
            return None
        finally:
            self._wake()

    async def _claim_switched(self, prof: Profile, now: float) -> Placement | None:
        """A sibling profile's spare switched to this profile's model and mode, or None."""
        if not self.config.pool_switch_at_claim:
            return None
        candidates: list[tuple[int, int, Profile, dict[str, str]]] = []
        for other in self.profiles.values():
            if other is prof or other.family != prof.family or not other.ready:
                continue
            plan = switch_plan(other.options, prof.options)
            if plan:
                candidates.append((len(plan), -len(other.ready), other, plan))
        # Fewest switches first, then the sibling with the most spares.
        for _, _, other, plan in sorted(candidates, key=lambda c: c[:2]):
            spare = self._take_ready(other, now)
            if spare is None:
                continue
            self._hold(other, now)  # the sibling refills after the claimed first turn
            # Past two cold starts a switch is no longer cheaper than the spawn it replaces.
            timeout = max(1.0, 2 * other.sizer.cold_starts.tau)
            if await self._switch(spare, plan, timeout):
                return Placement(spare.process, spare.cli_session_id, "spare-switched")
            return None  # that spare is gone; the claim is a miss (a direct spawn)
        return None

    def _take_ready(self, prof: Profile, now: float) -> Spare | None:
        """The profile's next healthy ready spare (unhealthy ones met on the way are discarded)."""
        while prof.ready:
            spare = prof.ready.popleft()
            problem = self.problem(spare, now)
            if problem is None:
                return spare
            self.discard(spare, problem)
        return None

    async def _switch(self, spare: Spare, plan: dict[str, str], timeout: float) -> bool:
        """Switch a claimed spare; on any failure discard it (False)."""
        try:
            stray = await switch(spare.process, plan, timeout)
        except (AgentError, TimeoutError) as exc:
            reason = exc.message if isinstance(exc, AgentError) else f"timed out ({timeout:g}s)"
            log.warning("pool: switching a spare to %s failed: %s", plan, reason)
            self.discard(spare, "switch_failed")
            return False
        except asyncio.CancelledError:  # the claim was abandoned: nobody owns the spare now
            self.discard(spare, "switch_cancelled")
            raise
        if stray:
            log.warning("pool: a switched spare wrote %s", json.dumps(stray[0])[:200])
            self.discard(spare, "stray_output")
            return False
        return True

    def _hold(self, prof: Profile, now: float) -> None:
        """Hold the profile's refill until a turn that began after now ends (``turn_ended``).

        A later claim moves that point, never the deadline; the ``BURST``-th claim within one hold
        ends it instead: that is a burst, and the pool refills at once as it always did (the
        spawns of a burst compete for the CPU anyway).
        """
        prof.held_since = time.time()
        if now >= prof.held_until:
            prof.held_until, prof.held_claims = now + HOLD_S, 1
            return
        prof.held_claims += 1
        if prof.held_claims >= BURST:
            prof.held_until = 0.0

    def turn_ended(self, profile_key: str, began: float) -> None:
        """A turn of this profile that began (wall clock) at ``began`` ended: a replacement held
        back since before it began may start now (a turn older than the hold says nothing)."""
        prof = self.profiles.get(profile_key)
        if prof is not None and prof.held_until and began >= prof.held_since:
            prof.held_until = 0.0
            self._wake()

    def note_spawn(self, options: SessionOptions, seconds: float) -> None:
        """A direct spawn of this profile succeeded in ``seconds``."""
        prof = self.ensure_profile(options)
        prof.sizer.record_cold_start(seconds)
        self._succeeded(prof)

    # -- health and retirement -------------------------------------------------------------------

    def problem(self, spare: Spare, now: float) -> str | None:
        """Why this spare must not be handed out (None: it is fine)."""
        proc = spare.process
        if not proc.alive:
            return "died"
        if warmup.drain_benign(proc):
            return "stray_output"
        if now - spare.ready_at > self.config.pool_spare_max_age_s:
            return "max_age"
        return None

    def discard_broken(self, now: float) -> None:
        """Retire every ready spare with a problem."""
        for prof in self.profiles.values():
            for spare in list(prof.ready):
                problem = self.problem(spare, now)
                if problem is not None:
                    prof.ready.remove(spare)
                    self.discard(spare, problem)

    def discard(self, spare: Spare, reason: str) -> None:
        """Retire a spare (in the background), counted by reason."""
        self.retired[reason] += 1
        self._budget.forget(spare.process.pid)
        self._track(asyncio.create_task(spare.process.close(), name=f"retire-spare-{reason}"))

    def retire_tenant(self, tenant: str, reason: str) -> int:
        """Retire the ready spares of ``tenant``'s profiles and forget their demand (its set-up
        changed: they were spawned as another user, or with other secrets); how many."""
        retired = 0
        for prof in self.profiles.values():
            if prof.options.tenant != tenant:
                continue
            prof.floor, prof.floor_until = 0, 0.0
            prof.arrivals.clear()
            while prof.ready:
                self.discard(prof.ready.popleft(), reason)
                retired += 1
        return retired

    def retire_for_memory(self, over_mb: float) -> float:
        """Retire spares, the oldest of the profiles with the most first, until ``over_mb``
        is freed; returns what is still over."""
        est = self._budget.estimate_mb()
        while over_mb > 0:
            prof = max(self.profiles.values(), key=lambda p: len(p.ready), default=None)
            if prof is None or not prof.ready:
                break
            spare = prof.ready.popleft()
            over_mb -= self._budget.of(spare.process.pid, est)
            self.discard(spare, "memory_budget")
        return over_mb

    def take_all(self) -> list[Spare]:
        """Every ready spare, removed from the pool (shutdown)."""
        spares = [s for p in self.profiles.values() for s in p.ready]
        for p in self.profiles.values():
            p.ready.clear()
        return spares

    def _track(self, task: asyncio.Task[None]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- refill ----------------------------------------------------------------------------------

    def refill(self, prof: Profile, now: float) -> None:
        """Spawn this profile's deficit (within the limits), retire its surplus."""
        if now < prof.retry_at:
            return  # backing off after a failure (or failing, until the probe is due)
        target = self.target(prof, now)
        if now < prof.held_until:
            target = len(prof.ready) + prof.spawning  # held: no spawn, no retirement

        surplus = len(prof.ready) - target
        while surplus > 0 and prof.ready:
            self.discard(prof.ready.popleft(), "surplus")
            surplus -= 1
        deficit = target - len(prof.ready) - prof.spawning
        if prof.failing is not None:
            deficit = min(deficit, 1 - prof.spawning)  # one probe after the retry delay
        while (
            deficit > 0
            and self.spawning < self.config.max_concurrent_spawns
            and self._budget.room(self.spawning) > 0
            and self.bucket.try_take()
        ):
            self._start_spawn(prof)
            deficit -= 1

    def _start_spawn(self, prof: Profile) -> None:
        prof.spawning += 1
        self.spawning += 1
        self._track(self._ctx.spawn_task(self._spawn_spare(prof), name=f"spare-{prof.key}"))

    async def _spawn_spare(self, prof: Profile) -> None:
        began = time.monotonic()
        cli_id = str(uuid.uuid4())
        try:
            proc, report = await self._spawn_ready(prof, cli_id)
        except HotsessionError as exc:
            self._failed(prof, exc)
            return
        finally:
            prof.spawning -= 1
            self.spawning -= 1
            self._wake()
        self.spawned_total += 1
        prof.spawned += 1
        elapsed = time.monotonic() - began
        prof.sizer.record_cold_start(elapsed)
        self._succeeded(prof)
        spare = Spare(proc, cli_id, time.monotonic(), report)
        mem = sample(proc.pid, tree=False)
        if mem is not None:
            self._budget.note(proc.pid, mem.anon_mb)
        if self.stopping:
            await proc.close()
            return
        prof.ready.append(spare)

    async def _spawn_ready(self, prof: Profile, cli_id: str) -> tuple[AgentProcess, dict[str, Any]]:
        """Spawn a spare and warm it up (with its warm-up report); a spare that fails on the
        way is killed."""
        proc = await self._ctx.host.spawn(
            prof.options, role="spare", session_id=None, cli_session_id=cli_id
        )
        report: dict[str, Any] = {}
        try:
            if self.config.pool_deep_warmup:
                warmed = await warmup.deep_warm(proc, timeout=self.config.spawn_timeout_s)
                report = warmed.to_dict()
                if warmed.stray:
                    raise AgentProtocolError(
                        "the spare wrote unexpected output while idle: "
                        + json.dumps(warmed.stray[0])[:200]
                    )
            elif warmup.drain_benign(proc):
                raise AgentProtocolError("the spare wrote unexpected output while idle")
        except BaseException:
            proc.kill()
            raise
        return proc, report

    def _succeeded(self, prof: Profile) -> None:
        prof.failures = 0
        if prof.failing is not None:
            log.info("pool: profile %s works again", prof.key)
        prof.failing = None
        prof.retry_at = 0.0

    def _failed(self, prof: Profile, exc: HotsessionError) -> None:
        now = time.monotonic()
        prof.failures += 1
        prof.last_error = exc.message
        if prof.failures >= self.config.pool_failing_after:
            if prof.failing is None:
                log.warning("pool: profile %s is failing: %s", prof.key, exc.message)
            prof.failing = exc.message
            prof.retry_at = now + self.config.pool_failing_retry_s
        else:
            prof.retry_at = now + min(30.0, 0.5 * 2 ** (prof.failures - 1))
