"""Runs modes interleaved, round by round, and gathers samples, summaries and memory.

Order: every mode is set up, then ``warmup`` untimed rounds, then ``rounds`` timed rounds. In a
round each mode runs one turn, in an order shuffled per round (seeded, so a run is repeatable):
a fixed order gives every mode the same neighbour each round, and a CLI process is still busy for
a moment after its result (it writes the transcript), which a fixed order charges to whichever
mode always comes next.
Each turn's prompt carries a unique ``[[marker:ID]]``; after the run the model server's log gives
each turn's arrival time at the model (see ``stats.match_model_requests``).

Paused modes (``Mode.paused``, ``bench --pause``) are set up with the others but left out of the
rounds; after them, :func:`hotsession.bench.pause.run_paused` times their follow-ups after a
pause, all modes' pauses at once. Their ratios and paired differences are against
``pause.REFERENCE`` (the bare CLI after the same pause), not the back-to-back floor.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import platform
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from hotsession import __version__
from hotsession.bench.environment import BenchEnv
from hotsession.bench.modes import Mode
from hotsession.bench.pause import REFERENCE as PAUSE_REFERENCE
from hotsession.bench.pause import run_paused
from hotsession.bench.stats import (
    METRICS,
    Sample,
    error_counts,
    match_model_requests,
    outside_cli_ms,
    paired_overhead,
    ratio,
    summarize,
)
from hotsession.bench.stats import summarize_samples as _summarize

Progress = Callable[[str, int], None]
"""``progress(description, advance)``: what runs now, and how many steps just finished."""

SAMPLE_TIMEOUT_S = 180.0


def machine_info() -> dict[str, Any]:
    """The machine a run happened on (goes into the JSON and docs/benchmarks.md)."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_mb": round(psutil.virtual_memory().total / 2**20),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


TARGETS: tuple[tuple[str, str, str, float], ...] = (
    # (mode, reference mode, metric, the ratio of medians to stay under) — issue 13
    ("hs new (spare)", "bare CLI (pre-spawned)", "to_model_ms", 0.8),
    ("hs new (miss)", "claude -p", "to_model_ms", 1.1),
    # issue 14: the Agent SDK through hotsession-claude (``--dropin``)
    ("shim query(resume)", "sdk query(resume)", "to_model_ms", 1 / 8),
    ("shim query()", "sdk query()", "to_model_ms", 1 / 3),
)
CLAIM_TARGET_MS = 3.0
"""``POST /v1/sessions`` with a ready spare: the median to stay under (issue 13)."""


