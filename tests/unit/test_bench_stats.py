"""The benchmark's pure functions: percentiles, matching to the model log, overheads, SSE."""

from __future__ import annotations

import random

import pytest

from hotsession.bench.daemon import pool_counts
from hotsession.bench.memory import summarize_role
from hotsession.bench.runner import RunResult
from hotsession.bench.stats import (
    Sample,
    error_counts,
    match_model_requests,
    outside_cli_ms,
    paired_overhead,
    percentile,
    poisson_arrivals,
    summarize,
    summarize_samples,
)


def test_percentile_interpolates_between_ranks():
    values = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert percentile(values, 50) == 30.0
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 50.0
    assert percentile(values, 95) == pytest.approx(48.0)
    assert percentile([5.0, 1.0], 50) == 3.0  # order does not matter
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summarize():
    s = summarize([3.0, 1.0, 2.0])
    assert s is not None and (s.n, s.median, s.min) == (3, 2.0, 1.0)
    assert summarize([]) is None


def sample(mode: str, rnd: int, send: float, first: float, result: float, **kw) -> Sample:
    return Sample(mode, rnd, f"{mode}-{rnd}", send, t_first=first, t_result=result, **kw)


def test_sample_milliseconds_and_failed_samples_have_none():
    s = sample("a", 0, 100.0, 100.010, 100.050)
    s.t_model = 100.020
    assert s.ms("to_model_ms") == pytest.approx(20.0)
    assert s.ms("first_event_ms") == pytest.approx(10.0)
    assert s.ms("result_ms") == pytest.approx(50.0)
    failed = sample("a", 1, 100.0, 100.010, 100.050, error="boom")
    assert failed.ms("result_ms") is None
    assert error_counts([s, failed]) == {"a": 1}
    d = s.to_dict()
    assert d["result_ms"] == pytest.approx(50.0) and d["marker"] == "a-0"


def test_match_model_requests_takes_the_first_main_request_after_send():
    a = sample("a", 0, 10.0, 10.1, 10.5)
    b = sample("b", 0, 20.0, 20.1, 20.5)
    c = sample("c", 0, 30.0, 30.1, 30.5)  # never reached the model
    log = [
        {"main": True, "t_mono": 10.3, "markers": ["a-0"]},
        {"main": True, "t_mono": 10.2, "markers": ["a-0"]},  # earliest wins
        {"main": False, "t_mono": 20.05, "markers": ["b-0"]},  # not a main request
        {"main": True, "t_mono": 20.2, "markers": ["b-0"]},
        {"main": True, "t_mono": 5.0, "markers": ["c-0"]},  # before the send: not this turn
    ]
    assert match_model_requests([a, b, c], log) == 2
    assert a.t_model == 10.2 and b.t_model == 20.2 and c.t_model is None
    assert a.ms("to_model_ms") == pytest.approx(200.0)


def test_summaries_and_ratios_to_floor_and_print():
    samples = []
    for r in range(3):
        samples.append(sample("bare CLI (floor)", r, 0.0, 0.01, 0.020 + r * 0.001))
        samples.append(sample("claude -p", r, 0.0, 0.4, 0.5 + r * 0.01))
        samples.append(sample("hs follow-up", r, 0.0, 0.011, 0.022 + r * 0.001))
    result = RunResult(
        kind="modes",
        samples=samples,
        meta={},
        groups={"bare CLI (floor)": "floor", "claude -p": "baseline", "hs follow-up": "x"},
    )
    summaries = summarize_samples(samples)
    assert list(summaries) == ["bare CLI (floor)", "claude -p", "hs follow-up"]
    assert summaries["claude -p"]["result_ms"].median == pytest.approx(510.0)
    ratios = result.ratios()
    assert ratios["hs follow-up"]["floor"]["result_ms"] == pytest.approx(23.0 / 21.0)
    assert ratios["claude -p"]["print"]["result_ms"] == pytest.approx(1.0)
    assert ratios["hs follow-up"]["floor"]["to_model_ms"] is None  # not matched to the log
    over = result.overheads()["hs follow-up"]["result_ms"]
    assert over["median"] == pytest.approx(2.0) and over["n"] == 3
    d = result.to_dict()
    assert len(d["samples"]) == 9 and d["modes"]["claude -p"]["group"] == "baseline"


