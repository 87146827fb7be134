"""A session's process between turns, as a front reads and writes it (``Session.between_turns``),
with the real CLI: what the idle CLI writes on its own, control requests, one view per process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hotsession import Hotsession
from hotsession.errors import AgentError

pytestmark = pytest.mark.integration


async def test_the_idle_process_is_read_through_the_session(hub: Hotsession, workdir: Path):
    # The Agent SDK asks the CLI for session_state_changed frames; the CLI writes "idle" after
    # the turn's result, outside the turn: the session's turn never takes it, the front does.
    env = {"CLAUDE_CODE_SDK_READS_SESSION_STATE": "1"}
    session = await hub.open(workdir, env=env)
    view = session.between_turns
    assert view is not None and view.alive
    assert view.init_response is not None and "commands" in view.init_response
    events = [e async for e in session.send("[[say:one]]")]
    assert events[-1].type == "result" and events[-1].data["result"] == "one"
    states = [
        e.data.get("state") for e in events if e.data.get("subtype") == "session_state_changed"
    ]
    assert "idle" not in states  # the turn saw "running" at most
    seen = []
    async with asyncio.timeout(30):
        while not any(m.get("state") == "idle" for m in seen):
            seen.append(await view.next_message())
    assert all(m.get("subtype") == "session_state_changed" for m in seen), seen
    # A control request between turns, answered by the CLI.
    status = await view.request("mcp_status", timeout=30)
    assert "mcpServers" in status
    # The view belongs to the process: evicted, there is none; the resumed process has its own.
    assert await session.evict()
    assert session.between_turns is None and not view.alive
    with pytest.raises(AgentError):
        await view.next_message()
    events = [e async for e in session.send("[[say:two]]")]
    assert events[-1].data["result"] == "two"
    again = session.between_turns
    assert again is not None and again is not view and again.alive


async def test_partial_messages_follow_the_session_to_its_process(hub: Hotsession, workdir: Path):
    session = await hub.open(workdir)
    events = [e async for e in session.send("[[say:a b c]]")]
    assert not [e for e in events if e.data.get("type") == "stream_event"]
    session.partial_messages = True  # a hot session now serving a client that wants them
    events = [e async for e in session.send("[[say:a b c]]")]
    assert [e for e in events if e.data.get("type") == "stream_event"]
