"""``bench --cluster``'s CPU per process role (``hotsession.cluster.process_cpu``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from hotsession.cluster.process_cpu import MODEL_SERVER, ProcessCpu, roles

SPIN = """
import sys, time
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
end = time.process_time() + float(sys.argv[1])
while time.process_time() < end:
    pass
sys.stdout.write("done\\n"); sys.stdout.flush()
time.sleep(60)
"""


def _spawn(seconds: float, url: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SPIN, str(seconds)],
        env={**os.environ, "ANTHROPIC_BASE_URL": url},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_cpu_per_role_counts_each_process_under_its_role() -> None:
    """A CLI of this run that burns 0.3 s of CPU in the stretch shows ~300 ms as the session's
    CLI (its role named by pid); another process of the run that burns nothing shows ~0 as
    ``other_clis``; a process of another run is not counted at all."""
    url = f"http://127.0.0.1:1/run-{os.getpid()}"
    busy, idle = _spawn(0.3, url), _spawn(0.0, url)
    stranger = _spawn(0.2, url + "-other")
    try:
        by_role = roles(model_url=url, session_cli=busy.pid)
        assert by_role[busy.pid] == "session_cli"
        assert by_role[idle.pid] == "other_clis"
        assert by_role[os.getpid()] == "bench"
        assert by_role.get(stranger.pid) == "ray"  # a child of this process, not of the run
        # Only this test's processes: pytest's other children (a Ray node a fixture left, a
        # pool's process) are ``ray`` too, and may work meanwhile (it failed in CI so).
        ours = {busy.pid, idle.pid, os.getpid()}
        cpu = ProcessCpu({pid: r for pid, r in by_role.items() if pid in ours})
        cpu.start()
        for proc in (busy, stranger):
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in (busy, stranger):
            assert proc.stdout is not None and proc.stdout.readline() == "done\n"
        time.sleep(0.05)
        cpu.stop()
        per_two = cpu.ms(per=2)
        assert 140 <= per_two["session_cli"] <= 200  # 300 ms of CPU over two "follow-ups"
        assert per_two["other_clis"] < 20
        assert "ray" not in per_two
    finally:
        for proc in (busy, idle, stranger):
            proc.kill()
            proc.wait()


def test_the_model_server_is_a_role_of_its_own() -> None:
    """The scripted model server is this process's child, as Ray's processes are, but is not
    counted as ``ray``."""
    server = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "-m", MODEL_SERVER],
    )
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        by_role = roles(model_url=f"http://127.0.0.1:1/run-{os.getpid()}")
        assert by_role[server.pid] == "model_server"
        assert by_role[other.pid] == "ray"
    finally:
        for proc in (server, other):
            proc.kill()
            proc.wait()
