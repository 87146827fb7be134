"""``hotsession bench --concurrency N``: follow-ups on N live sessions at once, against N bare CLIs.

The follow-up target (issue 4/5: within 2 ms of the floor, median) must also hold with many
sessions streaming at once. Two modes, each of N *slots*:

* ``bare CLI ×N (floor)`` — N live stream-json CLI processes driven directly over stdin by the
  bench (the floor at the same concurrency);
* ``hs follow-up ×N``      — N live hotsession sessions, each turn a ``POST …/turns`` whose SSE
  stream is read to its ``result``, as a client sees it.

A round fires one turn on every slot of a mode at once (``asyncio.gather``), then the other mode
(order shuffled per round, seeded); every turn is one sample, timed from its own send. Before an
``hs`` round the bench waits until the daemon spawns nothing. Samples carry their slot
(``extra["slot"]``) so ``paired_overhead`` pairs slot *i* of the daemon with slot *i* of the
floor in the same round. Both modes are driven from this one client process, so the client's own
cost of handling N streams at once lands on both sides alike.

A turn whose session was not hot (its process was evicted or recycled, ``source`` ≠ ``hot``)
is an error: it would measure a resume, not a follow-up. The daemon gets a memory budget large
enough for N sessions (``--memory-budget-mb``), so the pool does not evict them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

from hotsession import __version__
from hotsession.bench.daemon import Daemon
from hotsession.bench.environment import BenchEnv, BenchError
from hotsession.bench.memory import measure
from hotsession.bench.modes import BareCli
from hotsession.bench.runner import SAMPLE_TIMEOUT_S, RunResult, machine_info
from hotsession.bench.stats import Sample, match_model_requests

SETUP_BATCH = 4
"""Processes started at once during setup (a CLI start costs ~0.5 s of CPU on 2 cores)."""

Progress = Callable[[str, int], None]


class Slots:
    """A mode of N slots; ``sample_all`` runs one turn on every slot at once."""

    name: ClassVar[str] = ""
    group: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, env: BenchEnv, n: int) -> None:
        self.env = env
        self.n = n

    @property
    def label(self) -> str:
        """The mode's name in results (``×N`` filled in)."""
        return self.name.replace("×N", f"×{self.n}")

    async def setup(self, progress: Progress) -> None:
        """Start the N slots (untimed)."""

    async def prepare(self) -> None:
        """Untimed work before each round."""

    async def turn(self, slot: int, s: Sample, prompt: str) -> None:
        """One turn on one slot, stamping ``s``."""
        raise NotImplementedError

    async def teardown(self) -> None:
        """Stop what ``setup`` started."""

    async def roles(self) -> dict[str, list[int]]:
        """CLI pids by memory role."""
        return {}


async def _batched(jobs: Sequence[Callable[[], Awaitable[None]]], progress: Progress) -> None:
    for i in range(0, len(jobs), SETUP_BATCH):
        await asyncio.gather(*(job() for job in jobs[i : i + SETUP_BATCH]))
        progress("setting up", len(jobs[i : i + SETUP_BATCH]))


class BareCliSlots(Slots):
    """N live CLI processes over stdin."""

    name = "bare CLI ×N (floor)"
    group = "floor"
    description = "N live stream-json CLI processes over stdin at once (no hotsession)"

    def __init__(self, env: BenchEnv, n: int) -> None:
        super().__init__(env, n)
        self.clis = [BareCli(env) for _ in range(n)]

    async def setup(self, progress: Progress) -> None:
        """Spawn, initialize and warm every process (in small batches)."""
        await _batched([cli.setup for cli in self.clis], progress)

    async def turn(self, slot: int, s: Sample, prompt: str) -> None:
        """Write the prompt to that slot's stdin and read to its result."""
        await self.clis[slot].sample(s, prompt)

    async def teardown(self) -> None:
        """Close every process."""
        await asyncio.gather(*(cli.teardown() for cli in self.clis), return_exceptions=True)

    async def roles(self) -> dict[str, list[int]]:
        """The live processes."""
        return {"bare CLI": [pid for cli in self.clis for pid in cli.pids().values()]}


