"""``bench --cluster``'s pinned pass: the measured CLIs on a core of their own, the rest on the
others, every thread, and every mask back afterwards (hotsession.bench.pinning)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hotsession.bench.pinning import can_pin, pinned

THREADS = """
import threading, time
for _ in range(3):
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
print("ready", flush=True)
time.sleep(60)
"""


def _masks(pid: int) -> list[set[int]]:
    return [os.sched_getaffinity(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")]


@pytest.mark.skipif(not can_pin(), reason="needs a machine with two CPUs or more")
def test_pins_every_thread_and_restores() -> None:
    measured = subprocess.Popen([sys.executable, "-c", THREADS], stdout=subprocess.PIPE)
    other = subprocess.Popen([sys.executable, "-c", THREADS], stdout=subprocess.PIPE)
    try:
        for p in (measured, other):
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        before_measured, before_other = _masks(measured.pid), _masks(other.pid)
        with pinned({measured.pid}) as (mine, rest):
            assert mine and rest and not mine & rest
            assert len(_masks(measured.pid)) == 4  # the main thread and its three
            assert all(m == mine for m in _masks(measured.pid))
            assert all(m == rest for m in _masks(other.pid))
            assert os.sched_getaffinity(0) == rest  # this process is one of the others
        assert _masks(measured.pid) == before_measured
        assert _masks(other.pid) == before_other
    finally:
        for p in (measured, other):
            p.kill()
            p.wait()


def test_refuses_a_machine_without_a_spare_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    with pytest.raises(ValueError, match="more than 1 CPU"), pinned({os.getpid()}):
        pass
