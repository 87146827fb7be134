"""``hotsession bench --dropin``: the Agent SDK with ``cli_path=hotsession-claude`` against the
SDK on its own CLI, in the same run, same CLI binary, same model server.

* ``sdk query(resume)``       — baseline: the SDK's own ``query(resume=ID)`` per prompt (a process
  per prompt, ``--resume``);
* ``shim query(resume)``      — the same call with ``cli_path`` = the shim: the conversation is hot
  in the daemon, so the prompt goes straight to its process (target: ≥ 8× faster to the model);
* ``shim query()``            — a new conversation's ``query()`` through the shim, a spare of the
  profile ready (prepare waits for it; target: ≥ 3× faster to the model than ``sdk query()``);
* ``shim ClaudeSDKClient``    — a follow-up on a ``ClaudeSDKClient`` connected through the shim
  (target: within 5 ms of ``bare CLI (floor)``, the paired difference the tables show); against
  ``ClaudeSDKClient`` (the same client on the CLI itself, also in the run) the difference is what
  the shim, the WebSocket and the daemon add to a turn.

The shim finds the bench's daemon through ``HOTSESSION_URL`` / ``HOTSESSION_TOKEN`` in the SDK's
``env`` option (what a user sets). ``shim --version`` is timed once at setup and reported in the
run's notes (its start-up alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import py_compile
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

from hotsession.bench.environment import BenchError
from hotsession.bench.http_modes import HttpMode
from hotsession.bench.modes import client_turn, disconnect, stamp_messages
from hotsession.bench.stats import Sample

_LINE_LIMIT = 64 * 1024 * 1024
NOTES: dict[str, float] = {}
"""Figures of the run that are not samples (printed after the tables)."""


@functools.cache
def shim_path() -> str:
    """The ``hotsession-claude`` of this install, its modules compiled to bytecode first.

    A wheel install has them compiled (pip compiles at install time); an editable install whose
    environment sets ``PYTHONDONTWRITEBYTECODE`` never writes them, and every run of the shim then
    compiles its source again (~4.5 ms of the shim's ~10 ms start, measured): the bench measures
    the shim as installed, not that."""
    path = Path(sys.executable).with_name("hotsession-claude")
    if not os.access(path, os.X_OK):
        raise BenchError(f"hotsession-claude is not installed next to {sys.executable}")
    import hotsession
    import hotsession.dropin.shim

    package = Path(hotsession.__file__).parent
    for source in (package / "__init__.py", *sorted((package / "dropin").glob("*.py"))):
        with contextlib.suppress(OSError, py_compile.PyCompileError):
            py_compile.compile(str(source), doraise=True)
    return str(path)


async def _query(s: Sample, prompt: str, options: Any) -> str:
    """One ``query()`` to its end, stamping ``s``; returns the session id."""
    from claude_agent_sdk import query

    s.t_send = time.monotonic()
    result = await stamp_messages(s, query(prompt=prompt, options=options), "query()")
    return str(result.session_id)


class _SdkMode(HttpMode):
    """Agent SDK calls, through the shim (``shim=True``) or on the CLI itself."""

    shim: ClassVar[bool] = True

    def options(self, **kw: Any) -> Any:
        from claude_agent_sdk import ClaudeAgentOptions

        env = self.env.agent_vars()
        if self.shim:
            env = {**env, "HOTSESSION_URL": self.d.url, "HOTSESSION_TOKEN": self.d.token}
        return ClaudeAgentOptions(
            cli_path=shim_path() if self.shim else self.env.cli_path,
            cwd=str(self.env.workdir),
            env=env,
            permission_mode=self.env.permission_mode,  # type: ignore[arg-type]
            max_buffer_size=_LINE_LIMIT,
            **kw,
        )

    async def prepare(self) -> None:
        """Quiet daemon."""
        await self.d.wait_quiet()


class SdkQueryResume(_SdkMode):
    """The SDK's own ``query(resume=…)``: the baseline of ``shim query(resume)``."""

    name = "sdk query(resume)"
    description = "`claude_agent_sdk.query(resume=ID)` per prompt (a process per prompt)"
    group: ClassVar[str] = "baseline"
    shim = False
    session_id = ""

    async def setup(self) -> None:
        """One conversation to resume (untimed)."""
        warm = Sample(self.name, -1, "setup", 0.0)
        self.session_id = await _query(warm, "[[say:setup]]", self.options())

    async def sample(self, s: Sample, prompt: str) -> None:
        """``query(resume=ID)``."""
        await _query(s, prompt, self.options(resume=self.session_id))


class ShimQueryResume(SdkQueryResume):
    """``query(resume=…)`` through the shim: a follow-up on the hot conversation."""

    name = "shim query(resume)"
    description = "the same through hotsession-claude (the conversation is hot in the daemon)"
    group: ClassVar[str] = "hotsession"
    shim = True


class ShimQueryNew(_SdkMode):
    """A new conversation's ``query()`` through the shim, a spare ready."""

    name = "shim query()"
    description = "a new conversation's query() through hotsession-claude (a spare ready)"

    async def setup(self) -> None:
        """One query so the daemon knows the profile (and keeps a spare of it)."""
        await _query(Sample(self.name, -1, "setup", 0.0), "[[say:setup]]", self.options())
        env = {"HOTSESSION_URL": self.d.url, "HOTSESSION_TOKEN": self.d.token}
        NOTES["hotsession-claude --version (median of 5, ms)"] = await _version_ms(env)

    async def prepare(self) -> None:
        """A spare of the profile ready, nothing spawning."""
        if not await self.d.wait_spare():
            raise BenchError("no spare of the drop-in profile became ready")

    async def sample(self, s: Sample, prompt: str) -> None:
        """``query()`` of a new conversation."""
        await _query(s, prompt, self.options())


class ShimClient(_SdkMode):
    """A follow-up on a ``ClaudeSDKClient`` connected through the shim."""

    name = "shim ClaudeSDKClient"
    description = "follow-up on a ClaudeSDKClient connected through hotsession-claude"
    client: Any = None

    async def setup(self) -> None:
        """Connect once; one warm-up turn."""
        from claude_agent_sdk import ClaudeSDKClient

        self.client = ClaudeSDKClient(self.options())
        await self.client.connect()
        await self.sample(Sample(self.name, -1, "setup", 0.0), "[[say:setup]]")

    async def sample(self, s: Sample, prompt: str) -> None:
        """``query`` + ``receive_response``."""
        await client_turn(self.client, s, prompt)

    async def teardown(self) -> None:
        """Disconnect."""
        await disconnect(self.client)
        self.client = None


async def _version_ms(env: dict[str, str], runs: int = 5) -> float:
    """Median wall time of ``hotsession-claude --version`` (start-up plus one round trip)."""
    times = []
    for _ in range(runs):
        began = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            shim_path(),
            "--version",
            stdout=asyncio.subprocess.DEVNULL,
            env={**os.environ, **env},
        )
        await proc.wait()
        times.append((time.monotonic() - began) * 1000)
    times.sort()
    return round(times[len(times) // 2], 1)


DROPIN_MODES: tuple[type[HttpMode], ...] = (
    SdkQueryResume,
    ShimQueryResume,
    ShimQueryNew,
    ShimClient,
)
