"""The real daemon and the system's Chromium, for the dashboard's browser tests and screenshots.

The daemon is ``hotsession serve`` in a subprocess (the product as users start it), its agents
pointed at the scripted model server. Chromium is Debian's (``/usr/bin/chromium``), driven by
Playwright with the browser's path given: a test tool's own browser download does not work on
these machines, so ``playwright install`` is never run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from hotsession.daemon import DISCOVERY_FILE

CHROMIUM = (
    os.environ.get("HOTSESSION_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Daemon:
    """A running ``hotsession serve``."""

    url: str
    token: str
    proc: subprocess.Popen[bytes]
    state_dir: Path
    log_path: Path

    @property
    def auth(self) -> dict[str, str]:
        """The headers of an API request with the daemon's token."""
        return {"Authorization": f"Bearer {self.token}"}

    def log_tail(self, n: int = 4000) -> str:
        """The end of the daemon's log, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL if it does not end."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


async def login(page: Any, daemon: Daemon) -> None:
    """Sign the page in to the dashboard with the daemon's token (the sessions view shows)."""
    from playwright.async_api import expect  # the browser tier's: a test module imports it too

    await page.goto(daemon.url + "/")
    await page.fill("#token", daemon.token)
    await page.press("#token", "Enter")
    await expect(page.locator("#sessions-view")).to_be_visible()


def agent_env(base: Path, model_server_url: str) -> dict[str, str]:
    """The environment of the daemon: its agents talk to the model server, in a private home."""
    home = base / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTSESSION_")}
    env.pop("CLAUDECODE", None)
    env.update(
        {
            "ANTHROPIC_BASE_URL": model_server_url,
            "ANTHROPIC_API_KEY": "test-key",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CONFIG_DIR": str(base / "claude-config"),
            "HOME": str(home),
        }
    )
    return env


def start_daemon(base: Path, model_server_url: str, *extra: str, timeout: float = 60) -> Daemon:
    """Start ``hotsession serve`` on a free loopback port; return once ``/healthz`` answers."""
    state_dir = base / "state"
    log_path = base / "daemon.log"
    exe = Path(sys.executable).with_name("hotsession")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "hotsession.cli.main"]
    argv += ["serve", "--host", "127.0.0.1", "--port", "0", "--state-dir", str(state_dir), *extra]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            env=agent_env(base, model_server_url),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    discovery = state_dir / DISCOVERY_FILE
    deadline = time.monotonic() + timeout
    url = None
    # Polling a subprocess from a synchronous fixture (no event loop to block here).
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"hotsession serve exited {proc.returncode}:\n{log_path.read_text()}"
            )
        if url is None and discovery.exists():
            try:
                url = json.loads(discovery.read_text())["url"]
            except (ValueError, KeyError):
                url = None
        if url is not None:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"hotsession serve did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    token = (state_dir / "token").read_text().strip()
    return Daemon(url=url, token=token, proc=proc, state_dir=state_dir, log_path=log_path)
