"""The transport's edge cases against the fake agent (``hotsession.testing.fake_agent``, a real
process speaking the CLI's protocol; its prompt directives and environment switch the cases)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from hotsession.agent import COALESCE_S, QUIET_PAUSE_S, AgentProcess, PartialMessage
from hotsession.errors import (
    AgentDied,
    AgentError,
    AgentProtocolError,
    AgentStartError,
    AgentTimeout,
)
from hotsession.supervisor import Supervisor
from hotsession.testing import fake_agent

FAKE = fake_agent.__file__


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def spawn(tmp_path: Path, sup: Supervisor | None = None, **env: str) -> AgentProcess:
    sup = sup or Supervisor(spawn_timeout=5, max_line_bytes=1024 * 1024)
    return await sup.spawn(
        [sys.executable, "-S", FAKE], cwd=str(tmp_path), env={**os.environ, **env}, label="test"
    )


async def next_message(agent: AgentProcess) -> dict[str, Any]:
    """The next message of the turn (the fake's ``system/init`` at a turn's start skipped)."""
    async with asyncio.timeout(5):
        while True:
            msg = await agent.next_message()
            if msg.get("subtype") != "init":
                return msg


async def died_with(agent: AgentProcess) -> AgentError:
    """The error the transport raises to a reader once the process is gone."""
    with pytest.raises(AgentError) as info:
        await next_message(agent)
    assert info.value is agent.exit_error
    return info.value


async def test_turn_round_trip(tmp_path: Path) -> None:
    agent = await spawn(tmp_path)
    assert agent.init_response is not None and agent.init_response["pid"] == agent.pid
    await agent.send_user("hi")
    assert agent.turns == 1  # the transport counts the turns it started
    assert (await next_message(agent))["type"] == "assistant"
    res = await next_message(agent)
    assert res["type"] == "result" and res["result"] == "echo: hi"
    await agent.close()
    assert gone(agent.pid)


async def test_iteration_yields_messages_then_raises_the_death(tmp_path: Path) -> None:
    agent = await spawn(tmp_path)
    await agent.send_user("one")
    await agent.send_user("two")
    seen: list[str] = []
    with pytest.raises(AgentDied) as info:
        async with asyncio.timeout(5):
            async for msg in agent:
                seen.append(msg["type"])
                if len(seen) == 6:
                    agent.kill()
    assert seen == ["system", "assistant", "result"] * 2
    assert info.value is agent.exit_error
    await died_with(agent)  # every later read raises the same typed end


async def test_drain_idle_takes_what_was_written_without_waiting(tmp_path: Path) -> None:
    agent = await spawn(tmp_path)
    assert agent.drain_idle() == []
    await agent.send_user("x")
    async with asyncio.timeout(5):
        while len(got := agent.drain_idle()) == 0:
            await asyncio.sleep(0.01)
    rest = [*got]
    while not any(m["type"] == "result" for m in rest):
        await asyncio.sleep(0.01)
        rest += agent.drain_idle()
    assert [m["type"] for m in rest] == ["system", "assistant", "result"]
    agent.kill()
    await agent.exited.wait()
    assert agent.drain_idle() == []  # a dead process's drain is empty, not an error


async def test_noise_lines_are_skipped(tmp_path: Path) -> None:
    agent = await spawn(tmp_path)
    await agent.send_user("[[noise]]")
    assert (await next_message(agent))["type"] == "assistant"
    assert "[stdout] [debug] not json" in agent.stderr_tail()
    await agent.close()


async def test_corrupt_json_kills_with_protocol_error(tmp_path: Path) -> None:
    agent = await spawn(tmp_path)
    await agent.send_user("[[corrupt]]")
    await died_with(agent)
    assert isinstance(agent.exit_error, AgentProtocolError)
    assert gone(agent.pid)


async def test_line_over_limit_kills_with_protocol_error(tmp_path: Path) -> None:
    agent = await spawn(tmp_path)
    await agent.send_user("[[bigline:1500000]]")
    await died_with(agent)
    assert isinstance(agent.exit_error, AgentProtocolError)
    assert "limit" in agent.exit_error.message
    assert gone(agent.pid)


async def test_line_under_limit_passes(tmp_path: Path) -> None:
    agent = await spawn(tmp_path)
    await agent.send_user("[[bigline:900000]]")
    msg = await next_message(agent)
    assert len(msg["pad"]) == 900_000
    await agent.close()


async def test_exit_zero_mid_turn_is_a_typed_death(tmp_path: Path) -> None:
    agent = await spawn(tmp_path)
    await agent.send_user("[[exit:0]]")
    await died_with(agent)
    assert isinstance(agent.exit_error, AgentDied)
    assert agent.exit_error.exit_code == 0
    with pytest.raises(AgentDied):
        await agent.send_user("again")


async def test_start_failure_carries_exit_code_and_stderr(tmp_path: Path) -> None:
    with pytest.raises(AgentStartError) as info:
        await spawn(tmp_path, FAKE_AGENT_EXIT="7")
    assert info.value.exit_code == 7
    assert "configured to fail at start-up" in (info.value.stderr_tail or "")


async def test_a_refused_start_is_counted_apart_from_spawn_failures(tmp_path: Path) -> None:
    """``spawn(refusal=…)``: a start that fails as the predicate says (the caller's error) counts
    in ``spawn_refusals_total``; any other failed start still in ``spawn_failures_total``."""
    sup = Supervisor(spawn_timeout=5)
    argv = [sys.executable, "-S", FAKE]
    env = {**os.environ, "FAKE_AGENT_EXIT": "1"}

    def refused(exc: AgentStartError) -> bool:
        return "configured to fail at start-up" in (exc.stderr_tail or "")

    with pytest.raises(AgentStartError):
        await sup.spawn(argv, cwd=str(tmp_path), env=env, label="t", refusal=refused)
    assert (sup.spawn_refusals_total, sup.spawn_failures_total) == (1, 0)
    with pytest.raises(AgentStartError):
        await sup.spawn(argv, cwd=str(tmp_path), env=env, label="t", refusal=lambda e: False)
    assert (sup.spawn_refusals_total, sup.spawn_failures_total) == (1, 1)


async def test_no_handshake_is_a_start_timeout_and_the_process_is_killed(tmp_path: Path) -> None:
    sup = Supervisor(spawn_timeout=0.5)
    with pytest.raises(AgentStartError):
        await spawn(tmp_path, sup, FAKE_AGENT_IGNORE_CONTROL="initialize")
    assert sup.children == {} or all(not a.alive for a in sup.children.values())
    for proc in psutil.Process().children(recursive=True):
        assert FAKE not in " ".join(proc.cmdline()) or proc.status() == psutil.STATUS_ZOMBIE


async def test_control_request_times_out_typed(tmp_path: Path) -> None:
    agent = await spawn(tmp_path, FAKE_AGENT_IGNORE_CONTROL="interrupt")
    with pytest.raises(AgentTimeout):
        await agent.request("interrupt", timeout=0.2)
    await agent.close()


async def test_close_escalates_to_sigkill(tmp_path: Path) -> None:
    agent = await spawn(tmp_path, FAKE_AGENT_STUBBORN="1")
    began = time.monotonic()
    await agent.close(step_timeout=0.3)
    assert gone(agent.pid)
    assert time.monotonic() - began < 5  # bounded: EOF, TERM (ignored), then KILL


async def test_permission_request_is_answered_by_handler(tmp_path: Path) -> None:
    agent = await spawn(tmp_path)
    seen: list[dict[str, Any]] = []

    async def handler(_agent: AgentProcess, request: dict[str, Any]) -> dict[str, Any]:
        seen.append(request)
        return {"behavior": "allow", "updatedInput": {"command": "edited"}}

    agent.attach(handler)
    await agent.send_user("rm -rf / [[ask:Bash]]")
    await next_message(agent)  # assistant
    res = await next_message(agent)
    assert seen[0]["tool_name"] == "Bash" and seen[0]["input"] == {
        "command": "rm -rf / [[ask:Bash]]"
    }
    assert '"edited"' in res["result"]
    await agent.close()


async def test_cancel_request_cancels_handler(tmp_path: Path) -> None:
    agent = await spawn(tmp_path)
    cancelled = asyncio.Event()
    withdrawn: list[str] = []

    async def handler(_agent: AgentProcess, request: dict[str, Any]) -> dict[str, Any]:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    agent.attach(handler, withdrawn.append)
    await agent.send_user("[[ask-withdrawn]]")
    async with asyncio.timeout(5):
        await cancelled.wait()
    assert withdrawn == ["perm-1"]
    await agent.close()


def test_children_die_with_the_daemon(tmp_path: Path) -> None:
    """A daemon killed with -9 takes its agent processes with it (parent-death signal).

    The fake ignores stdin EOF and SIGTERM, like a CLI in the middle of a turn.
    """
    script = tmp_path / "daemon.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, os, sys
            from hotsession.supervisor import Supervisor
            async def main():
                sup = Supervisor(spawn_timeout=5)
                agent = await sup.spawn([sys.executable, "-S", {FAKE!r}], cwd={str(tmp_path)!r},
                                        env={{**os.environ, "FAKE_AGENT_STUBBORN": "1"}},
                                        label="t")
                print(agent.pid, flush=True)
                await asyncio.sleep(60)
            asyncio.run(main())
            """
        )
    )
    daemon = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert daemon.stdout is not None
    child = int(daemon.stdout.readline())
    assert psutil.pid_exists(child)
    daemon.kill()
    daemon.wait()
    daemon.stdout.close()
    deadline = time.monotonic() + 5
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gone(child)


