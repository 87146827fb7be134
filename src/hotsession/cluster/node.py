"""The host actor: one per Ray node, owning that node's supervisor, warm pool and live sessions.

Design
======
Body. A :class:`NodeHost` wraps the single-machine engine (:class:`~hotsession.hub.Hotsession`)
unchanged: its supervisor spawns this node's CLI processes, its pool keeps this node's spares,
its sessions run their turns here. It is one actor per node, not one per session: an actor is its
own ~50 MB Python worker and takes ~0.5 s to create, which would eat the warm pool's gain. Ray
runs it as an async actor (one event loop, many concurrent calls), pinned to its node.

State. Sessions, turns and the event log are in the shared store (Postgres), written by the
engine through :class:`NodeRegistry`, which keeps the child-process records in a node-local
SQLite file (an orphan sweep must only ever see this machine's processes) and refuses writes for
sessions this node no longer owns.

Ownership and fencing. Every call names the session and the epoch the caller believes current.
A node drives a session only while the store says it owns it with that epoch: a call with an
older epoch is answered ``session_moved`` (the caller re-reads the owner), a call for a session
the node does not hold yet adopts it from the store (:meth:`NodeHost._adopt`: the turn that was
running elsewhere ends with a retryable ``node_lost`` error event, queued prompts are queued here
again with their numbers, the transcript is materialized before the first ``--resume``). A
background check compares the held epochs with the store every ``fence_check_s``; a session that
moved (this node was partitioned, or lost a race) is dropped: its process ends and nothing more is
written for it.

Calls that stream (a turn's events, a session's events) are async generators: Ray streams each
yielded batch to the caller as it is produced (Ray's streaming generators). A turn's events are
held briefly so that a hot follow-up crosses in one item, its acknowledgement included
(:mod:`hotsession.cluster.relay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from claude_agent_sdk import SessionStore

from hotsession.cluster.dropin_run import NodeDropins
from hotsession.cluster.relay import turn_items
from hotsession.cluster.streams import StreamSource
from hotsession.cluster.tenants import NodeTenants
from hotsession.cluster.watch import NodeWatch
from hotsession.cluster.wire import EventTuple, error_out, event_out
from hotsession.config import Config
from hotsession.errors import Conflict, HotsessionError, NotFound, StaleEpoch
from hotsession.hub import Hotsession
from hotsession.registry import (
    EventRecord,
    Ownership,
    ProcessRecord,
    Registry,
    SessionRecord,
    TurnRecord,
)
from hotsession.registry.order import SessionOrder
from hotsession.registry.sqlite import SqliteRegistry
from hotsession.session import Session
from hotsession.session.turn import Turn
from hotsession.transcripts.mirror import TranscriptMirror
from hotsession.transcripts.resume import materialize_transcript

log = logging.getLogger(__name__)

RegistryFactory = Callable[[], Registry]
"""Builds the shared store (Postgres) in the calling process (Ray pickles the factory)."""
StoreFactory = Callable[[], SessionStore]
"""Builds the transcript store (a ``SessionStore`` on Postgres) in the calling process."""


@dataclass
class NodeSpec:
    """What a host actor is started with (pickled by Ray, so plain data and factories)."""

    name: str  # the Ray node id
    state_root: str  # this node's own state (process records, CLI config): never shared
    store: RegistryFactory
    transcripts: StoreFactory | None = None
    config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    fence_check_s: float = 1.0


MIRROR_GATHER_S = 0.01
"""How long a node gathers transcript frames after the first of a burst before appending them.

The CLI mirrors its transcript in bursts: a plain follow-up's frames (its prompt, the reply) come
together 0.1-0.3 ms before its ``result`` line, a tool-using turn's a burst per step (tens of ms
before the result) and the last step's again just before the result (hop stamps, docs/cluster.md
"The follow-up's path, shortened"). A burst is one append; the result's own flush takes what is
left (``NodeHost.send``: the transcript is in the store before the result leaves). Appending a
frame the moment it came would put an append in flight just before most results, which then
wait for it and for the rest."""

SEQ_GAP = 10_000
"""How far a re-homed session's event numbering jumps (more than a node ever has unwritten)."""

FIGURES_WAIT_S = 10.0
"""A ``figures`` call whose figures did not change answers after this (memory drifts)."""
FIGURES_CHECK_S = 1.0
"""How often a waiting ``figures`` call looks at the node's figures (the daemons' old poll)."""
HEADROOM_STEP_MB = 64.0
"""Memory headroom counts as changed for ``figures`` when it crosses a step of this size."""


