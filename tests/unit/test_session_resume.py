"""Transparent resume when the session's process dies between turns, with the fake agent."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from tests.unit.test_pool_logic import make_config, opts

from hotsession import Hotsession


def _wait_dead_blocking(pid: int, timeout: float = 10.0) -> None:
    """Wait for ``pid`` to be dead (a zombie or reaped) without yielding to the event loop, so
    the engine has seen nothing of the death yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.005)
    pytest.fail(f"process {pid} still alive {timeout}s after SIGKILL")


async def test_a_turn_to_a_process_dead_before_its_death_is_seen_resumes(
    tmp_path: Path, fake_cli: str, workdir: Path
) -> None:
    """The process died before the next prompt was written, and the prompt's write is the first
    to meet the death (its stdin is closed; its exit is not seen yet: a subprocess holds its
    stderr). The prompt never reached it, so the turn resumes with the whole conversation and
    answers. It used to end with ``agent_died``: the actor's own clean-up kill marked the process
    as ended on purpose, which ruled the resume out (tests/security/test_agents.py, 1 run in 4)."""
    store = tmp_path / "transcripts"
    store.mkdir()
    async with Hotsession(make_config(tmp_path, fake_cli)) as hub:
        session = await hub.open(options=opts(workdir, FAKE_AGENT_DIR=str(store)))
        first = await session.send("[[linger:30]] [[say:one]]").wait()
        assert first.type == "result", first.data
        for n in range(2, 5):
            proc = session.process
            assert proc is not None
            os.kill(proc.pid, signal.SIGKILL)  # the CLI only: the lingering sleep keeps stderr
            _wait_dead_blocking(proc.pid)
            assert proc.alive  # the engine has not seen the death: the turn below meets it
            end = await session.send(f"[[linger:30]] [[say:turn {n}]]").wait()
            assert end.type == "result", end.data
            assert end.data["result"] == f"turn {n}"
            assert end.data["timing"]["source"] == "resume"
            assert end.data["num_turns"] == n  # the whole conversation, nothing lost
            assert session.process is not None and session.process.pid != proc.pid
