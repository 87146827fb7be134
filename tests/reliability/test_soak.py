"""The soak, bounded for CI (the long run is ``python -m hotsession.testing.soak --minutes 30``)."""

from __future__ import annotations

from pathlib import Path

from hotsession.testing.faults import Ledger
from hotsession.testing.model_server import ModelServer
from hotsession.testing.soak import percentiles, run_soak

SECONDS = 60


async def test_soak_loses_nothing(
    tmp_path: Path, agent_env: dict[str, str], model_server: ModelServer, ledger: Ledger
):
    result = await run_soak(
        seconds=SECONDS, sessions=4, fault_rate=0.3, seed=6, server=model_server, base_dir=tmp_path
    )
    print(result.summary())
    for f in result.faults:
        tally = ledger.tally(f"soak ({SECONDS} s, 4 sessions): {f['fault']}", "random injection")
        tally.injected += f["injected"]
        tally.recovered += f["recovered"]
        tally.client_saw.update(f["client_saw"])
    assert result.turns_ok > 0 and result.turns_faulted > 0
    assert result.lost_turns == 0 and result.lost_events == 0
    assert result.unexpected == []
    assert result.within_budget
    assert result.latency_ms["hot"]["p99"] > 0
    assert result.ok
    assert sum(result.recycles.values()) > 0  # faults also landed around recycles (pool on)


def test_percentiles_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentiles(values) == {"n": 100, "p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    assert percentiles([])["n"] == 0
