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

Threading model. Everything runs on the daemon's asyncio loop. The process object is the
subprocess's protocol (``asyncio.SubprocessProtocol``): the loop hands it each chunk of stdout as
it is read (``pipe_data_received``), and it splits the chunk into lines in one pass, routes control
traffic itself (so control responses arrive even between turns), and passes every other message
on, in order — to a *sink* when one is set (a turn's runner: called synchronously, no task
wake-up per line), else to a queue (unbounded: a process emits little between turns) that
readers iterate. Stderr is kept the same way as a ring buffer of the last lines, for error
reports. CLI-initiated control requests each get their own task, so a permission wait never
blocks reading.

Why a protocol and not ``StreamReader.readline`` in a task (measured, docs/benchmarks.md): with
``--include-partial-messages`` a reply is hundreds of lines, and the task cost one wake-up, one
``readline`` and one queue hand-off per line; a token delta nobody asked for is now dropped by
a ``startswith`` on its bytes, inside the split.

The interface. Readers never see the queue: ``async for msg in process`` (or ``await
process.next_message()``) yields the process's messages in order and raises the process's
``exit_error`` (an :class:`~hotsession.errors.AgentError`) once it is gone and every message it
wrote before dying was taken; ``drain_idle()`` takes what an idle process wrote, without waiting
(the pool's health checks). ``deliver(sink)`` hands the messages to ``sink`` as they are read, a
chunk's at once with the CLI's lines (those queued first), until it names its last one — a
turn's ``result`` — and resolves with that message (or the process's ``exit_error``); what
follows it stays queued. ``send_user`` starts a
turn and counts it (``turns``).

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
from typing import Any, Final, cast

from hotsession.errors import AgentDied, AgentError, AgentProtocolError, AgentTimeout

log = logging.getLogger(__name__)

_STREAM_EVENT: Final = b'{"type":"stream_event"'
# How the CLI starts a partial message's line (``--include-partial-messages``; key order as CLI
# 2.1.330 writes it). Only a cheap filter: a line that starts otherwise is parsed and routed as
# any message, so a CLI that orders keys differently loses nothing.

_DELTA: Final = b'{"type":"stream_event","event":{"type":"content_block_delta"'
# A token delta's line: more are coming at once (see ``COALESCE_S``).

COALESCE_S: Final = 0.001
"""How long reading pauses after a token delta when lines come densely (a gap under this since
the previous read, or since the last such pause ended): the CLI writes one line per write, so a
streamed reply of 500 deltas was ~500 wake-ups and reads of the pipe, ~7 µs of the daemon's CPU
each whether or not anybody asked for the deltas (measured, docs/benchmarks.md); lines that
queue up meanwhile are read in one chunk. A delta reaches its readers at most about this much
later; a turn's ``result`` never waits (it follows the reply's ``message_stop``, after which
reading does not pause)."""

_BLOCK_STARTS: Final = (
    b'{"type":"stream_event","event":{"type":"message_start"',
    b'{"type":"stream_event","event":{"type":"content_block_start"',
)
# A reply (or one of its content blocks) begins: its deltas and complete message follow.

QUIET_PAUSE_S: Final = 0.002
"""How long reading pauses after the start of a reply or of a content block that nobody asked
to stream (the session does not want partial messages): the CLI writes the block's deltas,
the complete message and the block's end as separate lines within ~2 ms for a short reply, each
a wake-up and a read of the pipe (~35 µs of the daemon's CPU each, measured 2026-11-30,
docs/benchmarks.md); a plain follow-up's 9 reads become 6. Only the unstreamed lines of the
block wait (at most this long); never after ``message_stop``, so the turn's ``result`` (which
follows it) does not, and never for a session that streams (its first token would wait)."""

_ROUTED: Final = frozenset(
    {"control_response", "control_request", "transcript_mirror", "control_cancel_request"}
)
"""Message types the process routes itself; they never reach readers."""

_STDERR_LINE_CHARS: Final = 2000


class PartialMessage(dict[str, Any]):
    """A partial message passed on unparsed: reads as ``{"type": "stream_event"}``; ``raw`` is
    the CLI's line (``Event`` parses it only if someone reads the event's ``data``)."""

    __slots__ = ("raw",)

    raw: bytes  # set by the reader: ``PartialMessage(_PARTIAL_ITEMS)``, then ``raw``


_PARTIAL_ITEMS: Final = {"type": "stream_event"}