async def deliver_turn(agent: AgentProcess) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A turn's messages as a turn's runner takes them (``deliver``), and its result."""
    taken: list[dict[str, Any]] = []

    def take(batch: list[tuple[dict[str, Any], bytes | None]]) -> int | None:
        for i, (msg, line) in enumerate(batch):
            # Each message comes with the CLI's own line (SSE frames and rows are that line).
            assert line is not None
            if isinstance(msg, PartialMessage):
                assert msg.raw is line
            else:
                assert json.loads(line) == msg
            taken.append(msg)
            if msg.get("type") == "result":
                return i
        return None

    async with asyncio.timeout(10):
        result = await agent.deliver(take)
    return taken, result


async def test_deltas_arrive_whole_in_order_and_only_when_asked(tmp_path: Path) -> None:
    """Hundreds of one-write lines, read in chunks (coalesced): every delta once, in order,
    before the assistant message; none when the owner did not ask for them."""
    agent = await spawn(tmp_path)
    agent.partial_messages = True
    await agent.send_user("[[stream:300]]")
    taken, result = await deliver_turn(agent)
    partial = [m for m in taken if isinstance(m, PartialMessage)]
    texts = [json.loads(m.raw)["event"]["delta"]["text"] for m in partial]
    assert texts == [f"d{i}" for i in range(300)]
    kinds = [m["type"] for m in taken]
    assert kinds == ["stream_event"] * 300 + ["system", "assistant", "result"]
    assert result is taken[-1]
    agent.partial_messages = False
    await agent.send_user("[[stream:300]]")
    taken, _ = await deliver_turn(agent)
    assert [m["type"] for m in taken] == ["system", "assistant", "result"]
    await agent.close()


async def test_a_line_written_in_pieces_is_one_message(tmp_path: Path) -> None:
    agent = await spawn(tmp_path)
    await agent.send_user("[[split]]")
    taken, _ = await deliver_turn(agent)
    assert [m for m in taken if m.get("split")] == [
        {"type": "assistant", "session_id": taken[0]["session_id"], "split": True}
    ]
    await agent.close()


async def test_delivery_ends_at_the_sinks_last_message_and_the_rest_stays_queued(
    tmp_path: Path,
) -> None:
    agent = await spawn(tmp_path)
    await agent.send_user("one")
    await agent.send_user("two")
    taken, result = await deliver_turn(agent)
    assert result["result"] == "echo: one"
    assert [m["type"] for m in taken] == ["system", "assistant", "result"]
    rest: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        while not any(m["type"] == "result" for m in rest):
            rest.append(await agent.next_message())
    assert [m["type"] for m in rest] == ["system", "assistant", "result"]
    assert rest[-1]["result"] == "echo: two"
    await agent.close()


async def test_delivery_raises_the_death_and_a_sinks_error(tmp_path: Path) -> None:
    agent = await spawn(tmp_path)

    def broken(batch: list[tuple[dict[str, Any], bytes | None]]) -> int | None:
        raise ValueError("the sink failed")

    await agent.send_user("one")
    with pytest.raises(ValueError, match="the sink failed"):
        async with asyncio.timeout(5):
            await agent.deliver(broken)
    await asyncio.sleep(0.2)  # the rest of that turn, if it came apart: the reader went on
    agent.drain_idle()
    await agent.send_user("two")
    taken, result = await deliver_turn(agent)
    assert result["result"] == "echo: two"
    await agent.send_user("[[exit:0]]")
    with pytest.raises(AgentDied) as info:
        await deliver_turn(agent)
    assert info.value is agent.exit_error


async def test_a_cancelled_read_loses_no_message(tmp_path: Path) -> None:
    agent = await spawn(tmp_path)
    pending = asyncio.ensure_future(agent.next_message())
    await asyncio.sleep(0.05)
    pending.cancel()
    await agent.send_user("x")
    assert (await next_message(agent))["type"] == "assistant"
    await agent.close()


def test_tagged_processes_are_killed_by_their_tag_alone(tmp_path: Path) -> None:
    """What a dead agent's tools meet (``_kill_tagged``): a process whose environment carries
    the agent's tag is killed, one with another tag or none is not."""
    from hotsession.supervisor import AGENT_TAG_ENV, _kill_tagged

    def start(tag: str | None) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != AGENT_TAG_ENV}
        if tag is not None:
            env[AGENT_TAG_ENV] = tag
        return subprocess.Popen(["sleep", "60"], env=env)

    mine, other, untagged = start("1:mine"), start("1:other"), start(None)
    try:
        assert _kill_tagged("1:mine".__eq__) == 1
        assert mine.wait(5) == -9
        assert other.poll() is None and untagged.poll() is None
    finally:
        for p in (mine, other, untagged):
            p.kill()
            p.wait()


