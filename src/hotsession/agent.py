"""The transport: one Claude Code CLI process spoken to over stream-json.

Design
======
Wire format. The CLI runs with ``--input-format stream-json --output-format stream-json``: one JSON
object per line in each direction. We write user messages and ``control_request`` objects; it
writes conversation messages (``system``, ``assistant``, ``user``, ``result``, ...),
``control_response`` objects answering ours, and ``control_request`` objects of its own
(``can_use_tool`` when a tool call needs a permission answer), which we answer with a
``control_response``. ``control_cancel_request`` withdraws one of its requests.

Why not ``ClaudeSDKClient``. We measured it (docs/transport.md): it parses every message into
dataclasses we would turn back into JSON for the API, and its bounded 100-message buffer stalls
control requests when nobody reads. This module keeps only what the daemon needs, forwards the
raw dicts, and keeps the SDK for what it is best at: the pinned, bundled CLI binary.

Threading model. Everything runs on the daemon's asyncio loop. One reader task per process reads
stdout for the process's whole life, so control responses always arrive even between turns; it
routes control traffic itself and queues every other message (unbounded: a turn takes them, and
a process emits nothing between turns). One task drains stderr into a ring buffer of the last
lines, for error reports. CLI-initiated control requests each get their own task, so a permission
wait never blocks the reader.

The interface. Readers never see the queue: ``async for msg in process`` (or ``await
process.next_message()``) yields the process's messages in order and raises the process's
``exit_error`` (an :class:`~hotsession.errors.AgentError`) once it is gone and every message it
wrote before dying was taken; ``drain_idle()`` takes what an idle process wrote, without waiting
(the pool's health checks). ``send_user`` starts a turn and counts it (``turns``).

Liveness. Death is detected on every path: EOF on stdout (exit code 0 or not), a reader error
(a line over ``max_line_bytes``, corrupt JSON) — in which case the process is killed, since a
process we can no longer understand is as good as dead. Whatever the path, ``exit_error`` is set,
``exited`` fires, and a reader waiting for the next message gets that error. Reading never
times out here, so a hung CLI is not detected by this module: the session's per-turn watchdog
does that.

Ownership and shutdown. Only :class:`hotsession.supervisor.Supervisor` creates these (it spawns
the process in its own process group, with a parent-death signal so the CLI dies with the
daemon). ``close()`` escalates, each step bounded: interrupt a running turn, close stdin (the CLI
exits when idle), SIGTERM to the group, SIGKILL to the group.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from hotsession.errors import AgentDied, AgentError, AgentProtocolError, AgentTimeout

log = logging.getLogger(__name__)

_END: Final[dict[str, Any]] = {"type": "__end__"}
# Queued after the last message of a dead process, so a waiting reader wakes up (never returned).

_STREAM_EVENT: Final = b'{"type":"stream_event"'
# How the CLI starts a partial message's line (``--include-partial-messages``; key order as CLI
# 2.1.330 writes it). Only a cheap filter: a line that starts otherwise is parsed and routed as
# any message, so a CLI that orders keys differently loses nothing.


class PartialMessage(dict[str, Any]):
    """A partial message passed on unparsed: reads as ``{"type": "stream_event"}``; ``raw`` is
    the CLI's line (``Event`` parses it only if someone reads the event's ``data``)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        super().__init__(type="stream_event")
        self.raw = raw


ControlHandler = Callable[["AgentProcess", dict[str, Any]], Awaitable[dict[str, Any]]]
MirrorSink = Callable[[dict[str, Any]], None]
"""Takes the CLI's ``transcript_mirror`` frames (``--session-mirror``), in order."""


