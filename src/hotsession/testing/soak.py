"""The soak: many sessions over many turns with faults injected at random (a test instrument).

    python -m hotsession.testing.soak --minutes 30 --sessions 8 --json soak.json

Design
======
One engine (:class:`hotsession.Hotsession`, the real CLI) against the scripted model server. One
worker per session loops until the deadline; each step is either a normal turn or a fault drawn
at random (``fault_rate``): the agent killed (-9) while idle or mid-turn, SIGSTOP (the watchdog
ends the turn), a model error (400), a hung stream (watchdog), a stall. After every fault the
next normal turn must succeed and reach the model with more messages than the session's last
good turn (full context) — that is a *recovery*. At the end every event each client received is
compared with the registry's replay, from the engine and from a fresh engine on the same state
directory — a difference is a *lost* event; a turn whose terminal event never came is a lost
turn.

Figures: turns (ok / faulted), per-fault injected / recovered, lost turns and events, latency of
normal turns (p50 / p95 / p99, hot turns and turns that resumed a process separately), memory
(agents' anonymous memory at peak against the budget; the engine process's RSS growth).

Model-server log. Looking up a marker copies the whole log, so the soak pauses every worker now
and then (a gate), and clears the log when no turn is in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from hotsession.config import Config
from hotsession.hub import Hotsession
from hotsession.memory import sample_many
from hotsession.testing.faults import Conversation, Ledger, context_size, new_marker, outcome
from hotsession.testing.model_server import ModelServer

FAULTS: dict[str, float] = {  # relative weights
    "kill_idle": 3,
    "kill_mid_turn": 3,
    "model_error_400": 2,
    "model_stall": 2,
    "sigstop": 1,
    "model_hang": 1,
}
EXPECTED: dict[str, set[str]] = {
    "kill_idle": {"result"},
    "kill_mid_turn": {"error:agent_died"},
    "model_error_400": {"result:is_error"},
    "model_stall": {"result"},
    "sigstop": {"error:agent_timeout"},
    "model_hang": {"error:agent_timeout"},
}


@dataclass
class SoakResult:
    """What a soak run measured."""

    seconds: float
    sessions: int
    turns: int = 0
    turns_ok: int = 0
    turns_faulted: int = 0
    lost_turns: int = 0
    lost_events: int = 0
    unexpected: list[str] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    within_budget: bool = True
    recycles: dict[str, int] = field(default_factory=dict)
    pool_hits: int = 0

    @property
    def ok(self) -> bool:
        """Zero lost, every fault recovered, nothing unexpected, memory within budget."""
        return (
            self.lost_turns == 0
            and self.lost_events == 0
            and not self.unexpected
            and all(f["recovered"] == f["injected"] for f in self.faults)
            and self.within_budget
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        """A few human lines."""
        lines = [
            f"soak: {self.seconds:.0f} s, {self.sessions} sessions, {self.turns} turns "
            f"({self.turns_ok} ok, {self.turns_faulted} with a fault); lost turns "
            f"{self.lost_turns}, lost events {self.lost_events}; ok={self.ok}",
        ]
        for f in self.faults:
            lines.append(
                f"  {f['fault']}: injected {f['injected']}, recovered {f['recovered']}, "
                f"lost {f['lost']}  {f['client_saw']}"
            )
        for kind, lat in self.latency_ms.items():
            lines.append(
                f"  latency {kind}: n={lat['n']:.0f} p50={lat['p50']:.0f} ms "
                f"p95={lat['p95']:.0f} ms p99={lat['p99']:.0f} ms max={lat['max']:.0f} ms"
            )
        lines.append(f"  memory: {self.memory} within budget: {self.within_budget}")
        lines.append(f"  pool hits: {self.pool_hits}; recycles: {self.recycles}")
        lines += [f"  UNEXPECTED: {u}" for u in self.unexpected[:20]]
        return "\n".join(lines)


def percentiles(values: list[float]) -> dict[str, float]:
    """n, p50, p95, p99 (nearest rank) and max."""
    if not values:
        return {"n": 0, "p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    s = sorted(values)

    def rank(q: float) -> float:
        return round(s[min(len(s) - 1, max(0, int(q * len(s) + 0.999999) - 1))], 1)

    return {"n": len(s), "p50": rank(0.5), "p95": rank(0.95), "p99": rank(0.99), "max": s[-1]}


class _Soak:
    def __init__(
        self,
        hub: Hotsession,
        server: ModelServer,
        workdir: Path,
        *,
        deadline: float,
        fault_rate: float,
        rng: random.Random,
    ) -> None:
        self.hub = hub
        self.server = server
        self.workdir = workdir
        self.deadline = deadline
        self.fault_rate = fault_rate
        self.rng = rng
        self.ledger = Ledger()
        self.latency: dict[str, list[float]] = {"hot": [], "resume": []}
        self.unexpected: list[str] = []
        self.turns = Counter[str]()
        self.gate = asyncio.Event()
        self.gate.set()
        self.inflight = 0

    async def step_gate(self) -> None:
        await self.gate.wait()
        self.inflight += 1

    async def maintain_log(self) -> None:
        """Every few seconds: pause the workers, clear the model server's log, resume."""
        while time.monotonic() < self.deadline:
            await asyncio.sleep(5)
            if len(self.server.log()) < 500:
                continue
            self.gate.clear()
            while self.inflight:
                await asyncio.sleep(0.01)
            self.server.clear()
            self.gate.set()

    async def normal_turn(self, conv: Conversation, last: int) -> int:
        """A turn that must succeed with more context than ``last``; returns its context."""
        m = new_marker()
        tool = "[[bash:echo soak]] " if self.rng.random() < 0.2 else ""
        began = time.monotonic()
        events = await conv.turn(f"{tool}[[marker:{m}]] [[say:fine]]")
        took = (time.monotonic() - began) * 1000
        self.turns["total"] += 1
        end = events[-1] if events else None
        if end is None or not end.terminal:
            self.turns["lost"] += 1
            return last
        if end.type != "result" or end.data.get("is_error"):
            self.unexpected.append(f"{conv.session.id}: normal turn ended {outcome(end)}")
            return last
        self.turns["ok"] += 1
        source = end.data.get("timing", {}).get("source", "hot")
        self.latency["hot" if source == "hot" else "resume"].append(took)
        size = context_size(self.server, m)
        if size <= last:
            self.unexpected.append(f"{conv.session.id}: context {last} -> {size}")
        return size

    async def fault(self, conv: Conversation, kind: str) -> str:
        """Inject one fault into ``conv``; returns what its client saw."""
        session = conv.session
        proc = session.process
        self.turns["total"] += 1
        self.turns["faulted"] += 1
        if kind == "kill_idle":
            if proc is not None:
                os.kill(proc.pid, signal.SIGKILL)
                await _until(lambda: not proc.alive)
            events = await conv.turn("[[say:after-kill]]")
        elif kind in ("kill_mid_turn", "sigstop"):
            m = new_marker()
            directive = "[[hang]]" if kind == "kill_mid_turn" else "[[stall:1000]]"
            turn = session.send(f"{directive} [[marker:{m}]]")
            await _until(lambda: any(m in e["markers"] for e in self.server.log()), 30)
            live = session.process
            if live is not None:
                os.kill(live.pid, signal.SIGKILL if kind == "kill_mid_turn" else signal.SIGSTOP)
            events = await conv.collect(turn)
        elif kind == "model_error_400":
            events = await conv.turn("[[error:400]]")
        elif kind == "model_stall":
            events = await conv.turn("[[stall:800]] [[say:stalled]]")
        else:  # model_hang
            events = await conv.turn("[[hang]]")
        return outcome(events[-1]) if events else "none"

    async def worker(self, index: int) -> Conversation:
        session = await self.hub.open(self.workdir, permission_mode="bypassPermissions")
        conv = Conversation(session, self.server)
        last = 0
        kinds, weights = list(FAULTS), list(FAULTS.values())
        while time.monotonic() < self.deadline:
            await self.step_gate()
            try:
                if last and self.rng.random() < self.fault_rate:
                    kind = self.rng.choices(kinds, weights)[0]
                    tally = self.ledger.tally(kind)
                    tally.injected += 1
                    seen = await self.fault(conv, kind)
                    tally.client_saw[seen] += 1
                    after = await self.normal_turn(conv, last)
                    if seen in EXPECTED[kind] and after > last:
                        tally.recovered += 1
                    else:
                        self.unexpected.append(f"{session.id}: {kind} saw {seen}")
                    last = max(last, after)
                else:
                    last = await self.normal_turn(conv, last)
            except Exception as exc:  # recorded, and the soak goes on: it must not hide a bug
                self.unexpected.append(f"{session.id}: {type(exc).__name__}: {exc}")
            finally:
                self.inflight -= 1
        return conv


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("soak: condition not met")
        await asyncio.sleep(0.02)


