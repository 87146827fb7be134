"""Faults of the agent process, each injected many times into the real CLI.

What the client sees is asserted per fault; ``fault_loop`` checks the rest: a bystander session is
unaffected, the next turn resumes with the full context, every received event replays.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from tests.conftest import CLI, wait_until
from tests.reliability.conftest import make_config
from tests.reliability.faultloop import fault_loop

from hotsession import Config, Hotsession
from hotsession.testing.faults import Conversation, Ledger, new_marker, outcome
from hotsession.testing.faulty_cli import write_faulty_cli
from hotsession.testing.model_server import ModelServer

MIB = 1024 * 1024


def _seen_by_model(server: ModelServer, marker: str, reply: str | None = None) -> bool:
    return any(
        marker in e["markers"] and (reply is None or e.get("reply") == reply) for e in server.log()
    )


def _pid(conv: Conversation) -> int:
    proc = conv.session.process
    assert proc is not None, "the session has no live process"
    return proc.pid


async def test_kill_while_idle(hub: Hotsession, model_server, ledger: Ledger, workdir: Path):
    async def inject(conv: Conversation) -> str:
        proc = conv.session.process
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        await wait_until(lambda: not proc.alive)
        events = await conv.turn("[[say:resumed]]")
        assert events[-1].data.get("timing", {}).get("source") == "resume"
        return outcome(events[-1])

    await fault_loop(
        hub,
        model_server,
        ledger,
        workdir,
        fault="agent killed (-9) while idle",
        how="os.kill(pid, SIGKILL) between turns",
        n=10,
        inject=inject,
        expect={"result"},
    )


async def test_kill_mid_turn(hub: Hotsession, model_server, ledger: Ledger, workdir: Path):
    async def inject(conv: Conversation) -> str:
        m = new_marker()
        turn = conv.session.send(f"[[hang]] [[marker:{m}]]")
        await wait_until(lambda: _seen_by_model(model_server, m), timeout=20)
        os.kill(_pid(conv), signal.SIGKILL)
        events = await conv.collect(turn)
        assert events[-1].data.get("exit_code") == -signal.SIGKILL
        return outcome(events[-1])

    await fault_loop(
        hub,
        model_server,
        ledger,
        workdir,
        fault="agent killed (-9) mid-turn",
        how="SIGKILL while the model streams",
        n=10,
        inject=inject,
        expect={"error:agent_died"},
    )


async def test_kill_during_tool_call(hub: Hotsession, model_server, ledger: Ledger, workdir: Path):
    async def inject(conv: Conversation) -> str:
        m = new_marker()
        pid = _pid(conv)
        command = 'python3 -c "import time; time.sleep(30)" && echo late > late.txt'
        turn = conv.session.send(f"[[bash:{command}]] [[marker:{m}]]")

        def tool_running() -> list[psutil.Process]:
            try:
                kids = psutil.Process(pid).children(recursive=True)
            except psutil.NoSuchProcess:
                return []
            return [k for k in kids if "time.sleep" in " ".join(_cmdline(k))]

        await wait_until(tool_running, timeout=20)
        tools = tool_running()
        os.kill(pid, signal.SIGKILL)
        events = await conv.collect(turn)
        # the tool dies with its agent: no orphan keeps running (and writing) after the crash
        await wait_until(lambda: not any(_alive(t) for t in tools), timeout=5)
        return outcome(events[-1])

    await fault_loop(
        hub,
        model_server,
        ledger,
        workdir,
        fault="agent killed (-9) during a tool call",
        how="SIGKILL while a 30 s Bash command runs",
        n=5,
        inject=inject,
        expect={"error:agent_died"},
    )
    assert not (workdir / "late.txt").exists()


async def test_kill_during_spawn(hub: Hotsession, model_server, ledger: Ledger, workdir: Path):
    async def inject(conv: Conversation) -> str:
        proc = conv.session.process
        assert proc is not None
        proc.kill()
        await wait_until(lambda: not proc.alive)
        known = set(hub.supervisor.children)
        turn = conv.session.send("[[say:spawned]]")
        new: list[int] = []

        def appeared() -> bool:
            new[:] = [p for p in hub.supervisor.children if p not in known]
            return bool(new)

        await wait_until(appeared, timeout=20, interval=0.002)
        child = hub.supervisor.children[new[0]]
        assert child.init_response is None  # killed before `initialize` was answered
        os.kill(new[0], signal.SIGKILL)
        events = await conv.collect(turn)
        return outcome(events[-1])

    await fault_loop(
        hub,
        model_server,
        ledger,
        workdir,
        fault="agent killed (-9) during spawn",
        how="SIGKILL as soon as the resume process appears, before `initialize` completes",
        n=10,
        inject=inject,
        expect={"error:agent_start_failed"},
    )


async def test_sigstop_hang_hits_watchdog(
    tmp_path: Path, agent_env: dict[str, str], model_server, ledger: Ledger, workdir: Path
):
    config = make_config(tmp_path, watchdog_s=2.0)

    async def inject(conv: Conversation) -> str:
        m = new_marker()
        pid = _pid(conv)
        turn = conv.session.send(f"[[stall:1000]] [[marker:{m}]]")
        await wait_until(lambda: _seen_by_model(model_server, m), timeout=20)
        os.kill(pid, signal.SIGSTOP)
        events = await conv.collect(turn)
        await wait_until(lambda: not psutil.pid_exists(pid) or _zombie(pid), timeout=5)
        return outcome(events[-1])

    async with Hotsession(config) as hs:
        await fault_loop(
            hs,
            model_server,
            ledger,
            workdir,
            fault="agent stopped (SIGSTOP): hangs",
            how="SIGSTOP mid-turn, watchdog_s=2",
            n=5,
            inject=inject,
            expect={"error:agent_timeout"},
        )


def _faulty_config(tmp_path: Path, **changes: object) -> Config:
    assert CLI is not None
    shim = write_faulty_cli(tmp_path, CLI)
    return make_config(tmp_path, cli_path=str(shim), **changes)


@dataclass(frozen=True)
class WrappedFault:
    """A fault the CLI wrapper (``hotsession.testing.faulty_cli``) injects on a directive."""

    directive: str
    fault: str
    how: str
    n: int
    expect: str  # the client's outcome of the faulted turn
    exit_code: int | None = None  # the faulted turn's, when it ends with the agent's death
    changes: dict[str, Any] = field(default_factory=dict)  # to the engine's config


WRAPPED_FAULTS = [
    pytest.param(
        WrappedFault(
            "exit0",
            "agent exits 0 mid-turn",
            "wrapper (`hotsession.testing.faulty_cli`) kills the CLI and exits 0",
            n=8,
            expect="error:agent_died",
            exit_code=0,
        ),
        id="exit_zero_mid_turn",
    ),
    pytest.param(
        WrappedFault(
            "noise",
            "agent writes a garbage (non-JSON, binary) line",
            "wrapper injects NUL / invalid UTF-8 / ANSI bytes mid-turn",
            n=8,
            expect="result",
        ),
        id="garbage_line_is_skipped",
    ),
    pytest.param(
        WrappedFault(
            "corrupt",
            "agent writes corrupt JSON",
            'wrapper injects `{"type": "assistant", "message": {broken`',
            n=8,
            expect="error:agent_protocol",
        ),
        id="corrupt_json_line",
    ),
    pytest.param(
        WrappedFault(
            f"bignoise:{50 * MIB}",
            "agent writes a 50 MiB line (non-JSON)",
            "wrapper injects 50 MiB without a newline until the end; limit 64 MiB",
            n=3,
            expect="result",
        ),
        id="fifty_mib_noise_line",
    ),
    pytest.param(
        WrappedFault(
            f"bigjson:{50 * MIB}",
            "agent writes a 50 MiB JSON line over the limit",
            "wrapper injects a 50 MiB JSON line; `max_line_bytes` = 16 MiB",
            n=3,
            expect="error:agent_protocol",
            changes={"max_line_bytes": 16 * MIB},
        ),
        id="fifty_mib_line_over_the_limit",
    ),
]


@pytest.mark.parametrize("case", WRAPPED_FAULTS)
async def test_wrapped_cli_fault(
    case: WrappedFault,
    tmp_path: Path,
    agent_env: dict[str, str],
    model_server: ModelServer,
    ledger: Ledger,
    workdir: Path,
) -> None:
    async def inject(conv: Conversation) -> str:
        events = await conv.turn(f"[[fault:{case.directive}]] [[delay:200]] [[say:after-fault]]")
        if case.exit_code is not None:
            assert events[-1].data.get("exit_code") == case.exit_code
        return outcome(events[-1])

    async with Hotsession(_faulty_config(tmp_path, **case.changes)) as hs:
        await fault_loop(
            hs,
            model_server,
            ledger,
            workdir,
            fault=case.fault,
            how=case.how,
            n=case.n,
            inject=inject,
            expect={case.expect},
        )


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return []


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_loop_detects_a_lost_event(hub: Hotsession, model_server, workdir: Path):
    """The bookkeeping itself can fail: an event the client got but the log lacks is counted."""
    conv = Conversation(await hub.open(workdir), model_server)
    events = await conv.turn("[[say:x]]")
    assert await conv.lost() == 0
    fake = events[-1]
    conv.received[fake.seq + 100] = fake
    assert await conv.lost() == 1
    await asyncio.sleep(0)
