"""``hotsession bench --pause``: follow-ups after a pause, on the real daemon and CLI.

Behaviour only (timings are the bench's business): the paused modes' rows exist, every timed
turn really waited the pause after the previous result, no two turns overlapped, and the ratios
and paired differences are against the bare CLI after the same pause of the same run.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from hotsession.bench.environment import BenchEnv
from hotsession.bench.pause import REFERENCE, BareCliAfterPause, BareCliAfterPauseBunDefaults
from hotsession.cli.main import main

HS = "hs follow-up after pause"
BUN = "bare CLI after pause, Bun's defaults"
PAUSE_S = 1.0


@pytest.mark.slow
def test_pause_modes_wait_the_pause_and_compare_with_the_bare_cli_after_it(tmp_path: Path):
    out_json = tmp_path / "pause.json"
    result = CliRunner().invoke(
        main,
        ["bench", "--pause", str(PAUSE_S), "--pause-rounds", "2", "--warmup", "0"]
        # the reference is not named: a paused mode brings it along
        + ["--only", f"{HS},Bun's defaults", "--json", str(out_json)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out_json.read_text())
    assert set(data["modes"]) == {HS, REFERENCE, BUN}
    assert data["errors"] == {}
    assert data["pause"]["duration_s"] > 2 * PAUSE_S
    assert data["pause"]["pause_s"] == PAUSE_S and data["pause"]["reference"] == REFERENCE
    samples = data["samples"]
    for mode in (HS, REFERENCE, BUN):
        mine = sorted((s for s in samples if s["mode"] == mode), key=lambda s: s["t_send"])
        assert [s["round"] for s in mine] == [0, 1]
        for s in mine:
            assert s["error"] is None and s["to_model_ms"] is not None, s
            assert s["extra"]["pause_s"] >= PAUSE_S, s
        # the second turn was sent a pause after the first one's result (raw stamps)
        assert mine[1]["t_send"] - mine[0]["t_result"] >= PAUSE_S
        assert mine[1]["extra"]["pause_s"] == pytest.approx(
            mine[1]["t_send"] - mine[0]["t_result"], abs=1e-3
        )
        assert data["pause"]["modes"][mode]["pause_s"]["min"] >= PAUSE_S
    assert all(s["extra"]["source"] == "hot" for s in samples if s["mode"] == HS)
    # the modes' pauses ran at once, their turns one at a time
    spans = sorted((s["t_send"], s["t_result"]) for s in samples)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
    assert spans[-1][1] - spans[0][0] < 4 * PAUSE_S  # one after the other: 5 pauses or more

    def median(mode: str, metric: str) -> float:
        return statistics.median(s[metric] for s in samples if s["mode"] == mode)

    for mode in (HS, BUN):
        ratios = data["ratios"][mode]["pause"]
        for metric in ("to_model_ms", "result_ms"):
            assert ratios[metric] == pytest.approx(
                median(mode, metric) / median(REFERENCE, metric), rel=1e-3
            )
        # paired round by round with the reference (no floor ran: nothing else to pair with)
        assert data["overhead_vs_floor_ms"][mode]["result_ms"]["n"] == 2
    assert data["ratios"][REFERENCE]["pause"]["result_ms"] == 1.0
    assert "after a pause of 1.0 s" in result.output


async def test_bun_defaults_mode_runs_its_cli_without_hotsessions_runtime_env():
    with BenchEnv() as env:
        for cls, expected in ((BareCliAfterPause, "0"), (BareCliAfterPauseBunDefaults, None)):
            mode = cls(env)
            await mode.setup()
            try:
                (pid,) = mode.pids().values()
                assert psutil.Process(pid).environ().get("BUN_IDLE_GC_SECONDS") == expected
            finally:
                await mode.teardown()


def test_pause_goes_only_with_the_modes_run():
    result = CliRunner().invoke(main, ["bench", "--cpu", "--pause"])
    assert result.exit_code == 2
    assert "--pause adds to the modes run" in result.output
