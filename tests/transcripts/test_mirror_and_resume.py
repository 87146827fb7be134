"""The mirror's path-to-key mapping and its ordering under failures; materializing subagent
transcripts, their metadata sidecars, and refusing unsafe store keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import InMemorySessionStore, project_key_for_directory
from claude_agent_sdk.types import SessionKey, SessionStoreEntry

from hotsession.transcripts.mirror import TranscriptMirror, session_key_for_path
from hotsession.transcripts.resume import materialize_transcript

SID = "4a0c5a47-2b8f-4f55-9d39-0d2f1b8f9e11"


def test_session_key_for_path() -> None:
    root = "/cfg/projects"
    assert session_key_for_path(f"{root}/-w/{SID}.jsonl", root) == {
        "project_key": "-w",
        "session_id": SID,
    }
    assert session_key_for_path(f"{root}/-w/{SID}/subagents/agent-1.jsonl", root) == {
        "project_key": "-w",
        "session_id": SID,
        "subpath": "subagents/agent-1",
    }
    assert session_key_for_path("/elsewhere/-w/x.jsonl", root) is None
    assert session_key_for_path(f"{root}/-w/{SID}.txt", root) is None
    assert session_key_for_path(f"{root}/x.jsonl", root) is None


class FlakyStore(InMemorySessionStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail = True

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        if self.fail and key["session_id"] == "b":
            raise RuntimeError("store down")
        await super().append(key, entries)


async def test_mirror_keeps_order_and_entries_when_a_flush_fails() -> None:
    store = FlakyStore()
    mirror = TranscriptMirror(store, "/cfg/projects")
    frames = [("a", 1), ("a", 2), ("b", 3), ("a", 4)]
    for sid, n in frames:
        mirror.add({"type": "transcript_mirror", "filePath": f"/cfg/projects/p/{sid}.jsonl",
                    "entries": [{"type": "user", "uuid": f"u{n}"}]})  # fmt: skip
    mirror.add({"type": "transcript_mirror", "filePath": "/tmp/other.jsonl", "entries": []})
    assert mirror.dropped_frames == 1
    with pytest.raises(RuntimeError):
        await mirror.flush()
    assert mirror.pending == 2  # b3 and a4 wait
    store.fail = False
    await mirror.flush()
    assert mirror.pending == 0
    a = await store.load({"project_key": "p", "session_id": "a"})
    assert [e["uuid"] for e in a or []] == ["u1", "u2", "u4"]


async def test_materialize_writes_subagents_and_sidecars_and_skips_unsafe_keys(
    tmp_path: Path,
) -> None:
    store = InMemorySessionStore()
    cwd = tmp_path / "work"
    cwd.mkdir()
    pk = project_key_for_directory(str(cwd))
    key: SessionKey = {"project_key": pk, "session_id": SID}
    main: list[Any] = [{"type": "user", "uuid": "1", "message": {"content": "hi"}}]
    await store.append(key, main)
    sub: list[Any] = [
        {"type": "agent_metadata", "agentType": "old"},
        {"type": "user", "uuid": "s1"},
        {"type": "agent_metadata", "agentType": "explore"},
    ]
    await store.append({**key, "subpath": "subagents/agent-7"}, sub)
    await store.append({**key, "subpath": "../../escape"}, [{"type": "user"}])

    cfg = tmp_path / "cfg"
    path = await materialize_transcript(store, cwd=cwd, session_id=SID, config_dir=cfg)
    assert path == cfg / "projects" / pk / f"{SID}.jsonl"
    assert [json.loads(line) for line in path.read_text().splitlines()] == main
    agent = cfg / "projects" / pk / SID / "subagents" / "agent-7.jsonl"
    assert [json.loads(line) for line in agent.read_text().splitlines()] == [sub[1]]
    meta = json.loads(agent.with_name("agent-7.meta.json").read_text())
    assert meta == {"agentType": "explore"}
    assert not list(tmp_path.rglob("escape*"))

    with pytest.raises(ValueError):
        await materialize_transcript(store, cwd=cwd, session_id="../x", config_dir=cfg)


async def test_materialize_replaces_an_older_local_copy(tmp_path: Path) -> None:
    store = InMemorySessionStore()
    key: SessionKey = {"project_key": project_key_for_directory(str(tmp_path)), "session_id": SID}
    await store.append(key, [{"type": "user", "uuid": "1"}, {"type": "user", "uuid": "2"}])
    cfg = tmp_path / "cfg"
    stale = cfg / "projects" / key["project_key"] / f"{SID}.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"type":"user","uuid":"1"}\n')
    path = await materialize_transcript(store, cwd=tmp_path, session_id=SID, config_dir=cfg)
    assert path == stale
    assert len(path.read_text().splitlines()) == 2
