"""The API tier: the real daemon (uvicorn on a free port) driving the real CLI, over real HTTP.

``serve()`` starts ``hotsession serve`` as a real process (:class:`Served`).
``start_daemon(**config)`` runs a :class:`hotsession.daemon.Daemon` on the test's loop with two
tenants from a TOML file (``alice`` and ``bob``, each with its own root; bob with his own Claude
config dir), and returns a handle with an httpx client per tenant. SSE is read with
:func:`read_sse` from a streaming httpx response (in-process transports do not stream).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.conftest import RunningDaemon, run_daemon

from hotsession.settings import load_settings
from hotsession.sse import SSEDecoder

ALICE_TOKEN = "alice-token-0123456789abcdef"
BOB_TOKEN = "bob-token-0123456789abcdef"


@dataclass
class Event:
    """One SSE event as a client sees it."""

    type: str
    data: dict[str, Any]
    id: int | None = None


@dataclass(kw_only=True)
class Running(RunningDaemon):
    """A daemon under test, with two tenants (alice, bob)."""

    alice_root: Path
    bob_root: Path

    def client(self, token: str | None = ALICE_TOKEN) -> httpx.AsyncClient:
        return super().client(token)

    @property
    def alice(self) -> httpx.AsyncClient:
        return self.client(ALICE_TOKEN)

    @property
    def bob(self) -> httpx.AsyncClient:
        return self.client(BOB_TOKEN)


def write_config(tmp_path: Path, **extra: Any) -> tuple[Path, Path, Path]:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    alice.mkdir()
    bob.mkdir()
    # Two tenants on the daemon's own user: these tests are about the API's walls, not the OS's
    # (tests/security runs tenants as their own users).
    extra.setdefault("shared_user", True)
    lines = [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    lines += [
        "[[tenants]]",
        'name = "alice"',
        f'token = "{ALICE_TOKEN}"',
        f"roots = [{json.dumps(str(alice))}]",
        "[[tenants]]",
        'name = "bob"',
        f'token_sha256 = "{_sha(BOB_TOKEN)}"',
        f"roots = [{json.dumps(str(bob))}]",
        f"claude_config_dir = {json.dumps(str(tmp_path / 'bob-claude'))}",
    ]
    path = tmp_path / "hotsession.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, alice, bob


def _sha(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()


BASE_CONFIG: dict[str, Any] = {
    "pool_enabled": False,
    "allow_root_bypass": True,
    "watchdog_s": 60.0,
    "spawn_timeout_s": 60.0,
}


@pytest.fixture
async def start_daemon(
    tmp_path: Path, agent_env: dict[str, str]
) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    running: list[Running] = []

    async def start(**overrides: Any) -> Running:
        n = len(running)
        base = tmp_path / f"d{n}"
        base.mkdir()
        path, alice, bob = write_config(base)
        values = {**BASE_CONFIG, "state_dir": str(base / "state"), **overrides}
        settings = load_settings(path, values)
        daemon, task = await run_daemon(settings)
        r = Running(daemon, task, daemon.url, settings, alice_root=alice, bob_root=bob)
        running.append(r)
        return r

    yield start
    for r in running:
        await r.stop()


async def read_sse(
    response: httpx.Response, *, limit: int | None = None, comments: list[str] | None = None
) -> list[Event]:
    """Parse an SSE response until it ends (or ``limit`` events were read)."""
    out: list[Event] = []
    state = response.extensions.get("sse_state")
    if state is None:  # resumable: a later call goes on where this one stopped
        state = response.extensions["sse_state"] = (response.aiter_lines(), SSEDecoder())
    lines, decoder = state
    decoder.on_comment = comments.append if comments is not None else None
    async for line in lines:
        frame = decoder.feed(line)
        if frame is not None:
            out.append(
                Event(frame.event, frame.json(), None if frame.id is None else int(frame.id))
            )
            if limit is not None and len(out) >= limit:
                return out
    return out


async def stream_post(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], **kw: Any
) -> list[Event]:
    """POST and read the whole SSE answer (asserts a 200 event stream)."""
    async with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            raise AssertionError(f"{r.status_code}: {r.text}")
        assert r.headers["content-type"].startswith("text/event-stream")
        return await read_sse(r, **kw)


async def poll(check: Callable[[], Awaitable[object]], timeout: float = 20.0) -> None:
    """Await ``check()`` until it is truthy (for conditions only the HTTP API can tell)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


async def state_is(client: httpx.AsyncClient, sid: str, *states: str) -> bool:
    """True when the session's state is one of ``states``."""
    return (await client.get(f"/v1/sessions/{sid}")).json()["state"] in states


async def new_session(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    body.setdefault("permission_mode", "bypassPermissions")
    r = await client.post("/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


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
