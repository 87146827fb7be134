"""The ways of running a Claude Code turn that the benchmark compares (baselines and transports).

A mode is set up once, then asked for one timed turn at a time (``sample``); between samples the
runner calls ``prepare`` (untimed: evict a session, wait for a spare). Each mode stamps
``Sample.t_send`` itself, immediately before the first byte leaves the client, and ``t_first`` /
``t_result`` as the first CLI message and the result reach it.

Baselines, all with the same CLI binary, env and permission mode:

* ``claude -p``          — a fresh ``claude -p PROMPT`` process per prompt;
* ``claude -p --resume`` — the same, continuing one conversation (``--resume ID``);
* ``sdk query()``        — ``claude_agent_sdk.query()`` per prompt (a process per prompt);
* ``bare CLI (floor)``   — one live stream-json process driven directly over stdin, with the same
  argv as hotsession's processes: nothing can beat it by more than noise.
* ``bare CLI (pre-spawned)`` — a new conversation on a stream-json process spawned ahead
  (``initialize`` answered, then left idle ``PRESPAWN_IDLE_S``) and driven over stdin: the
  plainest pre-warmed pool, with no daemon and no warm-up. ``hs new (spare)`` must beat it.

Transports (``hotsession bench --transport``, the measurement behind docs/transport.md):

* ``lean transport``     — a follow-up on a ``Hotsession`` library session (hotsession.agent);
* ``ClaudeSDKClient``    — a follow-up on a connected ``ClaudeSDKClient``
  (``query`` + ``receive_response``).

The hotsession-through-HTTP modes live in ``bench/http_modes.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from hotsession.bench.environment import BenchEnv, BenchError
from hotsession.bench.stats import Sample
from hotsession.options import SessionOptions, build_argv, build_env

_LINE_LIMIT = 64 * 1024 * 1024
PRESPAWN_IDLE_S = 3.0
"""How long ``bare CLI (pre-spawned)`` leaves its process idle before the prompt (issue 13)."""


class Mode:
    """One way of running a turn."""

    name: ClassVar[str] = ""
    group: ClassVar[str] = "baseline"
    description: ClassVar[str] = ""
    paused: ClassVar[bool] = False
    """Timed after a pause (``hotsession.bench.pause``), not in the back-to-back rounds."""
    back_to_back: ClassVar[str | None] = None
    """A paused mode's back-to-back counterpart (the same turn without the pause), if any."""

    def __init__(self, env: BenchEnv) -> None:
        self.env = env

    async def setup(self) -> None:
        """Start what the mode keeps for the whole run (untimed)."""

    async def prepare(self) -> None:
        """Untimed work before each sample (evict a session, wait for a spare)."""

    async def sample(self, s: Sample, prompt: str) -> None:
        """Run one turn of ``prompt``, stamping ``s``; raise on failure."""
        raise NotImplementedError

    async def teardown(self) -> None:
        """Stop what ``setup`` started."""

    def pids(self) -> dict[str, int]:
        """Live CLI processes of this mode, by role (for the memory report)."""
        return {}


# -- helpers ----------------------------------------------------------------------------------


def stamp(s: Sample, msg: dict[str, Any]) -> bool:
    """Stamp first-event / result times from one CLI message; True at the result."""
    now = time.monotonic()
    if s.t_first is None:
        s.t_first = now
    if msg.get("type") == "result":
        s.t_result = now
        if msg.get("is_error"):
            s.error = f"result is_error: {str(msg.get('result'))[:200]}"
        return True
    return False


async def _read_until_result(stdout: asyncio.StreamReader, s: Sample) -> None:
    while True:
        line = await stdout.readline()
        if not line:
            raise BenchError("the CLI ended without a result")
        if line[:1] != b"{":
            continue
        msg = json.loads(line)
        if msg.get("type") in ("control_response", "control_request"):
            continue
        if stamp(s, msg):
            return


# -- baselines --------------------------------------------------------------------------------


class FreshPrint(Mode):
    """A new ``claude -p`` process per prompt."""

    name = "claude -p"
    description = "fresh `claude -p` process per prompt"
    extra_args: tuple[str, ...] = ()

    def argv(self, prompt: str) -> list[str]:
        """The command line of one prompt."""
        return [
            self.env.cli_path,
            "-p",
            prompt,
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            self.env.permission_mode,
            *self.extra_args,
        ]

    async def sample(self, s: Sample, prompt: str) -> None:
        """Spawn, read until the result, reap."""
        argv = self.argv(prompt)
        env = self.env.agent_env()
        s.t_send = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.env.workdir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            limit=_LINE_LIMIT,
        )
        try:
            assert proc.stdout is not None
            await asyncio.wait_for(_read_until_result(proc.stdout, s), 120)
            await asyncio.wait_for(proc.wait(), 30)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


