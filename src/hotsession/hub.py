"""``Hotsession``: the library's entry point, and the engine behind the HTTP service.

It is the composition root: it owns the registry, the supervisor (every child process), the
process host (and the pool when there is one) and the live sessions, and implements the
protocols the layers below define for it (``SessionContext`` and ``SessionListener`` of the
session layer, ``PoolContext`` of the pool). Sessions of other tenants are invisible: looking one
up with the wrong tenant answers ``NotFound`` exactly like an unknown id.

    async with Hotsession(Config(state_dir=...)) as hs:
        session = await hs.open(cwd="/work/repo", permission_mode="acceptEdits")
        async for event in session.send("hello"):
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from hotsession.cli_binary import cli_version, resolve_cli_path
from hotsession.config import Config
from hotsession.errors import (
    Conflict,
    HotsessionError,
    InvalidRequest,
    NotFound,
    RegistryError,
    ShuttingDown,
)
from hotsession.host import LocalHost, SpawnPolicy
from hotsession.options import SessionOptions
from hotsession.pool import Pool
from hotsession.registry import Registry, SessionRecord
from hotsession.session import Session
from hotsession.state_lock import StateLock
from hotsession.supervisor import Supervisor

log = logging.getLogger(__name__)

T = TypeVar("T")
StateListener = Callable[[Session], None]


def new_session_id() -> str:
    """hotsession's session ids: short, random, unguessable (no enumeration)."""
    return "hs_" + secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")