def test_paired_overhead_pairs_by_round():
    samples = [
        sample("floor", 0, 0.0, 0.0, 0.010),
        sample("x", 0, 0.0, 0.0, 0.013),
        sample("floor", 1, 0.0, 0.0, 0.100),  # a noisy round moves both
        sample("x", 1, 0.0, 0.0, 0.101),
        sample("x", 2, 0.0, 0.0, 0.5),  # no floor sample in round 2: ignored
    ]
    s = paired_overhead(samples, "x", "floor", "result_ms")
    assert s is not None and s.n == 2
    assert s.median == pytest.approx(2.0) and s.min == pytest.approx(1.0)
    assert paired_overhead(samples, "y", "floor", "result_ms") is None


def test_paired_overhead_pairs_slot_with_slot_under_concurrency():
    samples = []
    for slot, (floor_s, x_s) in enumerate([(0.010, 0.011), (0.200, 0.203), (0.050, 0.052)]):
        for mode, t in (("floor", floor_s), ("x", x_s)):
            s = sample(mode, 0, 0.0, 0.0, t)
            s.extra["slot"] = slot
            samples.append(s)
    s = paired_overhead(samples, "x", "floor", "result_ms")
    # three pairs (1, 3, 2 ms), not one: every slot of the round is paired with its own
    assert s is not None and s.n == 3
    assert s.median == pytest.approx(2.0) and s.min == pytest.approx(1.0)


def test_poisson_arrivals_rate_and_bounds():
    rng = random.Random(3)
    arrivals = poisson_arrivals(5.0, 200.0, rng)
    assert all(0 <= a < 200.0 for a in arrivals)
    assert arrivals == sorted(arrivals)
    assert 850 < len(arrivals) < 1150  # 1000 expected
    assert poisson_arrivals(0, 10, rng) == []
    assert poisson_arrivals(1.0, 50.0, random.Random(9)) == poisson_arrivals(
        1.0, 50.0, random.Random(9)
    )


def test_pool_counts_sums_every_profile():
    stats = {
        "profiles": [
            {"key": "a", "ready": 2, "spawning": 1, "hits": 4},
            {"key": "b", "ready": 1, "spawning": 0},
        ],
        "memory": {"ready": True},  # a bool is not a count
    }
    assert pool_counts(stats) == (3, 1)
    assert pool_counts({}) == (0, 0)


def test_summarize_role_sums_and_means():
    rows = [
        {"anon_mb": 100.0, "pss_mb": 150.0, "rss_mb": 220.0},
        {"anon_mb": 120.0, "pss_mb": 170.0, "rss_mb": 240.0},
    ]
    out = summarize_role(rows)
    assert out["n"] == 2
    assert out["anon_mean"] == 110.0 and out["pss_sum"] == 320.0 and out["rss_sum"] == 460.0


def test_load_hit_rate_leaves_out_the_priming_claims():
    from hotsession.bench.load import _hit_rate

    before = {"profiles": [{"hits": 0, "misses": 1}]}  # the session that made the profile known
    after = {"profiles": [{"hits": 9, "misses": 2}]}
    assert _hit_rate(after, before) == pytest.approx(0.9)
    assert _hit_rate(after) == pytest.approx(9 / 11)
    assert _hit_rate(before, before) is None  # no claim during the run


def test_outside_cli_is_the_client_time_minus_the_cli_time():
    timing = {"ttfe_ms": 5.0, "thinking_ms": 20.0, "tools_ms": 1.0, "source": "hot"}
    s = Sample("hs follow-up", 0, "m", 10.0, t_result=10.0275, extra={"timing": timing})
    assert outside_cli_ms(s) == pytest.approx(1.5)
    resumed = Sample(
        "hs evicted", 0, "m", 10.0, t_result=10.5, extra={"timing": {**timing, "source": "resume"}}
    )
    assert outside_cli_ms(resumed) is None  # not a hot turn: a spawn is not daemon overhead
    assert outside_cli_ms(Sample("bare", 0, "m", 10.0, t_result=10.02)) is None
    result = RunResult("modes", [s, resumed], meta={})
    assert result.outside_cli() == {"hs follow-up": {"n": 1, "median": 1.5, "p95": 1.5, "min": 1.5}}
