"""The daemon killed (-9) mid-turn with clients attached, then restarted — several times.

Each round: two sessions, one mid-turn with a client streaming it and a tool running, the other
idle with a client following its events; ``kill -9`` the daemon; the clients see their streams
break; no agent or tool survives; a new daemon lists every session, replays every event the
clients received (identical), and the next turn reaches the model with the whole conversation.
No file or directory left in the temp dir holds the API key or the tenant's token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.api.conftest import (
    ALICE_TOKEN,
    Served,
    gone,
    new_session,
    poll,
    read_sse,
    stream_post,
    write_config,
)
from tests.conftest import wait_until

from hotsession.testing.faults import Ledger, context_size
from hotsession.testing.model_server import ModelServer

ROUNDS = 3


def _tmp_entries() -> set[str]:
    return set(os.listdir(tempfile.gettempdir()))


def _holds_secret(path: Path, secrets: list[bytes]) -> bool:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files[:200]:
        with contextlib.suppress(OSError):
            blob = f.read_bytes()[: 1 << 20]
            if any(s in blob for s in secrets):
                return True
    return False


async def _replay(c: httpx.AsyncClient, sid: str) -> dict[int, tuple[str, Any]]:
    async with c.stream("GET", f"/v1/sessions/{sid}/events", params={"follow": "false"}) as r:
        assert r.status_code == 200
        return {e.id: (e.type, e.data) for e in await read_sse(r) if e.id is not None}


async def test_daemon_kill_9_mid_turn_then_restart(
    tmp_path: Path,
    agent_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    model_server: ModelServer,
    ledger: Ledger,
):
    api_key = "sk-test-" + uuid.uuid4().hex
    monkeypatch.setenv("ANTHROPIC_API_KEY", api_key)
    secrets = [api_key.encode(), ALICE_TOKEN.encode()]
    config, alice, _ = write_config(tmp_path, pool_enabled=False, watchdog_s=60.0)
    tally = ledger.tally(
        "daemon killed (-9) mid-turn, clients attached",
        "`hotsession serve` subprocess; SIGKILL while one turn streams (a tool running) and "
        "another client follows /events; then restart",
    )
    before_tmp = _tmp_entries()
    received: dict[str, dict[int, tuple[str, Any]]] = {}
    context: dict[str, int] = {}
    served: list[Served] = []
    try:
        daemon = Served(tmp_path, config, 0)
        served.append(daemon)
        await daemon.ready()
        async with daemon.client() as c:
            sids = [(await new_session(c, cwd=str(alice)))["id"] for _ in range(2)]
            for sid in sids:
                received[sid] = {}
                m = uuid.uuid4().hex[:10]
                events = await stream_post(
                    c, f"/v1/sessions/{sid}/turns", {"prompt": f"[[marker:{m}]]"}
                )
                received[sid].update({e.id: (e.type, e.data) for e in events if e.id})
                context[sid] = context_size(model_server, m)
        for round_no in range(ROUNDS):
            tally.injected += 1
            busy, idle = sids
            pid_file = alice / f"tool-{round_no}.pid"
            async with daemon.client() as c, daemon.client() as follower:
                info = {s["id"]: s for s in (await c.get("/v1/sessions")).json()["sessions"]}
                # the idle session gets a live process again (it was evicted by the last restart)
                await c.post(f"/v1/sessions/{idle}/warm")
                await poll(lambda c=c, idle=idle: _has_pid(c, idle))
                prompt = (
                    f"[[bash:echo $$ > {pid_file}; exec python3 -c 'import time; time.sleep(60)']]"
                )
                async with (
                    c.stream("POST", f"/v1/sessions/{busy}/turns", json={"prompt": prompt}) as turn,
                    follower.stream(
                        "GET", f"/v1/sessions/{idle}/events",
                        headers={"Last-Event-ID": str(max(received[idle]))},
                    ) as follow,
                ):  # fmt: skip
                    # the tool writes its pid: wait for the content, not just the file
                    await wait_until(
                        lambda f=pid_file: f.exists() and f.read_text().strip(), timeout=20
                    )
                    tool_pid = int(pid_file.read_text())
                    info = {s["id"]: s for s in (await c.get("/v1/sessions")).json()["sessions"]}
                    agents = [info[s]["pid"] for s in sids]
                    assert all(p and not gone(p) for p in [*agents, tool_pid])
                    os.kill(daemon.proc.pid, signal.SIGKILL)
                    for stream in (turn, follow):
                        with pytest.raises(httpx.HTTPError):
                            await asyncio.wait_for(read_sse(stream), 30)
            daemon.proc.wait(10)
            # the agents die with the daemon (parent-death signal); their tools, in sessions of
            # their own, are killed by the next daemon's orphan sweep (HOTSESSION_AGENT tag)
            await wait_until(lambda: all(gone(p) for p in agents), timeout=10)  # noqa: B023
            daemon = Served(tmp_path, config, round_no + 1)
            served.append(daemon)
            await daemon.ready()
            await wait_until(lambda: gone(tool_pid), timeout=10)  # noqa: B023
            ok = True
            async with daemon.client() as c:
                listed = {s["id"] for s in (await c.get("/v1/sessions")).json()["sessions"]}
                ok &= listed == set(sids)
                for sid in sids:
                    replay = await _replay(c, sid)
                    ok &= all(replay.get(seq) == got for seq, got in received[sid].items())
                    ok &= sorted(replay) == list(range(1, len(replay) + 1))
                    received[sid] = replay  # includes the daemon_restarted error of the busy turn
                    m = uuid.uuid4().hex[:10]
                    url = f"/v1/sessions/{sid}/turns"
                    events = await stream_post(c, url, {"prompt": f"[[marker:{m}]] [[say:back]]"})
                    ok &= events[-1].type == "result"
                    received[sid].update({e.id: (e.type, e.data) for e in events if e.id})
                    size = context_size(model_server, m)
                    ok &= size > context[sid]
                    context[sid] = size
            tally.client_saw["stream broken; then error:daemon_restarted on replay"] += 1
            tally.recovered += int(ok)
        # the busy turn of every round is on record as daemon_restarted
        busy_errors = [d for t, d in received[sids[0]].values() if t == "error"]
        assert [d["code"] for d in busy_errors] == ["daemon_restarted"] * ROUNDS
    finally:
        for s in served:
            s.stop()
    leftovers = [n for n in _tmp_entries() - before_tmp if n.startswith(("claude", "hotsession"))]
    leaking = [n for n in leftovers if _holds_secret(Path(tempfile.gettempdir()) / n, secrets)]
    assert leaking == []
    assert tally.recovered == tally.injected == ROUNDS


async def _has_pid(c: httpx.AsyncClient, sid: str) -> bool:
    return (await c.get(f"/v1/sessions/{sid}")).json().get("pid") is not None


def test_tag_sweep_ignores_live_daemons():
    """``sweep_orphans`` only kills tools whose daemon is gone (not this process's)."""
    from hotsession.supervisor import _daemon_gone

    assert not _daemon_gone(f"{os.getpid()}:abc")
    dead = max(psutil.pids()) + 100_000
    assert _daemon_gone(f"{dead}:abc")