@dataclass
class RunResult:
    """Everything a run produced."""

    kind: str
    samples: list[Sample]
    meta: dict[str, Any]
    memory: dict[str, Any] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, Any] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)
    paused: dict[str, str | None] = field(default_factory=dict)
    """Paused modes (``bench --pause``) and each one's back-to-back counterpart (or None)."""

    def summaries(self) -> dict[str, dict[str, Any]]:
        """``{mode: {metric: Summary | None}}``, in the order the modes were given."""
        found = _summarize(self.samples)
        ordered = {m: found[m] for m in self.groups if m in found}
        ordered.update({m: v for m, v in found.items() if m not in ordered})
        return ordered

    def reference(self, kind: str) -> str | None:
        """The mode that is the floor (``kind="floor"``) or fresh ``claude -p`` (``"print"``)."""
        for mode, group in self.groups.items():
            if kind == "floor" and group == "floor":
                return mode
        if kind == "print" and "claude -p" in self.groups:
            return "claude -p"
        return None

    def ratios(self) -> dict[str, dict[str, dict[str, float | None]]]:
        """``{mode: {"floor"|"print": {metric: median ratio}}}``; a paused mode also has
        ``"pause"`` (against the bare CLI after the same pause) and, when its counterpart ran,
        ``"back_to_back"`` (against the same turn without the pause)."""
        summaries = self.summaries()
        out: dict[str, dict[str, dict[str, float | None]]] = {}
        for mode, by_metric in summaries.items():
            out[mode] = {}
            refs = {kind: self.reference(kind) for kind in ("floor", "print")}
            if mode in self.paused:
                refs["pause"] = PAUSE_REFERENCE
                refs["back_to_back"] = self.paused[mode]
            for ref_kind, ref in refs.items():
                if ref is None or ref not in summaries:
                    continue
                out[mode][ref_kind] = {
                    m: ratio(by_metric.get(m), summaries[ref].get(m)) for m in METRICS
                }
        return out

    def overheads(self) -> dict[str, dict[str, Any]]:
        """Per-round paired differences to the floor: ``{mode: {metric: Summary dict}}``; a
        paused mode's to the bare CLI after the same pause (round *r* with its round *r*)."""
        floor = self.reference("floor")
        out: dict[str, dict[str, Any]] = {}
        for mode in self.summaries():
            ref = PAUSE_REFERENCE if mode in self.paused else floor
            if ref is None or mode == ref:
                continue
            out[mode] = {}
            for metric in METRICS:
                summary = paired_overhead(self.samples, mode, ref, metric)
                out[mode][metric] = summary.to_dict() if summary is not None else None
        return out

    def outside_cli(self) -> dict[str, dict[str, Any]]:
        """Per mode with hot turns: the time outside the CLI (``stats.outside_cli_ms``)."""
        by_mode: dict[str, list[float]] = {}
        for s in self.samples:
            value = outside_cli_ms(s)
            if value is not None:
                by_mode.setdefault(s.mode, []).append(value)
        out = {}
        for mode, values in by_mode.items():
            summary = summarize(values)
            if summary is not None:
                out[mode] = summary.to_dict()
        return out

    def targets(self) -> list[dict[str, Any]]:
        """Each target of ``TARGETS`` whose modes ran: the ratio of medians, and whether met;
        then the claim's median (``claim_ms`` of ``hs new (spare)`` samples, the lean client;
        and of ``hs new (spare, httpx)``, with httpx) against its own."""
        summaries = self.summaries()
        out: list[dict[str, Any]] = []
        for mode, ref, metric, limit in TARGETS:
            value = ratio(summaries.get(mode, {}).get(metric), summaries.get(ref, {}).get(metric))
            if value is not None:
                out.append(
                    {
                        "mode": mode,
                        "reference": ref,
                        "metric": metric,
                        "ratio": round(value, 3),
                        "limit": limit,
                        "met": value <= limit,
                    }
                )
        for mode, client in (("hs new (spare)", "wire"), ("hs new (spare, httpx)", "httpx")):
            claims = summarize(
                [
                    float(s.extra["claim_ms"])
                    for s in self.samples
                    if s.ok and s.mode == mode and s.extra.get("claim_ms") is not None
                ]
            )
            if claims is not None:
                out.append(
                    {
                        "mode": mode,
                        "metric": "claim_ms",
                        "client": client,
                        "median_ms": round(claims.median, 2),
                        "limit_ms": CLAIM_TARGET_MS,
                        "met": claims.median <= CLAIM_TARGET_MS,
                    }
                )
        return out

    def pause(self) -> dict[str, Any]:
        """The pause phase (``bench --pause``): its settings, and per paused mode the pauses
        its samples really had (s, summarized) and its back-to-back counterpart."""
        if not self.paused:
            return {}
        modes: dict[str, Any] = {}
        for mode, counterpart in self.paused.items():
            waited = summarize(
                [
                    float(s.extra["pause_s"])
                    for s in self.samples
                    if s.mode == mode and s.extra.get("pause_s") is not None
                ]
            )
            modes[mode] = {
                "pause_s": waited.to_dict() if waited is not None else None,
                "back_to_back": counterpart,
            }
        return {**self.meta.get("pause", {}), "reference": PAUSE_REFERENCE, "modes": modes}

    def to_dict(self) -> dict[str, Any]:
        """JSON form: meta, summaries, ratios, memory, load, and every raw sample."""
        return {
            "kind": self.kind,
            "meta": self.meta,
            "modes": {
                mode: {
                    "description": self.descriptions.get(mode, ""),
                    "group": self.groups.get(mode, ""),
                    **{
                        metric: (summary.to_dict() if summary is not None else None)
                        for metric, summary in by_metric.items()
                    },
                }
                for mode, by_metric in self.summaries().items()
            },
            "ratios": self.ratios(),
            "overhead_vs_floor_ms": self.overheads(),
            "outside_cli_ms": self.outside_cli(),
            "targets": self.targets(),
            "pause": self.pause(),
            "errors": error_counts(self.samples),
            "memory": self.memory,
            "load": self.load,
            "cpu": self.cpu,
            "samples": [s.to_dict() for s in self.samples],
        }


