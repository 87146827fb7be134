"""What every mode of a benchmark run shares: a temp dir, the model server, the CLI and its env.

The scripted model server runs as its own process (``python -m hotsession.testing.model_server``)
on loopback rather than in a thread of the bench: a thread would share the bench's GIL and add
its own jitter to the client-side timings being measured. Its log is read over ``GET /_log``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from hotsession.cli_binary import cli_version, resolve_cli_path
from hotsession.errors import HotsessionError


class BenchError(HotsessionError):
    """The benchmark could not run (a part did not start, a mode failed to set up)."""

    code = "bench_failed"


def is_root() -> bool:
    """True when running as root (bypassPermissions then needs IS_SANDBOX=1)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


class BenchEnv:
    """Temp dir, model server process, CLI path and the environment every CLI runs with."""

    def __init__(
        self,
        *,
        cli_path: str | None = None,
        permission_mode: str = "bypassPermissions",
        keep_dir: bool = False,
    ) -> None:
        self.cli_path = str(resolve_cli_path(cli_path))
        self.cli_version = cli_version(self.cli_path)
        self.permission_mode = permission_mode
        self.keep_dir = keep_dir
        self.root = Path(tempfile.mkdtemp(prefix="hotsession-bench-"))
        self.workdir = self.root / "work"
        self.workdir.mkdir()
        (self.root / "home").mkdir()
        self.model_url = ""
        self._model: subprocess.Popen[str] | None = None
        self._log_client = httpx.Client(timeout=30.0)

    # -- environment -----------------------------------------------------------------------------

    def agent_vars(self) -> dict[str, str]:
        """The variables every CLI of the run gets (model server, private config and home)."""
        out = {
            "ANTHROPIC_BASE_URL": self.model_url,
            "ANTHROPIC_API_KEY": "test-key",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CONFIG_DIR": str(self.root / "claude-config"),
            "HOME": str(self.root / "home"),
        }
        if self.permission_mode == "bypassPermissions" and is_root():
            out["IS_SANDBOX"] = "1"
        return out

    def agent_env(self) -> dict[str, str]:
        """A full environment for a CLI child: ours, minus Claude Code's own marker, plus vars."""
        env = {k: v for k, v in os.environ.items() if k != "CLAUDECODE"}
        env.update(self.agent_vars())
        return env

    # -- model server ----------------------------------------------------------------------------

    def start(self) -> BenchEnv:
        """Start the model server process; returns once it listens."""
        self._model = subprocess.Popen(
            [sys.executable, "-m", "hotsession.testing.model_server", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self._model.stdout is not None
        line = self._model.stdout.readline()
        # "hotsession model server on http://127.0.0.1:PORT (GET .../_log for the log)"
        url = next((w for w in line.split() if w.startswith("http://")), "")
        if not url:
            self.stop()
            raise BenchError(f"the model server did not start: {line.strip()!r}")
        self.model_url = url
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if self._log_client.get(f"{url}/_log").status_code == 200:
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError("the model server does not answer")
            time.sleep(0.05)
        return self

    def model_log(self) -> list[dict[str, Any]]:
        """The model server's request log."""
        resp = self._log_client.get(f"{self.model_url}/_log")
        resp.raise_for_status()
        data = resp.json()
        entries = data.get("entries", data) if isinstance(data, dict) else data
        return [e for e in entries if isinstance(e, dict)]

    def stop(self) -> None:
        """Stop the model server and remove the temp dir (unless kept)."""
        if self._model is not None:
            self._model.terminate()
            try:
                self._model.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._model.kill()
                self._model.wait()
            if self._model.stdout is not None:
                self._model.stdout.close()
            self._model = None
        self._log_client.close()
        if not self.keep_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> BenchEnv:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
