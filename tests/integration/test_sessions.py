"""Persistent sessions with the real CLI: context, tools, queueing, interrupt, crashes, resume."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from tests.conftest import wait_until

from hotsession import Config, Event, Hotsession, Session
from hotsession.testing.model_server import ModelServer


async def run(session: Session, prompt: str) -> list[Event]:
    return [e async for e in session.send(prompt)]


def main_with(ms: ModelServer, marker: str) -> list[dict[str, Any]]:
    return [e for e in ms.log() if marker in e["markers"] and e.get("main")]


def mark() -> str:
    return uuid.uuid4().hex[:10]


async def test_follow_ups_keep_context(hub: Hotsession, workdir: Path, model_server: ModelServer):
    session = await hub.open(workdir, permission_mode="bypassPermissions")
    pid = session.process.pid if session.process else None
    m1, m2, m3 = mark(), mark(), mark()
    first = await run(session, f"first [[marker:{m1}]] [[say:alpha]]")
    assert first[-1].type == "result", first[-1]
    assert first[-1].data["result"] == "alpha"
    second = await run(session, f"second [[marker:{m2}]]")
    assert second[-1].data["timing"]["source"] == "hot"
    await run(session, f"third [[marker:{m3}]]")
    counts = [main_with(model_server, m)[-1]["n_messages"] for m in (m1, m2, m3)]
    assert counts[0] < counts[1] < counts[2], counts  # the conversation grows at the model
    assert session.process is not None and session.process.pid == pid  # one process, hot
    seqs = [e.seq for e in first]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    timing = first[-1].data["timing"]
    for key in ("queued_ms", "claim_ms", "ttfe_ms", "thinking_ms", "tools_ms", "total_ms"):
        assert key in timing
    assert timing["source"] == "spawn"  # the process this first turn waited for was spawned
    assert "time_to_request_ms" in timing
    assert first[-1].data["cli_session_id"] == session.cli_session_id


async def test_bash_tool_creates_file_in_cwd(hub: Hotsession, workdir: Path):
    session = await hub.open(workdir, permission_mode="bypassPermissions")
    events = await run(session, "[[bash:echo hi > made-by-tool.txt]] [[say:finished]]")
    assert events[-1].type == "result"
    assert (workdir / "made-by-tool.txt").read_text().strip() == "hi"
    assert events[-1].data["timing"]["tool_calls"] == 1
    assert events[-1].data["result"] == "finished"


async def test_prompts_queue_in_order_never_merged(
    hub: Hotsession, workdir: Path, model_server: ModelServer
):
    session = await hub.open(workdir, permission_mode="bypassPermissions")
    marks = [mark() for _ in range(3)]
    turns = [session.send(f"q{i} [[delay:300]] [[marker:{m}]]") for i, m in enumerate(marks)]
    results = [await t.wait() for t in turns]
    assert [r.type for r in results] == ["result"] * 3
    assert [r.turn for r in results] == sorted(r.turn for r in results)
    requests = [main_with(model_server, m) for m in marks]
    assert all(len(r) == 1 for r in requests), requests  # each prompt its own model request
    counts = [r[0]["n_messages"] for r in requests]
    assert counts[0] < counts[1] < counts[2]
    # the later turns said they were queued
    queued = [e async for e in session.events(after=0, follow=False) if e.type == "queued"]
    assert len(queued) == 2


async def test_queue_bound_gives_clear_error(tmp_path: Path, agent_env: dict[str, str]):
    from hotsession.errors import QueueFull

    config = Config(state_dir=tmp_path / "s", pool_enabled=False, queue_max=1)
    async with Hotsession(config) as hs:
        work = tmp_path / "w"
        work.mkdir()
        session = await hs.open(work)
        running = session.send("[[delay:1500]] one")
        await wait_until(lambda: session.current is not None)
        session.send("two")  # queued
        with pytest.raises(QueueFull):
            session.send("three")
        assert (await running.wait()).type == "result"


async def test_interrupt_running_turn(hub: Hotsession, workdir: Path, model_server: ModelServer):
    session = await hub.open(workdir, permission_mode="bypassPermissions")
    m = mark()
    turn = session.send(f"[[hang]] [[marker:{m}]]")
    await wait_until(lambda: any(m in e["markers"] for e in model_server.log()), timeout=20)
    assert await session.interrupt()
    end = await turn.wait()
    assert end.type == "error" and end.data["code"] == "interrupted"
    after = await run(session, "[[say:still here]]")
    assert after[-1].type == "result" and after[-1].data["result"] == "still here"


async def kill_and_resume(session: Session, model_server: ModelServer, *, mid_turn: bool) -> None:
    m1 = mark()
    await run(session, f"remember [[marker:{m1}]]")
    before = main_with(model_server, m1)[-1]["n_messages"]
    proc = session.process
    assert proc is not None
    if mid_turn:
        m = mark()
        turn = session.send(f"[[hang]] [[marker:{m}]]")
        await wait_until(lambda: any(m in e["markers"] for e in model_server.log()), timeout=20)
        os.kill(proc.pid, signal.SIGKILL)
        end = await turn.wait()
        assert end.type == "error"
        assert end.data["code"] == "agent_died"
        assert end.data["exit_code"] == -signal.SIGKILL
    else:
        os.kill(proc.pid, signal.SIGKILL)
        await wait_until(lambda: not proc.alive)
    m2 = mark()
    events = await run(session, f"after crash [[marker:{m2}]] [[say:back]]")
    assert events[-1].type == "result", events[-1].data
    assert events[-1].data["timing"]["source"] == "resume"
    after = main_with(model_server, m2)[-1]["n_messages"]
    assert after > before  # full context: the earlier turns reached the model again
    assert session.process is not None and session.process.pid != proc.pid


async def test_kill_between_turns_resumes(hub: Hotsession, workdir: Path, model_server):
    session = await hub.open(workdir, permission_mode="bypassPermissions")
    await kill_and_resume(session, model_server, mid_turn=False)


async def test_kill_mid_turn_errors_that_turn_only(hub: Hotsession, workdir: Path, model_server):
    session = await hub.open(workdir, permission_mode="bypassPermissions")
    other = await hub.open(workdir, permission_mode="bypassPermissions")
    other_pid = other.process.pid if other.process else None
    await kill_and_resume(session, model_server, mid_turn=True)
    assert other.process is not None and other.process.pid == other_pid  # untouched
    assert (await run(other, "fine?"))[-1].type == "result"


async def test_kill_just_before_turn_is_transparent(
    hub: Hotsession, workdir: Path, model_server: ModelServer
):
    session = await hub.open(workdir, permission_mode="bypassPermissions")
    m1, m2 = mark(), mark()
    await run(session, f"remember [[marker:{m1}]]")
    proc = session.process
    assert proc is not None
    os.kill(proc.pid, signal.SIGKILL)  # no waiting: the turn starts before the death is seen
    events = await run(session, f"next [[marker:{m2}]] [[say:seamless]]")
    assert events[-1].type == "result", events[-1].data
    assert events[-1].data["result"] == "seamless"
    assert [e for e in events if e.type == "error"] == []
    before = main_with(model_server, m1)[-1]["n_messages"]
    assert main_with(model_server, m2)[-1]["n_messages"] > before


async def test_prompt_written_to_a_dead_unnoticed_process_resumes(
    hub: Hotsession, workdir: Path, model_server: ModelServer
):
    """The process is already dead (and reaped behind the engine's back, as
    tests/security/test_agents.py does) when the next prompt is written, before its exit is
    seen: the write fails, the prompt never reached it, so the turn resumes the conversation and
    answers. It used to end with ``agent_died`` when the write won the race against the exit
    (about half the runs of this test; tests/unit/test_session_resume.py holds the race open
    and fails every time). Each round is the same race."""
    session = await hub.open(workdir, permission_mode="bypassPermissions")
    m1 = mark()
    await run(session, f"remember [[marker:{m1}]]")
    before = main_with(model_server, m1)[-1]["n_messages"]
    for round_ in range(4):
        proc = session.process
        assert proc is not None
        gone = psutil.Process(proc.pid)
        gone.kill()
        gone.wait(10)  # reaps it (the daemon's child) behind the engine's back, as in the test
        assert proc.alive  # not noticed yet: the turn below is the first to meet the death
        m = mark()
        events = await run(session, f"round {round_} [[marker:{m}]] [[say:back {round_}]]")
        assert events[-1].type == "result", events[-1].data
        assert events[-1].data["result"] == f"back {round_}"
        assert events[-1].data["timing"]["source"] == "resume"
        assert main_with(model_server, m)[-1]["n_messages"] > before  # full context
        assert session.process is not None and session.process.pid != proc.pid


async def test_output_line_over_one_mib(hub: Hotsession, workdir: Path):
    session = await hub.open(workdir, permission_mode="bypassPermissions")
    events = await run(session, "[[big:3000000]]")
    assert events[-1].type == "result"
    assert len(events[-1].data["result"]) == 3_000_000


async def test_line_over_limit_is_typed_error_then_resume(
    tmp_path: Path, agent_env: dict[str, str], model_server: ModelServer
):
    config = Config(state_dir=tmp_path / "s", pool_enabled=False, max_line_bytes=1024 * 1024)
    work = tmp_path / "w"
    work.mkdir()
    async with Hotsession(config) as hs:
        session = await hs.open(work)
        await run(session, "hello")
        events = await run(session, "[[big:2000000]]")
        assert events[-1].type == "error"
        assert events[-1].data["code"] == "agent_protocol"
        events = await run(session, "[[say:recovered]]")
        assert events[-1].type == "result" and events[-1].data["result"] == "recovered"


async def test_watchdog_kills_silent_turn(
    tmp_path: Path, agent_env: dict[str, str], model_server: ModelServer
):
    config = Config(state_dir=tmp_path / "s", pool_enabled=False, watchdog_s=2)
    work = tmp_path / "w"
    work.mkdir()
    async with Hotsession(config) as hs:
        session = await hs.open(work)
        proc = session.process
        assert proc is not None
        events = await run(session, "[[hang]]")
        assert events[-1].type == "error" and events[-1].data["code"] == "agent_timeout"
        await wait_until(lambda: not proc.alive)
        assert (await run(session, "[[say:again]]"))[-1].data["result"] == "again"


async def test_no_orphans_after_close(tmp_path: Path, agent_env: dict[str, str]):
    config = Config(state_dir=tmp_path / "s", pool_enabled=False)
    work = tmp_path / "w"
    work.mkdir()
    pids: list[int] = []
    async with Hotsession(config) as hs:
        a = await hs.open(work)
        b = await hs.open(work)
        await run(a, "hi")
        pids += [p.pid for s in (a, b) if (p := s.process)]
        tool_pid_file = work / "bg.pid"
        await run(b, f"[[bash:sleep 300 & echo $! > {tool_pid_file}]]")
        await hs.close_session(a.id)
        assert not psutil.pid_exists(pids[0]) or psutil.Process(pids[0]).status() == "zombie"
    if tool_pid_file.exists():
        pids.append(int(tool_pid_file.read_text()))
    await asyncio.sleep(0.2)
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert alive == []


async def test_restart_resumes_with_context(
    tmp_path: Path, agent_env: dict[str, str], model_server: ModelServer
):
    config = Config(state_dir=tmp_path / "s", pool_enabled=False)
    work = tmp_path / "w"
    work.mkdir()
    m1, m2 = mark(), mark()
    async with Hotsession(config) as hs:
        session = await hs.open(work)
        await run(session, f"one [[marker:{m1}]]")
        sid, cli_id = session.id, session.cli_session_id
    async with Hotsession(config) as hs:
        session = hs.get(sid)
        assert session.state == "evicted" and session.cli_session_id == cli_id
        events = await run(session, f"two [[marker:{m2}]]")
        assert events[-1].type == "result"
        assert (
            main_with(model_server, m2)[-1]["n_messages"]
            > main_with(model_server, m1)[-1]["n_messages"]
        )
        replay = [e async for e in session.events(after=0, follow=False)]
        assert [e.seq for e in replay] == list(range(1, len(replay) + 1))


async def test_start_failure_is_typed(tmp_path: Path, agent_env: dict[str, str]):
    from hotsession.errors import AgentStartError

    fake = tmp_path / "claude"
    fake.write_text("#!/bin/sh\necho 'boom: bad credentials' >&2\nexit 3\n")
    fake.chmod(0o755)
    config = Config(state_dir=tmp_path / "s", pool_enabled=False, cli_path=str(fake))
    async with Hotsession(config) as hs:
        with pytest.raises(AgentStartError) as info:
            await hs.open(tmp_path)
        assert info.value.exit_code == 3
        assert "boom: bad credentials" in (info.value.stderr_tail or "")
