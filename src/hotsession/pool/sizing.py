"""How many warm spares a profile should keep: arrival rate, cold-start time, base stock.

Design
======
A spare is inventory: each new session consumes one and a replacement is ordered at once; it
takes τ (the cold start) to arrive. By Palm's theorem the number of replacements in flight is
Poisson(λτ) whatever τ's distribution, so with S spares an arrival finds the pool empty with
probability P(Poisson(λτ) ≥ S) — the (S-1, S) base-stock model (pools-and-scale-out notes §2.1).
The target is the smallest S that keeps this under the miss target (1 % by default).

λ comes from two sliding windows like the Knative pod autoscaler: a stable window (60 s) and a
panic window (6 s); when the panic estimate reaches twice the stable one, the panic estimate wins
(a burst is answered within seconds instead of a minute). τ is a high quantile of the recent cold
starts of the profile (measured, never assumed; a default until the first measurement).

Scale-down is delayed: a target stays up for ``keep_alive_s`` after it was last needed, so a
profile with no demand decays to its floor only after the keep-alive (and never while
panicking). Refills are paced by a token bucket so a burst of claims cannot start a spawn storm
on a small machine.

Everything here is plain arithmetic on timestamps passed in (``now``), so the logic is tested
without sleeping.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

Clock = Callable[[], float]


def poisson_tail(mean: float, s: int) -> float:
    """P(Poisson(mean) ≥ s)."""
    if s <= 0:
        return 1.0
    if mean <= 0:
        return 0.0
    # 1 - CDF(s-1), the terms built iteratively (no factorial overflow).
    term = math.exp(-mean)
    cdf = term
    for k in range(1, s):
        term *= mean / k
        cdf += term
    return max(0.0, 1.0 - cdf)


def base_stock(mean: float, target_miss: float, *, cap: int = 10_000) -> int:
    """The smallest S with P(Poisson(mean) ≥ S) ≤ target_miss (0 when there is no demand)."""
    if mean <= 0:
        return 0
    target_miss = min(max(target_miss, 1e-9), 1.0)
    s = 0
    while s < cap and poisson_tail(mean, s) > target_miss:
        s += 1
    return s


class RateEstimator:
    """Arrivals per second over a stable and a panic window (Knative KPA style)."""

    def __init__(
        self,
        stable_s: float = 60.0,
        panic_s: float = 6.0,
        panic_threshold: float = 2.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.stable_s = stable_s
        self.panic_s = panic_s
        self.panic_threshold = panic_threshold
        self.clock = clock
        self._arrivals: deque[float] = deque()

    def record(self, now: float | None = None) -> None:
        """One arrival (a new session asked for a process)."""
        now = self.clock() if now is None else now
        self._arrivals.append(now)
        self._trim(now)

    def _trim(self, now: float) -> None:
        horizon = now - self.stable_s
        while self._arrivals and self._arrivals[0] < horizon:
            self._arrivals.popleft()

    def stable_rate(self, now: float | None = None) -> float:
        """Arrivals per second over the stable window."""
        now = self.clock() if now is None else now
        self._trim(now)
        return len(self._arrivals) / self.stable_s

    def panic_rate(self, now: float | None = None) -> float:
        """Arrivals per second over the panic window."""
        now = self.clock() if now is None else now
        horizon = now - self.panic_s
        n = 0
        for t in reversed(self._arrivals):
            if t < horizon:
                break
            n += 1
        return n / self.panic_s

    def panicking(self, now: float | None = None) -> bool:
        """True when the short window sees a burst (≥ threshold × the stable rate)."""
        now = self.clock() if now is None else now
        panic = self.panic_rate(now)
        return panic > 0 and panic >= self.panic_threshold * self.stable_rate(now)

    def rate(self, now: float | None = None) -> float:
        """λ: the panic estimate during a burst, the stable one otherwise."""
        now = self.clock() if now is None else now
        stable = self.stable_rate(now)
        panic = self.panic_rate(now)
        return panic if panic > 0 and panic >= self.panic_threshold * stable else stable


class ColdStartTracker:
    """Recent cold-start durations; τ is a high quantile of them."""

    def __init__(self, size: int = 32, quantile: float = 0.9, default_s: float = 1.0) -> None:
        self.quantile = quantile
        self.default_s = default_s
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        """One measured cold start (spawn until ready)."""
        if seconds >= 0 and math.isfinite(seconds):
            self._samples.append(seconds)

    @property
    def measured(self) -> float | None:
        """The quantile of the samples, None before the first one."""
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        idx = min(len(ordered) - 1, math.ceil(self.quantile * len(ordered)) - 1)
        return ordered[max(0, idx)]

    @property
    def tau(self) -> float:
        """τ for sizing (the default until something was measured)."""
        measured = self.measured
        return self.default_s if measured is None else measured

    def __len__(self) -> int:
        return len(self._samples)


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.clock = clock
        self._tokens = self.burst
        self._at = clock()

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = max(self._at, now)

    def available(self, now: float | None = None) -> float:
        """Tokens available now."""
        self._refill(self.clock() if now is None else now)
        return self._tokens

    def try_take(self, n: float = 1.0, now: float | None = None) -> bool:
        """Take ``n`` tokens if there are that many."""
        self._refill(self.clock() if now is None else now)
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False


class ProfileSizer:
    """The spare target of one profile: base stock on λ̂τ, with a delayed scale-down."""

    def __init__(
        self,
        *,
        target_miss: float = 0.01,
        keep_alive_s: float = 600.0,
        stable_s: float = 60.0,
        panic_s: float = 6.0,
        default_tau_s: float = 1.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.target_miss = target_miss
        self.keep_alive_s = keep_alive_s
        self.clock = clock
        self.arrivals = RateEstimator(stable_s, panic_s, clock=clock)
        self.cold_starts = ColdStartTracker(default_s=default_tau_s)
        self._held = 0
        self._held_since = clock()

    def record_arrival(self, now: float | None = None) -> None:
        """A new session of this profile asked for a process."""
        self.arrivals.record(now)

    def record_cold_start(self, seconds: float) -> None:
        """A process of this profile took ``seconds`` to become ready."""
        self.cold_starts.add(seconds)

    def raw_target(self, now: float | None = None) -> int:
        """S* for the current λ̂ and τ, before the keep-alive hold and the bounds."""
        now = self.clock() if now is None else now
        lam = self.arrivals.rate(now)
        return base_stock(lam * self.cold_starts.tau, self.target_miss)

    def target(self, now: float | None = None) -> int:
        """S* held for the keep-alive: rises at once, falls only after ``keep_alive_s``."""
        now = self.clock() if now is None else now
        raw = self.raw_target(now)
        expired = now - self._held_since >= self.keep_alive_s and not self.arrivals.panicking(now)
        if raw >= self._held or expired:
            self._held, self._held_since = raw, now
        return self._held


def clamp_target(target: int, *, minimum: int, maximum: int, room: int | None) -> int:
    """``target`` within [minimum, maximum], and never more than the memory allows (``room``)."""
    out = max(minimum, min(maximum, target))
    if room is not None:
        out = min(out, max(0, room))
    return out