class NodeRegistry:
    """The engine's registry on a node: the shared store, except child processes (node-local).

    Every write for a session carries the epoch this node holds it with, so the store refuses it
    once the session moved (``StaleEpoch``); writes for a session this node already dropped are
    not even sent (a prompt's record is refused: ``put_turn``)."""

    def __init__(self, shared: Registry, local: SqliteRegistry) -> None:
        self.shared = shared
        self.local = local
        self.epochs: dict[str, int] = {}  # sessions held here → their epoch
        self.fenced: set[str] = set()
        self.on_stale: Callable[[str], None] = lambda _sid: None  # the store refused a write
        # A session's writes are applied in the order they were made (registry.order): the
        # engine writes a turn "queued" and then "running" from two background tasks, and a
        # turn's end is written in the background (``end_turn``).
        self._order = SessionOrder()
        # Runs a write in the background (the engine's ``registry_task``); None: awaited.
        self.spawn: Callable[[Coroutine[Any, Any, None]], object] | None = None

    def _stale(self, exc: StaleEpoch) -> None:
        sessions = exc.details.get("sessions") or [exc.details.get("session_id")]
        for session_id in sessions:
            if session_id and session_id not in self.fenced:
                self.on_stale(session_id)

    async def open(self) -> None:
        await self.shared.open()
        await self.local.open()

    async def close(self) -> None:
        try:
            await self.shared.close()
        finally:
            await self.local.close()

    async def put_session(self, rec: SessionRecord) -> None:
        if rec.id in self.fenced:
            return
        epoch = self.epochs.get(rec.id)  # the epoch it was written under, not one adopted later
        # In the session's write order: a turn's end written in the background also writes
        # the session, and must not land after (and undo) a later state such as "closed".
        async with self._order.hold(rec.id):
            try:
                await self.shared.put_session(rec, epoch=epoch)
            except StaleEpoch as exc:
                self._stale(exc)
                raise

    async def get_session(self, session_id: str) -> SessionRecord | None:
        return await self.shared.get_session(session_id)

    async def list_sessions(
        self, tenant: str | None = None, *, include_closed: bool = False
    ) -> list[SessionRecord]:
        if tenant is None and not include_closed:
            # The engine's start-up load: a node holds no session until it adopts one.
            return []
        return await self.shared.list_sessions(tenant, include_closed=include_closed)

    async def put_turn(self, turn: TurnRecord) -> None:
        """A turn's record, fenced by the epoch the session is held with when the write
        begins (it may wait for the session's earlier writes: a session dropped meanwhile is
        no longer in ``epochs``, and its record must not then go unfenced). A prompt's record
        is a node's check that it still owns the session (``NodeHost.send``): for a session
        already dropped here, a turn that has not ended is refused (``StaleEpoch``), one that
        ended (a drop's own bookkeeping) is not sent."""
        sid = turn.session_id
        if sid in self.fenced:
            if turn.ended_at is None:
                raise StaleEpoch("the session moved to another node", session_id=sid)
            return
        epoch = self.epochs.get(sid)
        async with self._order.hold(sid):
            try:
                await self.shared.put_turn(turn, epoch=epoch)
            except StaleEpoch as exc:
                self._stale(exc)
                raise

    async def list_turns(self, session_id: str, limit: int | None = None) -> list[TurnRecord]:
        return await self.shared.list_turns(session_id, limit)

    def add_events(self, events: Sequence[EventRecord]) -> None:
        if not events:
            return
        sid = events[0].session_id
        if all(e.session_id == sid for e in events):  # the engine's only case: one session
            if sid not in self.fenced:
                self.shared.add_events(events, epoch=self.epochs.get(sid))
            return
        for event in events:
            self.add_events([event])

    async def flush(self) -> None:
        try:
            await self.shared.flush()
        except StaleEpoch as exc:
            self._stale(exc)
            raise

    async def end_turn(self, turn: TurnRecord, session: SessionRecord) -> None:
        """A turn's end in one write, fenced by this node's epoch (events of a session already
        dropped here were never queued; its records are not sent).

        With ``spawn`` set (the engine's ``registry_task``), the write runs in the background,
        still in the session's write order: the session's runner takes its next prompt at once
        instead of after the store's round trips (~2-5 ms a node's loaded loop took, which a
        prompt sent right after a result waited for before reaching its CLI). What a client
        may rely on after ``result`` does not change: the transcript is in the store before the
        result leaves the node (``NodeHost.send``), and the turn's record was written after it
        already. A failure is logged and noted by the engine as any background write's."""
        if session.id in self.fenced:
            await self.flush()
            return
        epoch = self.epochs.get(session.id)

        async def write(background: bool) -> None:
            async with self._order.hold(session.id):
                try:
                    await self.shared.end_turn(turn, session, epoch=epoch)
                except StaleEpoch as exc:
                    self._stale(exc)  # the session moved: it is dropped here
                    if not background:
                        raise

        if self.spawn is None:
            await write(False)
        else:
            self.spawn(write(True))

    async def events_after(
        self, session_id: str, after_seq: int, limit: int = 1000
    ) -> list[EventRecord]:
        return await self.shared.events_after(session_id, after_seq, limit)

    async def last_seq(self, session_id: str) -> int:
        return await self.shared.last_seq(session_id)

    async def put_process(self, rec: ProcessRecord) -> None:
        await self.local.put_process(rec)

    async def forget_process(self, pid: int) -> None:
        await self.local.forget_process(pid)

    async def list_processes(self) -> list[ProcessRecord]:
        return await self.local.list_processes()


