"""``hotsession serve`` as a real process: SIGTERM with a stream open, kill -9 and restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.api.conftest import ALICE_TOKEN, new_session, poll, read_sse, stream_post, write_config

from hotsession.testing.model_server import ModelServer


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Served:
    """A ``hotsession serve`` subprocess."""

    def __init__(self, tmp_path: Path, config: Path, n: int) -> None:
        self.state_dir = tmp_path / "state"
        self.log = (tmp_path / f"serve-{n}.log").open("wb")
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "hotsession"),
                "serve",
                "--config",
                str(config),
                "--state-dir",
                str(self.state_dir),
                "--port",
                "0",
                "--allow-root-bypass",
                "--log-level",
                "debug",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = ""

    async def ready(self) -> None:
        path = self.state_dir / "daemon.json"

        async def up() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited with {self.proc.returncode}")
            if not path.exists():
                return False
            info = json.loads(path.read_text())
            if info["pid"] != self.proc.pid:
                return False  # left over from the daemon that was killed
            self.url = info["url"]
            try:
                async with httpx.AsyncClient() as c:
                    return (await c.get(self.url + "/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await poll(up, timeout=60)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {ALICE_TOKEN}"}, timeout=60
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
def serve(tmp_path: Path, agent_env: dict[str, str]):
    config, alice, _ = write_config(tmp_path, pool_enabled=False, watchdog_s=60.0)
    started: list[Served] = []

    def start() -> Served:
        s = Served(tmp_path, config, len(started))
        started.append(s)
        return s

    start.alice_root = alice  # type: ignore[attr-defined]
    yield start
    for s in started:
        s.stop()


def n_messages(ms: ModelServer, marker: str) -> int:
    return int([e for e in ms.log() if marker in e["markers"] and e["main"]][-1]["n_messages"])


async def test_sigterm_ends_streams_and_agents(serve: Any):
    daemon = serve()
    await daemon.ready()
    async with daemon.client() as c:
        s = await new_session(c)
        sid, pid = s["id"], s["pid"]
        turns = f"/v1/sessions/{sid}/turns"
        async with c.stream("POST", turns, json={"prompt": "[[delay:60000]]"}) as r:
            assert await read_sse(r, limit=1)
            daemon.proc.send_signal(signal.SIGTERM)
            rest = await asyncio.wait_for(read_sse(r), 30)
    assert rest[-1].type == "error" and rest[-1].data["code"] == "shutting_down"
    assert await asyncio.to_thread(daemon.proc.wait, 30) == 0
    assert gone(pid)
    assert not (daemon.state_dir / "daemon.json").exists()
    # the interrupted turn is on record, and the session comes back on the next start
    again = serve()
    await again.ready()
    async with again.client() as c:
        listed = (await c.get("/v1/sessions")).json()["sessions"]
        assert [x["id"] for x in listed] == [sid]
        body = (await c.get(f"/v1/sessions/{sid}")).json()
        assert body["recent_turns"][-1]["status"] == "error"


async def test_kill_9_then_restart_resumes_with_context(serve: Any, model_server: ModelServer):
    daemon = serve()
    await daemon.ready()
    m1, m2 = uuid.uuid4().hex[:10], uuid.uuid4().hex[:10]
    async with daemon.client() as c:
        s = await new_session(c)
        sid = s["id"]
        turns = f"/v1/sessions/{sid}/turns"
        first = await stream_post(c, turns, {"prompt": f"remember [[marker:{m1}]] [[say:one]]"})
        assert first[-1].type == "result"
        other = await new_session(c)  # an idle agent too
        # kill the daemon in the middle of a turn
        async with c.stream("POST", turns, json={"prompt": "[[delay:60000]]"}) as r:
            assert await read_sse(r, limit=1)
            pids = [s["pid"], other["pid"]]
            assert all(not gone(p) for p in pids)
            os.kill(daemon.proc.pid, signal.SIGKILL)
            with pytest.raises(httpx.HTTPError):
                await asyncio.wait_for(read_sse(r), 30)
    daemon.proc.wait(10)
    # no agent outlives the daemon (parent-death signal)

    async def agents_gone() -> bool:
        return all(gone(p) for p in pids)

    await poll(agents_gone)

    again = serve()
    await again.ready()
    async with again.client() as c:
        listed = {x["id"]: x for x in (await c.get("/v1/sessions")).json()["sessions"]}
        assert set(listed) == {sid, other["id"]}
        assert listed[sid]["state"] == "evicted" and listed[sid]["pid"] is None
        body = (await c.get(f"/v1/sessions/{sid}")).json()
        assert [t["status"] for t in body["recent_turns"]] == ["done", "error"]
        assert body["recent_turns"][-1]["error_code"] == "daemon_restarted"
        third = await stream_post(c, turns, {"prompt": f"recall [[marker:{m2}]] [[say:two]]"})
        assert third[-1].type == "result" and third[-1].data["result"] == "two"
        assert third[-1].data["timing"]["source"] == "resume"
        assert n_messages(model_server, m2) > n_messages(model_server, m1)  # full context
        assert third[0].id > first[-1].id  # the event sequence continues