class ResumePrint(FreshPrint):
    """``claude -p --resume ID`` per prompt, continuing one conversation."""

    name = "claude -p --resume"
    description = "`claude -p --resume ID` process per prompt"

    async def setup(self) -> None:
        """Create the conversation that every sample resumes."""
        session_id = str(uuid.uuid4())
        self.extra_args = (f"--session-id={session_id}",)
        await self.sample(Sample(self.name, -1, "setup", 0.0), "[[say:setup]]")
        self.extra_args = (f"--resume={session_id}",)


class SdkQuery(Mode):
    """``claude_agent_sdk.query()`` per prompt."""

    name = "sdk query()"
    description = "`claude_agent_sdk.query()` per prompt"

    async def sample(self, s: Sample, prompt: str) -> None:
        """One ``query()``; first message and ResultMessage stamp the sample."""
        from claude_agent_sdk import ClaudeAgentOptions, query

        options = ClaudeAgentOptions(
            cli_path=self.env.cli_path,
            cwd=str(self.env.workdir),
            env=self.env.agent_vars(),
            permission_mode=self.env.permission_mode,  # type: ignore[arg-type]
            max_buffer_size=_LINE_LIMIT,
        )
        s.t_send = time.monotonic()
        await stamp_messages(s, query(prompt=prompt, options=options), "query()")


class BareCli(Mode):
    """One live stream-json CLI process, driven directly over stdin: the floor."""

    name = "bare CLI (floor)"
    description = "live stream-json CLI process over stdin (no hotsession)"
    group = "floor"

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.proc: asyncio.subprocess.Process | None = None

    async def setup(self) -> None:
        """Spawn with hotsession's own argv, complete ``initialize``, run one warm-up turn."""
        self.proc = await spawn_initialized(self.env)
        await self.sample(Sample(self.name, -1, "setup", 0.0), "[[say:setup]]")

    async def sample(self, s: Sample, prompt: str) -> None:
        """Write one user message, read until its result."""
        assert self.proc is not None and self.proc.stdout is not None
        line = json.dumps(
            {
                "type": "user",
                "message": {"role": "user", "content": prompt},
                "parent_tool_use_id": None,
            },
            separators=(",", ":"),
        ).encode()
        stdin = self.proc.stdin
        assert stdin is not None
        s.t_send = time.monotonic()
        stdin.write(line + b"\n")
        await stdin.drain()
        await asyncio.wait_for(_read_until_result(self.proc.stdout, s), 120)

    async def teardown(self) -> None:
        """Close stdin, then kill if it lingers."""
        proc, self.proc = self.proc, None
        if proc is not None:
            await end_process(proc)

    def pids(self) -> dict[str, int]:
        """The live process."""
        return {"bare CLI": self.proc.pid} if self.proc and self.proc.returncode is None else {}


class BarePreSpawned(BareCli):
    """A new conversation on a bare CLI spawned ahead and left idle (a naive pre-spawned pool)."""

    name = "bare CLI (pre-spawned)"
    description = "new conversation on a stream-json CLI spawned ahead and idle (no daemon)"
    group = "baseline"

    async def setup(self) -> None:
        """Nothing: each sample gets its own process in ``prepare``."""

    async def prepare(self) -> None:
        """End the last sample's process; spawn the next one and wait until it is idle."""
        if self.proc is not None:
            await end_process(self.proc)
        self.proc = await spawn_initialized(self.env)
        await wait_idle(self.proc.pid)
        await asyncio.sleep(PRESPAWN_IDLE_S)  # a pooled spare waits at least as long

    def pids(self) -> dict[str, int]:
        """The live process."""
        if self.proc and self.proc.returncode is None:
            return {"bare CLI (pre-spawned)": self.proc.pid}
        return {}


def bare_command(env: BenchEnv) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of a bare CLI: hotsession's own (stream-json both ways,
    ``--include-partial-messages``) for a new conversation in the run's workdir."""
    options = SessionOptions.create(str(env.workdir), permission_mode=env.permission_mode)
    argv = build_argv(env.cli_path, options, session_id=str(uuid.uuid4()))
    return argv, build_env(options, base=env.agent_env(), allow_root_bypass=True)


async def spawn_initialized(
    env: BenchEnv, *, unset: tuple[str, ...] = ()
) -> asyncio.subprocess.Process:
    """A stream-json CLI with hotsession's own argv, its ``initialize`` answered (``unset``:
    variables of hotsession's env left out, e.g. ``options.RUNTIME_ENV``'s)."""
    argv, cli_env = bare_command(env)
    for name in unset:
        cli_env.pop(name, None)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=env.workdir,
        env=cli_env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        limit=_LINE_LIMIT,
        start_new_session=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    request = {
        "type": "control_request",
        "request_id": "req_init",
        "request": {"subtype": "initialize", "hooks": None},
    }
    proc.stdin.write(json.dumps(request, separators=(",", ":")).encode() + b"\n")
    await proc.stdin.drain()
    async with asyncio.timeout(60):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise BenchError("the bare CLI exited during initialize")
            if b'"control_response"' in line:
                return proc


