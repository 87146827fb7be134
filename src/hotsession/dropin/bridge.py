"""The daemon side of a drop-in run: one ``hotsession-claude`` invocation served by a session.

Design
======
One run, one hub session. The shim sends its argv, cwd and the CLI-relevant environment
(``hotsession.dropin.shim``); :class:`DropinRun` reads the argv as the CLI would
(``hotsession.dropin.argv``), turns it into :class:`SessionOptions` (the *profile*: typed model
and permission mode, every other flag verbatim in ``extra_args``, the environment, and the fields
of the client's ``initialize`` but its hooks), and gets the conversation's process from the hub:

* ``--resume ID`` with ID hot in a session of this tenant and the same profile: that session, no
  spawn, no resume (a different profile: the hot process is ended and ID resumed with the new
  one); ID not hot: a session resuming it (``--fork-session``: a fork, to ``--session-id`` if
  given);
* ``--continue``: the newest transcript of the cwd, then as ``--resume``;
* otherwise a new conversation: a warm spare of the profile when one is ready, or a spawn with
  ``--session-id`` when the client chose the id (a spare's id was fixed when it was spawned, and
  the client must know the conversation by the id it chose, in the CLI's transcript too).

What the hub cannot start (the CLI refused the argv, an unknown resume id, ...) goes back to the
shim as ``exec``: the real CLI runs with the same argv and answers as only it can.

Streams. Client → CLI: a ``user`` line is a turn (``Session.send`` with the message as is); a
``control_request`` is forwarded to the process and its answer written back (``initialize``
too: the CLI answers a repeated one and binds the hooks it names, measured with 2.1.330);
a ``control_response`` answers a request the CLI made; other lines are written to the process.
CLI → client: every CLI message of a turn (the session's ``message`` events, recorded like any
turn's), and between turns what the CLI writes on its own (``session_state_changed``,
task notifications), which :meth:`DropinRun._output` asks the session for while no turn runs
(``Session.between_turns``: the session owns its process; this front never holds the transport,
an import-linter contract). The
CLI's ``can_use_tool``, ``hook_callback`` and ``mcp_message`` requests reach the client through
``Session.control_delegate`` with the CLI's request ids.

In-process SDK MCP servers (``"type": "sdk"`` in ``--mcp-config``) are left out of the process's
argv and added with ``mcp_set_servers`` once the client is attached: a process started with them
asks for their ``initialize`` at once, and a spare has nobody to answer.

Lifetime. EOF on stdin ends the run once the turns it started are done (exit 0); the session stays
hot for its keep-alive, so the next ``--resume`` is a follow-up. A client that goes away mid-turn
does not end the turn (the session runs it to the end, and records it); requests it left
unanswered are answered for it: a permission is denied (and the turn interrupted), a hook stops
the turn, anything else is an error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotsession.dropin import argv as cli_argv
from hotsession.dropin.shim import ENV_EXCLUDED, ENV_PREFIXES
from hotsession.errors import (
    AgentError,
    AgentStartError,
    ConversationNotFound,
    HotsessionError,
    InvalidRequest,
    LeaseConflict,
)
from hotsession.hub import Hotsession
from hotsession.options import PERMISSION_MODES, SessionOptions
from hotsession.pool import switching
from hotsession.session import BetweenTurns, Session, Turn

log = logging.getLogger(__name__)

STDOUT, STDERR = 1, 2
GONE = "the client went away (hotsession-claude disconnected)"
IDLE_STATE_GRACE_S = 2.0
"""How long the end of a run waits for the CLI's ``idle`` state after the last result."""
STDIN_GRACE_S = 3.0
"""How long ``-p`` waits for piped stdin to say something (as the CLI does, with its warning)."""
STDIN_WARNING = (
    "Warning: no stdin data received in 3s, proceeding without it. If piping from a slow "
    "command, redirect stdin explicitly: < /dev/null to skip, or wait longer."
)


@dataclass
class Peer:
    """What a run needs of its connection to the shim (the WebSocket endpoint implements it)."""

    receive: Callable[[], Awaitable[bytes | dict[str, Any] | None]]
    """The next stdin bytes, or a JSON message (``{"eof": true}``), or None when gone."""
    send_bytes: Callable[[bytes], Awaitable[None]]
    send_json: Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Client:
    """Who runs: the tenant and the parts of its settings a run uses."""

    tenant: str
    resolve_cwd: Callable[[str], str]
    reserved: frozenset[str] = frozenset()
    """Variables the tenant's settings fix (config dir, own env): the client's are dropped."""


