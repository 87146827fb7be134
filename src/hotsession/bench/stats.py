"""Pure functions of the benchmark: samples, matching to the model server's log, summaries.

Every timing is a difference of ``time.monotonic()`` readings (CLOCK_MONOTONIC), so the bench,
the model server and the daemon — separate processes — share one clock. Three latencies per
sample, all measured from the moment the client sends (spawns the process, writes the line,
sends the HTTP request):

* ``to_model_ms`` — until the model server received the turn's first main ``/v1/messages``
  request (its log's ``t_mono``, found by the sample's ``[[marker:ID]]``);
* ``first_event_ms`` — until the client saw the first CLI message (stdout line, SDK message, SSE
  ``message`` event);
* ``result_ms`` — until the client saw the turn's result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

METRICS: tuple[str, ...] = ("to_model_ms", "first_event_ms", "result_ms")


@dataclass
class Sample:
    """One timed turn of one mode."""

    mode: str
    round: int
    marker: str
    t_send: float
    t_first: float | None = None
    t_result: float | None = None
    t_model: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the turn ended with a result and no error."""
        return self.error is None and self.t_result is not None

    def ms(self, metric: str) -> float | None:
        """One of :data:`METRICS`, in milliseconds (None when not observed)."""
        end = {"to_model_ms": self.t_model, "first_event_ms": self.t_first}.get(
            metric, self.t_result
        )
        if end is None or not self.ok:
            return None
        return (end - self.t_send) * 1000.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form: raw monotonic stamps plus the derived milliseconds."""
        out = asdict(self)
        for metric in METRICS:
            value = self.ms(metric)
            out[metric] = round(value, 3) if value is not None else None
        return out


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100), linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(rank), math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


@dataclass(frozen=True)
class Summary:
    """Median, p95 and min of one metric of one mode."""

    n: int
    median: float
    p95: float
    min: float

    def to_dict(self) -> dict[str, float | int]:
        """JSON form (rounded to µs)."""
        return {
            "n": self.n,
            "median": round(self.median, 3),
            "p95": round(self.p95, 3),
            "min": round(self.min, 3),
        }


def summarize(values: Sequence[float]) -> Summary | None:
    """Summary of some milliseconds; None for none."""
    if not values:
        return None
    return Summary(len(values), percentile(values, 50), percentile(values, 95), min(values))


def summarize_samples(samples: Iterable[Sample]) -> dict[str, dict[str, Summary | None]]:
    """``{mode: {metric: Summary}}`` over the successful samples, modes in first-seen order."""
    by_mode: dict[str, list[Sample]] = {}
    for s in samples:
        by_mode.setdefault(s.mode, []).append(s)
    out: dict[str, dict[str, Summary | None]] = {}
    for mode, group in by_mode.items():
        out[mode] = {}
        for metric in METRICS:
            values = [v for v in (s.ms(metric) for s in group) if v is not None]
            out[mode][metric] = summarize(values)
    return out


def ratio(value: Summary | None, reference: Summary | None) -> float | None:
    """Median of ``value`` over the median of ``reference`` (None when either is missing)."""
    if value is None or reference is None or reference.median <= 0:
        return None
    return value.median / reference.median


def paired_overhead(
    samples: Iterable[Sample], mode: str, reference: str, metric: str
) -> Summary | None:
    """Per-round differences ``mode − reference`` (ms) of one metric, summarized.

    Rounds interleave the modes, so a round's two samples saw the same machine load; the median
    of the differences is a steadier estimate of an overhead than a difference of medians. With
    several samples per round (``--concurrency``), slot *i* pairs with slot *i*
    (``extra["slot"]``).
    """
    by_round: dict[tuple[str, int, int], float] = {}
    for s in samples:
        value = s.ms(metric)
        if value is not None and s.mode in (mode, reference):
            by_round[(s.mode, s.round, int(s.extra.get("slot", 0)))] = value
    diffs = [
        by_round[(mode, r, slot)] - by_round[(reference, r, slot)]
        for (m, r, slot) in list(by_round)
        if m == mode and (reference, r, slot) in by_round
    ]
    if not diffs:
        return None
    ordered = sorted(diffs)
    return Summary(len(diffs), percentile(ordered, 50), percentile(ordered, 95), ordered[0])


def outside_cli_ms(s: Sample) -> float | None:
    """How long a hot turn spent outside the CLI, as the client saw it (ms), or None.

    The client's send → result time minus the CLI's own time as the daemon measured it (prompt
    written → result line read: the turn's ``ttfe`` + ``thinking`` + ``tools``): HTTP in, the
    daemon both ways, SSE out. Both clocks are this machine's monotonic clock, and the CLI's
    variance cancels out, so this is the daemon's overhead per turn without the floor's noise.
    Only for hot follow-ups (``source`` = ``hot``), whose turns carry that timing.
    """
    timing = s.extra.get("timing")
    result = s.ms("result_ms")
    if not isinstance(timing, dict) or result is None or timing.get("source") != "hot":
        return None
    try:
        cli = float(timing["ttfe_ms"]) + float(timing["thinking_ms"]) + float(timing["tools_ms"])
        cli += float(timing.get("waiting_ms", 0))  # no permission question in a bench turn
    except (KeyError, TypeError, ValueError):
        return None
    return result - cli


def error_counts(samples: Iterable[Sample]) -> dict[str, int]:
    """Failed samples per mode (modes without failures are left out)."""
    out: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            out[s.mode] = out.get(s.mode, 0) + 1
    return out


def match_model_requests(samples: Iterable[Sample], log: Sequence[Mapping[str, Any]]) -> int:
    """Fill ``t_model`` of each sample from the model server's log; returns how many matched.

    The turn's request is the earliest *main* ``/v1/messages`` request carrying the sample's
    marker and arriving after the sample was sent (a retry or a later tool step of the same turn
    arrives later and does not count).
    """
    first: dict[str, float] = {}
    for entry in log:
        if not entry.get("main"):
            continue
        t = entry.get("t_mono")
        if not isinstance(t, (int, float)):
            continue
        for marker in entry.get("markers") or ():
            key = str(marker)
            if key not in first or t < first[key]:
                first[key] = float(t)
    matched = 0
    for s in samples:
        t = first.get(s.marker)
        if t is not None and t >= s.t_send:
            s.t_model = t
            matched += 1
    return matched


def poisson_arrivals(rate: float, duration: float, rng: Any) -> list[float]:
    """Arrival offsets (seconds) of a Poisson process of ``rate``/s over ``duration`` s.

    ``rng`` is a ``random.Random`` (seeded by the caller for a reproducible schedule).
    """
    if rate <= 0 or duration <= 0:
        return []
    out: list[float] = []
    t = rng.expovariate(rate)
    while t < duration:
        out.append(t)
        t += rng.expovariate(rate)
    return out
