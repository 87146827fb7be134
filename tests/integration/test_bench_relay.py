"""``bench --cpu``'s bare relay against the real CLI and the scripted model: what it answers."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from hotsession.bench.environment import BenchError
from hotsession.bench.relay import start_relay
from hotsession.bench.wire import WireClient
from hotsession.cli_binary import resolve_cli_path
from hotsession.options import SessionOptions, build_argv, build_env


async def _turn(wire: WireClient, prompt: str) -> list[dict[str, object]]:
    request = wire.request_bytes("/turn", {"prompt": prompt})
    out = []
    async for kind, data in wire.events(request):
        assert kind == "message"
        out.append(json.loads(data))
    return out


async def test_relay_answers_two_turns_on_one_connection(agent_env: dict[str, str], workdir: Path):
    options = SessionOptions.create(str(workdir), permission_mode="bypassPermissions")
    argv = build_argv(str(resolve_cli_path(None)), options, session_id=str(uuid.uuid4()))
    env = build_env(options, base=dict(os.environ), allow_root_bypass=True)
    relay = await start_relay(argv, env=env, cwd=workdir)
    wire = WireClient("127.0.0.1", relay.port, "")
    try:
        first = await _turn(wire, "[[stream:5]][[say:one two three four five]]")
        (conn,) = wire._idle  # the body ended cleanly and the socket was kept alive
        second = await _turn(wire, "[[say:second]]")
        assert wire._idle == [conn]  # the second turn used the same connection
        with pytest.raises(BenchError, match='400 .*"code": "bad_request"'):
            await wire.call("POST", "/turn", {"text": "no prompt"})
    finally:
        await wire.aclose()
        await relay.stop()
    assert relay.proc.returncode == 0
    for lines, text in ((first, "one two three four five"), (second, "second")):
        types = [m["type"] for m in lines]
        assert types[-1] == "result" and types.count("result") == 1
        assert lines[-1]["result"] == text and not lines[-1]["is_error"]
        assert "assistant" in types and "stream_event" not in types  # deltas dropped
    assert first[0]["type"] == "system"
