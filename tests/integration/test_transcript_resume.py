"""Transcripts travel: the real CLI mirrors its transcript into the Postgres store on "node A";
on "node B" (another config dir, nothing shared on disk) the transcript is materialized from the
store and ``claude --resume`` continues the conversation with its context."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from hotsession.cli_binary import bundled_cli_path
from hotsession.testing.model_server import ModelServer
from hotsession.testing.postgres import PrivatePostgres
from hotsession.transcripts.mirror import TranscriptMirror, is_mirror_frame
from hotsession.transcripts.postgres import PostgresSessionStore
from hotsession.transcripts.resume import materialize_transcript


async def run_cli(
    env: dict[str, str], config_dir: Path, cwd: Path, prompt: str, *extra: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``claude -p`` with the mirror on; returns (messages, mirror frames)."""
    cli = bundled_cli_path()
    assert cli is not None
    argv = [str(cli), "-p", prompt, "--output-format", "stream-json", "--verbose"]
    argv += ["--session-mirror", *extra]
    proc = await asyncio.to_thread(
        subprocess.run,
        argv,
        cwd=cwd,
        env={**env, "CLAUDE_CONFIG_DIR": str(config_dir)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    frames = [m for m in lines if is_mirror_frame(m)]
    messages = [m for m in lines if not is_mirror_frame(m)]
    assert messages, proc.stderr[-2000:]
    return messages, frames


async def test_a_conversation_resumes_on_another_node_from_the_store(
    agent_env: dict[str, str],
    model_server: ModelServer,
    postgres_server: PrivatePostgres,
    pg_schema: str,
    workdir: Path,
    tmp_path: Path,
) -> None:
    env = dict(os.environ)
    store = PostgresSessionStore(postgres_server.url, schema=pg_schema, tenant="alice")
    await store.open()
    try:
        # Node A: a first turn, mirrored into the store.
        node_a = tmp_path / "node-a"
        messages, frames = await run_cli(env, node_a, workdir, "[[say:noted]] remember banana")
        result = messages[-1]
        assert result["type"] == "result" and result["subtype"] == "success"
        sid = result["session_id"]
        mirror = TranscriptMirror(store, node_a / "projects")
        for frame in frames:
            mirror.add(frame)
        await mirror.flush()
        assert mirror.dropped_frames == 0 and mirror.pending == 0

        # Node B never saw the conversation: --resume alone finds nothing there.
        bare = tmp_path / "node-bare"
        model_server.clear()
        lost, _ = await run_cli(env, bare, workdir, "[[say:x]] hello?", "--resume", sid)
        assert lost[-1].get("subtype") != "success" or lost[-1].get("session_id") != sid

        # Node B, with the transcript materialized from the store.
        node_b = tmp_path / "node-b"
        path = await materialize_transcript(store, cwd=workdir, session_id=sid, config_dir=node_b)
        assert path is not None and path.is_file()
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        model_server.clear()
        messages, frames = await run_cli(
            env, node_b, workdir, "[[say:it was banana]] which fruit?", "--resume", sid
        )
        assert messages[-1]["subtype"] == "success"
        main = model_server.main_requests()
        assert main and main[-1]["n_messages"] >= 3  # the first turn came along
        mirror_b = TranscriptMirror(store, node_b / "projects")
        for frame in frames:
            mirror_b.add(frame)
        await mirror_b.flush()

        # The store now holds both turns: a third node resumes with the whole conversation.
        node_c = tmp_path / "node-c"
        assert await materialize_transcript(store, cwd=workdir, session_id=sid, config_dir=node_c)
        model_server.clear()
        messages, _ = await run_cli(env, node_c, workdir, "[[say:ok]] and now?", "--resume", sid)
        assert messages[-1]["subtype"] == "success"
        assert model_server.main_requests()[-1]["n_messages"] >= 5
    finally:
        await store.close()


async def test_nothing_stored_materializes_nothing(
    postgres_server: PrivatePostgres, pg_schema: str, tmp_path: Path
) -> None:
    store = PostgresSessionStore(postgres_server.url, schema=pg_schema)
    await store.open()
    try:
        got = await materialize_transcript(
            store,
            cwd=tmp_path,
            session_id="0d9a3f6e-7f0e-4a59-8d5b-3f1f0c2b9a11",
            config_dir=tmp_path / "cfg",
        )
        assert got is None and not (tmp_path / "cfg").exists()
    finally:
        await store.close()
