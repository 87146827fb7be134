"""Where the Claude Code CLI binary is, and which version it is.

The default is the binary bundled in the pinned ``claude-agent-sdk`` wheel, so an install needs no
npm and no download; ``--cli-path`` picks another one.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

from hotsession.errors import AgentStartError


def bundled_cli_path() -> Path | None:
    """The CLI inside the installed ``claude-agent-sdk`` wheel, if there is one."""
    try:
        import claude_agent_sdk
    except ImportError:  # pragma: no cover - it is a hard dependency
        return None
    path = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def resolve_cli_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The CLI to run: ``explicit`` if given, else the bundled one, else ``claude`` on PATH."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file() or not os.access(path, os.X_OK):
            raise AgentStartError(f"Claude Code CLI not found or not executable: {path}")
        return path.resolve()
    bundled = bundled_cli_path()
    if bundled is not None:
        return bundled
    found = shutil.which("claude")
    if found:
        return Path(found)
    raise AgentStartError(
        "Claude Code CLI not found: install hotsession with its dependencies "
        "(claude-agent-sdk bundles the CLI) or pass --cli-path"
    )


@functools.lru_cache(maxsize=8)
def cli_version(path: str) -> str:
    """``claude --version`` (e.g. "2.1.330"), or "unknown" when it cannot be read."""
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.split()[0] if out.strip() else "unknown"
