"""``hotsession-claude`` (the drop-in executable) pointed at a cluster-mode daemon.

The shim is run as a real process (``HOTSESSION_URL`` names a cluster daemon of the tier); what
it prints and its exit code are what a drop-in client (an SDK app, a bot) sees.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from tests.cluster.conftest import TOKEN, ApiDaemon

from hotsession.testing.model_server import ModelServer

SHIM = str(Path(sys.executable).with_name("hotsession-claude"))


async def shim_run(
    *argv: str, url: str, cwd: Path, env: dict[str, str], token: str = TOKEN, stdin: bytes = b""
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        SHIM,
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("HOTSESSION_")},
            **env,
            "HOTSESSION_URL": url,
            "HOTSESSION_TOKEN": token,
        },
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def cli_env(node_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """What the real CLI needs here when the shim runs it (the tier's model server)."""
    return {
        **{k: v for k, v in node_env.items() if not k.startswith("RAY_")},
        "CLAUDE_CONFIG_DIR": str(tmp_path / "claude-config"),
    }


async def test_a_dropin_run_on_a_cluster_daemon_falls_back_to_the_cli_with_one_line(
    api_daemons: Callable[[], Awaitable[ApiDaemon]],
    workdir: Path,
    cli_env: dict[str, str],
    model_server: ModelServer,
) -> None:
    daemon = await api_daemons()
    code, out, err = await shim_run(
        "-p", "hi [[say:from the real CLI]]", url=daemon.url, cwd=workdir, env=cli_env
    )
    assert code == 0, err
    assert out.strip() == "from the real CLI"
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "cluster-mode daemon, which does not serve drop-in runs" in lines[0]
    assert lines[0].endswith("running the Claude Code CLI directly")

    # Piped stdin reaches the real CLI too (the shim had sent it to the daemon first).
    code, out, err = await shim_run(
        "-p", url=daemon.url, cwd=workdir, env=cli_env, stdin=b"[[say:piped]]"
    )
    assert code == 0 and out.strip() == "piped", err

    # HOTSESSION_FALLBACK=0: that line, and exit 1, no CLI.
    code, out, err = await shim_run(
        "-p",
        "hi [[say:never]]",
        url=daemon.url,
        cwd=workdir,
        env={**cli_env, "HOTSESSION_FALLBACK": "0"},
    )
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "HOTSESSION_FALLBACK=0" in err

    # A wrong token is still a refused token (no fallback).
    code, out, err = await shim_run(
        "-p", "hi", url=daemon.url, cwd=workdir, env=cli_env, token="wrong"
    )
    assert code == 1 and "refused the token" in err and out == ""