async def run_soak(
    *,
    seconds: float,
    sessions: int = 6,
    fault_rate: float = 0.25,
    seed: int = 0,
    server: ModelServer,
    base_dir: Path,
    memory_budget_mb: float | None = None,
    watchdog_s: float = 3.0,
    pool: bool = True,
    agent_max_turns: int | None = 6,
) -> SoakResult:
    """Run a soak against ``server`` (the CLI's environment must already point at it).

    With ``pool`` the warm pool serves the sessions and recycles each process after about
    ``agent_max_turns`` turns, so faults also land on spares and around recycles.
    """
    rng = random.Random(seed)
    workdir = base_dir / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    budget = memory_budget_mb if memory_budget_mb is not None else 600.0 * sessions
    config = Config(
        state_dir=base_dir / "state",
        pool_enabled=pool,
        pool_max=2,
        memory_budget_mb=budget,
        agent_max_turns=agent_max_turns,
        allow_root_bypass=True,
        watchdog_s=watchdog_s,
        spawn_timeout_s=60.0,
    )
    began = time.monotonic()
    me = psutil.Process()
    result = SoakResult(seconds=seconds, sessions=sessions)
    peak_agents = 0.0
    rss_start: float | None = None
    async with Hotsession(config) as hub:
        soak = _Soak(
            hub,
            server,
            workdir,
            deadline=began + seconds,
            fault_rate=fault_rate,
            rng=rng,
        )
        workers = [asyncio.create_task(soak.worker(i)) for i in range(sessions)]
        upkeep = asyncio.create_task(soak.maintain_log())
        while not all(w.done() for w in workers):
            await asyncio.wait(workers, timeout=2.0)
            mem = sample_many(list(hub.supervisor.children))
            peak_agents = max(peak_agents, sum(m.anon_mb for m in mem.values()))
            rss = me.memory_info().rss / 2**20
            if rss_start is None and time.monotonic() - began > min(10.0, seconds / 4):
                rss_start = rss
        upkeep.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await upkeep
        convs = [w.result() for w in workers]
        result.recycles = dict(hub.recycles)
        if hub.pool is not None:
            result.pool_hits = sum(p["hits"] for p in hub.pool.stats()["profiles"])
        await hub.registry.flush()
        for conv in convs:
            result.lost_events += await conv.lost()
    async with Hotsession(config) as again:
        for conv in convs:
            result.lost_events += await conv.lost(again.get(conv.session.id))
    rss_end = me.memory_info().rss / 2**20
    result.seconds = round(time.monotonic() - began, 1)
    result.turns = soak.turns["total"]
    result.turns_ok = soak.turns["ok"]
    result.turns_faulted = soak.turns["faulted"]
    result.lost_turns = soak.turns["lost"]
    result.unexpected = soak.unexpected
    result.faults = soak.ledger.to_list()
    for tally in soak.ledger.tallies.values():
        tally.lost = 0  # losses are counted per session at the end (lost_events)
    result.latency_ms = {k: percentiles(v) for k, v in soak.latency.items()}
    result.memory = {
        "agents_anon_peak_mb": round(peak_agents, 1),
        "budget_mb": budget,
        "engine_rss_start_mb": round(rss_start or rss_end, 1),
        "engine_rss_end_mb": round(rss_end, 1),
    }
    result.within_budget = peak_agents <= budget
    return result


def _agent_env(server: ModelServer, base: Path) -> dict[str, str]:
    (base / "home").mkdir(parents=True, exist_ok=True)
    return {
        "ANTHROPIC_BASE_URL": server.url,
        "ANTHROPIC_API_KEY": "test-key",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CONFIG_DIR": str(base / "claude-config"),
        "HOME": str(base / "home"),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m hotsession.testing.soak``: exit status 0 when nothing was lost."""
    parser = argparse.ArgumentParser(prog="python -m hotsession.testing.soak")
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--fault-rate", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-budget-mb", type=float, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--keep", action="store_true", help="keep the state and work dirs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the faults are injected: their warnings are noise
    base = Path(tempfile.mkdtemp(prefix="hotsession-soak-"))
    with ModelServer() as server:
        os.environ.update(_agent_env(server, base))
        os.environ.pop("CLAUDECODE", None)
        result = asyncio.run(
            run_soak(
                seconds=args.minutes * 60,
                sessions=args.sessions,
                fault_rate=args.fault_rate,
                seed=args.seed,
                server=server,
                base_dir=base,
                memory_budget_mb=args.memory_budget_mb,
            )
        )
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    print(result.summary())
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