class NodeHost(StreamSource, NodeDropins):
    """The body of a host actor (``hotsession.cluster.actors`` makes it a Ray actor)."""

    def __init__(self, spec: NodeSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.root = Path(spec.state_root)
        self.hub: Hotsession | None = None
        self.transcripts: SessionStore | None = None
        self.mirror: TranscriptMirror | None = None
        self.store: Registry | None = None
        self.registry: NodeRegistry | None = None
        self.epochs: dict[str, int] = {}  # sessions held here → their epoch (shared with registry)
        self._adopting: dict[str, asyncio.Task[Session]] = {}
        self._fence_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._mirror_task: asyncio.Task[None] | None = None
        self._mirror_wake = asyncio.Event()
        self._mirror_lock = asyncio.Lock()
        self.dropped_total = 0
        self.adopted_total = 0
        self.watchers = 0  # open ``watch`` calls (tenants' streams of the daemons)
        self.started_at = time.time()
        self.niceness = os.getpriority(os.PRIO_PROCESS, 0)  # this actor's (and its CLIs')
        self.tenants = NodeTenants(spec.name, self.root)  # users, secrets, config dirs
        self._start_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, tenants_file: str | None = None) -> dict[str, Any]:
        """Start this node's engine (idempotent); with ``tenants_file``, set up the tenants
        read from that path on this machine (``hotsession.cluster.tenants``)."""
        async with self._start_lock:
            if self.hub is None:
                await self._start_engine()
            if tenants_file is not None:
                await self._load_tenants(tenants_file)
        return await self.stats()

    async def _load_tenants(self, path: str) -> None:
        assert self.hub is not None
        changed = await asyncio.to_thread(self.tenants.load, path, cli_path=self.hub.host.cli_path)
        for tenant in changed:  # spares spawned with the old set-up (e.g. as another user)
            if self.hub.pool is not None:
                self.hub.pool.retire_tenant(tenant)
        if self.mirror is not None:
            for config_dir in self.tenants.config_dirs():
                self.mirror.add_projects_dir(Path(config_dir) / "projects")

    async def _start_engine(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.niceness = undo_worker_niceness()
        env = dict(self.spec.env)
        # Each node has its own Claude Code config dir (transcripts travel through the store).
        env.setdefault("CLAUDE_CONFIG_DIR", str(self.root / "claude-config"))
        os.environ.update(env)
        Path(os.environ["CLAUDE_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)
        self.store = self.spec.store()
        self.registry = NodeRegistry(self.store, SqliteRegistry(self.root / "processes.db"))
        self.registry.epochs = self.epochs
        self.registry.on_stale = self._on_stale
        fields = dict(self.spec.config)
        if fields.get("memory_budget_mb") is None:
            fields["memory_budget_mb"] = node_budget_mb(self.name)
        config = Config(state_dir=self.root, **fields)
        self.hub = Hotsession(
            config,
            registry=self.registry,  # type: ignore[arg-type]
            spawn_policy=self.tenants,
        )
        self.registry.spawn = self.hub.registry_task
        await self.hub.start()
        if self.spec.transcripts is not None:
            # Set before any session's process starts (the pool spawns on demand only).
            self.transcripts = self.spec.transcripts()
            opener = getattr(self.transcripts, "open", None)
            if opener is not None:  # the Postgres store connects first
                await opener()
            self.mirror = TranscriptMirror(self.transcripts, self._config_dir() / "projects")
            self.hub.supervisor.mirror_sink = self._mirrored
            self.hub.host.session_mirror = True
            self._mirror_task = asyncio.create_task(self._mirror_loop(), name="mirror")
        self._fence_task = asyncio.create_task(self._fence_loop(), name="fence-check")
        log.info("host %s started", self.name)

    async def stop(self) -> None:
        """Stop the engine (sessions stay in the store)."""
        for task in (self._fence_task, self._mirror_task):
            if task is not None:
                task.cancel()
        if self.hub is not None:
            await self.hub.stop()
            self.hub = None
            self.tenants.close()
        with contextlib.suppress(Exception):
            await self.flush_transcripts()

    async def ping(self) -> str:
        """The node's name (a liveness probe)."""
        return self.name

    def _hub(self) -> Hotsession:
        if self.hub is None:
            raise HotsessionError("the host actor is not started")
        return self.hub

    # -- sessions ----------------------------------------------------------------------------------

    async def open(
        self,
        *,
        tenant: str,
        cwd: str,
        options: dict[str, Any],
        resume: str | None = None,
        fork: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Open a session here; it is owned by this node with epoch 1."""
        hub = self._hub()
        try:
            session = await hub.open(
                cwd, tenant=tenant, resume=resume, fork=fork, metadata=metadata, **options
            )
        except HotsessionError as exc:
            return error_out(exc)
        if hub.pool is not None:  # the pool learns this profile's demand (as the API does)
            hub.pool.prewarm(session.options, 1)
        assert self.store is not None
        try:
            owner = await self.store.claim(session.id, self.name, expect_epoch=0)
        except HotsessionError as exc:  # a fresh id cannot be claimed already; never drive it
            await self._drop(session.id)
            return error_out(exc)
        self.epochs[session.id] = owner.epoch
        return {"session": self._view(session), "epoch": owner.epoch}

    async def _session(self, session_id: str, epoch: int) -> Session:
        """The session held with ``epoch``, adopted from the store when not held yet."""
        hub = self._hub()
        held = self.epochs.get(session_id)
        if held is not None:
            if epoch < held:
                raise StaleEpoch(
                    "the session moved to a newer owner",
                    session_id=session_id,
                    epoch=epoch,
                    current_epoch=held,
                    owner=self.name,
                )
            if epoch == held:
                session = hub.sessions.get(session_id)
                if session is not None:
                    return session
            await self._drop(session_id)  # a newer epoch for us: take it afresh from the store
        task = self._adopting.get(session_id)
        if task is None:
            task = asyncio.create_task(self._adopt(session_id, epoch, 0))
            self._adopting[session_id] = task
            task.add_done_callback(lambda _t: self._adopting.pop(session_id, None))
        return await asyncio.shield(task)

    async def adopt(self, session_id: str, epoch: int, min_seq: int = 0) -> dict[str, Any]:
        """Take over a session the store says this node now owns with ``epoch``."""
        try:
            held = self.epochs.get(session_id)
            if held == epoch and session_id in self._hub().sessions:
                return {"session": self._view(self._hub().sessions[session_id])}
            if held is not None:
                await self._drop(session_id)
            task = asyncio.create_task(self._adopt(session_id, epoch, min_seq))
            self._adopting[session_id] = task
            task.add_done_callback(lambda _t: self._adopting.pop(session_id, None))
            session = await asyncio.shield(task)
        except HotsessionError as exc:
            return error_out(exc)
        return {"session": self._view(session)}

    async def _adopt(self, session_id: str, epoch: int, min_seq: int) -> Session:
        hub = self._hub()
        assert self.store is not None and self.registry is not None
        stale = self._not_owned(
            await self.store.owner(session_id),
            session_id,
            epoch,
            "this node does not own the session with that epoch",
        )
        if stale is not None:
            raise stale
        rec = await hub.registry.get_session(session_id)
        if rec is None:
            raise NotFound("no such session", session_id=session_id)
        if rec.state == "closed":
            raise Conflict("the session is closed", session_id=session_id)
        self.registry.fenced.discard(session_id)
        turns = await hub.registry.list_turns(session_id, limit=hub.config.queue_max + 2)
        # Events the previous owner streamed but had not written yet are not in the store; the
        # numbering jumps past any of them, so a client that saw one still gets what follows.
        last_seq = max(await hub.registry.last_seq(session_id), min_seq) + SEQ_GAP
        queued = sorted((t for t in turns if t.status == "queued"), key=lambda t: t.turn)
        running = [t for t in turns if t.status == "running"]
        last_turn = queued[0].turn - 1 if queued else max((t.turn for t in turns), default=0)
        rec.pid = None
        rec.state = "evicted"
        # A turn that started may be in the transcript although the session's record does not
        # count it yet (its end is written in the background after the result): resume it.
        started = max((t.turn for t in turns if t.status != "queued"), default=0)
        if await self._materialize(rec, started=started):
            rec.turns = max(rec.turns, started)
        session = Session(hub, rec, listener=hub, last_seq=last_seq, last_turn=last_turn)
        session.last_turn = last_turn  # re-queued prompts get their numbers back
        for turn in running:
            turn.status = "error"
            turn.error_code = "node_lost"
            turn.error_message = "the node running this turn was lost; send the prompt again"
            turn.ended_at = time.time()
            session.emit(
                None,
                "error",
                {
                    "turn": turn.turn,
                    "code": turn.error_code,
                    "message": turn.error_message,
                    "retryable": True,
                },
                turn_no=turn.turn,
            )
            await hub.registry.put_turn(turn)
        hub.sessions[session_id] = session
        self.epochs[session_id] = epoch
        await hub.registry.put_session(rec)
        for turn in queued:
            session.send(turn.prompt)
        hub.session_state_changed(session)  # watchers (the tenants' streams) see it arrive
        await hub.registry.flush()
        self.adopted_total += 1
        log.info(
            "host %s adopted %s (epoch %d, %d queued)", self.name, session_id, epoch, len(queued)
        )
        return session

    async def _materialize(self, rec: SessionRecord, *, started: int = 0) -> bool:
        """Write the session's transcript from the store before its first ``--resume`` here;
        whether the store held one."""
        resumed = rec.options.get("origin") == "resume"
        if self.transcripts is None or not (rec.turns or started or resumed):
            return False
        path = await materialize_transcript(
            self.transcripts,
            cwd=rec.cwd,
            session_id=rec.cli_session_id,
            config_dir=self.tenants.config_dir(rec.tenant) or self._config_dir(),
            write=self.tenants.writer(rec.tenant),  # as the tenant's user, in its config dir
        )
        return path is not None

    def _mirrored(self, frame: dict[str, Any]) -> None:
        assert self.mirror is not None
        self.mirror.add(frame)
        self._mirror_wake.set()

    async def flush_transcripts(self) -> None:
        """Append every transcript frame received so far to the store (one flush at a time)."""
        if self.mirror is None or not self.mirror.pending:
            return
        async with self._mirror_lock:
            await self.mirror.flush()

    async def _mirror_loop(self) -> None:
        """Frames go to the store as they come, ``MIRROR_GATHER_S`` after the first of a burst
        (during a turn, so that a turn's result has only the frames of its last moments left
        to flush; between turns, the ones the CLI mirrors after its result); a failed flush is
        tried again."""
        while True:
            await self._mirror_wake.wait()
            self._mirror_wake.clear()
            await asyncio.sleep(MIRROR_GATHER_S)
            try:
                await self.flush_transcripts()
            except Exception:
                log.warning("host %s: transcript flush failed; retrying", self.name, exc_info=True)
                await asyncio.sleep(1.0)
                self._mirror_wake.set()

    def _config_dir(self) -> Path:
        return Path(os.environ["CLAUDE_CONFIG_DIR"])

    async def drop(self, session_id: str) -> bool:
        """Stop driving a session (it moved): its process ends, nothing more is written."""
        return await self._drop(session_id)

    async def _drop(self, session_id: str) -> bool:
        hub = self._hub()
        assert self.registry is not None
        self.epochs.pop(session_id, None)
        self.registry.fenced.add(session_id)
        session = hub.sessions.pop(session_id, None)
        if session is None:
            return False
        moved = StaleEpoch(
            "the session moved to another node; continue it there", session_id=session_id
        )
        with contextlib.suppress(HotsessionError):
            await session.shutdown(moved)
        hub.host.release(session.id, session.cli_session_id)
        self.dropped_total += 1
        log.info("host %s dropped %s (it moved)", self.name, session_id)
        return True

    def _on_stale(self, session_id: str) -> None:
        log.warning("host %s: the store refused a write for %s (it moved)", self.name, session_id)
        task = asyncio.get_running_loop().create_task(self._drop(session_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _not_owned(
        self, owner: Ownership | None, session_id: str, epoch: int, message: str
    ) -> StaleEpoch | None:
        """The error for a session the store does not give to this node with ``epoch``
        (None when it does)."""
        if owner is not None and owner.node == self.name and owner.epoch == epoch:
            return None
        return StaleEpoch(
            message,
            session_id=session_id,
            epoch=epoch,
            current_epoch=owner.epoch if owner else 0,
            owner=owner.node if owner else None,
        )

    async def _fence_loop(self) -> None:
        while True:
            await asyncio.sleep(self.spec.fence_check_s)
            if not self.epochs:  # nothing held here, nothing to drop: no query (an idle node)
                continue
            try:
                await self.check_fences()
            except Exception:  # the store may be down: try again next time
                log.warning("host %s: ownership check failed", self.name, exc_info=True)

    async def check_fences(self) -> list[str]:
        """Drop every held session whose owner or epoch moved on; returns their ids."""
        assert self.store is not None
        held = dict(self.epochs)
        # One query for every session of this node (was one per session a check).
        owned = {o.session_id: o.epoch for o in await self.store.list_owned(self.name)}
        moved = [  # (still held with the epoch checked: not re-adopted meanwhile)
            sid
            for sid, epoch in held.items()
            if owned.get(sid) != epoch and self.epochs.get(sid) == epoch
        ]
        for session_id in moved:
            await self._drop(session_id)
        return moved

    # -- turns and events ------------------------------------------------------------------------

    async def send(self, session_id: str, epoch: int, prompt: str) -> AsyncIterator[Any]:
        """Queue a prompt; yields ``{"turn": n}`` (or an error reply) first, then batches of the
        turn's events up to its ``result`` or ``error``.

        The store must still give the session to this node before the prompt reaches the CLI:
        a node cut off from the cluster while its sessions moved must not run a turn the new
        owner runs too. The prompt's record is that check: it is written fenced by ``epoch``
        (a claim committed before it makes it write nothing: ``StaleEpoch``), and the session's
        runner writes the prompt to the CLI only once that write succeeded (``gated``). A
        refused prompt is answered with the write's error (a moved session is dropped here),
        and its turn ends without running. One round trip before the CLI gets the prompt (were
        two: a read of the owner, then the record, written meanwhile)."""
        try:
            session = await self._session(session_id, epoch)
            turn = session.send(prompt, gated=True)
        except HotsessionError as exc:
            yield error_out(exc)
            return
        await turn.recorded()
        refused = turn.refusal()
        if refused is not None:
            if isinstance(refused, StaleEpoch):
                await self._drop(session_id)
            yield error_out(refused)
            return
        async for item in self._turn_items(session_id, epoch, turn, {"turn": turn.number}):
            yield item

    async def ask(
        self,
        *,
        tenant: str,
        cwd: str,
        options: dict[str, Any],
        prompt: str,
        resume: str | None = None,
        fork: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> AsyncIterator[Any]:
        """Open a session here and send its first prompt (``/v1/ask`` in one call): yields
        ``open``'s reply with ``turn`` (or an error reply) first, then the turn's batches as
        ``send``. The claim that just gave the session to this node stands for ``send``'s
        epoch check. A prompt refused after the open closes the session again."""
        since = time.monotonic()
        opened = await self.open(
            tenant=tenant, cwd=cwd, options=options, resume=resume, fork=fork, metadata=metadata
        )
        if "error" in opened:
            yield opened
            return
        session_id, epoch = opened["session"]["id"], int(opened["epoch"])
        hub = self._hub()
        try:
            turn = hub.sessions[session_id].send(prompt, since=since)
        except (HotsessionError, KeyError) as exc:
            with contextlib.suppress(HotsessionError):
                await hub.close_session(session_id)
            self.epochs.pop(session_id, None)
            error = exc if isinstance(exc, HotsessionError) else self._moved(session_id, epoch)
            yield error_out(error)
            return
        async for item in self._turn_items(
            session_id, epoch, turn, {**opened, "turn": turn.number}
        ):
            yield item

    async def _turn_items(
        self, session_id: str, epoch: int, turn: Turn, first: dict[str, Any]
    ) -> AsyncIterator[Any]:
        """``first`` (the acknowledgement) with the turn's first events, then batches of its
        events up to its ``result`` or ``error`` (``send`` and ``ask``), as few Ray items as
        ``hotsession.cluster.relay`` allows; no event goes before the prompt is recorded."""
        await turn.recorded()

        async def flush() -> None:
            # A turn a client saw end is in the store (a failure is retried in the background;
            # the result is not held back by a store that is down).
            with contextlib.suppress(Exception):
                await self.flush_transcripts()

        async for item in turn_items(
            turn,
            first,
            before_terminal=flush,
            still_held=lambda: self.epochs.get(session_id) == epoch,
            moved=lambda: error_out(self._moved(session_id, epoch)),
        ):
            yield item

    async def follow(
        self, session_id: str, epoch: int, after: int, follow: bool = True, turn: int = 0
    ) -> AsyncIterator[Any]:
        """Events after ``after`` (replay, then live); with ``turn``, up to that turn's end."""
        try:
            session = await self._session(session_id, epoch)
        except HotsessionError as exc:
            yield error_out(exc)
            return
        yield {"ok": True}
        source = session.events(after, follow=follow and not session.closed)
        async for event in source:
            if self.epochs.get(session_id) != epoch and not session.closed:
                break
            if turn and event.turn != turn:
                continue
            batch: list[EventTuple] = [event_out(event)]
            yield batch
            if turn and event.terminal:
                return
        if self.epochs.get(session_id) != epoch and not session.closed:
            yield error_out(self._moved(session_id, epoch))

    async def watch(self, tenant: str) -> AsyncIterator[dict[str, Any]]:
        """The tenant's sessions here and their turn milestones, pushed as they change
        (``hotsession.cluster.watch``): a snapshot first, then a batch per change."""
        self.watchers += 1
        try:
            async for batch in NodeWatch(self._hub(), tenant, self._view).batches():
                yield batch
        finally:
            self.watchers -= 1

    def _moved(self, session_id: str, epoch: int) -> StaleEpoch:
        return StaleEpoch("the session moved to another node", session_id=session_id, epoch=epoch)

    async def interrupt(self, session_id: str, epoch: int) -> Any:
        """Interrupt the running turn."""
        try:
            return await (await self._session(session_id, epoch)).interrupt()
        except HotsessionError as exc:
            return error_out(exc)

    async def warm(self, session_id: str, epoch: int) -> Any:
        """Resume-ahead."""
        try:
            return await (await self._session(session_id, epoch)).warm()
        except HotsessionError as exc:
            return error_out(exc)

    async def answer(
        self,
        session_id: str,
        epoch: int,
        request_id: str,
        behavior: str,
        updated_input: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> Any:
        """Answer a permission request."""
        try:
            session = await self._session(session_id, epoch)
            session.answer_permission(
                request_id, behavior, updated_input=updated_input, message=message
            )
        except HotsessionError as exc:
            return error_out(exc)
        return {"ok": True}

    async def close(self, session_id: str, epoch: int) -> Any:
        """Close a session (for good)."""
        try:
            session = await self._session(session_id, epoch)
            await self._hub().close_session(session_id)
        except HotsessionError as exc:
            return error_out(exc)
        self.epochs.pop(session_id, None)
        return {"session": self._view(session)}

    async def view(self, session_id: str, epoch: int) -> Any:
        """The session's live view (with its recent turns as this node knows them)."""
        try:
            session = await self._session(session_id, epoch)
        except HotsessionError as exc:
            return error_out(exc)
        out = self._view(session, with_memory=True)
        out["recent_turns_live"] = [vars(t).copy() for t in session.recent_turns]
        return {"session": out}

    async def views(self, session_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Views of the sessions held here (of ``session_ids`` when given)."""
        hub = self._hub()
        out = []
        for sid, session in list(hub.sessions.items()):
            if session_ids is None or sid in session_ids:
                out.append(self._view(session))
        return out

    def _view(self, session: Session, *, with_memory: bool = False) -> dict[str, Any]:
        from hotsession import memory

        out = session.snapshot()
        out["node"] = self.name
        out["source"] = session.open_source
        out["closed_at"] = session.record.closed_at
        pid = out.get("pid")
        sample = memory.sample(pid, pss=with_memory) if pid else None
        out["memory"] = sample.to_dict() if sample is not None else None
        return out

    # -- figures ----------------------------------------------------------------------------------

    async def figures(self, known: str | None = None, wait_s: float = FIGURES_WAIT_S) -> Any:
        """``stats()`` with their ``digest`` (:func:`figures_digest`), once the digest differs
        from ``known`` (the one of the figures the caller has) or ``wait_s`` passed.

        Why: each daemon read every node's ``stats`` every second, a Ray call each (~0.5 ms of
        the node's CPU and more of the daemon's, measured 2026-11-30) that mostly carried the
        same figures. A daemon now keeps one of these calls open per node
        (``ClusterHub._watch_figures``): it comes back when something a placement or
        ``/v1/pool`` counts changed (checked every ``FIGURES_CHECK_S`` here, in Python alone),
        and at the latest after ``wait_s`` with the memory figures of then. The open call
        also fails the moment this actor dies, as the second's poll did within a second."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            stats = await self.stats()
            digest = figures_digest(stats)
            if digest != known or loop.time() >= deadline:
                stats["digest"] = digest
                return stats
            await asyncio.sleep(max(0.0, min(FIGURES_CHECK_S, deadline - loop.time())))

    async def stats(self) -> dict[str, Any]:
        """This node's figures: sessions, spares per profile, memory, hit rate."""
        hub = self._hub()
        out = hub.stats()
        pool = out.get("pool") or {}
        profiles = pool.get("profiles", [])
        hits = sum(p.get("hits", 0) for p in profiles)
        misses = sum(p.get("misses", 0) for p in profiles)
        mem = pool.get("memory") or {}
        budget = mem.get("budget_mb")
        used = mem.get("used_mb", 0.0)
        return {
            "node": self.name,
            "pid": os.getpid(),
            "sessions": len(hub.sessions),
            "states": out.get("states", {}),
            "live_processes": sum(1 for s in hub.sessions.values() if s.process is not None),
            "spares": {p["profile"]: p["ready"] for p in profiles if p.get("ready")},
            "hits": hits,
            "misses": misses,
            "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
            "memory": {
                "used_mb": used,
                "budget_mb": budget,
                "headroom_mb": round((budget or 0.0) - used, 1) if budget is not None else None,
                "available_mb": round(psutil.virtual_memory().available / 2**20, 1),
            },
            "adopted_total": self.adopted_total,
            "watchers": self.watchers,
            "niceness": self.niceness,
            "dropped_total": self.dropped_total,
            "pool": pool,
            "spawned_total": out.get("spawned_total", 0),
            "evictions": out.get("evictions", {}),
            "recycles": out.get("recycles", {}),
        }


def figures_digest(stats: dict[str, Any]) -> str:
    """What of a node's ``stats`` a waiting ``figures`` call reports a change of: every count,
    name and flag (sessions and their states, spares ready and spawning per profile, hits,
    targets, watchers, …), the memory headroom by ``HEADROOM_STEP_MB``; not the figures that
    drift on their own (rates, MB of memory, the machine's available memory)."""
    mem = stats.get("memory") or {}
    headroom = mem.get("headroom_mb")
    step = None if headroom is None else int(headroom // HEADROOM_STEP_MB)
    return repr((_without_floats(stats), step))


def _without_floats(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(
            (k, _without_floats(v)) for k, v in sorted(value.items()) if not isinstance(v, float)
        )
    if isinstance(value, list | tuple):
        return tuple(_without_floats(v) for v in value if not isinstance(v, float))
    return value


def undo_worker_niceness() -> int:
    """Give this process (every thread of it) its raylet's CPU priority back; returns the
    niceness it runs, and spawns its CLIs, with.

    Ray starts every worker process, so every host actor, at its ``worker_niceness`` (15 by
    default: the raylet wins the CPU over tasks), and a child inherits its parent's niceness: each
    CLI a node spawned ran at nice 15, behind the API daemon, Postgres, the raylets and any other
    work of the machine at 0. A follow-up's CLI is CPU-bound (~45 ms of CPU in ~22 ms on two
    cores), so on a busy node it waited for the CPU whenever anything else ran; a single-machine
    daemon's CLIs run at the daemon's own priority.

    Linux keeps a niceness per thread: every thread is set (a CLI is spawned from the actor's
    event-loop thread; Ray's RPC threads carry its streams). Raising a priority takes
    ``CAP_SYS_NICE`` (root) or an ``RLIMIT_NICE`` allowance; without them the niceness stays
    and a warning says how to start the node instead (``RAY_worker_niceness=0 ray start …``).
    """
    current = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        target = min(current, os.getpriority(os.PRIO_PROCESS, os.getppid()))
    except OSError:
        target = 0
    if target >= current:
        return current
    try:
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                os.setpriority(os.PRIO_PROCESS, int(tid), target)
    except OSError:  # not allowed (or no /proc): the spawning thread's niceness is what counts
        log.warning(
            "host actor at niceness %d (Ray's worker_niceness) and not allowed to lower it: its "
            "CLIs run at that priority too; start the node with RAY_worker_niceness=0",
            current,
        )
    return os.getpriority(os.PRIO_PROCESS, 0)


MEMORY_RESOURCE = "hotsession_memory_mb"
"""A node's custom Ray resource giving its memory budget for agent processes (MB)."""


def node_budget_mb(node: str) -> float | None:
    """The ``hotsession_memory_mb`` resource of ``node`` (None: the engine's own default)."""
    import ray

    for info in ray.nodes():  # type: ignore[no-untyped-call]
        if info.get("NodeID") == node:
            value = (info.get("Resources") or {}).get(MEMORY_RESOURCE)
            return float(value) if value else None
    return None
