"""``hotsession bench --load``: Poisson arrivals of new sessions and follow-ups, through HTTP.

Arrivals follow a Poisson process of ``rate`` per second for ``duration`` seconds (a seeded
schedule, so runs are comparable). Each arrival is a new session (``POST /v1/sessions`` and its
first turn) with probability ``new_fraction``, else a follow-up on a random open session that is
not mid-turn (a new session when every one is busy). Arrivals do not wait for each other: load is
open-loop, as real users are. Memory of the daemon's CLI processes (sum of PSS) is sampled every
second for the peak, and the pool's spares (ready, spawning, their memory) for ``spares_over_time``.
With ``one_off_fraction`` that share of the new sessions opens a profile never seen before (a
directory opened once): the pool must keep no spare for those. At the end ``GET /v1/pool`` gives
hits and misses, evictions and recycles.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from typing import Any

from rich.console import Console

from hotsession.bench.daemon import Daemon, pool_counts
from hotsession.bench.environment import BenchEnv
from hotsession.bench.memory import measure
from hotsession.bench.runner import RunResult, machine_info
from hotsession.bench.stats import Sample, match_model_requests, poisson_arrivals

TARGET_HIT_RATE = 0.99  # Config.pool_target_miss defaults to 1 %


def _find(obj: Any, key: str) -> Any:
    """The first value of ``key`` anywhere in a JSON document (None when absent)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            found = _find(v, key)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for v in obj:
            found = _find(v, key)
            if found is not None:
                return found
    return None


def _hit_rate(pool: dict[str, Any], before: dict[str, Any] | None = None) -> float | None:
    """Hits / claims since ``before`` (the priming session's miss does not count)."""
    hits = _find(pool, "hits")
    misses = _find(pool, "misses")
    if before is not None:
        h0, m0 = _find(before, "hits"), _find(before, "misses")
        if isinstance(hits, int) and isinstance(h0, int):
            hits -= h0
        if isinstance(misses, int) and isinstance(m0, int):
            misses -= m0
    if isinstance(hits, int) and isinstance(misses, int) and hits + misses > 0:
        return hits / (hits + misses)
    return None


