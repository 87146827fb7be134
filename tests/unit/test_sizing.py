"""Pool sizing: base stock, rate windows, cold starts, token bucket, keep-alive decay."""

from __future__ import annotations

import math

import pytest

from hotsession.pool.sizing import (
    ColdStartTracker,
    ProfileSizer,
    RateEstimator,
    TokenBucket,
    base_stock,
    clamp_target,
    poisson_tail,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_poisson_tail_matches_closed_form() -> None:
    mean = 1.7
    for s in range(6):
        exact = 1 - sum(math.exp(-mean) * mean**k / math.factorial(k) for k in range(s))
        assert poisson_tail(mean, s) == pytest.approx(exact, abs=1e-12)
    assert poisson_tail(0.0, 1) == 0.0
    assert poisson_tail(3.0, 0) == 1.0


@pytest.mark.parametrize(
    ("lam_tau", "one_percent", "tenth_percent"),
    # the table of the pool notes (§2.1)
    [(0.25, 3, 4), (0.5, 4, 5), (1, 5, 6), (3, 9, 11), (10, 19, 22), (15, 26, 29)],
)
def test_base_stock_table(lam_tau: float, one_percent: int, tenth_percent: int) -> None:
    assert base_stock(lam_tau, 0.01) == one_percent
    assert base_stock(lam_tau, 0.001) == tenth_percent


def test_base_stock_is_the_smallest_s() -> None:
    for mean in (0.01, 0.3, 2.2, 7.0):
        s = base_stock(mean, 0.01)
        assert poisson_tail(mean, s) <= 0.01
        assert s == 0 or poisson_tail(mean, s - 1) > 0.01
    assert base_stock(0.0, 0.01) == 0


def test_rate_windows_and_panic() -> None:
    clock = FakeClock()
    est = RateEstimator(stable_s=60, panic_s=6, clock=clock)
    for _ in range(30):  # one arrival every 2 s for a minute: 0.5/s, no panic
        est.record()
        clock.now += 2
    assert est.stable_rate() == pytest.approx(0.5, abs=0.02)
    assert not est.panicking()
    assert est.rate() == est.stable_rate()
    for _ in range(30):  # a burst: 30 arrivals within 3 s
        est.record()
        clock.now += 0.1
    assert est.panicking()
    assert est.rate() == est.panic_rate() > 4
    clock.now += 61  # everything left the windows
    assert est.rate() == 0


def test_cold_start_quantile_and_default() -> None:
    tracker = ColdStartTracker(size=10, quantile=0.9, default_s=2.5)
    assert tracker.measured is None and tracker.tau == 2.5
    for x in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 5.0):
        tracker.add(x)
    assert tracker.tau == 0.9
    tracker.add(float("nan"))  # ignored
    assert len(tracker) == 10
    for _ in range(10):  # old samples roll out
        tracker.add(0.2)
    assert tracker.tau == 0.2


def test_token_bucket_paces_refills() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.try_take() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5  # one token back
    assert bucket.try_take() and not bucket.try_take()
    clock.now += 100  # never more than the burst
    assert bucket.available() == 3


def test_sizer_rises_at_once_and_decays_after_keep_alive() -> None:
    clock = FakeClock()
    sizer = ProfileSizer(target_miss=0.01, keep_alive_s=120, default_tau_s=3.0, clock=clock)
    assert sizer.target() == 0  # no demand, no spares
    for _ in range(60):  # 1 session/s with τ = 3 s -> λτ = 3 -> S = 9 (notes table)
        sizer.record_arrival()
        clock.now += 1
    assert sizer.target() == 9
    clock.now += 61  # demand stopped: λ̂ is 0 but the target is held for the keep-alive
    assert sizer.raw_target() == 0
    assert sizer.target() == 9
    clock.now += 60  # keep-alive (120 s since the target was last needed) is over
    assert sizer.target() == 0


def test_sizer_uses_measured_cold_start() -> None:
    clock = FakeClock()
    sizer = ProfileSizer(default_tau_s=3.0, clock=clock)
    for _ in range(60):
        sizer.record_arrival()
        clock.now += 1
    assert sizer.raw_target() == 9
    for _ in range(5):
        sizer.record_cold_start(0.5)  # a faster machine: λτ = 0.5 -> S = 4
    assert sizer.raw_target() == 4


def test_clamp_target() -> None:
    assert clamp_target(9, minimum=0, maximum=8, room=None) == 8
    assert clamp_target(0, minimum=2, maximum=8, room=None) == 2
    assert clamp_target(9, minimum=2, maximum=8, room=1) == 1  # memory wins over the floor
    assert clamp_target(5, minimum=0, maximum=8, room=-3) == 0
