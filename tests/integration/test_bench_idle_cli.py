"""``bench --cpu``'s idle-CLI row on the real daemon and CLI (``hotsession.bench.idle_cli``), and
what the measuring found: a daemon's CLI holds none of the daemon's descriptors (its API socket
was in every CLI, see tests/unit/test_spawn_fds.py) and runs with Bun's idle collections off
(``options.RUNTIME_ENV``). Timings are not asserted."""

from __future__ import annotations

import math
import os

import psutil
import pytest

from hotsession.bench.daemon import Daemon
from hotsession.bench.environment import BenchEnv
from hotsession.bench.idle_cli import BUN_DEFAULTS, measure_idle_clis


def _links(pid: int) -> set[str]:
    out = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            pass
    return out


@pytest.mark.slow
async def test_idle_cli_row_and_the_daemons_clis_hold_no_daemon_socket():
    with BenchEnv() as env:
        d = Daemon(env)
        await d.start()
        try:
            assert d.proc is not None
            listening = {
                os.readlink(f"/proc/{d.proc.pid}/fd/{c.fd}")
                for c in psutil.Process(d.proc.pid).net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN
            }
            assert listening
            row = await measure_idle_clis(d, env, (("first", 1.0), ("second", 1.0)), beside_s=1.0)
            clis = d.cli_pids()
            assert clis
            for pid in clis:
                assert not (_links(pid) & listening), f"CLI {pid} holds the daemon's API socket"
                assert psutil.Process(pid).environ().get("BUN_IDLE_GC_SECONDS") == "0"
        finally:
            await d.stop()
    assert row["windows"] == ["first", "second", "beside"]
    assert set(row["ms_per_s"]) == {"session CLI", "spare", "bare CLI", BUN_DEFAULTS}
    assert row["spares"] >= 1 and len(row["spare_age_s"]) == row["spares"]
    assert row["beside_turns"] >= 1
    for role, rates in row["ms_per_s"].items():
        for label in row["windows"]:
            assert math.isfinite(rates[label]) and rates[label] >= 0, (role, label)
    assert set(row["vs_bare"]) == {"session CLI", "spare", BUN_DEFAULTS}