class HsFollowUpSlots(Slots):
    """N live hotsession sessions, driven through the HTTP API."""

    name = "hs follow-up ×N"
    group = "hotsession"
    description = "N live hotsession sessions, a follow-up on each at once (HTTP + SSE)"

    def __init__(self, env: BenchEnv, n: int, daemon: Daemon) -> None:
        super().__init__(env, n)
        self.d = daemon
        self.ids: list[str] = []

    async def setup(self, progress: Progress) -> None:
        """Open N sessions, each with one untimed turn."""
        self.ids = [""] * self.n

        def opener(slot: int) -> Callable[[], Awaitable[None]]:
            async def open_one() -> None:
                body = {"cwd": str(self.env.workdir), "permission_mode": self.env.permission_mode}
                created = await self.d.json("POST", "/v1/sessions", body)
                self.ids[slot] = str(created["id"])
                warm = Sample(self.label, -1, "setup", 0.0)
                await self.d.stream(
                    f"/v1/sessions/{self.ids[slot]}/turns", {"prompt": "[[say:setup]]"}, warm
                )
                if warm.error:
                    raise BenchError(f"{self.label}: setup turn failed: {warm.error}")

            return open_one

        await _batched([opener(i) for i in range(self.n)], progress)

    async def prepare(self) -> None:
        """Quiet daemon (no spare being spawned)."""
        await self.d.wait_quiet()

    async def turn(self, slot: int, s: Sample, prompt: str) -> None:
        """``POST …/turns`` on that slot's session, read to the result."""
        await self.d.stream(f"/v1/sessions/{self.ids[slot]}/turns", {"prompt": prompt}, s)
        source = s.extra.get("source")
        if s.error is None and source not in (None, "hot"):
            s.error = f"not a follow-up on a live process (source {source!r})"

    async def teardown(self) -> None:
        """Close the sessions."""
        await asyncio.gather(*(self.d.close_session(sid) for sid in self.ids if sid))

    async def roles(self) -> dict[str, list[int]]:
        """The daemon's CLI processes (live sessions, idle spares)."""
        return await self.d.memory_roles()


async def _round(mode: Slots, round_no: int) -> list[Sample]:
    samples = []
    for slot in range(mode.n):
        marker = uuid.uuid4().hex[:12]
        s = Sample(mode.label, round_no, marker, time.monotonic())
        s.extra["slot"] = slot
        samples.append(s)

    async def one(s: Sample) -> None:
        prompt = f"bench {mode.label} round {round_no} slot {s.extra['slot']} [[marker:{s.marker}]]"
        try:
            await asyncio.wait_for(mode.turn(s.extra["slot"], s, prompt), SAMPLE_TIMEOUT_S)
            if s.t_result is None and s.error is None:
                s.error = "no result"
        except Exception as exc:  # a failed turn is counted as an error, not a crash
            s.error = f"{type(exc).__name__}: {exc}"[:500]

    await asyncio.wait_for(mode.prepare(), SAMPLE_TIMEOUT_S)
    await asyncio.gather(*(one(s) for s in samples))
    return samples


def setup_steps(n: int) -> int:
    """Progress steps of the setup of both modes."""
    return 2 * n


async def run_concurrency(
    env: BenchEnv,
    *,
    n: int,
    rounds: int,
    warmup: int,
    progress: Progress | None = None,
    memory_budget_mb: float | None = None,
    seed: int = 1,
) -> RunResult:
    """The whole concurrency run; everything started is stopped."""
    progress = progress or (lambda _d, _a: None)
    started = time.time()
    machine = machine_info()
    # Room for N sessions plus spares, so the pool never evicts one of the measured sessions.
    budget = memory_budget_mb if memory_budget_mb is not None else max(4000.0, 400.0 * n)
    daemon = Daemon(env, extra_args=("--memory-budget-mb", f"{budget:g}"))
    await daemon.start()
    modes: list[Slots] = [BareCliSlots(env, n), HsFollowUpSlots(env, n, daemon)]
    rng = random.Random(seed)
    samples: list[Sample] = []
    memory: dict[str, Any] = {}
    set_up: list[Slots] = []
    try:
        for mode in modes:
            set_up.append(mode)
            await mode.setup(progress)
        for w in range(warmup):
            for mode in modes:
                progress(f"warm-up {w + 1}: {mode.label}", 0)
                await _round(mode, -1 - w)
                progress(f"warm-up {w + 1}: {mode.label}", 1)
        for r in range(rounds):
            order = list(modes)
            rng.shuffle(order)
            for mode in order:
                progress(f"round {r + 1}/{rounds}: {mode.label}", 0)
                samples.extend(await _round(mode, r))
                progress(f"round {r + 1}/{rounds}: {mode.label}", 1)
        progress("measuring memory", 0)
        by_role: dict[str, list[int]] = {}
        for mode in modes:
            for role, pids in (await mode.roles()).items():
                by_role.setdefault(role, []).extend(pids)
        memory = await asyncio.to_thread(measure, by_role)
        pool = await daemon.pool()
    finally:
        for mode in reversed(set_up):
            try:
                await asyncio.wait_for(mode.teardown(), 120)
            except Exception as exc:  # teardown trouble must not hide the results
                memory.setdefault("teardown_errors", []).append(f"{mode.label}: {exc}")
        await daemon.stop()
    match_model_requests(samples, await asyncio.to_thread(env.model_log))
    meta = {
        "date": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "hotsession": __version__,
        "cli": {"path": env.cli_path, "version": env.cli_version},
        "concurrency": n,
        "rounds": rounds,
        "warmup": warmup,
        "order": "per round, all N slots of one mode at once, modes shuffled (seeded)",
        "permission_mode": env.permission_mode,
        "memory_budget_mb": budget,
        "machine": machine,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    return RunResult(
        kind="concurrency",
        samples=samples,
        meta=meta,
        memory=memory,
        load={
            "concurrency": n,
            "evictions": pool.get("evictions"),
            "recycles": pool.get("recycles"),
        },
        descriptions={m.label: m.description.replace("N ", f"{n} ", 1) for m in modes},
        groups={m.label: m.group for m in modes},
    )