class _Load:
    def __init__(
        self,
        daemon: Daemon,
        env: BenchEnv,
        new_fraction: float,
        seed: int,
        one_off_fraction: float = 0.0,
    ) -> None:
        self.d = daemon
        self.env = env
        self.new_fraction = new_fraction
        self.one_off_fraction = one_off_fraction
        self.spares_over_time: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.rng = random.Random(seed)
        self.samples: list[Sample] = []
        self.sessions: dict[str, bool] = {}  # id -> busy
        self.peak_pss_mb = 0.0
        self.peak_processes = 0
        self.opened_from: dict[str, int] = {}

    def profile(self, one_off: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cwd": str(self.env.workdir),
            "permission_mode": self.env.permission_mode,
        }
        if one_off:  # a profile nobody opens again
            out["append_system_prompt"] = f"one-off {uuid.uuid4().hex[:8]}"
        return out

    async def arrival(self, index: int) -> None:
        idle = [sid for sid, busy in self.sessions.items() if not busy]
        new = index < 0 or not idle or self.rng.random() < self.new_fraction
        marker = uuid.uuid4().hex[:12]
        prompt = f"load {index} [[marker:{marker}]]"
        s = Sample("load new session" if new else "load follow-up", index, marker, 0.0)
        sid: str | None = None
        try:
            if new:
                t0 = time.monotonic()
                one_off = index >= 0 and self.rng.random() < self.one_off_fraction
                s.extra["one_off"] = one_off
                created = await self.d.json("POST", "/v1/sessions", self.profile(one_off))
                sid = str(created["id"])
                source = str(created.get("source") or created.get("open_source") or "unknown")
                self.opened_from[source] = self.opened_from.get(source, 0) + 1
                s.extra["open_source"] = source
                self.sessions[sid] = True
                await self.d.stream(f"/v1/sessions/{sid}/turns", {"prompt": prompt}, s)
                s.t_send = t0
            else:
                sid = self.rng.choice(idle)
                self.sessions[sid] = True
                await self.d.stream(f"/v1/sessions/{sid}/turns", {"prompt": prompt}, s)
        except Exception as exc:  # counted: errors must be zero
            s.error = f"{type(exc).__name__}: {exc}"[:500]
            if s.t_send == 0.0:
                s.t_send = time.monotonic()
        finally:
            if sid is not None:
                self.sessions[sid] = False
        self.samples.append(s)

    async def sample_memory(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            pids = self.d.cli_pids()
            mem = await asyncio.to_thread(measure, {"all": pids})
            total = (mem["roles"].get("all") or {}).get("pss_sum", 0.0)
            self.peak_pss_mb = max(self.peak_pss_mb, float(total))
            self.peak_processes = max(self.peak_processes, len(pids))
            with contextlib.suppress(Exception):  # a figure, never a reason to fail the run
                pool = await self.d.pool()
                ready, spawning = pool_counts(pool)
                self.spares_over_time.append(
                    {
                        "t_s": round(time.monotonic() - self.t0, 1),
                        "ready": ready,
                        "spawning": spawning,
                        "spares_mb": (pool.get("memory") or {}).get("spares_mb"),
                        "profiles_with_spares": sum(
                            1 for p in pool.get("profiles") or [] if p.get("ready")
                        ),
                    }
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


async def run_load(
    env: BenchEnv,
    *,
    rate: float,
    duration: float,
    new_fraction: float,
    memory_budget_mb: float | None,
    console: Console,
    seed: int = 1,
    one_off_fraction: float = 0.0,
) -> RunResult:
    """The load run; returns samples plus the pool's account of it."""
    extra: tuple[str, ...] = ()
    if memory_budget_mb is not None:
        extra += ("--memory-budget-mb", f"{memory_budget_mb:g}")
    daemon = Daemon(env, extra_args=extra)
    started = time.time()
    machine = machine_info()
    console.print("starting hotsession serve …")
    await daemon.start()
    load = _Load(daemon, env, new_fraction, seed, one_off_fraction)
    stop = asyncio.Event()
    sampler = asyncio.create_task(load.sample_memory(stop))
    try:
        # Two sessions first, so the profile's demand repeats and the pool fills it.
        await load.arrival(-2)
        await load.arrival(-1)
        load.samples.clear()
        load.opened_from.clear()
        await daemon.wait_spare(timeout=30)
        pool_before = await daemon.pool()
        schedule = poisson_arrivals(rate, duration, load.rng)
        console.print(f"load: {len(schedule)} arrivals over {duration:g}s at {rate:g}/s")
        t0 = time.monotonic()
        tasks = []
        for i, offset in enumerate(schedule):
            delay = t0 + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(load.arrival(i)))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
        pool = await daemon.pool()
    finally:
        stop.set()
        await sampler
        await daemon.stop()
    match_model_requests(load.samples, await asyncio.to_thread(env.model_log))
    ready, _ = pool_counts(pool)
    errors = sum(1 for s in load.samples if not s.ok)
    hit_rate = _hit_rate(pool, pool_before)
    report = {
        "rate_per_s": rate,
        "duration_s": duration,
        "new_fraction": new_fraction,
        "one_off_fraction": one_off_fraction,
        "memory_budget_mb": memory_budget_mb,
        "arrivals": len(load.samples),
        "errors": errors,
        "pool_hit_rate": hit_rate,
        "pool_hit_rate_target": TARGET_HIT_RATE,
        "opened_from": load.opened_from,
        "peak_pss_mb": round(load.peak_pss_mb, 1),
        "peak_cli_processes": load.peak_processes,
        "spares_ready_at_end": ready,
        "spares_over_time": load.spares_over_time,
        "evictions": _find(pool, "evictions"),
        "recycles": _find(pool, "recycles"),
        "pool": pool,
    }
    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "cli": {"path": env.cli_path, "version": env.cli_version},
        "permission_mode": env.permission_mode,
        "machine": machine,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    return RunResult(
        kind="load",
        samples=load.samples,
        meta=meta,
        load=report,
        descriptions={
            "load new session": "POST /v1/sessions + first turn under load",
            "load follow-up": "next turn of an open session under load",
        },
        groups={"load new session": "hotsession", "load follow-up": "hotsession"},
    )
