"""``bench --cluster`` times follow-ups only once this run's CLIs are idle (``_clis_idle``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from hotsession.cluster.bench import _clis_idle

# Busy for an amount of its own CPU time, not of wall time: on a loaded machine (CI's other
# tests) a wall-clock spin can be starved through a whole quiet window and read as idle.
BUSY = """
import sys, time
while time.process_time() < float(sys.argv[1]):
    pass
open(sys.argv[2], "w").write("done")
time.sleep(60)
"""


def test_waits_for_a_busy_process_of_the_run(tmp_path: Path) -> None:
    """A process that talks to this run's model server and is still at work (a spare at its
    start-up) holds the wait until it is idle; one of another run does not count."""
    marker = tmp_path / "busy-done"
    url = "http://127.0.0.1:1/this-run"
    env = {**os.environ, "ANTHROPIC_BASE_URL": url}
    proc = subprocess.Popen([sys.executable, "-c", BUSY, "1.0", str(marker)], env=env)
    other = subprocess.Popen(
        [sys.executable, "-c", BUSY, "30", str(tmp_path / "other")],
        env={**os.environ, "ANTHROPIC_BASE_URL": "http://127.0.0.1:1/another-run"},
    )
    try:
        time.sleep(0.2)
        # Quiet (True) after the busy phase, not during it, and not held by the other run's
        # process, which is busy for longer than the timeout.
        assert _clis_idle(url, quiet_s=0.5, timeout_s=20)
        assert marker.exists()
    finally:
        for p in (proc, other):
            p.kill()
            p.wait()
