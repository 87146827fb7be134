"""A session: one conversation, its queue of turns, its process, and its resume.

Design
======
Actor. Each session has one runner task that takes prompts from a bounded queue and runs them one
at a time, so a prompt is never written to the CLI mid-turn (the CLI would merge it into the
running turn). Everything that changes the session happens on the daemon's loop; the runner is
the only writer of prompts to the process.

Events. Every CLI message of a turn becomes a ``message`` event, numbered by the session's
sequence counter; ``emit`` hands each event to the registry's buffered log (non-blocking), to the
turn's own stream (what ``send`` iterates) and to live subscribers (the API's event streams). A
turn ends with exactly one ``result`` or ``error`` event; the turn's events are flushed to the
registry before the turn is recorded as done, so a completed turn is always replayable.

Processes and resume. The session holds at most one process (a :class:`Placement`). When there is
none — never started, evicted, recycled, crashed, or lost to a daemon restart — the next turn gets
one from the host: ``--resume <cli session id>`` in the original cwd once the conversation has a
transcript, a new process with the same CLI session id otherwise. A crash ends only the running
turn, with an ``error`` event naming the exit code and stderr tail.

Watchdog. No CLI output for ``watchdog_s`` during a turn ends it with ``agent_timeout`` and kills
the process; the clock is paused while a permission request waits for a human.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hotsession.agent import DEATH, AgentProcess
from hotsession.errors import (
    AgentDied,
    AgentError,
    AgentTimeout,
    Conflict,
    HotsessionError,
    InvalidRequest,
    NotFound,
    PromptTooLarge,
    QueueFull,
    ShuttingDown,
    TurnInterrupted,
)
from hotsession.events import Event, TurnClock
from hotsession.host import Placement
from hotsession.options import SessionOptions
from hotsession.registry import EventRecord, SessionRecord, SessionState, TurnRecord

if TYPE_CHECKING:
    from hotsession.hub import Hotsession

log = logging.getLogger(__name__)

_SUBSCRIBER_BUFFER = 10_000
HANDOVER_S = 0.1
"""How long a finished turn's bookkeeping waits for its reader to take the result."""


@dataclass
class PermissionRequest:
    """A tool call waiting for allow / deny."""

    request_id: str
    tool_name: str
    input: dict[str, Any]
    tool_use_id: str | None
    turn: int
    future: asyncio.Future[dict[str, Any]] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Wire form."""
        return {
            "request_id": self.request_id,
            "tool_name": self.tool_name,
            "input": self.input,
            "tool_use_id": self.tool_use_id,
            "turn": self.turn,
        }


class Turn:
    """One prompt's run; iterate it for its events (ends after ``result`` or ``error``)."""

    def __init__(
        self,
        session: Session,
        number: int,
        prompt: str,
        *,
        since: float | None = None,
        message: dict[str, Any] | None = None,
    ) -> None:
        self.session = session
        self.number = number
        self.prompt = prompt
        self.message = message  # the user message to write as is (else one made of ``prompt``)
        self.since = since
        self.clock = TurnClock(since if since is not None else time.monotonic())
        self.record = TurnRecord(session_id=session.id, turn=number, prompt=prompt)
        self.done = asyncio.Event()
        self.interrupted = False
        self.terminal: Event | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._readers = 0
        self._drained = asyncio.Event()
        self._terminal_taken = False
        self.accepted: asyncio.Task[Any] | None = None  # the write that records the prompt

    def was_interrupted(self) -> bool:
        """True once ``interrupt`` was called for this turn."""
        return self.interrupted

    def _push(self, event: Event) -> None:
        self._events.put_nowait(event)
        if event.terminal:
            self.terminal = event
            self.done.set()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        self._readers += 1
        try:
            while not self._terminal_taken:
                event = await self._events.get()
                yield event
                if event.terminal:
                    return
        finally:
            # Back here after the terminal event: the reader has handled it (an SSE stream has
            # written its frame), or the reader went away.
            self._readers -= 1
            if not self._readers:
                self._drained.set()

    async def recorded(self) -> None:
        """Wait until the accepted prompt is in the registry (at once if that write failed:
        the store's trouble is reported by the hub, and the turn runs regardless)."""
        if self.accepted is not None and not self.accepted.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self.accepted)

    def take_ready(self) -> list[Event]:
        """The events this turn already holds (up to its terminal one), without waiting.

        For a reader that iterates the turn and wants to batch its writes (``api.events``); the
        iteration goes on after them, and ends when the terminal event was among them."""
        out: list[Event] = []
        while not self._events.empty():
            event = self._events.get_nowait()
            out.append(event)
            if event.terminal:
                self._terminal_taken = True
                break
        return out

    async def handed_over(self, limit: float | None = None) -> None:
        """Wait until this turn's reader has handled its last event (at most ``limit`` s,
        default ``HANDOVER_S``; at once when nobody iterates the turn). See ``Session._run``."""
        if self._readers and not self._drained.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HANDOVER_S if limit is None else limit):
                    await self._drained.wait()

    async def wait(self) -> Event:
        """Wait for the turn to end; returns its ``result`` or ``error`` event."""
        await self.done.wait()
        assert self.terminal is not None
        return self.terminal