async def wait_idle(pid: int, quiet_s: float = 0.2, timeout: float = 10.0) -> None:
    """Until the process used no CPU for ``quiet_s`` (its start-up work done), bounded."""
    import psutil

    deadline = time.monotonic() + timeout
    last = -1.0
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            used = sum(psutil.Process(pid).cpu_times()[:2])
            if used == last:
                return
            last = used
        await asyncio.sleep(quiet_s)


async def end_process(proc: asyncio.subprocess.Process) -> None:
    """Close stdin, then kill the group if it lingers."""
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        await proc.wait()


# -- transports -------------------------------------------------------------------------------


class LeanTransport(Mode):
    """A follow-up on a ``Hotsession`` library session (hotsession's own transport)."""

    name = "lean transport"
    description = "follow-up on a hotsession library session (hotsession.agent.AgentProcess)"
    group = "transport"

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.hub: Any = None
        self.session: Any = None

    async def setup(self) -> None:
        """Start a library instance (no pool) and open one session; one warm-up turn."""
        from hotsession import Config, Hotsession

        config = Config(
            state_dir=self.env.root / "lib-state",
            cli_path=self.env.cli_path,
            pool_enabled=False,
            allow_root_bypass=True,
        )
        self.hub = await Hotsession(config).start()
        self.session = await self.hub.open(
            str(self.env.workdir),
            permission_mode=self.env.permission_mode,
            env=self.env.agent_vars(),
        )
        await self.sample(Sample(self.name, -1, "setup", 0.0), "[[say:setup]]")

    async def sample(self, s: Sample, prompt: str) -> None:
        """One turn; the first ``message`` event and the ``result`` event stamp it."""
        s.t_send = time.monotonic()
        async for event in self.session.send(prompt):
            if event.type == "message":
                if s.t_first is None:
                    s.t_first = time.monotonic()
            elif event.type == "result":
                s.t_result = time.monotonic()
                s.extra["source"] = event.data.get("timing", {}).get("source")
            elif event.type == "error":
                s.error = f"{event.data.get('code')}: {event.data.get('message')}"

    async def teardown(self) -> None:
        """Stop the library instance (ends its processes)."""
        if self.hub is not None:
            await self.hub.stop()
            self.hub = None

    def pids(self) -> dict[str, int]:
        """The session's process."""
        proc = self.session.process if self.session is not None else None
        return {"lean transport session": proc.pid} if proc is not None else {}


async def client_turn(client: Any, s: Sample, prompt: str) -> None:
    """One turn on a connected ``ClaudeSDKClient`` (``query`` + ``receive_response``), stamping
    ``s``: shared by the SDK's own client and the one connected through the drop-in."""
    s.t_send = time.monotonic()
    await client.query(prompt)
    await stamp_messages(s, client.receive_response(), "receive_response()")


async def stamp_messages(s: Sample, messages: AsyncIterator[Any], what: str) -> Any:
    """Read an SDK message stream to its end, stamping ``s`` (first message, ``ResultMessage``,
    an error result); returns the ``ResultMessage`` (``BenchError`` if ``what`` gave none)."""
    from claude_agent_sdk import ResultMessage

    result = None
    async for msg in messages:
        now = time.monotonic()
        if s.t_first is None:
            s.t_first = now
        if isinstance(msg, ResultMessage):
            s.t_result, result = now, msg
            if msg.is_error:
                s.error = f"result is_error: {str(msg.result)[:200]}"
    if result is None:
        raise BenchError(f"{what} ended without a result")
    return result


async def disconnect(client: Any) -> None:
    """Disconnect a ``ClaudeSDKClient`` if there is one (best effort)."""
    if client is not None:
        with contextlib.suppress(Exception):
            await client.disconnect()


class SdkClient(Mode):
    """A follow-up on a connected ``ClaudeSDKClient``."""

    name = "ClaudeSDKClient"
    description = "follow-up on a connected ClaudeSDKClient (query + receive_response)"
    group = "transport"

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.client: Any = None

    async def setup(self) -> None:
        """Connect once; one warm-up turn."""
        from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient

        options = ClaudeAgentOptions(
            cli_path=self.env.cli_path,
            cwd=str(self.env.workdir),
            env=self.env.agent_vars(),
            permission_mode=self.env.permission_mode,  # type: ignore[arg-type]
            max_buffer_size=_LINE_LIMIT,
        )
        self.client = ClaudeSDKClient(options)
        await self.client.connect()
        await self.sample(Sample(self.name, -1, "setup", 0.0), "[[say:setup]]")

    async def sample(self, s: Sample, prompt: str) -> None:
        """``query`` + ``receive_response``."""
        await client_turn(self.client, s, prompt)

    async def teardown(self) -> None:
        """Disconnect."""
        await disconnect(self.client)
        self.client = None

    def pids(self) -> dict[str, int]:
        """The client's CLI process (private attribute; best effort)."""
        with contextlib.suppress(AttributeError):
            pid = self.client._transport._process.pid
            return {"ClaudeSDKClient": int(pid)}
        return {}