class Hotsession:
    """Persistent Claude Code sessions with transparent resume (and a warm pool when enabled)."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        registry: Registry | None = None,
        spawn_policy: SpawnPolicy | None = None,
        state_lock: StateLock | None = None,
    ) -> None:
        self.config = config or Config()
        self._registry = registry
        # A front that must take the lock before its own start-up work (the daemon) hands it in.
        self._state_lock: StateLock | None = state_lock
        self.spawn_policy = spawn_policy  # per-tenant users, env, sandbox (hotsession.isolation)
        self.sessions: dict[str, Session] = {}
        self.shutting_down = False
        self.started = False
        self.started_at = time.time()
        self._cli_path: str | None = None
        self._supervisor: Supervisor | None = None
        self._host: LocalHost | None = None
        self.pool: Pool | None = None  # when the pool is enabled
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writes: set[asyncio.Task[Any]] = set()
        self._state_listeners: list[StateListener] = []
        # The last failed write to the store, until a write succeeds again: prompts are refused
        # meanwhile (a turn nobody can record would be lost if the daemon died).
        self.registry_failure: RegistryError | None = None

    # -- parts -----------------------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        """The durable store."""
        assert self._registry is not None, "Hotsession.start() was not called"
        return self._registry

    @property
    def supervisor(self) -> Supervisor:
        """Owner of every child process."""
        assert self._supervisor is not None, "Hotsession.start() was not called"
        return self._supervisor

    @property
    def host(self) -> LocalHost:
        """Where processes come from."""
        assert self._host is not None, "Hotsession.start() was not called"
        return self._host

    @property
    def cli_path(self) -> str:
        """The Claude Code binary in use."""
        assert self._cli_path is not None
        return self._cli_path

    def cli_info(self) -> dict[str, str]:
        """Path and version of the CLI."""
        return {"path": self.cli_path, "version": cli_version(self.cli_path)}

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> Hotsession:
        """Lock the state dir, open the registry, end orphans of a previous run, load sessions,
        start the pool. Another instance on the same state dir raises ``StateDirBusy``."""
        if self.started:
            return self
        # First of all: the lock proves no other instance uses this state dir (state_lock.py).
        self._state_lock = self._state_lock or StateLock.acquire(self.config.state_dir)
        try:
            return await self._start()
        except BaseException:
            self._state_lock.release()
            self._state_lock = None
            raise

    async def _start(self) -> Hotsession:
        self._cli_path = str(resolve_cli_path(self.config.cli_path))
        state_dir = Path(self.config.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._registry is None:
            from hotsession.registry.backends import registry_for

            self._registry = registry_for(self.config)
        await self._registry.open()
        self._supervisor = Supervisor(
            self._registry,
            max_line_bytes=self.config.max_line_bytes,
            spawn_timeout=self.config.spawn_timeout_s,
        )
        await self._supervisor.sweep_orphans()
        self._host = LocalHost(
            self._supervisor,
            cli_path=self._cli_path,
            allow_root_bypass=self.config.allow_root_bypass,
            policy=self.spawn_policy,
        )
        await self._load_sessions()
        if self.config.pool_enabled:
            self._start_pool()
        self.started = True
        return self

    def _start_pool(self) -> None:
        self.pool = Pool(self)
        self.host.pool = self.pool
        self.pool.start()

    async def _load_sessions(self) -> None:
        """Sessions survive restarts: each comes back without a process (its next turn resumes)."""
        for rec in await self.registry.list_sessions(include_closed=False):
            last_seq = await self.registry.last_seq(rec.id)
            turns = await self.registry.list_turns(rec.id, limit=1)
            session = Session(
                self,
                rec,
                listener=self,
                last_seq=last_seq,
                last_turn=turns[-1].turn if turns else 0,
            )
            for turn in await self.registry.list_turns(rec.id, limit=self.config.queue_max + 2):
                if turn.status in ("queued", "running"):
                    turn.status = "error"
                    turn.error_code = "daemon_restarted"
                    turn.error_message = "the service stopped during this turn"
                    turn.ended_at = time.time()
                    session.emit(
                        None,
                        "error",
                        {"turn": turn.turn, "code": turn.error_code, "message": turn.error_message},
                        turn_no=turn.turn,
                    )
                    await self.registry.put_turn(turn)
            rec.pid = None
            rec.state = "evicted"
            self.sessions[rec.id] = session
            await self.registry.put_session(rec)
        await self.registry.flush()

    async def stop(self) -> None:
        """End turns with an error event, end every process, close the store. Sessions persist."""
        if not self.started or self.shutting_down:
            return
        self.shutting_down = True
        if self.pool is not None:
            try:
                await self.pool.stop()
            except Exception:
                log.exception("the pool did not stop cleanly")
        await asyncio.gather(
            *(s.shutdown() for s in self.sessions.values()), return_exceptions=True
        )
        for task in list(self._tasks):
            task.cancel()
        await self.supervisor.close_all()
        await asyncio.gather(*list(self._writes), return_exceptions=True)
        for session in self.sessions.values():
            try:
                await self.registry.put_session(session.record)
            except HotsessionError as exc:
                log.error("cannot record session %s at shutdown: %s", session.id, exc.message)
        await self.registry.close()
        self.started = False
        if self._state_lock is not None:
            self._state_lock.release()
            self._state_lock = None

    async def __aenter__(self) -> Hotsession:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- sessions --------------------------------------------------------------------------------

    async def open(
        self,
        cwd: str | os.PathLike[str] | None = None,
        *,
        options: SessionOptions | None = None,
        resume: str | None = None,
        fork: bool = False,
        cli_session_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        tenant: str = "local",
        include_partial_messages: bool = False,
        **option_fields: Any,
    ) -> Session:
        """Open a session with a live process (a warm spare when one is ready).

        ``resume`` adopts an existing Claude Code session id (``fork`` copies it to a new id).
        ``cli_session_id`` chooses the Claude Code session id of a new conversation or a fork
        (a direct spawn: a spare's id was chosen before).
        ``include_partial_messages`` streams the model's reply as it is written: each of the
        CLI's ``stream_event`` messages (token deltas) becomes a ``message`` event of its own,
        before the complete ``assistant`` message (see ``session.fanout`` for their replay).
        """
        if self.shutting_down:
            raise ShuttingDown("the service is shutting down")
        if options is None:
            if cwd is None:
                raise HotsessionError("open() needs cwd or options")
            options = SessionOptions.create(os.path.realpath(cwd), tenant=tenant, **option_fields)
        if not os.path.isdir(options.cwd):
            raise InvalidRequest(f"cwd is not a directory: {options.cwd}", field="cwd")
        rec = self._new_record(
            options, resume, fork, cli_session_id, metadata, include_partial_messages
        )
        session = Session(self, rec, listener=self)
        began = time.monotonic()
        placement = await session.start()
        session.open_source = placement.source
        session.open_ms = (time.monotonic() - began) * 1000
        rec.state = "idle"
        self.sessions[rec.id] = session
        try:
            await self.registry.put_session(rec)
        except HotsessionError as exc:
            # The caller gets the error and no id: leave no process or session behind.
            self.sessions.pop(rec.id, None)
            self.note_registry(exc)
            try:
                await session.close()
            except HotsessionError as close_exc:  # the store is down: the open's error says so
                log.warning("session %s: not recorded as closed: %s", rec.id, close_exc.message)
            raise
        self.session_state_changed(session)
        return session

    def _new_record(
        self,
        options: SessionOptions,
        resume: str | None,
        fork: bool,
        cli_session_id: str | None,
        metadata: dict[str, Any] | None,
        include_partial_messages: bool,
    ) -> SessionRecord:
        """The record of a session about to open: its ids and origin (new, resume, fork)."""
        if resume is not None:
            _check_uuid(resume)
            holder = self.host.lease_holder(resume)
            if holder is not None and not fork:
                raise Conflict(
                    "that Claude Code session is open in another hotsession session",
                    session_id=holder if self._visible(holder, options.tenant) else None,
                )
        if cli_session_id is not None:
            _check_uuid(cli_session_id)
        if resume and fork:
            cli_session_id, origin = cli_session_id or str(uuid.uuid4()), f"fork:{resume}"
        elif resume:
            cli_session_id, origin = resume, "resume"
        else:
            cli_session_id, origin = cli_session_id or "", "new"
        opts = options.to_dict()
        opts["origin"] = origin
        if include_partial_messages:
            opts["include_partial_messages"] = True
        return SessionRecord(
            id=new_session_id(),
            tenant=options.tenant,
            cli_session_id=cli_session_id,
            cwd=options.cwd,
            options=opts,
            profile_key=options.profile_key(),
            metadata=dict(metadata or {}),
        )

    def _visible(self, session_id: str, tenant: str | None) -> bool:
        s = self.sessions.get(session_id)
        return s is not None and (tenant is None or s.record.tenant == tenant)

    def get(self, session_id: str, *, tenant: str | None = None) -> Session:
        """A live (not closed) session; another tenant's answers ``NotFound`` like an unknown."""
        session = self.sessions.get(session_id)
        if session is None or (tenant is not None and session.record.tenant != tenant):
            raise NotFound("no such session", session_id=session_id)
        return session

    async def record(self, session_id: str, *, tenant: str | None = None) -> SessionRecord:
        """A session's record, closed ones included."""
        session = self.sessions.get(session_id)
        rec = session.record if session is not None else await self.registry.get_session(session_id)
        if rec is None or (tenant is not None and rec.tenant != tenant):
            raise NotFound("no such session", session_id=session_id)
        return rec

    def list(self, *, tenant: str | None = None) -> list[Session]:
        """Open sessions, newest first."""
        out = [s for s in self.sessions.values() if tenant is None or s.record.tenant == tenant]
        return sorted(out, key=lambda s: s.record.created_at, reverse=True)

    async def close_session(self, session_id: str, *, tenant: str | None = None) -> None:
        """Close and forget a session (its record and events stay in the registry)."""
        session = self.get(session_id, tenant=tenant)
        await session.close()
        self.sessions.pop(session_id, None)

    # -- SessionListener: what sessions tell the hub ---------------------------------------------

    def session_state_changed(self, session: Session) -> None:
        """Tell every state listener; a listener's bug is logged and never reaches the turn."""
        for listener in list(self._state_listeners):
            try:
                listener(session)
            except Exception:
                log.exception(
                    "state listener %r failed on session %s (state %s)",
                    listener,
                    session.id,
                    session.state,
                )

    async def turn_finished(self, session: Session) -> None:
        """The turn boundary: the pool may recycle the session's process."""
        if self.pool is not None:
            await self.pool.after_turn(session)

    def add_state_listener(self, listener: StateListener) -> None:
        """Call ``listener(session)`` whenever a session changes state."""
        self._state_listeners.append(listener)

    def remove_state_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener`` (no error if it was not added)."""
        with contextlib.suppress(ValueError):
            self._state_listeners.remove(listener)

    # -- SessionContext and PoolContext: what sessions and the pool use -------------------------

    def pooled_sessions(self) -> Iterable[Session]:
        """The open sessions (the pool's view)."""
        return self.sessions.values()

    @property
    def evictions(self) -> Counter[str]:
        """Processes of idle sessions the pool ended, by reason (empty without a pool)."""
        return self.pool.evictions if self.pool is not None else Counter()

    @property
    def recycles(self) -> Counter[str]:
        """Processes the pool replaced at turn boundaries, by reason (empty without a pool)."""
        return self.pool.recycles if self.pool is not None else Counter()

    def registry_task(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Write to the registry in the background (off a turn's hot path); failures are logged."""
        task = asyncio.create_task(coro)
        self._writes.add(task)
        task.add_done_callback(self._registry_done)
        return task

    def _registry_done(self, task: asyncio.Task[Any]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("registry write failed: %s", task.exception())
            self.note_registry(task.exception())

    def note_registry(self, failure: BaseException | None) -> None:
        """Record the outcome of a write to the store (None: it succeeded)."""
        if failure is None:
            if self.registry_failure is not None:
                log.info("registry writable again")
            self.registry_failure = None
        elif isinstance(failure, RegistryError):
            self.registry_failure = failure

    def check_registry(self, session: Session) -> None:
        """Raise ``RegistryError`` while the store cannot be written; probe it in the background."""
        failure = self.registry_failure
        if failure is None:
            return
        self.registry_task(self._probe_registry(session))
        # The same class as the failure: an unreachable store keeps its code (503 either way).
        raise type(failure)(
            f"prompts are refused until the store can be written again ({failure.message})",
            cause=failure.details.get("cause"),
        )

    async def _probe_registry(self, session: Session) -> None:
        await self.registry.flush()
        await self.registry.put_session(session.record)
        self.note_registry(None)

    def spawn_task(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run a background task the hub keeps a reference to (cancelled at stop)."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def stats(self) -> dict[str, Any]:
        """Counters for the API and the dashboard."""
        states = Counter(s.state for s in self.sessions.values())
        out: dict[str, Any] = {
            "sessions": len(self.sessions),
            "states": dict(states),
            "evictions": dict(self.evictions),
            "recycles": dict(self.recycles),
            **self.host.stats(),
        }
        if self.pool is not None:
            out["pool"] = self.pool.stats()
        return out


def _check_uuid(value: str) -> None:
    try:
        uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise InvalidRequest(
            "resume must be a Claude Code session id (a UUID)", field="resume"
        ) from None