class _Exec(Exception):
    """Hand the run to the real CLI."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DropinRun:
    """One ``hotsession-claude`` invocation."""

    gated = False
    """Whether a turn's prompt reaches the process only once its record is written
    (``Session.send(gated=True)``): a cluster node's runs are, the record being fenced by the
    node's ownership epoch (hotsession.cluster.dropin_run); one machine's wait for nothing."""

    def __init__(self, hub: Hotsession, client: Client, peer: Peer, hello: dict[str, Any]):
        self.hub = hub
        self.client = client
        self.peer = peer
        self.hello = hello
        self.inv = cli_argv.parse([str(a) for a in hello.get("argv") or []])
        self.session: Session | None = None
        self.exit_code = 0
        self._out: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self._lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._stdin_eof = asyncio.Event()
        self._stdin_data = asyncio.Event()
        self._stdin_buf = bytearray()
        self._pending: dict[str, tuple[asyncio.Future[dict[str, Any]], str]] = {}
        self._turns: deque[Turn] = deque()
        self._held: list[dict[str, Any]] = []  # user messages written while a turn runs
        self._idle_state = asyncio.Event()  # the CLI said "idle" since the last turn started
        self._turns_changed = asyncio.Event()
        self._idle_get: asyncio.Task[dict[str, Any]] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sdk_servers: dict[str, Any] = {}
        self._partial = False
        self._ended = asyncio.Event()
        self._gone = False
        self._ready = False
        self._began = time.monotonic()

    # -- entry -----------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Serve the run until its exit code is sent."""
        writer = asyncio.create_task(self._writer(), name="dropin-writer")
        reader = asyncio.create_task(self._reader(), name="dropin-reader")
        try:
            serving = asyncio.create_task(self._serve())
            ended = asyncio.create_task(self._ended.wait())
            await asyncio.wait({serving, ended}, return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
            if not serving.done():
                serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
            else:
                serving.result()
        except _Exec as exc:
            writer.cancel()
            reader.cancel()
            if self._ready:  # pragma: no cover - exec is only decided before ready
                raise
            with contextlib.suppress(Exception):
                await self.peer.send_json(
                    {"exec": {"path": self.hub.cli_path, "reason": exc.reason}}
                )
            return
        except HotsessionError as exc:
            self._err(f"{exc.message}")
            self.exit_code = 1
        finally:
            self._detach()
            reader.cancel()
            for task in list(self._tasks):
                task.cancel()
        self._out.put_nowait(None)
        with contextlib.suppress(Exception):
            await writer
        if not self._gone:
            with contextlib.suppress(Exception):
                await self.peer.send_json({"exit": self.exit_code})

    def _trace(self, what: str) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("drop-in run: %s at +%.1f ms", what, (time.monotonic() - self._began) * 1000)

    async def _serve(self) -> None:
        inv = self.inv
        if inv.version:
            version = self.hub.cli_info()["version"]
            self._emit(STDOUT, f"{version} (Claude Code)\n".encode())
            return
        if inv.exec_reason:
            raise _Exec(inv.exec_reason)
        cwd = self.client.resolve_cwd(str(self.hello.get("cwd") or ""))
        first: dict[str, Any] | None = None
        if inv.streaming_input:
            first = await self._first_line()
        self._trace("first line")
        options = self._options(cwd, first)
        early = self._early_answer(options, first)
        if early is not None:
            # A new conversation with the client's own id cannot take a spare: its process starts
            # now, and the client, which waits for its initialize answer before it goes on (the
            # ACP adapter's session/new does), gets the answer a process of this profile gave.
            assert first is not None
            opening = asyncio.create_task(self._open(options))
            await self.peer.send_json({"ready": {"starting": True}})
            self._ready = True
            reply = {"subtype": "success", "request_id": first.get("request_id"), "response": early}
            self._line({"type": "control_response", "response": reply})
            EARLY_ANSWERS["initialize"] += 1
            try:
                self.session = await opening
            except _Exec as exc:  # too late for the CLI to answer in our place: say why
                raise HotsessionError(f"Error: {exc.reason}") from None
        else:
            self.session = await self._open(options)
            await self.peer.send_json(
                {
                    "ready": {
                        "session": self.session.id,
                        "cli_session_id": self.session.cli_session_id,
                    }
                }
            )
            self._ready = True
        self._trace("opened")
        pool = self.hub.pool
        if pool is not None:
            # A client of this profile is here: keep a spare of it for its next conversation.
            pool.prewarm(options, 1)
        self.session.control_delegate = self._cli_request
        self._drop_stale_states()
        output = self._spawn(self._output(), "dropin-output")
        if self._sdk_servers:
            await self._forward_control(
                {"subtype": "mcp_set_servers", "servers": self._sdk_servers}, reply_to=None
            )
        if inv.streaming_input:
            if early is not None and first is not None:
                await self._initialize(first.get("request") or {}, reply_to=None)  # its hooks
            elif first is not None:
                await self._dispatch(first)
            await self._stream()
        else:
            await self._print_turn()
        await self._wait_turns()
        await self._await_idle_state()
        output.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await output

    # -- stdin ---------------------------------------------------------------------------------

    async def _reader(self) -> None:
        """Stdin from the shim, split into lines (streaming) or kept whole (``-p``)."""
        buf = bytearray()
        while True:
            item = await self.peer.receive()
            if item is None:
                # Gone (not EOF): stop serving; the session finishes what it runs, and what the
                # client had written (held prompts are queued now: nothing is lost).
                if self._held:
                    self._start_held()
                self._gone = True
                self._detach()
                self._ended.set()
                self._lines.put_nowait(None)
                return
            if isinstance(item, dict):
                if item.get("eof"):
                    break
                continue
            if not self.inv.streaming_input:
                self._stdin_buf += item
                self._stdin_data.set()
                continue
            buf += item
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    break
                line = bytes(buf[:nl])
                del buf[: nl + 1]
                if line.strip():
                    self._lines.put_nowait(line)
        if buf.strip():
            self._lines.put_nowait(bytes(buf))
        self._stdin_eof.set()
        self._lines.put_nowait(None)

    async def _first_line(self) -> dict[str, Any] | None:
        """The first stdin line, parsed (the profile depends on an ``initialize`` in it)."""
        line = await self._lines.get()
        if line is None:
            self._lines.put_nowait(None)
            return None
        msg = _parse_line(line)
        if msg is None:
            raise _Exec("stdin is not stream-json")
        return msg

    async def _stream(self) -> None:
        while True:
            line = await self._lines.get()
            if line is None:
                return
            msg = _parse_line(line)
            if msg is None:
                # The CLI ends the run on a line it cannot parse; so does the drop-in.
                self._err(f"Error parsing streaming input line: {line[:200]!r}")
                self.exit_code = 1
                return
            await self._dispatch(msg)

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "user":
            self._trace("user message")
            if self._turns:
                # Written while a turn of this run is unfinished: run after it, merged with any
                # other such prompt into one turn, as the CLI runs its queue (see ``_merge``).
                self._held.append(msg)
            else:
                self._start_turn(_prompt_text(msg), msg)
        elif kind == "control_request":
            request = msg.get("request") or {}
            request_id = msg.get("request_id")
            if request.get("subtype") == "initialize":
                # In order: the CLI binds the hooks before the next line is read.
                await self._initialize(request, reply_to=request_id)
                self._trace("initialize answered")
            else:
                self._spawn(self._forward_control(request, reply_to=request_id), "dropin-ctl")
        elif kind == "control_response":
            response = msg.get("response") or {}
            fut, _ = self._pending.get(str(response.get("request_id")), (None, ""))
            if fut is not None and not fut.done():
                if response.get("subtype") == "error":
                    fut.set_exception(HotsessionError(str(response.get("error"))))
                else:
                    payload = response.get("response")
                    fut.set_result(payload if isinstance(payload, dict) else {})
        elif kind == "control_cancel_request":
            return  # the CLI never has a request of the client pending long; nothing to cancel
        else:
            proc = self._between()
            if proc is not None:
                with contextlib.suppress(AgentError):
                    await proc.send(msg)

    # -- opening ---------------------------------------------------------------------------------

    def _options(self, cwd: str, first: dict[str, Any] | None) -> SessionOptions:
        options, self._partial = run_options(
            self.inv, self.hello, self.client, cwd, first, self._sdk_servers
        )
        return options

    async def _open(self, options: SessionOptions) -> Session:
        inv = self.inv
        hub = self.hub
        meta = {"client": "hotsession-claude"}
        entry = options.env and dict(options.env).get("CLAUDE_CODE_ENTRYPOINT")
        if entry:
            meta["entrypoint"] = entry
        resume = inv.resume
        if inv.continue_:
            policy = hub.spawn_policy
            resume = _latest_session(
                options, policy.config_dir(options.tenant) if policy is not None else None
            )
            # Nothing to continue: a new conversation, as the CLI starts one then.
        try:
            if resume is not None:
                hot = self._hot(resume)
                if hot is not None and not inv.fork:
                    if hot.options.profile_key() == options.profile_key():
                        hot.partial_messages = self._partial
                        return hot
                    # Another profile, once the turns it runs are done (another client's work
                    # is never cut short): switched in place when only the model or the
                    # permission mode differ and the pool could switch them, else resumed
                    # with this profile.
                    while hot.current is not None or hot.queued:
                        if hot.current is not None:
                            await hot.current.wait()
                        else:
                            await asyncio.sleep(0.05)
                    if await self._switch(hot, options):
                        hot.partial_messages = self._partial
                        return hot
                    await hub.close_session(hot.id)
                elif hot is not None and hot.current is not None:
                    await hot.current.wait()  # fork what the conversation is, not a half turn
                return await hub.open(
                    options=options,
                    resume=resume,
                    fork=inv.fork,
                    cli_session_id=inv.session_id if inv.fork else None,
                    metadata=meta,
                    tenant=options.tenant,
                    include_partial_messages=self._partial,
                )
            return await hub.open(
                options=options,
                cli_session_id=inv.session_id,
                metadata=meta,
                include_partial_messages=self._partial,
            )
        except AgentStartError as exc:
            # The CLI refused (a flag, a value, an unknown id): let it say so itself.
            log.info("drop-in: the CLI did not start (%s); the real CLI answers", exc.message)
            raise _Exec(exc.message) from None
        except ConversationNotFound as exc:
            raise _Exec(exc.message) from None  # the CLI's own words for it
        except LeaseConflict as exc:
            raise HotsessionError(exc.message) from None
        except InvalidRequest as exc:
            if exc.details.get("field") in ("resume", "cwd"):
                raise _Exec(exc.message) from None
            raise

    async def _switch(self, hot: Session, options: SessionOptions) -> bool:
        """Switch the idle hot process of a conversation to ``options`` (True), when they differ
        from its own in model / permission mode alone, as the pool switches a spare at claim
        (``hotsession.pool.switching``: never to or from ``bypassPermissions``, never to an unset
        value). What the idle process had written that a switch does not explain goes to the
        client."""
        view = hot.between_turns
        plan = switching.switch_plan(hot.options, options)
        if view is None or not plan or hot.current is not None or hot.queued:
            return False
        try:
            unexplained = await switching.switch(view, plan, self.hub.config.spawn_timeout_s)
        except (AgentError, TimeoutError) as exc:
            log.info("drop-in: switching %s failed (%s); resuming it", hot.id, exc)
            return False
        hot.switched(options)
        # Its last initialize answer reports the old mode / model: ask the CLI again next time.
        _INITIALIZED.pop(view, None)
        if self.inv.output_format == "stream-json":
            for msg in unexplained:
                if not _switch_echo(msg):
                    self._line(msg)
        return True

    def _hot(self, cli_session_id: str) -> Session | None:
        for session in self.hub.list(tenant=self.client.tenant):
            if session.cli_session_id == cli_session_id and not session.closed:
                return session
        return None

    # -- turns -----------------------------------------------------------------------------------

    def _between(self) -> BetweenTurns | None:
        """The session's live process as this front may use it between turns."""
        return self.session.between_turns if self.session is not None else None

    def _start_turn(self, prompt: str, message: dict[str, Any] | None) -> None:
        assert self.session is not None
        self._stop_idle_read()
        self._idle_state.clear()
        turn = self.session.send(prompt, message=message, gated=self.gated)
        self._turns.append(turn)
        self._turns_changed.set()

    def _start_held(self) -> None:
        held, self._held = self._held, []
        merged = _merge(held)
        self._start_turn(_prompt_text(merged), merged)

    async def _print_turn(self) -> None:
        prompt = self.inv.prompt
        if not self.hello.get("stdin_tty"):
            said = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STDIN_GRACE_S):
                    await _first_of(self._stdin_eof, self._stdin_data)
                    said = True
            if said:
                await self._stdin_eof.wait()  # it is writing: all of it
            elif prompt is None:
                raise _Exec("no prompt on stdin within 3 s")
            else:
                self._err(STDIN_WARNING)
            piped = self._stdin_buf.decode("utf-8", "replace")
            if piped.strip():
                prompt = piped if prompt is None else f"{prompt}\n{piped}"
        if prompt is None or not prompt.strip():
            raise _Exec("no prompt")
        self._start_turn(prompt, None)

    async def _wait_turns(self) -> None:
        while self._turns and not self._ended.is_set():
            self._turns_changed.clear()
            waiter = asyncio.create_task(self._turns_changed.wait())
            ended = asyncio.create_task(self._ended.wait())
            await asyncio.wait({waiter, ended}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            ended.cancel()

    async def _output(self) -> None:
        """CLI → client: the turns' messages in order, and between turns the process's own."""
        while True:
            if self._turns:
                turn = self._turns[0]
                async for event in turn:
                    if event.raw is not None and self.inv.output_format == "stream-json":
                        raw = event.raw  # a partial message: the CLI's own line
                        self._emit(STDOUT, raw if raw.endswith(b"\n") else raw + b"\n")
                    else:
                        self._event(event.type, event.data)
                self._turns.popleft()
                if self._held:
                    self._start_held()
                self._turns_changed.set()
                continue
            proc = self._between()
            if proc is None or not proc.alive:
                self._turns_changed.clear()
                await self._turns_changed.wait()
                continue
            got = self._idle_get = asyncio.ensure_future(proc.next_message())
            self._turns_changed.clear()
            changed = asyncio.ensure_future(self._turns_changed.wait())
            try:
                await asyncio.wait({got, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
            if self._idle_get is not got:
                continue  # a turn started: ``_stop_idle_read`` took care of ``got``
            self._idle_get = None
            if not got.done():
                got.cancel()
            elif not got.cancelled():
                if got.exception() is not None:  # the process is gone (whoever reads next sees it)
                    await self._turns_changed.wait()
                else:
                    self._idle_line(got.result())

    def _idle_line(self, msg: dict[str, Any]) -> None:
        """A line the process wrote between turns: the client's when it reads stream-json (the
        CLI prints nothing but the result with ``-p`` text or json output)."""
        if _is_state(msg) and msg.get("state") == "idle":
            self._idle_state.set()
        if self.inv.output_format == "stream-json":
            self._line(msg)

    async def _await_idle_state(self) -> None:
        """After the run's last turn, the CLI's ``session_state_changed: idle`` that follows the
        result (written when the process reports session state, as the SDKs ask): the client's
        (the CLI ends a run with it), and never left for the next run of the conversation."""
        session = self.session
        if session is None or self._gone or self._idle_state.is_set():
            return
        flag = dict(session.options.env).get("CLAUDE_CODE_EMIT_SESSION_STATE_EVENTS", "")
        if flag.strip().lower() in ("", "0", "false", "no", "off"):
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(IDLE_STATE_GRACE_S):
                await self._idle_state.wait()

    def _drop_stale_states(self) -> None:
        """Before the first turn of a run on a hot process: session-state lines a run before it
        left (its client went away first) describe turns this client never saw."""
        view = self._between()
        if view is None or self.session is None or self.session.current is not None:
            return
        for msg in view.drain_idle():
            if not _is_state(msg):
                self._idle_line(msg)

    def _stop_idle_read(self) -> None:
        """Before a turn starts, stop reading the process (the session reads it now)."""
        got = self._idle_get
        if got is None:
            return
        self._idle_get = None
        if got.done():
            if not got.cancelled() and got.exception() is None:
                self._idle_line(got.result())
        else:
            got.cancel()

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "message":
            if self.inv.output_format == "stream-json" and (self._partial or not _requesting(data)):
                self._line(data)
            if data.get("type") == "result":
                self._result(data)
        elif kind == "error" and data.get("code") != "interrupted":
            self._err(str(data.get("message")))
            self.exit_code = 1
            self._ended.set()

    def _result(self, result: dict[str, Any]) -> None:
        is_error = bool(result.get("is_error"))
        if self.inv.output_format == "text":
            text = result.get("result")
            if text is None:
                text = "Execution error" if is_error else ""
            self._emit(STDOUT, (str(text) + "\n").encode())
        elif self.inv.output_format == "json":
            self._line(result)
        if not self.inv.streaming_input:
            self.exit_code = 1 if is_error else 0

    # -- control ---------------------------------------------------------------------------------

    async def _initialize(self, request: dict[str, Any], *, reply_to: Any) -> None:
        """The client's ``initialize``: forwarded (the CLI binds its hooks and answers), unless
        the process was last initialized with exactly these fields: then the CLI's answer to
        that is the answer (a round trip of ~6-9 ms saved on every hot ``--resume``)."""
        proc = self._between()
        fields = {k: v for k, v in request.items() if k != "subtype"}
        canon = json.dumps(fields, sort_keys=True)
        known = _INITIALIZED.get(proc) if proc is not None else None
        if known is None and proc is not None and proc.init_response is not None:
            assert self.session is not None
            spawned = self.session.options.initialize
            spawn_fields = {"hooks": None, **(json.loads(spawned) if spawned else {})}
            known = (json.dumps(spawn_fields, sort_keys=True), proc.init_response)
        if known is not None and known[0] == canon:
            answer: dict[str, Any] | None = known[1]
            if reply_to is not None:
                reply = {"subtype": "success", "request_id": reply_to, "response": answer}
                self._line({"type": "control_response", "response": reply})
        else:
            answer = await self._forward_control(request, reply_to=reply_to)
            if proc is not None and answer is not None:
                _INITIALIZED[proc] = (canon, answer)
        if answer is not None and self.session is not None:
            _remember_profile(self.session.options.profile_key(), canon, answer)

    def _early_answer(
        self, options: SessionOptions, first: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """For a new conversation with a chosen id, the initialize answer of this profile's
        processes to the same request, if one is known (see ``_serve``)."""
        inv = self.inv
        if inv.session_id is None or inv.resume or inv.continue_ or first is None:
            return None
        request = first.get("request") or {}
        if first.get("type") != "control_request" or request.get("subtype") != "initialize":
            return None
        fields = {k: v for k, v in request.items() if k != "subtype"}
        known = _PROFILE_INIT.get(options.profile_key())
        if known is None or known[0] != json.dumps(fields, sort_keys=True):
            return None
        return known[1]

    async def _forward_control(
        self, request: dict[str, Any], *, reply_to: Any
    ) -> dict[str, Any] | None:
        """A client's control request: to the process, and its answer back."""
        proc = self._between()
        subtype = str(request.get("subtype"))
        fields = {k: v for k, v in request.items() if k != "subtype"}
        try:
            if proc is None:
                raise HotsessionError("the Claude Code process is not running")
            answer = await proc.request(subtype, timeout=self.hub.config.spawn_timeout_s, **fields)
            reply: dict[str, Any] = {
                "subtype": "success",
                "request_id": reply_to,
                "response": answer,
            }
        except HotsessionError as exc:
            answer = None
            reply = {"subtype": "error", "request_id": reply_to, "error": exc.message}
        if reply_to is not None:
            self._line({"type": "control_response", "response": reply})
        return answer

    async def _cli_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """A CLI's control request (``Session.control_delegate``): the client answers it."""
        request_id = str(request.get("request_id"))
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (fut, str(request.get("subtype")))
        body = {k: v for k, v in request.items() if k != "request_id"}
        self._line({"type": "control_request", "request_id": request_id, "request": body})
        try:
            return await fut
        except asyncio.CancelledError:
            self._line({"type": "control_cancel_request", "request_id": request_id})
            raise
        finally:
            self._pending.pop(request_id, None)

    def _detach(self) -> None:
        """The client is gone: nothing more is sent to it; its open requests are answered."""
        session = self.session
        if session is not None and session.control_delegate == self._cli_request:
            session.control_delegate = None
        self._stop_idle_read()
        for fut, subtype in list(self._pending.values()):
            if fut.done():
                continue
            if subtype == "can_use_tool":
                fut.set_result({"behavior": "deny", "message": GONE, "interrupt": True})
            elif subtype == "hook_callback":
                fut.set_result({"continue": False, "stopReason": GONE})
            else:
                fut.set_exception(HotsessionError(GONE))
        self._pending.clear()

    # -- output ----------------------------------------------------------------------------------

    def _line(self, obj: dict[str, Any]) -> None:
        self._emit(
            STDOUT, json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        )

    def _err(self, text: str) -> None:
        self._emit(STDERR, (text.rstrip("\n") + "\n").encode())

    def _emit(self, channel: int, data: bytes) -> None:
        self._out.put_nowait((channel, data))

    async def _writer(self) -> None:
        """The one writer to the shim: what is ready goes out as one message per channel."""
        while True:
            item = await self._out.get()
            if item is None:
                return
            channel, batch = item[0], [item[1]]
            end = False
            while not self._out.empty():
                nxt = self._out.get_nowait()
                if nxt is None:
                    end = True
                    break
                if nxt[0] != channel:
                    await self._send(channel, b"".join(batch))
                    channel, batch = nxt[0], []
                batch.append(nxt[1])
            await self._send(channel, b"".join(batch))
            if end:
                return

    async def _send(self, channel: int, data: bytes) -> None:
        with contextlib.suppress(Exception):
            await self.peer.send_bytes(bytes([channel]) + data)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


_INITIALIZED: weakref.WeakKeyDictionary[BetweenTurns, tuple[str, dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)
"""Per process (its ``BetweenTurns`` view: one per process a session adopts): the fields of the
last ``initialize`` a client sent it, and the CLI's answer."""


_PROFILE_INIT: dict[str, tuple[str, dict[str, Any]]] = {}
"""Per profile: the fields of the last ``initialize`` a client sent, and the CLI's answer."""
_PROFILE_INIT_MAX = 512
EARLY_ANSWERS: collections.Counter[str] = collections.Counter()
"""How often a client got its ``initialize`` answer before its process had started."""


def _remember_profile(key: str, canon: str, answer: dict[str, Any]) -> None:
    _PROFILE_INIT.pop(key, None)
    _PROFILE_INIT[key] = (canon, answer)
    while len(_PROFILE_INIT) > _PROFILE_INIT_MAX:
        _PROFILE_INIT.pop(next(iter(_PROFILE_INIT)))


async def _first_of(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def _merge(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """User messages written while a turn ran, as the one message the CLI makes of them for its
    next turn (measured with 2.1.330: string contents joined by a line break, the merged message
    replayed as one; a content block list is kept as blocks, strings becoming text blocks).

    The CLI hands such prompts to the model inside the running turn instead when that turn makes
    another model request (after a tool result, as a system note); the drop-in cannot know that
    ahead and runs them after the turn (docs/drop-in.md)."""
    if len(messages) == 1:
        return messages[0]
    contents = [(m.get("message") or {}).get("content") for m in messages]
    content: Any
    if all(isinstance(c, str) for c in contents):
        content = "\n".join(contents)  # type: ignore[arg-type]
    else:
        content = []
        for c in contents:
            if isinstance(c, str):
                content.append({"type": "text", "text": c})
            elif isinstance(c, list):
                content.extend(c)
    first = messages[0]
    return {**first, "message": {**(first.get("message") or {}), "content": content}}


def _requesting(msg: dict[str, Any]) -> bool:
    """The ``system/status`` "requesting" line a CLI writes only with
    ``--include-partial-messages`` (measured with 2.1.330), which every process of the daemon
    has: not the client's unless it asked for partial messages."""
    return (
        msg.get("type") == "system"
        and msg.get("subtype") == "status"
        and msg.get("status") == "requesting"
    )


def _is_state(msg: dict[str, Any]) -> bool:
    return msg.get("type") == "system" and msg.get("subtype") == "session_state_changed"


def _switch_echo(msg: dict[str, Any]) -> bool:
    """The line a live conversation's CLI writes after ``set_model`` (measured with 2.1.330: a
    replayed user message ``<local-command-stdout>Set model to …``), which a process started
    with that ``--model`` never writes."""
    content = (msg.get("message") or {}).get("content")
    return (
        msg.get("type") == "user"
        and bool(msg.get("isReplay"))
        and isinstance(content, str)
        and content.startswith("<local-command-stdout>")
    )


def run_options(
    inv: cli_argv.Invocation,
    hello: dict[str, Any],
    client: Client,
    cwd: str,
    first: dict[str, Any] | None,
    sdk_servers: dict[str, Any],
) -> tuple[SessionOptions, bool]:
    """A run's profile (its :class:`SessionOptions`) and whether the client asked for partial
    messages, from its argv, hello and first stdin line (``first``: an ``initialize`` is part
    of the profile); the in-process SDK MCP servers taken out go to ``sdk_servers``. Also what
    a cluster daemon places a new run by (``hotsession.cluster.dropin``)."""
    extra = _strip_sdk_servers(list(inv.passthrough), sdk_servers)
    # Every process writes partial messages; the session passes them on when asked to.
    partial = "--include-partial-messages" in extra
    extra = [a for a in extra if a != "--include-partial-messages"]
    model = inv.model
    mode = inv.permission_mode
    if mode is not None and mode not in PERMISSION_MODES:
        extra += ["--permission-mode", mode]
        mode = None
    initialize: str | None = None
    if first is not None and first.get("type") == "control_request":
        request = first.get("request") or {}
        if request.get("subtype") == "initialize":
            fields = {k: v for k, v in request.items() if k not in ("subtype", "hooks")}
            if fields:
                initialize = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    env = {
        k: str(v)
        for k, v in (hello.get("env") or {}).items()
        if str(k).startswith(ENV_PREFIXES) and k not in ENV_EXCLUDED and k not in client.reserved
    }
    options = SessionOptions.create(
        cwd,
        tenant=client.tenant,
        model=model,
        permission_mode=mode,
        env=env,
        extra_args=extra,
        initialize=initialize,
        permission_prompt_tool=inv.permission_prompt_tool,
    )
    return options, partial


def _strip_sdk_servers(args: list[str], sink: dict[str, Any]) -> list[str]:
    """Take in-process SDK MCP servers out of ``--mcp-config`` (see the module docstring)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        tok = args[i]
        name, eq, inline = tok.partition("=")
        if name != "--mcp-config":
            out.append(tok)
            i += 1
            continue
        values = [inline] if eq else []
        i += 1
        if not eq:
            while i < len(args) and not args[i].startswith("-"):
                values.append(args[i])
                i += 1
        kept: list[str] = []
        for value in values:
            try:
                config = json.loads(value)
                servers = config["mcpServers"]
                sdk = {k: v for k, v in servers.items() if v.get("type") == "sdk"}
            except (ValueError, KeyError, TypeError, AttributeError):
                kept.append(value)
                continue
            sink.update(sdk)
            rest = {k: v for k, v in servers.items() if k not in sdk}
            if rest:
                kept.append(json.dumps({**config, "mcpServers": rest}))
        if kept:
            out += ["--mcp-config", *kept]
    return out


def _parse_line(line: bytes) -> dict[str, Any] | None:
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


def _prompt_text(msg: dict[str, Any]) -> str:
    """What a user message says, for the session's record."""
    content = (msg.get("message") or {}).get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = [
            str(b.get("text", "")) if b.get("type") == "text" else f"[{b.get('type')}]"
            for b in content
            if isinstance(b, dict)
        ]
        text = "\n".join(parts)
    else:
        text = ""
    return text if text.strip() else "[message]"


def _latest_session(options: SessionOptions, tenant_config: str | None) -> str | None:
    """The id of the newest transcript of the cwd (what ``claude --continue`` picks).

    ``tenant_config``: the tenant's own config dir (its agents run as its user and keep their
    transcripts there, hotsession.isolation), which wins."""
    from claude_agent_sdk import project_key_for_directory

    env = dict(options.env)
    config = tenant_config or env.get("CLAUDE_CONFIG_DIR") or os.environ.get("CLAUDE_CONFIG_DIR")
    base = Path(config) if config else Path.home() / ".claude"
    project = base / "projects" / project_key_for_directory(options.cwd)
    try:
        files = [p for p in project.iterdir() if p.suffix == ".jsonl"]
    except OSError:
        return None
    if not files:
        return None
    newest = max(files, key=lambda p: p.stat().st_mtime)
    return newest.stem