class _Pipe:
    """The stdout pipe's transport, as far as the reader's coalescing uses it."""

    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.resumed += 1


class _Transport:
    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def get_pipe_transport(self, fd: int) -> _Pipe | None:
        return self.pipe if fd == 1 else None


async def test_reading_pauses_again_when_deltas_queued_during_a_pause() -> None:
    """The read just after a pause for deltas takes what queued meanwhile; more follow, so it
    pauses again (it used to count only the previous read, 1 ms ago, and read the next line
    alone). A read long after the pause ended, or one ending with no delta, does not pause."""
    loop = asyncio.get_running_loop()
    agent = AgentProcess(label="coalesce", max_line_bytes=1 << 20)
    pipe = _Pipe()
    agent._transport = _Transport(pipe)  # type: ignore[assignment]
    delta = b'{"type":"stream_event","event":{"type":"content_block_delta","index":0}}\n'
    stop = b'{"type":"stream_event","event":{"type":"message_stop"}}\n'
    agent.last_output = loop.time() - 1.0
    agent._read_stdout(delta)  # the first delta after a quiet spell: no pause
    assert pipe.paused == 0
    agent._read_stdout(delta * 3)  # right after the previous read: pause
    assert pipe.paused == 1
    agent.last_output = loop.time() - 2 * COALESCE_S  # the pause lasted its time ...
    agent._resume_reading(pipe)  # type: ignore[arg-type]
    agent._read_stdout(delta * 20)  # ... and deltas queued meanwhile: pause again
    assert (pipe.resumed, pipe.paused) == (1, 2)
    agent._resume_reading(pipe)  # type: ignore[arg-type]
    agent._read_stdout(delta * 5 + stop)  # the reply ended: no pause, its result must not wait
    assert pipe.paused == 2
    agent.last_output = loop.time() - 1.0
    agent._resume_reading(pipe)  # type: ignore[arg-type]
    agent._resumed_at = loop.time() - 1.0  # nothing came during that pause, a delta comes later
    agent._read_stdout(delta)
    assert pipe.paused == 2


