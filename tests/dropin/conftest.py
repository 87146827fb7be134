"""The drop-in tier: real clients (the Agent SDKs, the ACP adapter, a shell) run
``hotsession-claude``, served by a real daemon (uvicorn on a free port, local tenant, token file
in its state dir) that drives the real CLI against the scripted model server.

``dropin`` starts the daemon and points the shim at it through ``HOTSESSION_STATE_DIR`` (the way a
local user finds it: ``daemon.json`` and the token file), for every process the test starts.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import run_daemon, stop_daemon

from hotsession.daemon import Daemon
from hotsession.settings import load_settings

SHIM = str(Path(sys.executable).with_name("hotsession-claude"))

BASE: dict[str, Any] = {
    "pool_enabled": False,
    "watchdog_s": 60.0,
    "spawn_timeout_s": 60.0,
}


@dataclass
class Dropin:
    """A daemon under test and how the shim reaches it."""

    daemon: Daemon
    task: asyncio.Task[None]
    state_dir: Path
    url: str

    @property
    def hub(self) -> Any:
        return self.daemon.hub

    @property
    def token(self) -> str:
        return (self.state_dir / "token").read_text().strip()


@pytest.fixture
def shim() -> str:
    """The ``hotsession-claude`` executable of this install."""
    assert os.access(SHIM, os.X_OK), SHIM
    return SHIM


@pytest.fixture
async def start_dropin(
    tmp_path: Path, agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[..., Awaitable[Dropin]]]:
    running: list[Dropin] = []
    monkeypatch.setenv("IS_SANDBOX", "1")

    async def start(**overrides: Any) -> Dropin:
        state = tmp_path / f"hs{len(running)}"
        settings = load_settings(None, {**BASE, "state_dir": str(state), **overrides}, environ={})
        daemon, task = await run_daemon(settings)
        monkeypatch.setenv("HOTSESSION_STATE_DIR", str(state))
        d = Dropin(daemon, task, state, daemon.url)
        running.append(d)
        return d

    yield start
    for d in running:
        await stop_daemon(d.daemon, d.task)


@pytest.fixture
async def dropin(start_dropin: Callable[..., Awaitable[Dropin]]) -> Dropin:
    """A daemon with the pool off (each new conversation spawns)."""
    return await start_dropin()


async def run(
    *argv: str,
    input: bytes | None = b"",
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    """Run a command to its end: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(input), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def node() -> str | None:
    """Node.js for the TypeScript clients, if the machine has it."""
    return shutil.which("node")