class Runner:
    """Sets modes up, runs them interleaved, tears them down."""

    def __init__(
        self,
        env: BenchEnv,
        modes: Sequence[Mode],
        *,
        rounds: int,
        warmup: int = 1,
        progress: Progress | None = None,
        memory_probe: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        seed: int = 1,
        pause_s: float = 0.0,
        pause_rounds: int = 0,
    ) -> None:
        self.env = env
        self.modes = list(modes)
        self.rounds = rounds
        self.warmup = warmup
        self.progress = progress or (lambda _d, _n: None)
        self.memory_probe = memory_probe
        self.rng = random.Random(seed)
        self.pause_s = pause_s
        self.pause_rounds = pause_rounds
        self.pause_warmup = max(1, warmup)
        """The pause phase's warm-up turns: at least one, so the first pause starts at a result."""

    @property
    def back_to_back(self) -> list[Mode]:
        """The modes of the rounds (all but the paused ones)."""
        return [m for m in self.modes if not m.paused]

    @property
    def paused(self) -> list[Mode]:
        """The paused modes (``bench --pause``)."""
        return [m for m in self.modes if m.paused]

    @property
    def steps(self) -> int:
        """Progress steps of a whole run."""
        return (
            len(self.modes)
            + len(self.back_to_back) * (self.warmup + self.rounds)
            + len(self.paused) * (self.pause_warmup + self.pause_rounds)
        )

    async def _one(self, mode: Mode, round_no: int) -> Sample:
        marker = uuid.uuid4().hex[:12]
        s = Sample(mode=mode.name, round=round_no, marker=marker, t_send=time.monotonic())
        try:
            await asyncio.wait_for(mode.prepare(), SAMPLE_TIMEOUT_S)
            prompt = f"bench {mode.name} round {round_no} [[marker:{marker}]]"
            await asyncio.wait_for(mode.sample(s, prompt), SAMPLE_TIMEOUT_S)
            if s.t_result is None and s.error is None:
                s.error = "no result"
        except Exception as exc:  # a failed turn is a result (counted as an error), not a crash
            s.error = f"{type(exc).__name__}: {exc}"[:500]
        return s

    async def run(self, kind: str = "modes") -> RunResult:
        """The whole run; modes are always torn down."""
        started = time.time()
        machine = machine_info()
        samples: list[Sample] = []
        pause_phase_s = 0.0
        memory: dict[str, Any] = {}
        set_up: list[Mode] = []
        try:
            for mode in self.modes:
                self.progress(f"setting up {mode.name}", 0)
                await asyncio.wait_for(mode.setup(), SAMPLE_TIMEOUT_S)
                set_up.append(mode)
                self.progress(f"set up {mode.name}", 1)
            for w in range(self.warmup):
                for mode in self.back_to_back:
                    self.progress(f"warm-up {w + 1}: {mode.name}", 0)
                    await self._one(mode, -1 - w)
                    self.progress(f"warm-up {w + 1}: {mode.name}", 1)
            for r in range(self.rounds):
                order = self.back_to_back
                self.rng.shuffle(order)
                for mode in order:
                    self.progress(f"round {r + 1}/{self.rounds}: {mode.name}", 0)
                    samples.append(await self._one(mode, r))
                    self.progress(f"round {r + 1}/{self.rounds}: {mode.name}", 1)
            if self.paused:
                pause_started = time.monotonic()
                samples += await run_paused(
                    self.paused,
                    pause_s=self.pause_s,
                    rounds=self.pause_rounds,
                    warmup=self.pause_warmup,
                    progress=self.progress,
                )
                pause_phase_s = round(time.monotonic() - pause_started, 1)
            if self.memory_probe is not None:
                self.progress("measuring memory", 0)
                memory = await self.memory_probe()
        finally:
            for mode in reversed(set_up):
                try:
                    await asyncio.wait_for(mode.teardown(), 60)
                except Exception as exc:  # teardown trouble must not hide the results
                    memory.setdefault("teardown_errors", []).append(f"{mode.name}: {exc}")
        log = await asyncio.to_thread(self.env.model_log)
        match_model_requests(samples, log)
        meta = {
            "date": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
            "duration_s": round(time.time() - started, 1),
            "hotsession": __version__,
            "cli": {"path": self.env.cli_path, "version": self.env.cli_version},
            "rounds": self.rounds,
            "warmup": self.warmup,
            "order": "shuffled per round (seeded)",
            "permission_mode": self.env.permission_mode,
            "machine": machine,
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        }
        if self.paused:
            meta["pause"] = {
                "duration_s": pause_phase_s,
                "pause_s": self.pause_s,
                "rounds": self.pause_rounds,
                "warmup": self.pause_warmup,
                "order": "a task per mode, started pause_s / n apart; turns never overlap",
            }
        return RunResult(
            kind=kind,
            samples=samples,
            meta=meta,
            memory=memory,
            descriptions={m.name: m.description for m in self.modes},
            groups={m.name: m.group for m in self.modes},
            paused={m.name: m.back_to_back for m in self.paused},
        )