async def test_reading_pauses_after_an_unstreamed_block_starts() -> None:
    """A session that does not stream: after the start of a reply or of a content block, reading
    pauses ``QUIET_PAUSE_S`` so the block's lines come in one read (they were a read each), then
    resumes. Never after the reply's end (the result follows it) nor for a streaming session
    (its first token would wait)."""
    loop = asyncio.get_running_loop()
    agent = AgentProcess(label="quiet", max_line_bytes=1 << 20)
    pipe = _Pipe()
    agent._transport = _Transport(pipe)  # type: ignore[assignment]
    event = b'{"type":"stream_event","event":{"type":"%s","index":0}}\n'
    agent.last_output = loop.time() - 1.0
    agent._read_stdout(b'{"type":"system","subtype":"init"}\n')
    assert pipe.paused == 0
    agent.last_output = loop.time() - 1.0
    agent._read_stdout(event % b"message_start")
    assert pipe.paused == 1
    await asyncio.sleep(QUIET_PAUSE_S * 5)
    assert pipe.resumed == 1
    agent.last_output = loop.time() - 1.0
    agent._read_stdout(event % b"content_block_stop" + event % b"content_block_start")
    assert pipe.paused == 2
    await asyncio.sleep(QUIET_PAUSE_S * 5)
    for end in (b"message_delta", b"message_stop", b"content_block_stop"):
        agent.last_output = loop.time() - 1.0
        agent._read_stdout(event % end)
    assert pipe.paused == 2
    agent.partial_messages = True  # a streaming session: its deltas go out at once
    agent.last_output = loop.time() - 1.0
    agent._read_stdout(event % b"message_start" + event % b"content_block_start")
    assert pipe.paused == 2
    assert [m["type"] for m in agent.drain_idle()] == ["system", "stream_event", "stream_event"]
