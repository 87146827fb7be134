"""The warm pool: spare processes per profile, memory budget, eviction and recycling.

Design
======
Profiles. A profile is everything fixed at spawn (``SessionOptions.profile_key()``: tenant, cwd,
model, permission mode, tools, prompts, settings, MCP, env). Each profile in use keeps a queue of
*ready* spares: processes spawned with a pre-generated CLI session id, initialized and deep-warmed
(``hotsession.warmup``). A spare belongs to one profile (so one tenant) for its whole life.

Claim. ``claim(options)`` (called by ``LocalHost.start_new``) pops the oldest ready spare of the
profile, checks it (alive, no stray output, not older than ``pool_spare_max_age_s``) and hands
it out; the session adopts its CLI session id. A miss returns None and the host spawns directly:
a request never fails because the pool is empty. Either way the control loop is woken at once and
orders the replacement.

Switching at claim time (``pool_switch_at_claim``). With no ready spare of its own, a claim may
take one of a *sibling* profile (equal in everything but ``model`` and ``permission_mode``, so the
same tenant, cwd, tools, prompts, settings, MCP and env) and switch it with the control requests
``set_permission_mode`` and ``set_model`` (15-60 ms, against a cold start of 0.3-0.5 s). It counts
as a hit of the requested profile (``switched`` in its stats; source ``spare-switched``); the
sibling refills as usual, and the requested profile's own arrival still sizes its own spares. Only
the modes in ``SWITCHABLE_MODES`` take part: ``bypassPermissions`` never (the CLI grants it only at
launch, and it is a safety boundary), ``plan`` and ``auto`` not (not verified); an unset mode or
model is only ever a source, never a target (its effective value comes from the settings). A switch
that fails or takes longer than two cold starts discards that spare and the claim is a miss (a
direct spawn). The session's options stay the requested ones, so every later spawn (recycle,
resume) uses the requested model and mode.

Control loop (one task, every ``pool_tick_s`` or when woken):

1. sample memory (``RssAnon`` of each process and its children, one ``/proc`` pass for all);
2. discard broken spares (died, stray output, too old);
3. keep the budget: over it, retire spares first (cheap to re-create), then evict the least
   recently used idle sessions (their next turn resumes);
4. evict live sessions idle beyond ``keep_alive_s``, and resume-ahead processes left unused;
5. per profile, the target S from ``hotsession.sizing`` (base stock on λ̂τ, held for the
   keep-alive, clamped to the profile's min/max, the ``prewarm`` floor and the room the memory
   budget leaves); spawn the deficit through a token bucket and at most
   ``max_concurrent_spawns`` at once; retire the surplus.

Failing profiles. Consecutive spawn failures back off exponentially; after
``pool_failing_after`` of them the profile is *failing*: no more spawns, the reason shows in the
stats, and ``claim`` raises ``ProfileFailing`` so requests get that error instead of a spawn each.
After ``pool_failing_retry_s`` one probe is allowed (a claim falls through to a direct spawn and
the loop tries one spare); any successful spawn of the profile clears the state.

Recycling (``after_turn``, at the turn boundary, before the next queued prompt runs): a process
over ``agent_max_turns``, ``agent_max_age_s`` (both with up to ``agent_recycle_jitter`` of random
extra per process, so a fleet does not recycle in lockstep) or ``agent_memory_cap_mb`` (its own
anonymous memory, tool children included) is replaced: the ``--resume`` replacement is started
first, then swapped in (``Session.replace_process``) and the old process retired. If the
replacement cannot start, the old process keeps serving.

Memory budget. ``memory_budget_mb``, or ``memory_budget_fraction`` of the memory available when
the pool starts. Spares are only spawned while the sampled total plus the in-flight spawns (each
counted at the current per-process estimate) leaves room for one more, so spares alone never
push the total over the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import statistics
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hotsession import warmup
from hotsession.errors import AgentError, AgentProtocolError, HotsessionError, ProfileFailing
from hotsession.host import Placement
from hotsession.memory import available_mb, sample, sample_many
from hotsession.options import SessionOptions
from hotsession.sizing import ProfileSizer, TokenBucket, clamp_target

if TYPE_CHECKING:
    from hotsession.agent import AgentProcess
    from hotsession.hub import Hotsession
    from hotsession.session import Session

log = logging.getLogger(__name__)

DEFAULT_PROCESS_MB = 150.0  # per-process estimate until something was measured
_MEMORY_SAMPLE_S = 2.0

# Permission modes a spare may be switched between at claim time (verified with CLI 2.1.330:
# the next tool call follows the new mode). Never bypassPermissions; plan and auto not verified.
SWITCHABLE_MODES = frozenset({"default", "acceptEdits", "dontAsk"})
# What the CLI writes after a permission-mode switch (besides the idle spare's usual frames).
_SWITCH_OUTPUT = warmup.BENIGN_IDLE | {("system", "status")}


@dataclass
class Spare:
    """A ready, idle process of one profile."""

    process: AgentProcess
    cli_session_id: str
    ready_at: float
    cold_start_s: float
    warmup: dict[str, Any] = field(default_factory=dict)


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


class Pool:
    """Warm spares per profile plus the memory, eviction and recycling policy of the host."""

    def __init__(self, hub: Hotsession) -> None:
        self.hub = hub
        cfg = hub.config
        self.config = cfg
        self.profiles: dict[str, Profile] = {}
        self.budget_mb = float(
            cfg.memory_budget_mb
            if cfg.memory_budget_mb is not None
            else cfg.memory_budget_fraction * available_mb()
        )
        self.bucket = TokenBucket(cfg.pool_refill_per_s, max(1, cfg.max_concurrent_spawns))
        self.spawned_total = 0
        self.spares_retired: Counter[str] = Counter()
        self.recycle_failures = 0
        self._spawning = 0
        self._memory: dict[int, float] = {}
        self._sampled_at = 0.0
        self._limits: dict[int, tuple[float | None, float | None]] = {}
        self._busy_sessions: set[str] = set()
        self._spawn_tasks: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[Any] | None = None
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the control loop (on the hub's loop)."""
        self._wake = asyncio.Event()
        self._task = self.hub.spawn_task(self._run(), name="pool-control")

    async def stop(self) -> None:
        """Stop spawning, end every spare (sessions' processes are the hub's to end)."""
        self._stopping = True
        tasks = [t for t in (self._task, *self._spawn_tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        spares = [s for p in self.profiles.values() for s in p.ready]
        for p in self.profiles.values():
            p.ready.clear()
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
        self.wake()

    def target(self, prof: Profile, now: float | None = None) -> int:
        """How many spares (ready + spawning) this profile should have now."""
        now = time.monotonic() if now is None else now
        prof.sizer.keep_alive_s = self.config.keep_alive_s  # live tuning applies at once
        floor = prof.floor if now < prof.floor_until else 0
        have = len(prof.ready) + prof.spawning
        return clamp_target(
            prof.sizer.target(now),
            minimum=max(prof.minimum, floor),
            maximum=prof.maximum,
            room=have + self._room(),
        )

    # -- claim (SpareProvider) -------------------------------------------------------------------

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
            self.wake()

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
            self.wake()  # the sibling refills at once
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
            problem = self._spare_problem(spare, now)
            if problem is None:
                return spare
            self._discard(spare, problem)
        return None

    async def _switch(self, spare: Spare, plan: dict[str, str], timeout: float) -> bool:
        """Send the switch requests to a claimed spare; on any failure discard it (False)."""
        proc = spare.process
        output: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(timeout):
                mode = plan.get("permission_mode")
                if mode is not None:
                    await proc.request("set_permission_mode", timeout=timeout, mode=mode)
                if "model" in plan:
                    await proc.request("set_model", timeout=timeout, model=plan["model"])
                output += _drain(proc)
                if mode is not None and not any(_is_status(m) for m in output):
                    # The CLI writes system/status right after answering set_permission_mode;
                    # the answer to a later request comes after it, so the first turn's events
                    # do not start with it.
                    await proc.request("mcp_status", timeout=timeout)
                    output += _drain(proc)
        except (AgentError, TimeoutError) as exc:
            reason = exc.message if isinstance(exc, AgentError) else f"timed out ({timeout:g}s)"
            log.warning("pool: switching a spare to %s failed: %s", plan, reason)
            self._discard(spare, "switch_failed")
            return False
        except asyncio.CancelledError:  # the claim was abandoned: nobody owns the spare now
            self._discard(spare, "switch_cancelled")
            raise
        stray = [m for m in output if (m.get("type"), m.get("subtype")) not in _SWITCH_OUTPUT]
        if stray:
            log.warning("pool: a switched spare wrote %s", json.dumps(stray[0])[:200])
            self._discard(spare, "stray_output")
            return False
        return True

    def note_spawn(self, options: SessionOptions, seconds: float) -> None:
        """A direct spawn of this profile succeeded in ``seconds``."""
        prof = self.ensure_profile(options)
        prof.sizer.record_cold_start(seconds)
        self._succeeded(prof)

    # -- spares ----------------------------------------------------------------------------------

    def _spare_problem(self, spare: Spare, now: float) -> str | None:
        proc = spare.process
        if not proc.alive:
            return "died"
        if warmup.drain_benign(proc):
            return "stray_output"
        if now - spare.ready_at > self.config.pool_spare_max_age_s:
            return "max_age"
        return None

    def _discard(self, spare: Spare, reason: str) -> None:
        self.spares_retired[reason] += 1
        self._memory.pop(spare.process.pid, None)
        task = asyncio.create_task(spare.process.close(), name=f"retire-spare-{reason}")
        self._spawn_tasks.add(task)
        task.add_done_callback(self._spawn_tasks.discard)

    def _start_spawn(self, prof: Profile) -> None:
        prof.spawning += 1
        self._spawning += 1
        task = self.hub.spawn_task(self._spawn_spare(prof), name=f"spare-{prof.key}")
        self._spawn_tasks.add(task)
        task.add_done_callback(self._spawn_tasks.discard)

    async def _spawn_spare(self, prof: Profile) -> None:
        began = time.monotonic()
        cli_id = str(uuid.uuid4())
        proc: AgentProcess | None = None
        try:
            proc = await self.hub.host.spawn(
                prof.options, role="spare", session_id=None, cli_session_id=cli_id
            )
            report: dict[str, Any] = {}
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
        except HotsessionError as exc:
            if proc is not None:
                proc.kill()
            self._failed(prof, exc)
            return
        except BaseException:
            if proc is not None:
                proc.kill()
            raise
        finally:
            prof.spawning -= 1
            self._spawning -= 1
            self.wake()
        self.spawned_total += 1
        prof.spawned += 1
        elapsed = time.monotonic() - began
        prof.sizer.record_cold_start(elapsed)
        self._succeeded(prof)
        spare = Spare(proc, cli_id, time.monotonic(), elapsed, report)
        mem = sample(proc.pid, tree=False)
        if mem is not None:
            self._memory[proc.pid] = mem.anon_mb
        if self._stopping:
            await proc.close()
            return
        prof.ready.append(spare)

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

    # -- memory ----------------------------------------------------------------------------------

    def _estimate_mb(self) -> float:
        spare_pids = [s.process.pid for p in self.profiles.values() for s in p.ready]
        values = [self._memory[pid] for pid in spare_pids if pid in self._memory]
        if not values:
            values = list(self._memory.values())
        return max(1.0, statistics.median(values)) if values else DEFAULT_PROCESS_MB

    def used_mb(self, *, measured_only: bool = False) -> float:
        """Sampled memory of every child process (unsampled ones at the estimate).

        Admission counts a process not sampled yet at the estimate (cautious); eviction acts on
        measurements only (``measured_only``), so a guess never ends a session.
        """
        est = 0.0 if measured_only else self._estimate_mb()
        return sum(self._memory.get(pid, est) for pid in self.hub.supervisor.children)

    def _spares_mb(self) -> float:
        est = self._estimate_mb()
        return sum(
            self._memory.get(s.process.pid, est) for p in self.profiles.values() for s in p.ready
        )

    def _room(self) -> int:
        """How many more processes fit in the budget (in-flight spawns counted)."""
        est = self._estimate_mb()
        free = self.budget_mb - self.used_mb() - self._spawning * est
        return max(0, int(free // est))

    async def _sample_memory(self, now: float) -> None:
        if now - self._sampled_at < _MEMORY_SAMPLE_S:
            return
        self._sampled_at = now
        pids = list(self.hub.supervisor.children)
        samples = await asyncio.to_thread(sample_many, pids)
        self._memory = {pid: m.anon_mb for pid, m in samples.items()}

    # -- the control loop ------------------------------------------------------------------------

    async def tick(self) -> None:
        """One pass of the control loop."""
        if self._stopping or self.hub.shutting_down:
            return
        now = time.monotonic()
        await self._sample_memory(now)
        for prof in self.profiles.values():
            for spare in list(prof.ready):
                problem = self._spare_problem(spare, now)
                if problem is not None:
                    prof.ready.remove(spare)
                    self._discard(spare, problem)
        self._keep_budget()
        self._evict_idle(now)
        for prof in self.profiles.values():
            self._refill(prof, now)

    def _refill(self, prof: Profile, now: float) -> None:
        if prof.failing is not None and now < prof.retry_at:
            return
        if now < prof.retry_at:
            return  # backing off after a failure
        target = self.target(prof, now)
        surplus = len(prof.ready) - target
        while surplus > 0 and prof.ready:
            self._discard(prof.ready.popleft(), "surplus")
            surplus -= 1
        deficit = target - len(prof.ready) - prof.spawning
        if prof.failing is not None:
            deficit = min(deficit, 1 - prof.spawning)  # one probe after the retry delay
        while (
            deficit > 0
            and self._spawning < self.config.max_concurrent_spawns
            and self._room() > 0
            and self.bucket.try_take()
        ):
            self._start_spawn(prof)
            deficit -= 1

    def _keep_budget(self) -> None:
        over = self.used_mb(measured_only=True) - self.budget_mb
        if over <= 0:
            return
        est = self._estimate_mb()
        # Spares first: the oldest of the profiles with the most spares.
        while over > 0:
            prof = max(self.profiles.values(), key=lambda p: len(p.ready), default=None)
            if prof is None or not prof.ready:
                break
            spare = prof.ready.popleft()
            over -= self._memory.get(spare.process.pid, est)
            self._discard(spare, "memory_budget")
        if over <= 0:
            return
        for session in sorted(self._idle_sessions(), key=_last_active):
            if over <= 0:
                break
            proc = session.process
            if proc is None:
                continue
            over -= self._memory.get(proc.pid, est)
            self._evict(session, "memory_budget")

    def _idle_sessions(self) -> list[Session]:
        return [
            s
            for s in self.hub.sessions.values()
            if s.process is not None
            and s.state == "idle"
            and s.current is None
            and not s.queued
            and s.id not in self._busy_sessions
        ]

    def _evict_idle(self, now: float) -> None:
        keep_alive = self.config.keep_alive_s
        wall = time.time()
        for session in self._idle_sessions():
            if wall - _last_active(session) > keep_alive:
                self._evict(session, "keep_alive")
        # Resume-ahead processes nobody used within the keep-alive.
        for session in list(self.hub.sessions.values()):
            warming = getattr(session, "_warming", None)
            if (
                warming is not None
                and warming.done()
                and not warming.cancelled()
                and warming.exception() is None
                and session.current is None
                and wall - _last_active(session) > keep_alive
            ):
                session._warming = None
                placement: Placement = warming.result()
                self.hub._count_eviction("warm_unused")
                self.hub.spawn_task(self.hub.host.retire(placement), name="retire-warm")

    def _evict(self, session: Session, reason: str) -> None:
        self._busy_sessions.add(session.id)

        async def run() -> None:
            try:
                await session.evict(reason)
            finally:
                self._busy_sessions.discard(session.id)

        self.hub.spawn_task(run(), name=f"evict-{session.id}")

    # -- recycling -------------------------------------------------------------------------------

    def _limits_for(self, proc: AgentProcess) -> tuple[float | None, float | None]:
        limits = self._limits.get(proc.pid)
        if limits is None:
            cfg = self.config
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
            if len(self._limits) > 4 * max(16, len(self.hub.supervisor.children)):
                live = set(self.hub.supervisor.children)
                self._limits = {k: v for k, v in self._limits.items() if k in live}
        return limits

    def recycle_reason(self, proc: AgentProcess) -> str | None:
        """Why this process should be replaced at its turn boundary (None: keep it)."""
        max_turns, max_age = self._limits_for(proc)
        if max_turns is not None and proc.turns >= max_turns:
            return "max_turns"
        if max_age is not None and time.monotonic() - proc.started_mono >= max_age:
            return "max_age"
        cap = self.config.agent_memory_cap_mb
        if cap is not None:
            mem = sample(proc.pid, tree=True)
            if mem is not None:
                self._memory[proc.pid] = mem.anon_mb
                if mem.anon_mb > cap:
                    return "memory"
        return None

    async def after_turn(self, session: Session) -> None:
        """Turn boundary: recycle the session's process if it is over a limit."""
        proc = session.process
        if proc is None or session.closed or self._stopping or self.hub.shutting_down:
            return
        reason = self.recycle_reason(proc)
        if reason is None:
            return
        await self.recycle(session, reason)

    async def recycle(self, session: Session, reason: str) -> bool:
        """Start the ``--resume`` replacement, then swap it in and retire the old process."""
        self._busy_sessions.add(session.id)
        try:
            try:
                proc = await self.hub.host.spawn(
                    session.options,
                    role="session",
                    session_id=session.id,
                    cli_session_id=session.cli_session_id,
                    resume=True,
                )
            except HotsessionError as exc:
                self.recycle_failures += 1
                log.warning("pool: cannot recycle %s (%s): %s", session.id, reason, exc.message)
                return False
            if session.closed or self.hub.shutting_down:
                await proc.close()
                return False
            old = session.process
            await session.replace_process(Placement(proc, session.cli_session_id, "resume"))
            if old is not None:
                self._memory.pop(old.pid, None)
                self._limits.pop(old.pid, None)
            self.hub.recycles[reason] += 1
            return True
        finally:
            self._busy_sessions.discard(session.id)

    # -- stats -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Per-profile and global counters (the API and the dashboard read these)."""
        est = self._estimate_mb()
        live: Counter[str] = Counter()
        live_mb: dict[str, float] = {}
        for s in self.hub.sessions.values():
            proc = s.process
            if proc is not None:
                live[s.record.profile_key] += 1
                key = s.record.profile_key
                live_mb[key] = live_mb.get(key, 0.0) + self._memory.get(proc.pid, est)
        now = time.monotonic()
        profiles = []
        for prof in self.profiles.values():
            opts = prof.options
            asked = prof.hits + prof.misses
            spares_mb = sum(self._memory.get(s.process.pid, est) for s in prof.ready)
            profiles.append(
                {
                    "profile": prof.key,
                    "tenant": opts.tenant,
                    "cwd": opts.cwd,
                    "model": opts.model,
                    "permission_mode": opts.permission_mode,
                    "ready": len(prof.ready),
                    "spawning": prof.spawning,
                    "live_sessions": live[prof.key],
                    "hits": prof.hits,
                    "misses": prof.misses,
                    "hit_rate": round(prof.hits / asked, 4) if asked else None,
                    "lambda_per_s": round(prof.sizer.arrivals.rate(now), 4),
                    "tau_s": _round(prof.sizer.cold_starts.measured),
                    "target": self.target(prof, now),
                    "min": prof.minimum,
                    "max": prof.maximum,
                    "memory_mb": round(spares_mb + live_mb.get(prof.key, 0.0), 1),
                    "failing": prof.failing,
                    "last_error": prof.last_error,
                    "spawned": prof.spawned,
                    "switched": prof.switched,
                }
            )
        used = self.used_mb()
        spares = self._spares_mb()
        return {
            "profiles": profiles,
            "memory": {
                "used_mb": round(used, 1),
                "budget_mb": round(self.budget_mb, 1),
                "spares_mb": round(spares, 1),
                "sessions_mb": round(max(0.0, used - spares), 1),
                "per_process_estimate_mb": round(est, 1),
            },
            "evictions": dict(self.hub.evictions),
            "recycles": dict(self.hub.recycles),
            "spares_retired": dict(self.spares_retired),
            "recycle_failures": self.recycle_failures,
            "spawned_total": self.spawned_total,
        }


def switch_plan(have: SessionOptions, want: SessionOptions) -> dict[str, str] | None:
    """The switches that make a spare of ``have`` serve ``want`` (None: it cannot).

    ``have`` and ``want`` must be equal but for ``model`` and ``permission_mode``. Both modes must
    be unset or in ``SWITCHABLE_MODES``; a mode switch needs both set, a model switch a model to
    switch to (an unset one means "whatever the settings say", which no request can name).
    """
    if have.replace(model=None, permission_mode=None) != want.replace(
        model=None, permission_mode=None
    ):
        return None
    modes = (have.permission_mode, want.permission_mode)
    if any(m is not None and m not in SWITCHABLE_MODES for m in modes):
        return None
    plan: dict[str, str] = {}
    if have.permission_mode != want.permission_mode:
        if have.permission_mode is None or want.permission_mode is None:
            return None
        plan["permission_mode"] = want.permission_mode
    if have.model != want.model:
        if want.model is None:
            return None
        plan["model"] = want.model
    return plan


def _drain(proc: AgentProcess) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with contextlib.suppress(asyncio.QueueEmpty):
        while True:
            out.append(proc.messages.get_nowait())
    return out


def _is_status(msg: dict[str, Any]) -> bool:
    return msg.get("type") == "system" and msg.get("subtype") == "status"


def _last_active(session: Session) -> float:
    rec = session.record
    return max(rec.last_active_at or 0.0, rec.created_at or 0.0)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
