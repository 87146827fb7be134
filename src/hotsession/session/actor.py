"""The session actor: one conversation, its queue of turns, its process, and its resume.

Design
======
Actor. Each session has one runner task that takes prompts from a bounded queue and runs them one
at a time, so a prompt is never written to the CLI mid-turn (the CLI would merge it into the
running turn). Everything that changes the session happens on the daemon's loop; the runner is
the only writer of prompts to the process.

A turn's steps (``_run_turn``): ``_begin`` (the turn is running), for a gated turn ``_gate``
(its prompt's record written: a cluster node's epoch check), ``_process_for`` (the
session's process: hot, resumed-ahead, or a new one from the host), ``_exchange`` (write the
prompt, forward the CLI's messages until its ``result``), then ``_conclude`` (the ``result``
event with the timing) or, on an agent failure, ``_retry_after`` decides whether the prompt is
sent again to a resumed process. Afterwards ``_finish_turn`` records the turn and tells the
listener (the pool's turn boundary).

Events. Every CLI message of a turn becomes a ``message`` event (see ``fanout``). A turn ends with
exactly one ``result`` or ``error`` event; the turn's events are flushed to the registry before
the turn is recorded as done, so a completed turn is always replayable.

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
from collections.abc import AsyncIterator, Callable
from typing import Any

from hotsession.agent import AgentProcess, Batch, PartialMessage
from hotsession.errors import (
    AgentDied,
    AgentError,
    AgentTimeout,
    Conflict,
    HotsessionError,
    QueueFull,
    ShuttingDown,
    TurnInterrupted,
)
from hotsession.events import Event
from hotsession.host import Placement
from hotsession.options import SessionOptions
from hotsession.registry import SessionRecord, SessionState, TurnRecord
from hotsession.session.between import BetweenTurns
from hotsession.session.context import SessionContext, SessionListener
from hotsession.session.fanout import EventFanout, Subscription
from hotsession.session.permissions import ControlDelegate, PermissionBroker
from hotsession.session.turn import Turn, check_prompt
from hotsession.session.views import LiveState, session_view

log = logging.getLogger(__name__)


class Session:
    """A conversation driven through hotsession. Create it with ``Hotsession.open``."""

    def __init__(
        self,
        context: SessionContext,
        record: SessionRecord,
        *,
        listener: SessionListener,
        last_seq: int = 0,
        last_turn: int = 0,
    ) -> None:
        self._ctx = context
        self._listener = listener
        self.last_turn = max(last_turn, record.turns)
        self.record = record
        self.options = SessionOptions.from_dict(record.options)
        # Not part of the profile (every process can stream; see ``options.build_argv``).
        self._partial_messages = bool(record.options.get("include_partial_messages", False))
        self.placement: Placement | None = None
        self._between: BetweenTurns | None = None  # the placement's view for a front
        self.fanout = EventFanout(record.id, context.registry, last_seq=last_seq)
        self.broker = PermissionBroker(self, lambda: self._ctx.config.permission_timeout_s)
        self.current: Turn | None = None
        self._queue: asyncio.Queue[Turn] = asyncio.Queue(maxsize=context.config.queue_max)
        # The latest turns' records as this process knows them: newer than the registry's copy
        # until the turn's bookkeeping has written them (see ``_run``), so readers overlay them.
        self.recent_turns: collections.deque[TurnRecord] = collections.deque(maxlen=20)
        self._runner: asyncio.Task[None] | None = None
        self._warming: asyncio.Task[Placement] | None = None
        self._warm_ready_at = 0.0  # when the resume-ahead got its process (wall clock)
        self._watchdog: _Watchdog | None = None  # the running turn's
        self._closed = False
        # How the process obtained at open came (spare / spawn / resume) and how long it took:
        # the first turn reports them, since it is the one a user waited for.
        self.open_source: str | None = None
        self.open_ms = 0.0
        self._lock = asyncio.Lock()  # serialises process changes (turn start, warm, evict)

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
    def seq(self) -> int:
        """The sequence number of the session's last event."""
        return self.fanout.seq

    @property
    def process(self) -> AgentProcess | None:
        """The live process, if any."""
        p = self.placement
        return p.process if p is not None and p.process.alive else None

    @property
    def between_turns(self) -> BetweenTurns | None:
        """The live process as a front reads and writes it between turns (``between``); None
        without a live process. A new process is a new view."""
        return self._between if self.process is not None else None

    @property
    def partial_messages(self) -> bool:
        """Whether the CLI's token deltas reach this session's readers (not part of the
        profile: every process writes them, and its session passes them on or drops them)."""
        return self._partial_messages

    @partial_messages.setter
    def partial_messages(self, on: bool) -> None:
        self._partial_messages = on
        proc = self.process
        if proc is not None:
            proc.partial_messages = on

    def switched(self, options: SessionOptions) -> None:
        """The live process now runs ``options``: a front switched its model / permission mode
        between turns (``set_model`` / ``set_permission_mode``, ``hotsession.dropin.bridge``);
        the record says so, and a later process of the conversation starts with them."""
        self.options = options
        self.record.options.update(options.to_dict())
        self.record.profile_key = options.profile_key()

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
            self._listener.session_state_changed(self)

    # -- events --------------------------------------------------------------------------------

    def emit(
        self, turn: Turn | None, kind: str, data: dict[str, Any], *, turn_no: int = 0
    ) -> Event:
        """Number an event and hand it to the log, the turn and the subscribers."""
        return self.fanout.emit(turn, kind, data, turn_no=turn_no)

    def subscribe(self, sub: Subscription | None = None) -> Subscription:
        """Live events from now on (see ``events`` for replay + live); ``sub``: a subclass
        whose ``push`` does something else with them (it is called on the turn's path)."""
        return self.fanout.subscribe(sub)

    def events(self, after: int = 0, *, follow: bool = True) -> AsyncIterator[Event]:
        """Every event after ``after`` exactly once: replay from the log, then live ones."""
        return self.fanout.events(after, follow=follow)

    # -- turns ---------------------------------------------------------------------------------

    def send(
        self,
        prompt: str,
        *,
        since: float | None = None,
        message: dict[str, Any] | None = None,
        gated: bool = False,
    ) -> Turn:
        """Queue a prompt; iterate the returned turn for its events.

        ``since`` (a ``time.monotonic()`` reading) is when the caller's request began, for a
        request that opened the session and sends its first prompt in one go (``/v1/ask``): the
        opening then counts as the turn's claim time.

        ``message``: the stream-json user message to write instead of one made of ``prompt``
        (a drop-in client's own, content blocks and all); ``prompt`` is then what is recorded.

        ``gated``: the prompt is written to the process only once the write that records it
        succeeded, and never when it failed (the turn then ends with that write's error, see
        ``Turn.refusal``). A cluster node sends so: that write is fenced by the node's ownership
        epoch, so it is also the node's check that it still owns the session
        (hotsession.cluster.node). Without it (one machine) nothing waits for the store.

        Raises at once (not on iteration) for a closed session, an oversized prompt or a full
        queue, so a caller can answer 409 / 413 / 429 before streaming anything.
        """
        if self._closed:
            raise Conflict("the session is closed", session_id=self.id)
        ctx = self._ctx
        if ctx.shutting_down:
            raise ShuttingDown("the service is shutting down")
        ctx.check_registry(self)
        check_prompt(prompt, ctx.config.prompt_limit_bytes)
        if self._queue.full():
            raise QueueFull(
                f"{self._queue.maxsize} prompts are already queued for this session",
                limit=self._queue.maxsize,
            )
        self.last_turn += 1
        turn = Turn(self.id, self.last_turn, prompt, since=since, message=message)
        turn.gated = gated
        self._queue.put_nowait(turn)
        self.recent_turns.append(turn.record)
        starts_now = self.current is None and self._queue.qsize() == 1
        if starts_now:
            # Nothing runs or waits before it: it is recorded "running" by the write that
            # accepts it, one hand-off to the store where there were two (``_begin`` writes
            # nothing then). Never "queued" when it may already run: a re-homed session re-runs
            # its "queued" turns (hotsession.cluster.node), so the status errs towards "running".
            turn.record.status = "running"
            turn.record.started_at = time.time()
        # The prompt is recorded as soon as it is accepted, even if the daemon dies before it
        # runs; a stream shows none of the turn's events before that write is done (``recorded``).
        turn.accepted = ctx.registry_task(ctx.registry.put_turn(turn.record))
        if not starts_now:
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
        """One turn, in named steps (see the module docstring)."""
        self._begin(turn)
        if turn.gated and not await self._gate(turn):
            return
        for attempt in range(2):
            placement = await self._process_for(turn, attempt)
            if placement is None:
                return  # the turn already ended (no process, or interrupted while waiting)
            try:
                result = await self._exchange(turn, placement.process)
            except AgentError as exc:
                if self._retry_after(turn, placement, exc, attempt):
                    continue
                self._end_with_error(turn, _interrupted() if turn.interrupted else exc)
                return
            self._conclude(turn, result, placement.process)
            return

    def _begin(self, turn: Turn) -> None:
        turn.clock.started = time.monotonic()
        if turn.record.status == "running":
            return  # recorded so by the write that accepted it (``submit``)
        turn.record.status = "running"
        turn.record.started_at = time.time()
        self._ctx.registry_task(self._ctx.registry.put_turn(turn.record))

    async def _gate(self, turn: Turn) -> bool:
        """A gated turn (``send``) waits for the write that records its prompt; when that write
        failed the turn ends with its error (False) and the prompt never reaches the process."""
        await turn.recorded()
        refused = turn.refusal()
        if refused is None:
            return True
        self._end_with_error(turn, refused)
        return False

    async def _process_for(self, turn: Turn, attempt: int) -> Placement | None:
        """The process for this attempt of the turn; None when the turn ended instead."""
        clock = turn.clock
        try:
            async with self._lock:
                placement, source = await self._ensure_process()
        except HotsessionError as exc:
            self._set_state("failed")
            self.record.error = exc.message
            self._end_with_error(turn, exc)
            return None
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
            return None
        return placement

    async def _exchange(self, turn: Turn, proc: AgentProcess) -> dict[str, Any]:
        """Write the prompt; forward the CLI's messages until its ``result`` (returned)."""
        await proc.send_user(turn.prompt, message=turn.message)
        turn.clock.written = time.monotonic()
        return await self._pump(turn, proc)

    def _retry_after(
        self, turn: Turn, placement: Placement, error: AgentError, attempt: int
    ) -> bool:
        """The process failed the turn: drop it; True when the prompt is to be sent again."""
        proc = placement.process
        # Read before the clean-up kill below, which marks the process as closing too: a dead
        # process whose exit is not seen yet (the prompt's write met its closed stdin first)
        # still looks alive here, and is no less gone by accident.
        ended_on_purpose = proc.closing
        if isinstance(error, AgentTimeout) or proc.alive:
            proc.kill()
        self._lost_process(placement)
        # A process that died before saying anything about this prompt (killed while idle,
        # just before the turn began) cost the user nothing yet: resume and send it again.
        if turn.clock.first_event is not None or turn.interrupted or attempt == 1:
            return False
        if not isinstance(error, AgentDied) or ended_on_purpose:
            return False
        log.info("session %s: process died before the turn began; resuming", self.id)
        return True

    def _conclude(self, turn: Turn, result: dict[str, Any], proc: AgentProcess) -> None:
        """The turn's ``result`` event (or ``interrupted``), and the state it leaves."""
        if turn.interrupted:
            self._end_with_error(turn, _interrupted())
        else:
            timing = turn.clock.breakdown(time.monotonic(), result)
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

    async def _pump(self, turn: Turn, proc: AgentProcess) -> dict[str, Any]:
        """Forward the turn's CLI messages until its result; the process's death raises.

        The messages are taken by ``take`` on the process's reader path (``deliver``): no task
        wake-up per message, which mattered for streamed replies of hundreds of lines (measured,
        docs/benchmarks.md). The watchdog (``_Watchdog``) is one timer per quiet spell, not one
        per message."""
        clock = turn.clock
        emit = self.fanout.emit
        monotonic = time.monotonic

        emit_partials = self.fanout.emit_partials

        def take(batch: Batch) -> int | None:
            now = monotonic()
            partials: list[bytes] = []  # a run of token deltas: numbered and passed on at once
            for i, (msg, line) in enumerate(batch):
                if type(msg) is PartialMessage:
                    partials.append(msg.raw)
                    continue
                if partials:
                    emit_partials(turn, partials)
                    partials = []
                clock.observe(msg, now)
                # The CLI's own line goes on with the parsed message: the SSE frame and the
                # stored event row are that line, not the message encoded again (``Event.line``).
                emit(turn, "message", msg, line=line)
                if msg.get("type") == "result":
                    return i
            if partials:
                if clock.first_event is None:
                    clock.first_event = now
                emit_partials(turn, partials)
            return None

        done = proc.deliver(take)
        watchdog = self._watchdog = _Watchdog(
            proc, done, self._ctx.config.watchdog_s, lambda: self.broker.waiting
        )
        try:
            # The runner sleeps on the delivery itself: no shield, timeout scope or extra
            # future per turn (the watchdog fails ``done`` when it expires).
            return await done
        finally:
            watchdog.stop()
            self._watchdog = None
            proc.undeliver(done)

    def _end_with_error(self, turn: Turn, exc: HotsessionError) -> None:
        turn.record.status = "interrupted" if exc.code == "interrupted" else "error"
        turn.record.error_code = exc.code
        turn.record.error_message = exc.message
        timing = turn.clock.breakdown(time.monotonic())
        turn.record.timing = timing
        self.emit(turn, "error", {"turn": turn.number, **exc.to_dict(), "timing": timing})

    async def _finish_turn(self, turn: Turn) -> None:
        if turn.record.ended_at is None:
            turn.record.ended_at = time.time()
        self.record.updated_at = time.time()
        try:
            # One hand-off to the store: the events, the turn and the session (one transaction).
            await self._ctx.registry.end_turn(turn.record, self.record)
        except HotsessionError as exc:
            log.error("session %s: cannot record turn %d: %s", self.id, turn.number, exc)
            self._ctx.note_registry(exc)
        else:
            self._ctx.note_registry(None)
        await self._listener.turn_finished(self)

    def _lost_process(self, placement: Placement) -> None:
        if self.placement is placement:
            self.placement = None
        self.record.pid = None
        self._set_state("evicted")

    # -- permissions (the broker's owner) ------------------------------------------------------

    @property
    def control_delegate(self) -> ControlDelegate | None:
        """A drop-in client attached to this session answers the CLI's control requests itself
        (can_use_tool, hook_callback, mcp_message) when this is set; see ``PermissionBroker``."""
        return self.broker.delegate

    @control_delegate.setter
    def control_delegate(self, delegate: ControlDelegate | None) -> None:
        self.broker.delegate = delegate

    def permission_wait_began(self) -> None:
        """A tool call waits for a human: the state says so (the watchdog pauses)."""
        self._set_state("waiting_permission")
        if self.current is not None:  # the human's time, not the tool's (the turn's timing)
            self.current.clock.wait_began(time.monotonic())
        self.pause_watchdog()

    def permissions_answered(self) -> None:
        """No tool call waits any more: the turn runs on (the watchdog resumes)."""
        if self.current is not None:
            self._set_state("running")
            self.current.clock.wait_ended(time.monotonic())
        self.resume_watchdog()

    def pause_watchdog(self) -> None:
        """Stop the running turn's watchdog (someone outside the CLI is answering it)."""
        if self._watchdog is not None:
            self._watchdog.pause()

    def resume_watchdog(self) -> None:
        """Restart the running turn's watchdog from now."""
        if self._watchdog is not None:
            self._watchdog.resume()

    def answer_permission(
        self,
        request_id: str,
        behavior: str,
        *,
        updated_input: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> None:
        """Allow or deny a pending tool call (``updated_input`` edits what the tool gets)."""
        self.broker.answer(request_id, behavior, updated_input=updated_input, message=message)

    async def _on_control_request(
        self, _proc: AgentProcess, request: dict[str, Any]
    ) -> dict[str, Any]:
        return await self.broker.on_control_request(request)

    # -- processes -----------------------------------------------------------------------------

    async def start(self) -> Placement:
        """Get the session's first process (``Hotsession.open``): a new conversation takes a
        spare when one is ready (its CLI session id is adopted), a resume or fork spawns."""
        async with self._lock:
            placement = await self._start_process()
            if not self.record.cli_session_id:
                self.record.cli_session_id = placement.cli_session_id
            return self._adopt(placement)

    async def _ensure_process(self) -> tuple[Placement, str]:
        """The session's live process, getting one if needed; returns it and how it came."""
        if self.placement is not None and self.placement.process.alive:
            return self.placement, "hot"
        if self._warming is not None:
            warming, self._warming = self._warming, None
            try:
                placement = await warming
            except HotsessionError as exc:
                log.info("session %s: the resume-ahead failed (%s); starting", self.id, exc.message)
            else:
                if placement.process.alive:
                    return self._adopt(placement), "warm"
        self._set_state("starting")
        placement = await self._start_process()
        return self._adopt(placement), placement.source

    async def _start_process(self) -> Placement:
        host = self._ctx.host
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
        # An empty CLI session id (a new session's first process): the host may hand out a spare.
        return await host.start_new(
            self.options, session_id=self.id, cli_session_id=self.cli_session_id or None
        )

    def _adopt(self, placement: Placement) -> Placement:
        self.placement = placement
        proc = placement.process
        self._between = BetweenTurns(proc)
        proc.attach(self._on_control_request, self.broker.on_cancel)
        proc.partial_messages = self._partial_messages
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
            try:
                await self._ctx.registry.put_session(self.record)
            except HotsessionError as exc:
                log.error("session %s: cannot record its lost process: %s", self.id, exc.message)

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
        self._warming.add_done_callback(self._warm_done)
        return True

    def _warm_done(self, task: asyncio.Task[Placement]) -> None:
        """A resume-ahead got its process: listings show what the next turn finds (``idle``,
        its pid), and a death before that turn makes the session ``evicted`` again."""
        self._warm_ready_at = time.time()
        if task.cancelled() or task.exception() is not None or self._warming is not task:
            return
        proc = task.result().process
        if self._closed or self.current is not None or not proc.alive:
            return
        if self.record.state == "evicted":
            self.record.pid = proc.pid
            self._set_state("idle")
        watcher = asyncio.create_task(self._watch_warm_death(task), name=f"warm-died-{self.id}")
        watcher.add_done_callback(_consume_exception)

    async def _watch_warm_death(self, task: asyncio.Task[Placement]) -> None:
        await task.result().process.exited.wait()
        if self._warming is task and self.current is None and not self._closed:
            self._warming = None
            self._warm_unused_gone()

    def _ready_warm_process(self) -> AgentProcess | None:
        """The live process of a finished resume-ahead no turn took yet, if any."""
        warming = self._warming
        if warming is None or not warming.done() or warming.cancelled() or warming.exception():
            return None
        proc = warming.result().process
        return proc if proc.alive else None

    def _warm_unused_gone(self) -> None:
        """The resume-ahead's process left before any turn took it."""
        if self.placement is None and self.record.state == "idle":
            self.record.pid = None
            self._set_state("evicted")

    def take_unused_warm(self, unused_for_s: float = 0.0) -> Placement | None:
        """The process a resume-ahead started, if it has been ready for more than
        ``unused_for_s`` and no turn took it (the caller then owns it); None otherwise. The
        wait counts from the warm-up, not from the session's last turn: a session is usually
        warmed after an idle spell longer than the keep-alive."""
        warming = self._warming
        if (
            warming is None
            or not warming.done()
            or warming.cancelled()
            or warming.exception() is not None
            or self.current is not None
            or time.time() - self._warm_ready_at <= unused_for_s
        ):
            return None
        self._warming = None
        self._warm_unused_gone()
        return warming.result()

    async def evict(self) -> bool:
        """End the process of an idle session (the session stays; its next turn resumes).

        Returns False when there was nothing to evict or the session is busy."""
        if self.current is not None or self._queue.qsize():
            return False
        async with self._lock:
            placement = self.placement
            if placement is None:
                return False
            self.placement = None
            self.record.pid = None
            await self._ctx.host.retire(placement)
            self._set_state("evicted")
        return True

    async def replace_process(self, placement: Placement) -> None:
        """Swap in a new process for this session (recycling); the old one is retired."""
        async with self._lock:
            old = self.placement
            self._adopt(placement)
            if old is not None:
                await self._ctx.host.retire(old)

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
            await proc.interrupt(timeout=self._ctx.config.interrupt_grace_s)
        except AgentError:
            proc.kill()  # it did not listen: the turn ends as interrupted when the process dies
        return True

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
                async with asyncio.timeout(self._ctx.config.interrupt_grace_s):
                    await running.done.wait()
        await self._stop_warming()
        await self._stop_runner()
        if running is not None and not running.done.is_set():
            self._end_with_error(running, _interrupted())
        host = self._ctx.host
        if self.placement is not None:
            await host.retire(self.placement, busy=True)
            self.placement = None
        host.release(self.id, self.cli_session_id)
        self.record.pid = None
        self.record.closed_at = time.time()
        self._set_state("closed")
        self.fanout.end()
        await self._ctx.registry.flush()
        await self._ctx.registry.put_session(self.record)

    async def _stop_warming(self) -> None:
        """Cancel a resume-ahead; a process it already got is retired."""
        warming, self._warming = self._warming, None
        if warming is None:
            return
        warming.cancel()
        try:
            placement = await warming
        except asyncio.CancelledError:
            return  # cancelled before it had a process (the host ends a half-started one)
        except HotsessionError as exc:
            log.info("session %s: the resume-ahead had failed: %s", self.id, exc.message)
            return
        except Exception:
            log.exception("session %s: the resume-ahead failed unexpectedly", self.id)
            return
        await self._ctx.host.retire(placement)

    async def _stop_runner(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    async def shutdown(self, reason: HotsessionError | None = None) -> None:
        """Daemon shutdown: end the running turn with an error (``reason``, by default
        ``ShuttingDown``; a cluster node that lost the session says so); keep the session for
        later."""
        pending = [self.current] if self.current is not None else []
        while not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for turn in pending:
            if not turn.done.is_set():
                self._end_with_error(turn, reason or ShuttingDown("the service is shutting down"))
                turn.record.status = "error"
                turn.record.ended_at = time.time()
                try:
                    await self._ctx.registry.put_turn(turn.record)
                except HotsessionError as exc:
                    log.error(
                        "session %s: cannot record turn %d at shutdown: %s",
                        self.id,
                        turn.number,
                        exc.message,
                    )
        await self._stop_runner()
        if self.placement is not None:
            await self._ctx.host.retire(self.placement, busy=True)
            self.placement = None
        self.record.pid = None
        if self.record.state != "closed":
            self.record.state = "evicted"
        self.fanout.end()

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able view of the session for listings (``views.session_view``)."""
        proc = self.process or self._ready_warm_process()
        live = LiveState(
            pid=proc.pid if proc else None,
            queued=self.queued,
            last_seq=self.seq,
            pending_permissions=self.broker.views(),
        )
        return session_view(self.record, live)


class _Watchdog:
    """A running turn's watchdog: no output from the process for ``limit`` seconds (counted
    from its last output, or from the last permission answer) fails the turn's delivery with
    ``AgentTimeout``. One timer per quiet spell: when it expires it looks at whether output
    came meanwhile and, if so, sleeps again until the new deadline. Paused while a permission
    question waits for a human (``waiting``)."""

    __slots__ = ("_done", "_from", "_handle", "_limit", "_loop", "_proc", "_waiting")

    def __init__(
        self,
        proc: AgentProcess,
        done: asyncio.Future[dict[str, Any]],
        limit: float,
        waiting: Callable[[], bool],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._proc = proc
        self._done = done
        self._limit = limit
        self._waiting = waiting
        self._from = self._loop.time()
        self._handle: asyncio.TimerHandle | None = None
        if not waiting():
            self._arm()

    def _arm(self) -> None:
        due = max(self._proc.last_output, self._from) + self._limit
        self._handle = self._loop.call_at(due, self._expire)

    def _expire(self) -> None:
        self._handle = None
        if self._done.done() or self._waiting():
            return  # over, or paused (``resume`` arms it again)
        if self._loop.time() < max(self._proc.last_output, self._from) + self._limit:
            self._arm()  # output came meanwhile
            return
        self._done.set_exception(
            AgentTimeout(
                f"no output from the agent for {self._limit:g}s; the process was killed",
                stderr_tail=self._proc.stderr_tail() or None,
            )
        )

    def pause(self) -> None:
        """Stop counting (a permission question waits for a human)."""
        self.stop()

    def resume(self) -> None:
        """Count again, from now."""
        self.stop()
        self._from = self._loop.time()
        self._arm()

    def stop(self) -> None:
        """The turn's delivery ended."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _interrupted() -> HotsessionError:
    return TurnInterrupted("the turn was interrupted")


def _consume_exception(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
