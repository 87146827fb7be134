"""Switching a spare's model and permission mode at claim time, with the real CLI."""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any

from tests.conftest import wait_until
from tests.integration.test_pool import mark, pool_config, pool_of, ready

from hotsession import Hotsession
from hotsession.events import Event
from hotsession.options import SessionOptions
from hotsession.session import Session
from hotsession.testing.model_server import ModelServer

MODEL_X = "claude-sonnet-4-5"
MODEL_Y = "claude-haiku-4-5"


def write_prompt(path: Path, m: str) -> str:
    call = json.dumps({"file_path": str(path), "content": "written\n"})
    return f"write it [[marker:{m}]] [[tool:Write:{call}]] [[say:done]]"


async def run_turn(session: Session, prompt: str) -> list[Event]:
    """One turn's events (permission requests are denied, so the turn always ends)."""
    events = []
    async for event in session.send(prompt):
        events.append(event)
        if event.type == "permission_request":
            session.answer_permission(event.data["request_id"], "deny")
    assert events[-1].type == "result", events[-1].data
    return events


def transcript(agent_env: dict[str, str], cli_session_id: str) -> list[dict[str, Any]]:
    config_dir = agent_env["CLAUDE_CONFIG_DIR"]
    files = glob.glob(f"{config_dir}/projects/*/{cli_session_id}.jsonl")
    assert len(files) == 1, files
    records = [json.loads(line) for line in Path(files[0]).read_text().splitlines()]
    return [r for r in records if r.get("type") in ("user", "assistant")]


async def test_sibling_spare_switched_to_the_requested_model_and_mode(
    tmp_path: Path, agent_env: dict[str, str], workdir: Path, model_server: ModelServer
) -> None:
    async with Hotsession(pool_config(tmp_path)) as hub:
        x = SessionOptions.create(str(workdir), model=MODEL_X, permission_mode="default")
        y = x.replace(model=MODEL_Y, permission_mode="acceptEdits")
        first = await hub.open(options=x)  # a miss
        pool_of(hub).prewarm(x, 1)  # keep a spare of X
        await wait_until(lambda: ready(hub, x) >= 1, timeout=60)
        spare = pool_of(hub).profiles[x.profile_key()].ready[0]

        session = await hub.open(options=y)
        assert session.open_source == "spare-switched"
        assert session.cli_session_id == spare.cli_session_id
        assert session.process is spare.process
        m = mark()
        events = await run_turn(session, write_prompt(workdir / "y.txt", m))
        # acceptEdits took effect: the Write ran without asking
        assert not [e for e in events if e.type == "permission_request"]
        assert (workdir / "y.txt").read_text() == "written\n"
        result = events[-1].data
        assert result["result"] == "done" and result["timing"]["source"] == "spare-switched"
        # the turn's requests went to model Y
        turn_requests = [r for r in model_server.log() if m in r["markers"] and r["main"]]
        assert turn_requests and {r["model"] for r in turn_requests} == {MODEL_Y}
        # the transcript starts with the user's prompt (the switch left no entry before it)
        conversation = transcript(agent_env, session.cli_session_id)
        assert conversation[0]["type"] == "user"
        assert m in json.dumps(conversation[0]["message"]["content"])
        stats = {p["profile"]: p for p in pool_of(hub).stats()["profiles"]}
        assert (stats[y.profile_key()]["switched"], stats[y.profile_key()]["hits"]) == (1, 1)

        # the same Write in a process launched with X's mode ("default") asks first
        m2 = mark()
        events = await run_turn(first, write_prompt(workdir / "x.txt", m2))
        asked = [e for e in events if e.type == "permission_request"]
        assert asked and asked[0].data["tool_name"] == "Write"
        assert not (workdir / "x.txt").exists()
        x_requests = [r for r in model_server.log() if m2 in r["markers"] and r["main"]]
        assert {r["model"] for r in x_requests} == {MODEL_X}