ControlHandler = Callable[["AgentProcess", dict[str, Any]], Awaitable[dict[str, Any]]]
MirrorSink = Callable[[dict[str, Any]], None]
"""Takes the CLI's ``transcript_mirror`` frames (``--session-mirror``), in order."""
Batch = list[tuple[dict[str, Any], "bytes | None"]]
"""Messages read together, each with the CLI's line (None for one queued before a delivery)."""
Sink = Callable[[Batch], "int | None"]
"""Takes a turn's messages as they are read (``deliver``), a chunk's at once; returns None to
go on, or the index of the last message it wants (the delivery ends there)."""


class AgentProcess(asyncio.SubprocessProtocol):
    """A live CLI process. Create it with ``Supervisor.spawn``; always ``close()`` it.

    It is the process's ``asyncio.SubprocessProtocol`` (the supervisor passes it to the loop's
    ``subprocess_exec``); the protocol methods are the loop's, not an API."""

    def __init__(self, *, label: str, max_line_bytes: int, stderr_lines: int = 200) -> None:
        self.pid = 0
        self.label = label
        self.started_mono = time.monotonic()
        self.max_line_bytes = max_line_bytes
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None  # a reader waits for the queue
        self._sink: Sink | None = None
        self._sink_done: asyncio.Future[dict[str, Any]] | None = None
        self.exited = asyncio.Event()
        self.exit_error: AgentError | None = None
        self.init_response: dict[str, Any] | None = None
        self.control_handler: ControlHandler | None = None
        self.on_cancel: Callable[[str], None] | None = None
        # ``transcript_mirror`` frames go here, never to readers (they are not conversation).
        self.on_mirror: MirrorSink | None = None
        self.turns = 0
        # Every process runs with --include-partial-messages; its owner says whether it wants
        # them. Unwanted ones are dropped by the reader before they are parsed.
        self.partial_messages = False
        self.last_output = self._loop.time()  # loop time of the last stdout chunk (watchdogs)
        self._stderr: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._counter = 0
        self._closing = False
        # Reading: an unfinished stdout line's chunks (joined once its newline comes), the same
        # for stderr; set once stdout ended or could not be understood any more.
        self._line_parts: list[bytes] = []
        self._resumed_at = float("-inf")  # loop time reading resumed after a pause (coalescing)
        self._line_len = 0
        self._err_part = b""
        self._stdout_done = False
        # Writing: stdin's flow control (the pipe is full) and its loss.
        self._write_paused: asyncio.Future[None] | None = None
        self._stdin_lost: BaseException | None = None
        self._reaped: asyncio.Future[None] = self._loop.create_future()
        self._stderr_closed: asyncio.Future[None] = self._loop.create_future()
        self._finisher: asyncio.Task[None] | None = None

    # -- the loop's protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement these interfaces without subclassing asyncio's.
        sub = self._transport = cast(asyncio.SubprocessTransport, transport)
        self.pid = sub.get_pid()
        self._stdin = cast(asyncio.WriteTransport, sub.get_pipe_transport(0))

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        assert type(data) is bytes
        if fd == 1:
            self._read_stdout(data)
        elif fd == 2:
            self._read_stderr(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 0:
            self._stdin_lost = exc or BrokenPipeError("stdin closed")
            self._resume_writing(self._stdin_lost)
        elif fd == 1:
            if not self._stdout_done:
                tail = b"".join(self._line_parts)
                self._line_parts = []
                if tail:  # a last line without its newline is still a line
                    self._read_stdout(tail + b"\n")
            self._end_stdout(None)
        elif fd == 2:
            if self._err_part:
                self._keep_stderr(self._err_part)
                self._err_part = b""
            if not self._stderr_closed.done():
                self._stderr_closed.set_result(None)

    def process_exited(self) -> None:
        if not self._reaped.done():
            self._reaped.set_result(None)
        if self.exited.is_set() and self._transport is not None:
            self._transport.close()  # reaped after ``_on_exit`` gave up waiting for it

    def pause_writing(self) -> None:
        if self._write_paused is None:
            self._write_paused = self._loop.create_future()

    def resume_writing(self) -> None:
        self._resume_writing(None)

    def _resume_writing(self, exc: BaseException | None) -> None:
        waiter, self._write_paused = self._write_paused, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

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
        return self._transport.get_returncode() if self._transport is not None else None

    def stderr_tail(self, lines: int = 20) -> str:
        """The last lines the CLI wrote to stderr."""
        return "\n".join(list(self._stderr)[-lines:])

    # -- writing -------------------------------------------------------------------------------

    async def send(self, obj: dict[str, Any]) -> None:
        """Write one JSON line to the CLI's stdin."""
        await self.send_raw(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    async def send_raw(self, data: bytes) -> None:
        """Write bytes to stdin; a dead process raises ``AgentDied``."""
        stdin = self._stdin
        if stdin is None or not self.alive or stdin.is_closing() or self._stdin_lost:
            raise self.exit_error or self._died("the agent process is gone")
        stdin.write(data)
        if stdin.is_closing() or self._stdin_lost:  # the write met a closed pipe
            raise self._died(f"cannot write to the agent process: {self._stdin_lost or 'EPIPE'}")
        while self._write_paused is not None:  # the pipe is full: wait until it drains
            try:
                await asyncio.shield(self._write_paused)
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
        fut: asyncio.Future[dict[str, Any]] = self._loop.create_future()
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
        """The next message the CLI wrote; raises ``exit_error`` once it is gone (and drained).

        Cancelling a pending call loses nothing: a message leaves the queue only when returned."""
        while True:
            if self._queue:
                return self._queue.popleft()
            if self.exit_error is not None:
                raise self.exit_error  # every later read raises too
            if self._waiter is None or self._waiter.done():
                self._waiter = self._loop.create_future()
            await asyncio.shield(self._waiter)  # shared by readers; a cancelled one leaves it

    __anext__ = next_message  # iteration ends only by raising: see ``next_message``

    def drain_idle(self) -> list[dict[str, Any]]:
        """Take every message written so far, without waiting (an idle process's output)."""
        out = list(self._queue)
        self._queue.clear()
        return out

    def deliver(self, sink: Sink) -> asyncio.Future[dict[str, Any]]:
        """Hand messages to ``sink`` as they are read, in order (queued ones first), the lines
        of one chunk at once, until it names its last one: the future then holds that message,
        and later ones are queued again. It raises the process's ``exit_error`` when the process
        ends first, or what ``sink`` raised (the batch it raised on is lost with the turn).
        ``undeliver`` (or cancelling the future) stops the delivery.

        For a turn's runner: ``sink`` is called on the reader's path (keep it quick), with no
        task wake-up per message, and one call per chunk (a streamed reply's dozens of deltas
        read together are handled in one loop: measured, docs/benchmarks.md)."""
        if self._sink is not None:
            raise RuntimeError("messages are already being delivered")
        done: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._sink, self._sink_done = sink, done
        queue = self._queue
        if queue:
            queued: Batch = [(msg, None) for msg in queue]
            queue.clear()
            queue.extend(msg for msg, _ in self._feed(queued))
        if self._sink is sink and self.exit_error is not None:
            self._sink = self._sink_done = None
            done.set_exception(self.exit_error)
        return done

    def undeliver(self, done: asyncio.Future[dict[str, Any]]) -> None:
        """Stop the delivery ``deliver`` returned ``done`` for (no error if it already ended)."""
        if self._sink_done is done:
            self._sink = self._sink_done = None
        if not done.done():
            done.cancel()

    def _feed(self, batch: Batch) -> Batch:
        """Messages to the sink (set by the caller); returns those it did not take."""
        sink, done = self._sink, self._sink_done
        assert sink is not None and done is not None
        try:
            last = sink(batch)
        except BaseException as exc:  # the sink's error is its caller's, the reader goes on
            self._sink = self._sink_done = None
            done.set_exception(exc)
            return []
        if last is None:
            return []
        self._sink = self._sink_done = None
        done.set_result(batch[last][0])
        return batch[last + 1 :]

    def _read_stdout(self, data: bytes) -> None:
        """Split a chunk of stdout into lines, route or pass each on (see the docstring)."""
        if self._stdout_done:
            return  # after a protocol error the rest is not read
        now = self._loop.time()
        # Dense: a chunk soon after the previous read, or soon after a pause for deltas ended
        # (lines queued meanwhile: more follow). Counting only the previous read, the read just
        # after a pause never paused again, and the next line was read alone: a 500-delta reply
        # took ~24 reads and ~49 loop iterations (strace, 2026-11-30), now about half.
        dense = now - max(self.last_output, self._resumed_at) < COALESCE_S
        self.last_output = now
        if self._line_parts:  # an unfinished line waits for its newline
            if b"\n" not in data:
                self._line_parts.append(data)
                self._line_len += len(data)
                if self._line_len > self.max_line_bytes:
                    self._too_long()
                return
            self._line_parts.append(data)
            data = b"".join(self._line_parts)
            self._line_parts = []
        lines = data.split(b"\n")
        tail = lines.pop()
        if tail:
            self._line_parts = [tail]
            self._line_len = len(tail)
            if self._line_len > self.max_line_bytes:
                self._too_long()
                return
        if len(data) > self.max_line_bytes and any(
            len(line) > self.max_line_bytes for line in lines
        ):
            self._too_long()
            return
        out: Batch = []  # messages with their lines
        wanted = self.partial_messages
        new_partial = PartialMessage
        for line in lines:
            if line.startswith(_STREAM_EVENT) and line.endswith(b"}"):
                if wanted:  # routing needs nothing more than its type
                    # dict's own __init__, no Python frame: 0.25 -> 0.10 µs a delta
                    # (measured 2026-11-30; hundreds a turn).
                    partial = new_partial(_PARTIAL_ITEMS)
                    partial.raw = line
                    out.append((partial, line))
                continue
            if line[:1] != b"{":
                # Non-JSON noise (debug output of tools or the runtime) carries no message.
                if line.strip():
                    self._stderr.append("[stdout] " + line[:500].decode(errors="replace"))
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                self._pass_on(out)
                self._fail("the agent wrote corrupt JSON")
                return
            if type(msg) is not dict:
                continue
            if msg.get("type") in _ROUTED:
                self._pass_on(out)  # what came before it first: the order is the CLI's
                out = []
                self._route(msg)
            else:
                out.append((msg, line))
        if out:
            self._pass_on(out)
        if not lines or self._stdout_done:
            return
        last = lines[-1]
        if dense and last.startswith(_DELTA):
            self._coalesce(COALESCE_S)
        elif not wanted and last.startswith(_BLOCK_STARTS):
            self._coalesce(QUIET_PAUSE_S)

    def _coalesce(self, pause: float) -> None:
        """Pause reading stdout for ``pause`` s (more lines are on their way: see
        ``COALESCE_S`` and ``QUIET_PAUSE_S``)."""
        pipe = self._transport.get_pipe_transport(1) if self._transport is not None else None
        if pipe is None or pipe.is_closing():
            return
        cast(asyncio.ReadTransport, pipe).pause_reading()
        self._loop.call_later(pause, self._resume_reading, pipe)

    def _resume_reading(self, pipe: asyncio.BaseTransport) -> None:
        if not pipe.is_closing():
            self._resumed_at = self._loop.time()
            cast(asyncio.ReadTransport, pipe).resume_reading()

    def _pass_on(self, msgs: Batch) -> None:
        """Messages to the sink, or to the queue (waking a reader)."""
        if self._sink_done is not None and self._sink_done.done():
            self._sink = self._sink_done = None  # cancelled by its waiter: the queue's now
        if self._sink is not None:
            msgs = self._feed(msgs)
        if msgs:
            self._queue.extend(msg for msg, _ in msgs)
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _too_long(self) -> None:
        self._line_parts = []
        message = f"the agent wrote a line over the {self.max_line_bytes} byte limit"
        log.warning("agent %s: %s", self.pid, message)
        self._fail(message)

    def _fail(self, message: str) -> None:
        """A process we can no longer understand is as good as dead: killed."""
        error = AgentProtocolError(message, stderr_tail=self.stderr_tail())
        self._signal_group(signal.SIGKILL)
        self._end_stdout(error)

    def _end_stdout(self, error: AgentError | None) -> None:
        if self._stdout_done:
            return
        self._stdout_done = True
        self._finisher = self._loop.create_task(self._on_exit(error), name=f"agent-{self.pid}-exit")

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
            task = self._loop.create_task(self._answer(request_id, msg.get("request") or {}))
            self._inflight[request_id] = task
            task.add_done_callback(functools.partial(self._forget_inflight, request_id))
            return
        if kind == "transcript_mirror":
            if self.on_mirror is not None:
                self.on_mirror(msg)
            return
        # control_cancel_request
        request_id = str(msg.get("request_id", ""))
        if request_id in self._inflight:
            self._inflight.pop(request_id).cancel()
        if self.on_cancel is not None:
            self.on_cancel(request_id)

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

    def _read_stderr(self, data: bytes) -> None:
        lines = (self._err_part + data).split(b"\n") if self._err_part else data.split(b"\n")
        tail = lines.pop()
        # An endless line is cut: only its start is kept, like every line's.
        self._err_part = tail if len(tail) <= 4 * _STDERR_LINE_CHARS else b""
        if not self._err_part and tail:
            lines.append(tail)
        for line in lines:
            self._keep_stderr(line)

    def _keep_stderr(self, line: bytes) -> None:
        self._stderr.append(line[:_STDERR_LINE_CHARS].decode(errors="replace").rstrip())

    async def _on_exit(self, error: AgentError | None) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.shield(self._reaped)
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(1):
                await asyncio.shield(self._stderr_closed)  # the last words, for the error report
        if error is None:
            code = self.returncode
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
        done, self._sink, self._sink_done = self._sink_done, None, None
        if done is not None and not done.done():
            done.set_exception(error)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._reaped.done() and self._transport is not None:
            self._transport.close()  # every pipe is closed and the process reaped

    def _died(self, message: str) -> AgentDied:
        return AgentDied(message, exit_code=self.returncode, stderr_tail=self.stderr_tail() or None)

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
        stdin = self._stdin
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
