"""`hotsession bench` on a tiny run: every mode produces samples, the output files are well-formed.

Timings are not asserted (speed lives in the benchmark itself, not in tests).
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from hotsession.bench.command import BASELINES, _http_modes
from hotsession.cli.main import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_tiny_run_covers_every_mode_and_writes_json_and_png(tmp_path: Path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = CliRunner().invoke(
        main,
        ["bench", "--rounds", "1", "--warmup", "0"]
        + ["--json", str(out_json), "--plot", str(out_png)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out_json.read_text())
    expected = {cls.name for cls in BASELINES + _http_modes()}
    assert _http_modes(), "the hotsession HTTP modes must be part of the run"
    assert set(data["modes"]) == expected
    samples = data["samples"]
    for mode in expected:
        mine = [s for s in samples if s["mode"] == mode]
        assert mine, f"no sample for {mode}"
        assert all(s["error"] is None for s in mine), mine
        for s in mine:
            assert s["result_ms"] is not None and s["result_ms"] > 0
            assert s["first_event_ms"] is not None and s["first_event_ms"] <= s["result_ms"]
            # found at the model server by its marker
            assert s["to_model_ms"] is not None and 0 < s["to_model_ms"] <= s["result_ms"]
    assert data["errors"] == {}
    assert data["meta"]["cli"]["version"] and data["meta"]["machine"]["cpus"]
    assert data["ratios"]["claude -p"]["print"]["result_ms"] == 1.0
    roles = data["memory"]["roles"]
    assert roles["hs live session"]["n"] >= 1 and roles["hs live session"]["pss_sum"] > 0
    png = out_png.read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    assert "hs follow-up" in result.output  # the table


def test_tiny_concurrency_run_pairs_every_slot(tmp_path: Path):
    out_json = tmp_path / "concurrency.json"
    result = CliRunner().invoke(
        main,
        ["bench", "--concurrency", "2", "--rounds", "1", "--warmup", "0", "--json", str(out_json)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out_json.read_text())
    assert data["kind"] == "concurrency" and data["meta"]["concurrency"] == 2
    floor, hs = "bare CLI ×2 (floor)", "hs follow-up ×2"
    assert list(data["modes"]) == [floor, hs]
    for mode in (floor, hs):
        mine = [s for s in data["samples"] if s["mode"] == mode]
        assert sorted(s["extra"]["slot"] for s in mine) == [0, 1]
        assert all(s["error"] is None and s["to_model_ms"] is not None for s in mine), mine
    assert all(s["extra"]["source"] == "hot" for s in data["samples"] if s["mode"] == hs)
    assert data["overhead_vs_floor_ms"][hs]["result_ms"]["n"] == 2  # slot i paired with slot i
    assert data["memory"]["roles"]["hs live session"]["n"] == 2