class AgentProcess:
    """A live CLI process. Create it with ``Supervisor.spawn``; always ``close()`` it."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        *,
        label: str,
        max_line_bytes: int,
        stderr_lines: int = 200,
    ) -> None:
        self._proc = proc
        self.pid: int = proc.pid
        self.label = label
        self.started_mono = time.monotonic()
        self.max_line_bytes = max_line_bytes
        self._messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.exited = asyncio.Event()
        self.exit_error: AgentError | None = None
        self.init_response: dict[str, Any] | None = None
        self.control_handler: ControlHandler | None = None
        self.on_cancel: Callable[[str], None] | None = None
        # ``transcript_mirror`` frames go here, never to ``messages`` (they are not conversation).
        self.on_mirror: MirrorSink | None = None
        self.turns = 0
        # Every process runs with --include-partial-messages; its owner says whether it wants
        # them. Unwanted ones are dropped by the reader before they are parsed.
        self.partial_messages = False
        self._stderr: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._counter = 0
        self._closing = False
        self._write_lock = asyncio.Lock()
        self._reader = asyncio.create_task(self._read_stdout(), name=f"agent-{self.pid}-stdout")
        self._stderr_task = asyncio.create_task(self._read_stderr(), name=f"agent-{self.pid}-err")

    # -- state ---------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """True until the process is known to be gone."""
        return not self.exited.is_set()

    @property
    def closing(self) -> bool:
        """True once the owner started ending the process (its death is expected)."""
        return self._closing

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: killed by that signal)."""
        return self._proc.returncode

    def stderr_tail(self, lines: int = 20) -> str:
        """The last lines the CLI wrote to stderr."""
        return "\n".join(list(self._stderr)[-lines:])

    # -- writing -------------------------------------------------------------------------------

    async def send(self, obj: dict[str, Any]) -> None:
        """Write one JSON line to the CLI's stdin."""
        await self.send_raw(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    async def send_raw(self, data: bytes) -> None:
        """Write bytes to stdin; a dead process raises ``AgentDied``."""
        stdin = self._proc.stdin
        if stdin is None or not self.alive or stdin.is_closing():
            raise self.exit_error or self._died("the agent process is gone")
        async with self._write_lock:
            try:
                stdin.write(data)
                await stdin.drain()
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise self._died(f"cannot write to the agent process: {exc}") from exc

    async def send_user(self, text: str, *, message: dict[str, Any] | None = None) -> None:
        """Send one user prompt (starts a turn, counted in ``turns``); ``message``: the whole
        stream-json user message to write as is instead of one made of ``text``."""
        self.turns += 1
        await self.send(
            message
            if message is not None
            else {
                "type": "user",
                "message": {"role": "user", "content": text},
                "parent_tool_use_id": None,
            }
        )

    async def request(self, subtype: str, timeout: float = 60.0, **fields: Any) -> dict[str, Any]:
        """Send a control request and wait for its response (``AgentTimeout`` past ``timeout``)."""
        self._counter += 1
        request_id = f"req_{self._counter}_{os.urandom(4).hex()}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        try:
            await self.send(
                {
                    "type": "control_request",
                    "request_id": request_id,
                    "request": {"subtype": subtype, **fields},
                }
            )
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError as exc:
            raise AgentTimeout(
                f"no answer to control request {subtype!r} within {timeout:g}s",
                stderr_tail=self.stderr_tail(),
            ) from exc
        finally:
            self._pending.pop(request_id, None)

    async def initialize(
        self, timeout: float = 60.0, fields: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Complete the control protocol's handshake; the process is ready after it.

        ``fields``: more fields of the request (agents, system prompt, …), which the CLI binds
        at its first ``initialize`` only."""
        payload = {"hooks": None, **(fields or {})}
        self.init_response = await self.request("initialize", timeout=timeout, **payload)
        return self.init_response

    async def interrupt(self, timeout: float = 10.0) -> None:
        """Ask the CLI to end the running turn (it then emits a result)."""
        await self.request("interrupt", timeout=timeout)

    # -- reading -------------------------------------------------------------------------------

    def attach(
        self, control_handler: ControlHandler, on_cancel: Callable[[str], None] | None = None
    ) -> None:
        """Route the CLI's control requests (and their withdrawals) to a new owner."""
        self.control_handler = control_handler
        self.on_cancel = on_cancel

    def __aiter__(self) -> AgentProcess:
        return self

    async def next_message(self) -> dict[str, Any]:
        """The next message the CLI wrote; raises ``exit_error`` once it is gone (and drained)."""
        msg = await self._messages.get()
        if msg is _END:
            self._messages.put_nowait(_END)  # every later read raises too
            assert self.exit_error is not None
            raise self.exit_error
        return msg

    def drain_idle(self) -> list[dict[str, Any]]:
        """Take every message written so far, without waiting (an idle process's output)."""
        out: list[dict[str, Any]] = []
        queue = self._messages
        while not queue.empty():
            msg = queue.get_nowait()
            if msg is _END:
                queue.put_nowait(_END)
                break
            out.append(msg)
        return out

    __anext__ = next_message  # iteration ends only by raising: see ``next_message``

    async def _read_stdout(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        error: AgentError | None = None
        try:
            while True:
                try:
                    line = await stdout.readline()
                except ValueError as exc:  # LimitOverrunError wrapped by readline
                    error = AgentProtocolError(
                        f"the agent wrote a line over the {self.max_line_bytes} byte limit",
                        stderr_tail=self.stderr_tail(),
                    )
                    log.warning("agent %s: %s (%s)", self.pid, error.message, exc)
                    break
                if not line:
                    break
                if line.startswith(_STREAM_EVENT) and line.endswith(b"}\n"):
                    if self.partial_messages:  # routing needs nothing more than its type
                        self._messages.put_nowait(PartialMessage(line))
                    continue
                if line[:1] != b"{":
                    # Non-JSON noise (debug output of tools or the runtime) carries no message.
                    if line.strip():
                        self._stderr.append("[stdout] " + line[:500].decode(errors="replace"))
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    error = AgentProtocolError(
                        "the agent wrote corrupt JSON", stderr_tail=self.stderr_tail()
                    )
                    break
                if isinstance(msg, dict):
                    self._route(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # pragma: no cover - defensive: a reader bug must not hang turns
            log.exception("agent %s: reader failed", self.pid)
            error = AgentProtocolError(f"reader failed: {exc}")
        if error is not None:
            self._signal_group(signal.SIGKILL)
        await self._on_exit(error)

    def _route(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "control_response":
            resp = msg.get("response") or {}
            fut = self._pending.get(resp.get("request_id", ""))
            if fut is not None and not fut.done():
                if resp.get("subtype") == "error":
                    fut.set_exception(
                        AgentProtocolError(f"control request failed: {resp.get('error')}")
                    )
                else:
                    payload = resp.get("response")
                    fut.set_result(payload if isinstance(payload, dict) else {})
            return
        if kind == "control_request":
            request_id = str(msg.get("request_id", ""))
            task = asyncio.create_task(self._answer(request_id, msg.get("request") or {}))
            self._inflight[request_id] = task
            task.add_done_callback(functools.partial(self._forget_inflight, request_id))
            return
        if kind == "transcript_mirror":
            if self.on_mirror is not None:
                self.on_mirror(msg)
            return
        if kind == "control_cancel_request":
            request_id = str(msg.get("request_id", ""))
            if request_id in self._inflight:
                self._inflight.pop(request_id).cancel()
            if self.on_cancel is not None:
                self.on_cancel(request_id)
            return
        self._messages.put_nowait(msg)

    def _forget_inflight(self, request_id: str, _task: object) -> None:
        self._inflight.pop(request_id, None)

    async def _answer(self, request_id: str, request: dict[str, Any]) -> None:
        handler = self.control_handler
        try:
            if handler is None:
                raise AgentProtocolError(f"unsupported control request {request.get('subtype')}")
            response = await handler(self, {"request_id": request_id, **request})
            reply: dict[str, Any] = {
                "subtype": "success",
                "request_id": request_id,
                "response": response,
            }
        except asyncio.CancelledError:
            return  # withdrawn by the CLI: it expects no answer
        except Exception as exc:
            reply = {"subtype": "error", "request_id": request_id, "error": str(exc)}
        with contextlib.suppress(AgentError):
            await self.send({"type": "control_response", "response": reply})

    async def _read_stderr(self) -> None:
        stderr = self._proc.stderr
        if stderr is None:
            return
        with contextlib.suppress(ValueError, asyncio.CancelledError):
            while line := await stderr.readline():
                self._stderr.append(line[:2000].decode(errors="replace").rstrip())

    async def _on_exit(self, error: AgentError | None) -> None:
        with contextlib.suppress(asyncio.TimeoutError, ProcessLookupError):
            async with asyncio.timeout(10):
                await self._proc.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(1):
                await self._stderr_task  # the last words, for the error report
        if error is None:
            code = self._proc.returncode
            how = (
                f"was killed by signal {-code}"
                if code is not None and code < 0
                else (f"exited with code {code}")
            )
            error = self._died(f"the agent process {how}")
        self.exit_error = error
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
        for task in list(self._inflight.values()):
            task.cancel()
        self.exited.set()
        self._messages.put_nowait(_END)

    def _died(self, message: str) -> AgentDied:
        return AgentDied(
            message, exit_code=self._proc.returncode, stderr_tail=self.stderr_tail() or None
        )

    # -- ending --------------------------------------------------------------------------------

    def _signal_group(self, sig: int) -> None:
        # The process leads its own group (start_new_session), so tool subprocesses die too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process group now; ``exited`` fires once it is reaped."""
        self._closing = True
        self._signal_group(signal.SIGKILL)

    async def close(self, *, busy: bool = False, step_timeout: float = 3.0) -> None:
        """End the process by escalation; every step is bounded. Safe to call twice."""
        self._closing = True
        if self.alive and busy:
            # A busy CLI finishes its turn after stdin EOF; interrupting first saves that time.
            with contextlib.suppress(AgentError):
                await self.interrupt(timeout=step_timeout)
        stdin = self._proc.stdin
        if stdin is not None and not stdin.is_closing():
            with contextlib.suppress(OSError):
                stdin.close()
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                self._signal_group(sig)
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(step_timeout):
                    await self.exited.wait()
                break
        else:  # pragma: no cover - SIGKILL cannot be ignored; only a zombie reaper bug gets here
            log.error("agent %s did not exit after SIGKILL", self.pid)
        # Tool subprocesses may outlive the CLI in its group: end them too.
        self._signal_group(signal.SIGKILL)
