"""``hotsession bench --pause S``: a follow-up after the user paused, as users feel it.

Why. The back-to-back modes (``hs follow-up``, ``bare CLI (floor)``) send each turn right after
the last one's result. A person at a dashboard, a chat or an editor reads the answer and types
the next prompt first: the process sits idle for seconds to minutes, and an idle CLI's runtime
works meanwhile (Bun's idle collections drop code and page the binary out after 10 s; see
docs/benchmarks.md, "Idle CLIs"). A follow-up after 20 s took 69 ms with Bun's defaults and 47 ms
with hotsession's runtime env against ~35 ms back to back, measured alone; these modes show it in
every run that asks for them.

The modes (each keeps one conversation on one live process for the whole run):

* ``hs follow-up after pause`` — the next turn of a live hotsession session, through the HTTP API
  as ``hs follow-up`` (``bench/http_modes.py``); a turn not served by the live process (evicted,
  recycled meanwhile) is an error;
* ``bare CLI after pause`` — the reference: a bare stream-json CLI spawned as ``bare CLI (floor)``
  spawns it (hotsession's argv and env), driven over stdin;
* ``bare CLI after pause, Bun's defaults`` — the same without ``options.RUNTIME_ENV`` (Bun's idle
  collections on): what those settings buy after a pause.

How (:func:`run_paused`). Each mode runs in its own task: one untimed warm-up turn per
``warmup``, then ``rounds`` timed turns, each sent ``pause_s`` after the previous turn's result.
The tasks start ``pause_s / n`` apart, so the modes' turns fall evenly spread over one pause and
all pauses run at once: the phase takes ``rounds × pause_s`` plus one pause, not ``n`` times
that. A lock keeps any two turns from overlapping (a turn due while another runs waits for it;
each sample records the pause it really had, ``extra["pause_s"]``, from the previous result to
its send). ``prepare`` (the daemon's quiet wait) runs at the start of the pause, untimed.
Every mode's ratio is against ``bare CLI after pause`` of the same run (:data:`REFERENCE`),
and its paired differences pair round *r* with the reference's round *r* (the same pause, a
fraction of it apart).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from typing import ClassVar

from hotsession.bench.modes import BareCli, Mode, spawn_initialized
from hotsession.bench.stats import Sample
from hotsession.options import RUNTIME_ENV

DEFAULT_PAUSE_S = 20.0
DEFAULT_PAUSE_ROUNDS = 5
"""Timed turns per paused mode (``--pause-rounds``): 5 × 20 s keeps the phase near 2 minutes."""
QUICK_PAUSE_ROUNDS = 3
REFERENCE = "bare CLI after pause"
"""Every paused mode's ratio and paired differences are against this mode."""
SAMPLE_TIMEOUT_S = 180.0


class BareCliAfterPause(BareCli):
    """A follow-up on a bare CLI (hotsession's argv and env) after a pause: the reference."""

    name = REFERENCE
    description = "live stream-json CLI over stdin (hotsession's argv and env), after a pause"
    group = "pause"
    paused = True
    back_to_back: ClassVar[str | None] = BareCli.name
    unset: tuple[str, ...] = ()

    async def setup(self) -> None:
        """Spawn (``initialize`` answered) and run one turn; the pause phase does the rest."""
        self.proc = await spawn_initialized(self.env, unset=self.unset)
        await self.sample(Sample(self.name, -1, "setup", 0.0), "[[say:setup]]")

    def pids(self) -> dict[str, int]:
        """The live process."""
        return {self.name: self.proc.pid} if self.proc and self.proc.returncode is None else {}


class BareCliAfterPauseBunDefaults(BareCliAfterPause):
    """The same without hotsession's runtime settings (Bun's idle collections on)."""

    name = "bare CLI after pause, Bun's defaults"
    description = "the same bare CLI without options.RUNTIME_ENV (Bun's idle GC on), after a pause"
    back_to_back = None
    unset = tuple(RUNTIME_ENV)


PAUSE_MODES: tuple[type[Mode], ...] = (BareCliAfterPause, BareCliAfterPauseBunDefaults)
"""The bare paused modes; ``hs follow-up after pause`` is in ``bench/http_modes.py``."""


async def _turn(mode: Mode, round_no: int, previous_result: float) -> Sample:
    """One timed turn of ``mode`` (now), recording the pause since ``previous_result``."""
    marker = uuid.uuid4().hex[:12]
    s = Sample(mode=mode.name, round=round_no, marker=marker, t_send=time.monotonic())
    prompt = f"bench {mode.name} round {round_no} [[marker:{marker}]]"
    try:
        await asyncio.wait_for(mode.sample(s, prompt), SAMPLE_TIMEOUT_S)
        if s.t_result is None and s.error is None:
            s.error = "no result"
        source = s.extra.get("source")
        if s.error is None and source not in (None, "hot"):
            s.error = f"not served by the live process (source: {source})"
    except Exception as exc:  # a failed turn is a result (counted as an error), not a crash
        s.error = f"{type(exc).__name__}: {exc}"[:500]
    s.extra["pause_s"] = round(s.t_send - previous_result, 3)
    return s


async def run_paused(
    modes: Sequence[Mode],
    *,
    pause_s: float,
    rounds: int,
    warmup: int = 1,
    progress: Callable[[str, int], None] = lambda _d, _n: None,
) -> list[Sample]:
    """Every paused mode's ``rounds`` follow-ups after ``pause_s``, the modes' pauses at once
    (module docstring); the timed samples, in the order they ran."""
    lock = asyncio.Lock()
    samples: list[Sample] = []
    spacing = pause_s / max(len(modes), 1)

    async def one_mode(index: int, mode: Mode) -> None:
        await asyncio.sleep(index * spacing)
        last = time.monotonic()
        for w in range(warmup):
            async with lock:
                progress(f"warm-up {w + 1}: {mode.name}", 0)
                s = await _turn(mode, -1 - w, last)
                last = s.t_result or time.monotonic()
            progress(f"warm-up {w + 1}: {mode.name}", 1)
        for r in range(rounds):
            progress(f"pause {r + 1}/{rounds}: {mode.name}", 0)
            await asyncio.wait_for(mode.prepare(), SAMPLE_TIMEOUT_S)
            await asyncio.sleep(max(0.0, last + pause_s - time.monotonic()))
            async with lock:
                s = await _turn(mode, r, last)
                last = s.t_result or time.monotonic()
            samples.append(s)
            progress(f"pause {r + 1}/{rounds}: {mode.name}", 1)

    async with asyncio.TaskGroup() as tasks:
        for index, mode in enumerate(modes):
            tasks.create_task(one_mode(index, mode))
    return samples
