"""``hotsession bench --cpu``'s idle-CLI row: an idle hotsession CLI against a bare one.

Why. ``bench --cluster`` once read a session's idle CLI at 34–37 ms of CPU per second and the bare
CLI beside it at 3.2–3.5: ten times. Measured (docs/benchmarks.md, "Idle CLIs"), both are the
same program doing the same work at the same age: an idle CLI's CPU depends on how long ago its
last turn was, and that bench read the session's CLI 1.5–3.5 s after its turn and the bare one
long after its own. So this row compares them at the same age.

How. In one run, on the bench's daemon: a session with a few turns (its CLI: ``session CLI``), a
bare CLI spawned as the ``bare CLI (floor)`` mode spawns it (:func:`hotsession.bench.modes.
bare_command`: hotsession's own argv and env, no daemon) with as many turns, the same without
hotsession's runtime settings (:data:`BUN_DEFAULTS`), and the pool's ready spares of the
profile (``spare``, never given a turn; their age at the start is reported).
The session's last turn and the bare CLI's are run back to back; then each process's CPU clock
(:func:`hotsession.bench.cpu.cpu_s`) is read at the ends of consecutive windows measured from
those turns (:data:`WINDOWS`), and once more while *another* session runs turns (``beside``,
for :data:`BESIDE_S`: does an idle CLI work when another CLI of the machine runs a turn?).
Each figure is ms of CPU per second of the window; ``vs bare`` divides by the bare CLI's figure
in the same window.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import psutil

from hotsession.bench.cpu import _open, _turn, cpu_s
from hotsession.bench.daemon import Daemon
from hotsession.bench.environment import BenchEnv
from hotsession.bench.modes import BareCli, spawn_initialized, wait_idle
from hotsession.bench.stats import Sample
from hotsession.options import RUNTIME_ENV

NAME = "idle CLIs"
BUN_DEFAULTS = "bare CLI, Bun's defaults"
"""A bare CLI without ``hotsession.options.RUNTIME_ENV`` (its runtime's idle collections on):
what those settings change, in the same run."""
WINDOWS: tuple[tuple[str, float], ...] = (
    ("0-12 s after a turn", 12.0),
    ("12-32 s", 20.0),
    ("32-62 s", 30.0),
)
"""Consecutive windows after the last turn. Measured (docs/benchmarks.md): in the first seconds
the CLI finishes its turn's background work and, once 10 s passed without a turn, its runtime
(Bun) runs a full garbage collection; then Bun's GC timer collects every second until the heap
has been still for 30 ticks, then every 30 s."""
BESIDE_S = 15.0
"""How long another session runs turns (one every :data:`BESIDE_GAP_S` or so) while the idle
CLIs are read (``beside``, after the last window): long beside Bun's 30 s GC tick of a settled
CLI, which a few seconds' window would catch in one process and not in another."""
BESIDE_GAP_S = 0.2
TURNS = 3
"""Turns of the session and of the bare CLI before the windows (the first turn of a process
releases its held start-up work; the row is about a conversation's CLI between turns)."""


def _cpu(pids: dict[str, list[int]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for role, group in pids.items():
        out[role] = []
        for pid in group:
            try:
                out[role].append(cpu_s(pid))
            except (OSError, psutil.Error):
                out[role].append(float("nan"))
    return out


def _rates(
    before: dict[str, list[float]], after: dict[str, list[float]], seconds: float
) -> dict[str, float]:
    """ms of CPU per second, per role (the mean of its processes)."""
    out: dict[str, float] = {}
    for role, values in before.items():
        per = [(b - a) * 1000 / seconds for a, b in zip(values, after[role], strict=True)]
        per = [p for p in per if p == p]  # a process that ended meanwhile: left out
        out[role] = round(sum(per) / len(per), 2) if per else float("nan")
    return out


async def measure_idle_clis(
    d: Daemon,
    env: BenchEnv,
    windows: tuple[tuple[str, float], ...] = WINDOWS,
    beside_s: float = BESIDE_S,
) -> dict[str, Any]:
    """The idle-CLI row (module docstring): per role, ms of CPU per second in each window."""
    created = await _open(d, env, False)
    sid = str(created["id"])
    other = str((await _open(d, env, False))["id"])
    bare = BareCli(env)
    bare.proc = await spawn_initialized(env)
    # The same without hotsession's runtime settings (Bun's defaults: its idle collections on).
    plain = BareCli(env)
    plain.proc = await spawn_initialized(env, unset=tuple(RUNTIME_ENV))
    try:
        for i in range(TURNS - 1):
            await _turn(d, sid, f"[[say:s{i}]]")
            await _turn(d, other, f"[[say:o{i}]]")
            for cli in (bare, plain):
                await cli.sample(Sample(cli.name, i, "", 0.0), f"[[say:b{i}]]")
        if not await d.wait_spare():
            raise RuntimeError("no spare became ready for the idle-CLI row")
        await d.wait_quiet()
        view = await d.session(sid)
        session_pid = view.get("pid")
        if not isinstance(session_pid, int):
            raise RuntimeError("the session has no process")
        for pid in (session_pid, bare.proc.pid, plain.proc.pid):  # start-up done (bounded)
            await wait_idle(pid)
        spares = (await d.memory_roles())["hs idle spare"]
        now = time.time()
        ages = []
        for pid in spares:
            with contextlib.suppress(psutil.Error):
                ages.append(round(now - psutil.Process(pid).create_time(), 1))
        pids = {
            "session CLI": [session_pid],
            "spare": spares,
            "bare CLI": [bare.proc.pid],
            BUN_DEFAULTS: [plain.proc.pid],
        }
        # The last turns, back to back: both CLIs start their idle stretch together. The waits
        # above may outlast the daemon's keep-alive (30 s): connect anew.
        assert d.wire is not None
        await d.wire.aclose()
        await _turn(d, sid, "[[say:last]]")
        for cli in (bare, plain):
            await cli.sample(Sample(cli.name, TURNS, "", 0.0), "[[say:last]]")
        rows: dict[str, dict[str, float]] = {role: {} for role in pids}
        cpu = _cpu(pids)
        t = time.monotonic()
        for label, seconds in windows:
            await asyncio.sleep(seconds)
            cpu_after, t_after = _cpu(pids), time.monotonic()
            for role, rate in _rates(cpu, cpu_after, t_after - t).items():
                rows[role][label] = rate
            cpu, t = cpu_after, t_after
        # Beside another session's turns: the idle CLIs' CPU while it runs them.
        await d.wire.aclose()  # the daemon closed the kept-alive socket while the windows ran
        beside_turns = 0
        while time.monotonic() - t < beside_s:
            await _turn(d, other, "hi")
            beside_turns += 1
            await asyncio.sleep(BESIDE_GAP_S)
        cpu_after, t_after = _cpu(pids), time.monotonic()
        for role, rate in _rates(cpu, cpu_after, t_after - t).items():
            rows[role]["beside"] = rate
        beside_s = round(t_after - t, 2)
    finally:
        await bare.teardown()
        await plain.teardown()
        await d.close_session(sid)
        await d.close_session(other)
    labels = [label for label, _ in windows] + ["beside"]
    vs_bare = {
        role: {
            label: (
                round(rows[role][label] / rows["bare CLI"][label], 2)
                if rows["bare CLI"][label] > 0
                else None
            )
            for label in labels
        }
        for role in rows
        if role != "bare CLI"
    }
    return {
        "windows": labels,
        "ms_per_s": rows,
        "vs_bare": vs_bare,
        "spares": len(spares),
        "spare_age_s": ages,
        "beside_turns": beside_turns,
        "beside_s": beside_s,
    }
