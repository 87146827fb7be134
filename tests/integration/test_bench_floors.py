"""``bench --cpu``'s floors and many-sessions row, against the real CLI and the scripted model:
the durable relay's rows land in its database (the prompt's before the turn ends), a bad option
fails with one line, one relay drives several CLIs at once, and the daemon's ``N sessions at
once`` row runs its sessions concurrently. Timings are not asserted."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from hotsession.bench.cpu import measure_sessions
from hotsession.bench.daemon import Daemon
from hotsession.bench.environment import BenchEnv, BenchError
from hotsession.bench.relay import start_relay
from hotsession.bench.wire import WireClient
from hotsession.cli_binary import resolve_cli_path
from hotsession.options import SessionOptions, build_argv, build_env
from hotsession.registry.sqlite import SCHEMA_VERSION


def _argv(workdir: Path) -> list[str]:
    options = SessionOptions.create(str(workdir), permission_mode="bypassPermissions")
    return build_argv(str(resolve_cli_path(None)), options, session_id=str(uuid.uuid4()))


def _env(workdir: Path) -> dict[str, str]:
    options = SessionOptions.create(str(workdir), permission_mode="bypassPermissions")
    return build_env(options, base=dict(os.environ), allow_root_bypass=True)


async def _turn(wire: WireClient, path: str, prompt: str) -> list[tuple[float, bytes]]:
    """The turn's lines, each with the time it arrived."""
    out = []
    async for kind, data in wire.events(wire.request_bytes(path, {"prompt": prompt})):
        assert kind == "message"
        out.append((time.monotonic(), data))
    return out


async def test_durable_relay_records_the_prompt_first_and_every_relayed_line(
    agent_env: dict[str, str], workdir: Path, tmp_path: Path
):
    db = tmp_path / "relay.db"
    relay = await start_relay(
        _argv(workdir), _argv(workdir), env=_env(workdir), cwd=workdir, durable=db
    )
    assert len(relay.cli_pids) == 2 and len(set(relay.cli_pids)) == 2
    wires = [WireClient("127.0.0.1", relay.port, "") for _ in range(2)]
    seen_running: list[tuple[str, str]] = []

    async def slow_turn() -> list[tuple[float, bytes]]:
        # A reply of 8 deltas 150 ms apart: look at the log while the turn runs.
        request = wires[0].request_bytes("/turn/0", {"prompt": "[[stream:8:150]][[say:slow]]"})
        out = []
        async for _, data in wires[0].events(request):
            if not out:
                with sqlite3.connect(db) as conn:
                    seen_running.extend(conn.execute("SELECT prompt, status FROM turns"))
            out.append((time.monotonic(), data))
        return out

    try:
        # CLI 0's slow turn and CLI 1's turn at once, on one relay.
        slow, other = await asyncio.gather(
            slow_turn(), _turn(wires[1], "/turn/1", "[[stream:4:150]][[say:other]]")
        )
        second = await _turn(wires[0], "/turn/0", "[[say:second]]")
        with pytest.raises(BenchError, match='404 .*"code": "not_found"'):
            await wires[0].call("POST", "/turn/2", {"prompt": "no such CLI"})
    finally:
        for wire in wires:
            await wire.aclose()
        await relay.stop()
    assert relay.proc.returncode == 0

    # The prompt's record was there while its turn ran (written before the CLI got it).
    assert ("[[stream:8:150]][[say:slow]]", "running") in seen_running
    # The two CLIs' turns overlapped (each streams for 0.6 s or more).
    assert slow[0][0] < other[-1][0] and other[0][0] < slow[-1][0]

    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        sessions = {r["pid"]: r for r in conn.execute("SELECT * FROM sessions")}
        assert set(sessions) == set(relay.cli_pids)
        first_sid = sessions[relay.cli_pids[0]]["id"]
        assert sessions[relay.cli_pids[0]]["turns"] == 2
        assert sessions[relay.cli_pids[1]]["turns"] == 1
        turns = conn.execute(
            "SELECT turn, prompt, status, ended_at FROM turns WHERE session_id = ? ORDER BY turn",
            (first_sid,),
        ).fetchall()
        assert [(t["turn"], t["prompt"], t["status"]) for t in turns] == [
            (1, "[[stream:8:150]][[say:slow]]", "done"),
            (2, "[[say:second]]", "done"),
        ]
        assert all(t["ended_at"] is not None for t in turns)
        for number, relayed in ((1, slow), (2, second)):
            rows = conn.execute(
                "SELECT seq, type, data FROM events WHERE session_id = ? AND turn = ? ORDER BY seq",
                (first_sid, number),
            ).fetchall()
            # Every relayed line is a row, as it was sent, then the relay's own result.
            assert [r["data"].encode() for r in rows[:-1]] == [line for _, line in relayed]
            assert [r["type"] for r in rows] == ["message"] * len(relayed) + ["result"]
            assert json.loads(rows[-2]["data"])["type"] == "result"
        seqs = [
            r[0] for r in conn.execute("SELECT seq FROM events WHERE session_id = ?", (first_sid,))
        ]
        assert sorted(seqs) == list(range(1, len(seqs) + 1))  # numbered without a hole
    finally:
        conn.close()


async def test_durable_relay_that_cannot_open_its_log_fails_with_one_line(
    agent_env: dict[str, str], workdir: Path, tmp_path: Path
):
    bad = tmp_path / "missing-dir" / "relay.db"
    with pytest.raises(
        BenchError, match=r"cannot open the durable log .*relay\.db: unable to open"
    ):
        await start_relay(_argv(workdir), env=_env(workdir), cwd=workdir, durable=bad)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--durable"], "--durable needs a PATH"),
        (["--durable", "", "--", "claude"], "--durable needs a PATH"),
        (["--fast", "--", "claude"], "unknown option '--fast'"),
        (["--durable", "x.db"], "no CLI command line"),
        (["--", "claude", "--"], "no CLI command line"),
    ],
)
def test_relay_refuses_a_bad_command_line_in_one_line(args: list[str], says: str, tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "hotsession.bench.relay", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relay: ") and says in lines[0], proc.stderr
    assert not (tmp_path / "x.db").exists()


@pytest.mark.slow
async def test_n_sessions_row_runs_its_sessions_concurrently():
    with BenchEnv() as env:
        d = Daemon(env)
        await d.start()
        try:
            row = await measure_sessions(d, env, 2, 6, 0.0)
            listed = await d.json("GET", "/v1/sessions?include_closed=true")
            assert isinstance(listed, dict)
            details = [await d.session(s["id"]) for s in listed["sessions"]]
        finally:
            await d.stop()
    assert row["sessions"] == 2 and row["turns"] == 6
    assert row["cli_ms_per_turn"] > 0
    ran = [d for d in details if d.get("turns")]
    assert len(ran) == 2
    spans = []
    for detail in ran:
        turns = detail["recent_turns"]
        assert len(turns) == 6  # 3 uncounted + 3 counted, each
        assert all(t["status"] == "done" for t in turns)
        spans.append([(t["started_at"], t["ended_at"]) for t in turns])
    # Each session's loop ran while the other's did: some turn of one overlaps one of the other.
    assert any(a0 < b1 and b0 < a1 for a0, a1 in spans[0] for b0, b1 in spans[1])