class Subscription:
    """Live events of a session for one listener; bounded, dropped when it falls behind."""

    def __init__(self, session: Session, maxsize: int = _SUBSCRIBER_BUFFER) -> None:
        self.session = session
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=maxsize)
        self.dropped = False

    def push(self, event: Event | None) -> None:
        """Deliver, or drop this subscriber if it is too slow (it must reconnect and replay)."""
        if self.dropped:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped = True
            self.session._subscribers.discard(self)

    def close(self) -> None:
        """Stop listening."""
        self.session._subscribers.discard(self)

    async def get(self) -> Event | None:
        """The next live event; None when the session ended the stream."""
        return await self.queue.get()


class Session:
    """A conversation driven through hotsession. Create it with ``Hotsession.open``."""

    def __init__(
        self, hub: Hotsession, record: SessionRecord, *, last_seq: int = 0, last_turn: int = 0
    ) -> None:
        self.hub = hub
        self.last_turn = max(last_turn, record.turns)
        self.record = record
        self.options = SessionOptions.from_dict(record.options)
        self.placement: Placement | None = None
        self.seq = last_seq
        self.permissions: dict[str, PermissionRequest] = {}
        # Recently resolved request ids → outcome, so a late answer is a conflict, not unknown.
        self._resolved: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.current: Turn | None = None
        self._queue: asyncio.Queue[Turn] = asyncio.Queue(maxsize=hub.config.queue_max)
        # The latest turns' records as this process knows them: newer than the registry's copy
        # until the turn's bookkeeping has written them (see ``_run``), so readers overlay them.
        self.recent_turns: collections.deque[TurnRecord] = collections.deque(maxlen=20)
        self._runner: asyncio.Task[None] | None = None
        self._subscribers: set[Subscription] = set()
        self._warming: asyncio.Task[Placement] | None = None
        self._watchdog: asyncio.Timeout | None = None
        self._closed = False
        # How the process obtained at open came (spare / spawn / resume) and how long it took:
        # the first turn reports them, since it is the one a user waited for.
        self.open_source: str | None = None
        self.open_ms = 0.0
        self._lock = asyncio.Lock()  # serialises process changes (turn start, warm, evict)
        # A drop-in client attached to this session answers the CLI's control requests itself
        # (can_use_tool, hook_callback, mcp_message); see ``_on_control_request``.
        self.control_delegate: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = None
        self._delegated = 0  # delegated requests awaiting their answer (the watchdog pauses)

    # -- identity and state --------------------------------------------------------------------

    @property
    def id(self) -> str:
        """hotsession's stable id."""
        return self.record.id

    @property
    def cli_session_id(self) -> str:
        """The Claude Code session id (what ``--resume`` takes)."""
        return self.record.cli_session_id

    @property
    def state(self) -> SessionState:
        """starting / idle / running / waiting_permission / evicted / failed / closed."""
        return self.record.state

    @property
    def process(self) -> AgentProcess | None:
        """The live process, if any."""
        p = self.placement
        return p.process if p is not None and p.process.alive else None

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._closed

    @property
    def queued(self) -> int:
        """Prompts waiting behind the running turn."""
        return self._queue.qsize()

    @property
    def has_transcript(self) -> bool:
        """True once the CLI has (or may have) written this conversation to disk."""
        return self.record.turns > 0 or self.record.options.get("origin", "new") == "resume"

    def _set_state(self, state: SessionState) -> None:
        if self.record.state != state:
            self.record.state = state
            self.record.updated_at = time.time()
            self.hub._state_changed(self)

    # -- events --------------------------------------------------------------------------------

    def emit(
        self, turn: Turn | None, kind: str, data: dict[str, Any], *, turn_no: int = 0
    ) -> Event:
        """Number an event and hand it to the log, the turn and the subscribers."""
        self.seq += 1
        event = Event(self.id, self.seq, turn.number if turn else turn_no, kind, data)
        self.hub.registry.add_events(
            [EventRecord(self.id, event.seq, event.turn, kind, data, event.t)]
        )
        if turn is not None:
            if event.terminal:
                turn.record.ended_at = event.t
            turn._push(event)
        for sub in list(self._subscribers):
            sub.push(event)
        return event

    def subscribe(self, sub: Subscription | None = None) -> Subscription:
        """Live events from now on (see ``events`` for replay + live); ``sub``: a subclass
        whose ``push`` does something else with them (it is called on the turn's path)."""
        sub = sub if sub is not None else Subscription(self)
        self._subscribers.add(sub)
        return sub

    async def events(self, after: int = 0, *, follow: bool = True) -> AsyncIterator[Event]:
        """Every event after ``after`` exactly once: replay from the log, then live ones."""
        sub = self.subscribe() if follow else None
        try:
            last = after
            while True:
                batch = await self.hub.registry.events_after(self.id, last, limit=1000)
                for rec in batch:
                    last = rec.seq
                    yield Event(rec.session_id, rec.seq, rec.turn, rec.type, rec.data, rec.t)
                if len(batch) < 1000:
                    break
            if sub is None:
                return
            while True:
                event = await sub.get()
                if event is None or sub.dropped and sub.queue.empty():
                    return
                if event.seq > last:
                    last = event.seq
                    yield event
        finally:
            if sub is not None:
                sub.close()

    # -- turns ---------------------------------------------------------------------------------

    def send(
        self, prompt: str, *, since: float | None = None, message: dict[str, Any] | None = None
    ) -> Turn:
        """Queue a prompt; iterate the returned turn for its events.

        ``since`` (a ``time.monotonic()`` reading) is when the caller's request began, for a
        request that opened the session and sends its first prompt in one go (``/v1/ask``): the
        opening then counts as the turn's claim time.

        ``message``: the stream-json user message to write instead of one made of ``prompt``
        (a drop-in client's own, content blocks and all); ``prompt`` is then what is recorded.

        Raises at once (not on iteration) for a closed session, an oversized prompt or a full
        queue, so a caller can answer 409 / 413 / 429 before streaming anything.
        """
        if self._closed:
            raise Conflict("the session is closed", session_id=self.id)
        if self.hub.shutting_down:
            raise ShuttingDown("the service is shutting down")
        self.hub.check_registry(self)
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequest("the prompt must be a non-empty string", field="prompt")
        limit = self.hub.config.prompt_limit_bytes
        if len(prompt.encode("utf-8", errors="surrogatepass")) > limit:
            raise PromptTooLarge(f"the prompt is over the {limit} byte limit", limit=limit)
        if self._queue.full():
            raise QueueFull(
                f"{self._queue.maxsize} prompts are already queued for this session",
                limit=self._queue.maxsize,
            )
        self.last_turn += 1
        turn = Turn(self, self.last_turn, prompt, since=since, message=message)
        self._queue.put_nowait(turn)
        self.recent_turns.append(turn.record)
        # The prompt is recorded as soon as it is accepted, even if the daemon dies before it
        # runs; a stream shows none of the turn's events before that write is done (``recorded``).
        turn.accepted = self.hub.registry_task(self.hub.registry.put_turn(turn.record))
        if self.current is not None or self._queue.qsize() > 1:
            self.emit(
                turn, "queued", {"position": self._queue.qsize(), "prompt_bytes": len(prompt)}
            )
        self._ensure_runner()
        return turn

    def _ensure_runner(self) -> None:
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name=f"session-{self.id}")

    async def _run(self) -> None:
        while not self._closed:
            turn = await self._queue.get()
            self.current = turn
            try:
                await self._run_turn(turn)
            except Exception as exc:  # pragma: no cover - a bug must not wedge the session
                log.exception("session %s: turn %d failed", self.id, turn.number)
                if not turn.done.is_set():
                    self._end_with_error(turn, HotsessionError(f"internal error: {exc}"))
            finally:
                self.current = None
            # The turn's bookkeeping (registry writes on the store's thread, the pool's turn
            # boundary) waits until the reader has written the result out: run at the same moment,
            # it delayed the result's SSE frame by ~0.4 ms (the store's thread competes for the
            # GIL; traced in docs/benchmarks.md). Bounded, so a slow reader cannot hold it up.
            await turn.handed_over()
            await self._finish_turn(turn)

    async def _run_turn(self, turn: Turn) -> None:
        clock = turn.clock
        clock.started = time.monotonic()
        turn.record.status = "running"
        turn.record.started_at = time.time()
        self.hub.registry_task(self.hub.registry.put_turn(turn.record))
        error: HotsessionError | None = None
        result: dict[str, Any] | None = None
        for attempt in range(2):
            try:
                async with self._lock:
                    placement, source = await self._ensure_process()
            except HotsessionError as exc:
                self._set_state("failed")
                self.record.error = exc.message
                self._end_with_error(turn, exc)
                return
            proc = placement.process
            clock.source = source if attempt == 0 else "resume"
            clock.process_ready = time.monotonic()
            if self.open_source is not None:
                if source == "hot":
                    clock.source = self.open_source
                    if turn.since is not None:
                        clock.claim_offset = self.open_ms / 1000
                self.open_source = None
            self.record.turns = max(self.record.turns, turn.number)
            self.record.last_active_at = time.time()
            self.record.error = None
            self._set_state("running")
            if turn.interrupted:  # interrupted while it waited for its process
                self._end_with_error(turn, _interrupted())
                self._set_state("idle")
                return
            proc.turns += 1
            error = None
            try:
                if turn.message is not None:
                    await proc.send(turn.message)
                else:
                    await proc.send_user(turn.prompt)
                clock.written = time.monotonic()
                result = await self._pump(turn, proc)
            except AgentError as exc:
                error = exc
            if error is None and result is None:
                error = proc.exit_error or AgentTimeout("the turn ended without a result")
            if error is None:
                break
            if isinstance(error, AgentTimeout) or proc.alive:
                proc.kill()
            self._lost_process(placement)
            # A process that died before saying anything about this prompt (killed while idle,
            # just before the turn began) cost the user nothing yet: resume and send it again.
            if turn.clock.first_event is not None or turn.interrupted or attempt == 1:
                break
            if not isinstance(error, AgentDied) or proc.closing:
                break
            log.info("session %s: process died before the turn began; resuming", self.id)
        if error is not None:
            self._end_with_error(turn, _interrupted() if turn.interrupted else error)
            return
        assert result is not None
        now = time.monotonic()
        if turn.was_interrupted():
            self._end_with_error(turn, _interrupted())
        else:
            timing = clock.breakdown(now, result)
            turn.record.timing = timing
            self.record.last_timing = timing
            self.emit(
                turn,
                "result",
                {
                    "turn": turn.number,
                    "subtype": result.get("subtype"),
                    "is_error": bool(result.get("is_error")),
                    "result": result.get("result"),
                    "cli_session_id": result.get("session_id", self.cli_session_id),
                    "usage": result.get("usage"),
                    "total_cost_usd": result.get("total_cost_usd"),
                    "num_turns": result.get("num_turns"),
                    "timing": timing,
                },
            )
            turn.record.status = "done"
        self._set_state("idle" if proc.alive else "evicted")

    async def _pump(self, turn: Turn, proc: AgentProcess) -> dict[str, Any] | None:
        """Forward the turn's CLI messages until its result; None if the process died."""
        loop = asyncio.get_running_loop()
        watchdog = self.hub.config.watchdog_s
        try:
            async with asyncio.timeout(watchdog) as cm:
                self._watchdog = cm
                while True:
                    msg = await proc.messages.get()
                    if msg is DEATH:
                        return None
                    turn.clock.observe(msg, time.monotonic())
                    self.emit(turn, "message", msg)
                    if msg.get("type") == "result":
                        return msg
                    if not self.permissions and not self._delegated:
                        cm.reschedule(loop.time() + watchdog)
        except TimeoutError:
            raise AgentTimeout(
                f"no output from the agent for {watchdog:g}s; the process was killed",
                stderr_tail=proc.stderr_tail() or None,
            ) from None
        finally:
            self._watchdog = None

    def _end_with_error(self, turn: Turn, exc: HotsessionError) -> None:
        turn.record.status = "interrupted" if exc.code == "interrupted" else "error"
        turn.record.error_code = exc.code
        turn.record.error_message = exc.message
        now = time.monotonic()
        timing = turn.clock.breakdown(now)
        turn.record.timing = timing
        data = {"turn": turn.number, **exc.to_dict(), "timing": timing}
        self.emit(turn, "error", data)

    async def _finish_turn(self, turn: Turn) -> None:
        if turn.record.ended_at is None:
            turn.record.ended_at = time.time()
        self.record.updated_at = time.time()
        try:
            await self.hub.registry.flush()
            await self.hub.registry.put_turn(turn.record)
            await self.hub.registry.put_session(self.record)
        except HotsessionError as exc:
            log.error("session %s: cannot record turn %d: %s", self.id, turn.number, exc)
            self.hub.note_registry(exc)
        else:
            self.hub.note_registry(None)
        await self.hub._after_turn(self)

    def _lost_process(self, placement: Placement) -> None:
        if self.placement is placement:
            self.placement = None
        self.record.pid = None
        self._set_state("evicted")

    # -- processes -----------------------------------------------------------------------------

    async def _ensure_process(self) -> tuple[Placement, str]:
        """The session's live process, getting one if needed; returns it and how it came."""
        if self.placement is not None and self.placement.process.alive:
            return self.placement, "hot"
        if self._warming is not None:
            warming, self._warming = self._warming, None
            with contextlib.suppress(HotsessionError):
                placement = await warming
                if placement.process.alive:
                    return self._adopt(placement), "warm"
        self._set_state("starting")
        placement = await self._start_process()
        return self._adopt(placement), placement.source

    async def _start_process(self) -> Placement:
        host = self.hub.host
        origin = self.record.options.get("origin", "new")
        if origin.startswith("fork:") and self.record.turns == 0:
            return await host.start_resume(
                self.options,
                session_id=self.id,
                cli_session_id=origin[5:],
                fork_to=self.cli_session_id,
            )
        if self.has_transcript:
            return await host.start_resume(
                self.options, session_id=self.id, cli_session_id=self.cli_session_id
            )
        return await host.start_new(
            self.options, session_id=self.id, cli_session_id=self.cli_session_id
        )

    def _adopt(self, placement: Placement) -> Placement:
        self.placement = placement
        proc = placement.process
        proc.control_handler = self._on_control_request
        proc.on_cancel = self._on_control_cancel
        self.record.pid = proc.pid
        watcher = asyncio.create_task(self._watch_idle_death(placement), name=f"died-{self.id}")
        watcher.add_done_callback(_consume_exception)
        return placement

    async def _watch_idle_death(self, placement: Placement) -> None:
        """A process that vanishes between turns (killed from outside, crashed) leaves the
        session ``evicted`` at once, not ``idle`` without a process; a turn in flight sees the
        death itself (``_run_turn``)."""
        proc = placement.process
        await proc.exited.wait()
        if proc.closing:  # ended on purpose (evict, recycle, close): that path set the state
            return
        if self.placement is placement and self.current is None and not self._closed:
            self._lost_process(placement)
            with contextlib.suppress(HotsessionError):
                await self.hub.registry.put_session(self.record)

    async def warm(self) -> bool:
        """Resume-ahead: start this session's process now so its next turn is hot.

        Returns False when there was nothing to do (already hot, or busy).
        """
        if self._closed:
            raise Conflict("the session is closed", session_id=self.id)
        if self.process is not None or self._warming is not None or self.current is not None:
            return False
        self._warming = asyncio.create_task(self._start_process(), name=f"warm-{self.id}")
        self._warming.add_done_callback(_consume_exception)
        return True

    async def evict(self, reason: str = "evicted") -> bool:
        """End the process of an idle session (the session stays; its next turn resumes)."""
        if self.current is not None or self._queue.qsize():
            return False
        async with self._lock:
            placement = self.placement
            if placement is None:
                return False
            self.placement = None
            self.record.pid = None
            await self.hub.host.retire(placement)
            self._set_state("evicted")
            self.hub._count_eviction(reason)
        return True

    async def replace_process(self, placement: Placement) -> None:
        """Swap in a new process for this session (recycling); the old one is retired."""
        async with self._lock:
            old = self.placement
            self._adopt(placement)
            if old is not None:
                await self.hub.host.retire(old)

    # -- control -------------------------------------------------------------------------------

    async def interrupt(self) -> bool:
        """Interrupt the running turn; returns False when no turn runs."""
        turn = self.current
        if turn is None:
            return False
        turn.interrupted = True
        proc = self.process
        if proc is None:
            return True
        try:
            await proc.interrupt(timeout=self.hub.config.interrupt_grace_s)
        except AgentError:
            proc.kill()  # it did not listen: the turn ends as interrupted when the process dies
        return True

    async def _on_control_request(
        self, proc: AgentProcess, request: dict[str, Any]
    ) -> dict[str, Any]:
        if self.control_delegate is not None:
            return await self._delegate(self.control_delegate, request)
        if request.get("subtype") != "can_use_tool":
            raise HotsessionError(f"unsupported control request {request.get('subtype')!r}")
        turn = self.current
        request_id = str(request["request_id"])
        tool_input = request.get("input") or {}
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        pending = PermissionRequest(
            request_id=request_id,
            tool_name=str(request.get("tool_name")),
            input=tool_input,
            tool_use_id=request.get("tool_use_id"),
            turn=turn.number if turn else 0,
            future=fut,
        )
        self.permissions[request_id] = pending
        data = pending.to_dict()
        for key in ("title", "description", "decision_reason", "blocked_path"):
            if request.get(key) is not None:
                data[key] = request[key]
        self.emit(turn, "permission_request", data)
        self._set_state("waiting_permission")
        if self._watchdog is not None:
            self._watchdog.reschedule(None)
        timeout = self.hub.config.permission_timeout_s
        by = "client"
        try:
            async with asyncio.timeout(timeout):
                answer = await fut
        except TimeoutError:
            by = "timeout"
            answer = {
                "behavior": "deny",
                "message": f"No permission answer within {timeout:g}s; denied by hotsession.",
            }
        except asyncio.CancelledError:
            self._permission_done(turn, request_id, "cancelled", by="agent")
            raise
        self._permission_done(turn, request_id, answer["behavior"], by=by)
        if answer["behavior"] == "allow" and answer.get("updatedInput") is None:
            answer["updatedInput"] = tool_input
        return answer

    async def _delegate(
        self,
        delegate: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
        request: dict[str, Any],
    ) -> dict[str, Any]:
        """A control request answered by the attached client; the watchdog waits meanwhile."""
        self._delegated += 1
        if self._watchdog is not None:
            self._watchdog.reschedule(None)
        try:
            return await delegate(request)
        finally:
            self._delegated -= 1
            if not self._delegated and not self.permissions and self._watchdog is not None:
                loop = asyncio.get_running_loop()
                self._watchdog.reschedule(loop.time() + self.hub.config.watchdog_s)

    def _on_control_cancel(self, request_id: str) -> None:
        pending = self.permissions.get(request_id)
        if pending is not None and not pending.future.done():
            pending.future.cancel()

    def _permission_done(
        self, turn: Turn | None, request_id: str, outcome: str, *, by: str
    ) -> None:
        self.permissions.pop(request_id, None)
        self._resolved[request_id] = outcome
        while len(self._resolved) > 1000:
            self._resolved.popitem(last=False)
        self.emit(
            turn, "permission_resolved", {"request_id": request_id, "outcome": outcome, "by": by}
        )
        if not self.permissions:
            if self.current is not None:
                self._set_state("running")
            if self._watchdog is not None:
                loop = asyncio.get_running_loop()
                self._watchdog.reschedule(loop.time() + self.hub.config.watchdog_s)

    def answer_permission(
        self,
        request_id: str,
        behavior: str,
        *,
        updated_input: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> None:
        """Allow or deny a pending tool call (``updated_input`` edits what the tool gets)."""
        pending = self.permissions.get(request_id)
        if request_id in self._resolved or (pending is not None and pending.future.done()):
            raise Conflict(
                "that permission request was already resolved",
                request_id=request_id,
                outcome=self._resolved.get(request_id),
            )
        if pending is None:
            raise NotFound("no pending permission request with that id", request_id=request_id)
        if behavior == "allow":
            answer: dict[str, Any] = {"behavior": "allow", "updatedInput": updated_input}
        elif behavior == "deny":
            answer = {"behavior": "deny", "message": message or "Denied by the user."}
        else:
            raise InvalidRequest("behavior must be 'allow' or 'deny'", field="behavior")
        pending.future.set_result(answer)

    async def close(self) -> None:
        """End the session: queued prompts fail, a running turn is interrupted, the process ends."""
        if self._closed:
            return
        self._closed = True
        while not self._queue.empty():
            turn = self._queue.get_nowait()
            self._end_with_error(turn, Conflict("the session was closed"))
        running = self.current
        if running is not None:
            with contextlib.suppress(HotsessionError):
                await self.interrupt()
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(self.hub.config.interrupt_grace_s):
                    await running.done.wait()
        if self._warming is not None:
            self._warming.cancel()
            with contextlib.suppress(BaseException):
                placement = await self._warming
                await self.hub.host.retire(placement)
            self._warming = None
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if running is not None and not running.done.is_set():
            self._end_with_error(running, _interrupted())
        if self.placement is not None:
            await self.hub.host.retire(self.placement, busy=True)
            self.placement = None
        self.hub.host.release(self.id, self.cli_session_id)
        self.record.pid = None
        self.record.closed_at = time.time()
        self._set_state("closed")
        for sub in list(self._subscribers):
            sub.push(None)
        await self.hub.registry.flush()
        await self.hub.registry.put_session(self.record)

    async def shutdown(self) -> None:
        """Daemon shutdown: end the running turn with an error; keep the session for later."""
        pending = [self.current] if self.current is not None else []
        while not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for turn in pending:
            if not turn.done.is_set():
                self._end_with_error(turn, ShuttingDown("the service is shutting down"))
                turn.record.status = "error"
                turn.record.ended_at = time.time()
                with contextlib.suppress(HotsessionError):
                    await self.hub.registry.put_turn(turn.record)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self.placement is not None:
            await self.hub.host.retire(self.placement, busy=True)
            self.placement = None
        self.record.pid = None
        if self.record.state != "closed":
            self.record.state = "evicted"
        for sub in list(self._subscribers):
            sub.push(None)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able view of the session for listings."""
        rec = self.record
        proc = self.process
        return {
            "id": rec.id,
            "tenant": rec.tenant,
            "cli_session_id": rec.cli_session_id,
            "state": rec.state,
            "cwd": rec.cwd,
            "model": self.options.model,
            "permission_mode": self.options.permission_mode,
            "profile": rec.profile_key,
            "pid": proc.pid if proc else None,
            "turns": rec.turns,
            "queued": self.queued,
            "created_at": rec.created_at,
            "updated_at": rec.updated_at,
            "last_active_at": rec.last_active_at,
            "last_timing": rec.last_timing,
            "pending_permissions": [p.to_dict() for p in self.permissions.values()],
            "metadata": rec.metadata,
            "error": rec.error,
            "last_seq": self.seq,
        }


def _interrupted() -> HotsessionError:
    return TurnInterrupted("the turn was interrupted")


def _consume_exception(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
