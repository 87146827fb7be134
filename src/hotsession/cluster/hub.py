"""The API daemon's side of cluster mode: routes each session's calls to the node that owns it.

Design
======
Stateless front. An API daemon holds no session: the store (Postgres) says which node owns each
session (``Owner``: node and epoch), and :class:`ClusterHub` sends the call to that node's host
actor. Any number of daemons can run; each serves every session of every tenant, and two of them
can drive one session in turn (the host actor serialises the turns, as a session does on one
machine).

Calls. Plain calls (open, interrupt, warm, permission answers, close, views) are one actor call
each (~1 ms). A turn is one streaming call: the first item accepts the prompt (or carries the
409 / 413 / 429 error, raised before any SSE byte goes out), then come batches of the turn's
events as the node produces them (:class:`RemoteTurn`, which the API streams like a local turn).

Node loss. A call that fails because the host actor died (its node was killed, partitioned, or
its actor crashed) marks the node dead and re-homes the session: a compare-and-set on its epoch
gives it to a live node (placement: most headroom), which adopts it from the store — the running
turn ends with a retryable ``node_lost`` error event, queued prompts run there, the transcript is
materialized before ``--resume``. A stream that was open follows the same turn (or the session's
events) on the new node from the last event it had, so a client sees every recorded event once.
The background loop (``refresh_s``) watches the nodes and re-homes every session of a node that
left the cluster, whether anybody asks for them or not, and starts a host actor on each new node.

Races. Two daemons may re-home one session at once: the store's compare-and-set lets exactly one
win; the other reads the new owner and routes there. A host actor refuses calls with an older
epoch than the one it holds (``session_moved``); the daemon then re-reads the owner and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from hotsession.cluster import actors
from hotsession.cluster.node import NodeSpec, RegistryFactory, StoreFactory
from hotsession.cluster.placement import NodeFigures, choose
from hotsession.cluster.streams import remote_stream
from hotsession.cluster.wire import EventTuple, NodeLost, event_in, raise_if_error
from hotsession.config import Config
from hotsession.errors import (
    Conflict,
    HotsessionError,
    InvalidRequest,
    NotFound,
    ShuttingDown,
    StaleEpoch,
)
from hotsession.events import TERMINAL_TYPES, Event
from hotsession.options import SessionOptions
from hotsession.registry import Ownership, SessionRecord
from hotsession.state_lock import StateLock

log = logging.getLogger(__name__)

ROUTE_TRIES = 4


LOST = (NodeLost, RayActorError, ActorUnavailableError)
"""What a call to a host actor raises when its node is gone."""


@dataclass(frozen=True)
class Owner:
    """The node driving a session and its ownership epoch (``node`` is "" when released)."""

    node: str
    epoch: int


@dataclass
class ClusterConfig:
    """How a daemon joins a cluster and how its host actors are set up."""

    address: str = "auto"
    store: RegistryFactory | None = None
    transcripts: StoreFactory | None = None  # without it a session cannot resume on another node
    state_root: str = ""  # each node's own state goes under this path on that node
    node_config: dict[str, Any] = field(default_factory=dict)  # Config fields for the engines
    node_env: dict[str, str] = field(default_factory=dict)
    # The tenants' config file: each node reads it at this path on its own machine and sets
    # the tenants up there (``hotsession.cluster.tenants``); their secrets never cross Ray.
    tenants_file: str | None = None
    refresh_s: float = 1.0
    fence_check_s: float = 1.0


@dataclass
class Node:
    """A node as a daemon sees it."""

    name: str
    actor: Any
    figures: NodeFigures
    stats: dict[str, Any] = field(default_factory=dict)
    alive: bool = True
    watcher: asyncio.Task[None] | None = None  # keeps ``stats`` fresh (``_watch_figures``)


class ClusterHub:
    """Sessions on a Ray cluster, behind the calls the API makes (one per daemon)."""

    def __init__(
        self, config: Config, cluster: ClusterConfig, *, state_lock: StateLock | None = None
    ) -> None:
        if cluster.store is None:
            raise InvalidRequest("cluster mode needs a database (--database-url)")
        self.config = config
        self.cluster = cluster
        self.registry: Any = None
        self.nodes: dict[str, Node] = {}
        self.started = False
        self.shutting_down = False
        self.started_at = time.time()
        self.rehomed_total = 0
        self.node_losses: list[dict[str, Any]] = []
        self._rehoming: dict[str, asyncio.Task[Owner]] = {}
        self.seen_seq: dict[str, int] = {}
        self._owners: dict[str, Owner] = {}  # last seen owner of each session (see ``owner``)
        self._tenants: dict[str, str] = {}  # tenant of each open session this daemon has seen
        self._refresh: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # background figure updates
        self._nodes_lock = asyncio.Lock()
        self._state_lock = state_lock  # one daemon per state dir (its daemon.json), as locally

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> ClusterHub:
        """Join the cluster, open the store, start a host actor on every node."""
        if self.started:
            return self
        self._state_lock = self._state_lock or StateLock.acquire(self.config.state_dir)
        try:
            actors.join(self.cluster.address)  # on this thread: Ray sets signal handlers here
            assert self.cluster.store is not None
            self.registry = self.cluster.store()
            await self.registry.open()
        except BaseException:
            self._state_lock.release()
            self._state_lock = None
            raise
        await self.refresh_nodes()
        self._refresh = asyncio.create_task(self._refresh_loop(), name="cluster-refresh")
        self.started = True
        return self

    async def stop(self) -> None:
        """Leave the host actors running (they serve the other daemons); close the store."""
        if not self.started:
            return
        self.shutting_down = True
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        watchers = [n.watcher for n in self.nodes.values() if n.watcher is not None]
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(HotsessionError):
            await self.registry.close()
        if self._state_lock is not None:
            self._state_lock.release()
            self._state_lock = None
        self.started = False

    async def __aenter__(self) -> ClusterHub:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- nodes -----------------------------------------------------------------------------------

    def _spec(self, node: str) -> NodeSpec:
        assert self.cluster.store is not None
        root = self.cluster.state_root or os.path.join(str(self.config.state_dir), "nodes")
        return NodeSpec(
            name=node,
            state_root=os.path.join(root, node[:16]),
            store=self.cluster.store,
            transcripts=self.cluster.transcripts,
            config=dict(self.cluster.node_config),
            env=dict(self.cluster.node_env),
            fence_check_s=self.cluster.fence_check_s,
        )

    async def refresh_nodes(self, *, figures: bool = True) -> None:
        """Find new and lost nodes; start host actors on new ones, re-home the lost ones'
        sessions; refresh every node's figures (unless ``figures`` is false: the background
        loop's rounds, where each node's figures come through ``_watch_figures``)."""
        async with self._nodes_lock:
            alive = set(await asyncio.to_thread(actors.alive_nodes))
            for name in alive - set(self.nodes):
                actor = await asyncio.to_thread(actors.host_actor, self._spec(name))
                try:
                    stats = await actor.start.remote(self.cluster.tenants_file)
                except LOST:
                    continue
                except RayTaskError as exc:  # the node refused (its tenants' set-up)
                    if not isinstance(exc.cause, HotsessionError):
                        raise
                    if not self.started:
                        raise exc.cause from None  # the daemon's start fails with its line
                    # A node joining later: without it, the rest of this round goes on (the
                    # other nodes' losses and figures), and the next round asks it again.
                    log.error("node %s refused to start: %s", name[:12], exc.cause.message)
                    continue
                self.nodes[name] = Node(name, actor, NodeFigures.from_stats(stats), stats)
            lost = [n for n in self.nodes.values() if n.alive and n.name not in alive]
        for node in lost:
            await self.node_lost(node.name)
        if figures:
            await asyncio.gather(*(self._update(n) for n in self.live_nodes()))

    async def _update(self, node: Node) -> None:
        try:
            stats = await node.actor.stats.remote()
        except LOST:
            await self.node_lost(node.name)
            return
        node.stats = stats
        node.figures = NodeFigures.from_stats(stats)

    async def _refresh_loop(self) -> None:
        """Every ``refresh_s``: the nodes (Ray's list: new ones, lost ones); each live node's
        figures are kept fresh by a call left open on it (``_watch_figures``) instead of a
        ``stats`` call every round."""
        while True:
            for node in self.live_nodes():
                if node.watcher is None or node.watcher.done():
                    node.watcher = asyncio.create_task(
                        self._watch_figures(node), name=f"figures-{node.name[:12]}"
                    )
            await asyncio.sleep(self.cluster.refresh_s)
            try:
                await self.refresh_nodes(figures=False)
            except Exception:
                log.warning("cluster refresh failed", exc_info=True)

    async def _watch_figures(self, node: Node) -> None:
        """``node``'s figures as they change (``NodeHost.figures``: one call open at a time,
        answered on a change or after ``FIGURES_WAIT_S``); a call that fails because the actor
        is gone marks the node lost, as a failed ``stats`` call did."""
        known: str | None = None
        while node.alive and not self.shutting_down:
            try:
                stats = await node.actor.figures.remote(known)
            except LOST:
                await self.node_lost(node.name)
                return
            except Exception:  # e.g. the store down on the node: try again next round
                log.warning("figures of node %s failed", node.name[:12], exc_info=True)
                await asyncio.sleep(self.cluster.refresh_s)
                continue
            known = stats.pop("digest", None)
            node.stats = stats
            node.figures = NodeFigures.from_stats(stats)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def live_nodes(self) -> list[Node]:
        """Nodes believed alive."""
        return [n for n in self.nodes.values() if n.alive]

    async def node_lost(self, name: str) -> None:
        """``name`` is gone: re-home every session it owned (in parallel)."""
        node = self.nodes.get(name)
        if node is None or not node.alive:
            return
        node.alive = False
        began = time.monotonic()
        log.warning("node %s lost; re-homing its sessions", name)
        try:
            owned = [o.session_id for o in await self.registry.list_owned(name)]
        except HotsessionError:
            log.exception("cannot list the sessions of lost node %s", name)
            owned = []
        results = await asyncio.gather(
            *(self.rehome(sid, lost=name) for sid in owned), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        self.node_losses.append(
            {
                "node": name,
                "at": time.time(),
                "sessions": len(owned),
                "failed": len(failed),
                "rehome_ms": round((time.monotonic() - began) * 1000, 1),
            }
        )

    def actor(self, name: str) -> Any:
        """The host actor of a live node (one another daemon started is found by name)."""
        node = self.nodes.get(name)
        if node is None and name:
            found = actors.existing_actor(name)
            if found is not None:
                node = self.nodes[name] = Node(name, found, NodeFigures(name))
        if node is None or not node.alive:
            raise NodeLost("the session's node is not available", node=name)
        return node.actor

    def saw(self, session_id: str, seq: int) -> None:
        """This daemon streamed ``seq`` of a session: a re-homed session numbers on from it
        (an event streamed just before its node died may not have reached the store)."""
        if seq > self.seen_seq.get(session_id, 0):
            self.seen_seq[session_id] = seq

    # -- ownership and re-homing -------------------------------------------------------------------

    async def owner(self, session_id: str, *, fresh: bool = False) -> Owner:
        """The session's owner: as this daemon last saw it, or (``fresh``) as the store has it.

        A stale answer costs one retry, never a wrong turn: the node refuses an epoch it does
        not hold (``StaleEpoch``) and the caller asks again with ``fresh``. This keeps the store
        off a follow-up's path."""
        if not fresh and session_id in self._owners:
            return self._owners[session_id]
        found: Ownership | None = await self.registry.owner(session_id)
        if found is None:
            raise NotFound("no such session", session_id=session_id)
        owner = self._owners[session_id] = Owner(found.node or "", found.epoch)
        return owner

    async def rehome(self, session_id: str, *, lost: str | None = None, min_seq: int = 0) -> Owner:
        """Make sure the session is driven by a live node; returns its (new) owner."""
        task = self._rehoming.get(session_id)
        if task is None:
            task = asyncio.create_task(self._rehome(session_id, lost, min_seq))
            self._rehoming[session_id] = task
            task.add_done_callback(lambda _t: self._rehoming.pop(session_id, None))
        return await asyncio.shield(task)

    async def _rehome(self, session_id: str, lost: str | None, min_seq: int) -> Owner:
        for _ in range(ROUTE_TRIES):
            current = await self.owner(session_id, fresh=True)
            node = self.nodes.get(current.node)
            if node is not None and node.alive and current.node != lost:
                return current  # somebody re-homed it already
            target = choose((n.figures for n in self.live_nodes()), "")
            if target is None:
                raise NodeLost("no live node can take the session", session_id=session_id)
            try:
                await self.registry.claim(session_id, target.node, expect_epoch=current.epoch)
            except StaleEpoch:
                continue  # lost the race: read the winner
            new = Owner(target.node, current.epoch + 1)
            min_seq = max(min_seq, self.seen_seq.get(session_id, 0))
            reply = await self.actor(new.node).adopt.remote(session_id, new.epoch, min_seq)
            raise_if_error(reply)
            self._owners[session_id] = new
            self.rehomed_total += 1
            return new
        raise NodeLost("the session could not be re-homed", session_id=session_id)

    async def call(self, session_id: str, method: str, *args: Any) -> Any:
        """``method(session_id, epoch, *args)`` on the owning node, re-routed as needed."""
        owner = await self.owner(session_id)
        for attempt in range(ROUTE_TRIES):
            try:
                reply = await getattr(self.actor(owner.node), method).remote(
                    session_id, owner.epoch, *args
                )
                return raise_if_error(reply)
            except StaleEpoch:
                owner = await self.owner(session_id, fresh=True)
            except LOST:
                await self.node_lost(owner.node)
                owner = await self.rehome(session_id, lost=owner.node)
            if attempt == ROUTE_TRIES - 1:
                break
        raise NodeLost("the session's node kept failing", session_id=session_id)

    # -- sessions --------------------------------------------------------------------------------

    async def open(
        self,
        cwd: str | os.PathLike[str] | None = None,
        *,
        resume: str | None = None,
        fork: bool = False,
        metadata: dict[str, Any] | None = None,
        tenant: str = "local",
        node: str | None = None,
        include_partial_messages: bool = False,
        **option_fields: Any,
    ) -> RemoteSession:
        """Open a session on the node placement picks (on ``node`` when given);
        ``include_partial_messages`` as ``Hotsession.open``'s."""

        async def call(actor: Any, fields: dict[str, Any]) -> tuple[Any, None]:
            return await actor.open.remote(**fields), None

        session, _ = await self._place(
            call,
            cwd,
            tenant=tenant,
            node=node,
            fields={"resume": resume, "fork": fork, "metadata": metadata},
            include_partial_messages=include_partial_messages,
            option_fields=option_fields,
        )
        return session

    async def ask(
        self,
        cwd: str | os.PathLike[str] | None,
        prompt: str,
        *,
        resume: str | None = None,
        fork: bool = False,
        metadata: dict[str, Any] | None = None,
        tenant: str = "local",
        include_partial_messages: bool = False,
        **option_fields: Any,
    ) -> tuple[RemoteSession, RemoteTurn]:
        """Open a session and send its first prompt in one call to the node (``/v1/ask``: one
        Ray round trip and one store read fewer than ``open`` then ``send``); errors as
        ``open``'s and ``send``'s, raised before any event."""

        async def call(actor: Any, fields: dict[str, Any]) -> tuple[Any, Any]:
            gen = remote_stream(actor, "ask", prompt=prompt, **fields)
            reply = await (await gen.__anext__())
            # The reply carries the turn's first events (hotsession.cluster.relay).
            events = reply.pop("events", None) if isinstance(reply, dict) else None
            return reply, (gen, events)

        session, (gen, events) = await self._place(
            call,
            cwd,
            tenant=tenant,
            node=None,
            fields={"resume": resume, "fork": fork, "metadata": metadata},
            include_partial_messages=include_partial_messages,
            option_fields=option_fields,
        )
        turn = RemoteTurn(session, int(session.view["turn"]), session.owner, gen, events)
        return session, turn

    async def _place(
        self,
        call: Callable[[Any, dict[str, Any]], Awaitable[tuple[Any, Any]]],
        cwd: str | os.PathLike[str] | None,
        *,
        tenant: str,
        node: str | None,
        fields: dict[str, Any],
        include_partial_messages: bool,
        option_fields: dict[str, Any],
    ) -> tuple[RemoteSession, Any]:
        """``call(actor, fields)`` on the node placement picks, another one if that node is
        lost; its reply opened a session there."""
        if self.shutting_down:
            raise ShuttingDown("the service is shutting down")
        if cwd is None:
            raise InvalidRequest("open() needs cwd", field="cwd")
        path = os.path.realpath(cwd)
        profile = SessionOptions.create(path, tenant=tenant, **option_fields).profile_key()
        options = {**option_fields, "include_partial_messages": include_partial_messages}
        tried: set[str] = set()
        while True:
            candidates = [n.figures for n in self.live_nodes() if n.name not in tried]
            if node is not None:
                candidates = [f for f in candidates if f.node == node]
            target = choose(candidates, profile)
            if target is None:
                raise NodeLost("no live node can open a session")
            tried.add(target.node)
            try:
                reply, extra = await call(
                    self.actor(target.node),
                    {"tenant": tenant, "cwd": path, "options": options, **fields},
                )
            except LOST:
                await self.node_lost(target.node)
                continue
            reply = raise_if_error(reply)
            # The node's figures change with every open (a spare taken, a replacement spawning):
            # read them now, off the request's path, rather than at the next refresh, so that
            # /v1/pool and the next placement do not count a spare that is gone.
            if target.node in self.nodes:
                self._background(self._update(self.nodes[target.node]))
            view = reply["session"]
            if "turn" in reply:
                view = {**view, "turn": reply["turn"]}
            owner = self._owners[view["id"]] = Owner(target.node, reply["epoch"])
            self._tenants[view["id"]] = tenant
            return RemoteSession(self, view, owner), extra

    async def session(self, session_id: str, *, tenant: str | None = None) -> RemoteSession:
        """The tenant's open session (404 unknown or another tenant's, 409 closed).

        A session this daemon already knows is not read from the store again: its tenant never
        changes, and its node answers 409 itself once it is closed."""
        known = self._tenants.get(session_id)
        if known is None:
            rec = await self.record(session_id, tenant=tenant)
            if rec.state == "closed":
                raise Conflict("the session is closed", session_id=session_id)
            known = self._tenants[session_id] = rec.tenant
        elif tenant is not None and known != tenant:
            raise NotFound("no such session", session_id=session_id)
        owner = await self.owner(session_id)
        return RemoteSession(self, {"id": session_id, "tenant": known}, owner)

    async def record(self, session_id: str, *, tenant: str | None = None) -> SessionRecord:
        """A session's record from the store, closed ones included."""
        rec: SessionRecord | None = await self.registry.get_session(session_id)
        if rec is None or (tenant is not None and rec.tenant != tenant):
            raise NotFound("no such session", session_id=session_id)
        return rec

    async def views(self, *, tenant: str | None = None) -> list[dict[str, Any]]:
        """Live views of every open session (of ``tenant``), newest first, with their node."""
        replies = await asyncio.gather(
            *(n.actor.views.remote() for n in self.live_nodes()), return_exceptions=True
        )
        out: list[dict[str, Any]] = []
        for reply in replies:
            if isinstance(reply, BaseException):
                continue
            out.extend(v for v in reply if tenant is None or v["tenant"] == tenant)
        out.sort(key=lambda v: v["created_at"], reverse=True)
        return out

    async def close_session(self, session_id: str, *, tenant: str | None = None) -> dict[str, Any]:
        """Close a session for good; its history stays."""
        await self.session(session_id, tenant=tenant)
        reply = await self.call(session_id, "close")
        self._owners.pop(session_id, None)
        self._tenants.pop(session_id, None)
        view: dict[str, Any] = reply["session"]
        return view

    # -- figures ---------------------------------------------------------------------------------

    def node_stats(self) -> list[dict[str, Any]]:
        """The last figures of every node (dead ones flagged)."""
        out = []
        for node in self.nodes.values():
            stats = dict(node.stats)
            stats.pop("pool", None)
            stats["alive"] = node.alive
            stats["node"] = node.name
            out.append(stats)
        return out

    def stats(self) -> dict[str, Any]:
        """Cluster-wide counters: sums over the live nodes, and the nodes themselves."""
        live = self.live_nodes()
        budget = sum((n.stats.get("memory") or {}).get("budget_mb") or 0.0 for n in live)
        used = sum((n.stats.get("memory") or {}).get("used_mb") or 0.0 for n in live)
        return {
            "nodes": self.node_stats(),
            "sessions": sum(n.stats.get("sessions", 0) for n in live),
            "memory": {"used_mb": round(used, 1), "budget_mb": round(budget, 1)},
            "rehomed_total": self.rehomed_total,
            "node_losses": list(self.node_losses),
        }


class RemoteSession:
    """A session on some node, as one API daemon drives it."""

    def __init__(self, hub: ClusterHub, view: dict[str, Any], owner: Owner) -> None:
        self.hub = hub
        self.id: str = view["id"]
        self.tenant: str = view["tenant"]
        self.view = view
        self.owner = owner

    async def send(self, prompt: str) -> RemoteTurn:
        """Queue a prompt on the owning node; errors (409 / 413 / 429 / 503) are raised here."""
        for attempt in range(ROUTE_TRIES):
            owner = await self.hub.owner(self.id, fresh=attempt > 0)
            try:
                gen = remote_stream(
                    self.hub.actor(owner.node), "send", self.id, owner.epoch, prompt
                )
                first = await (await gen.__anext__())
            except LOST:
                await self.hub.node_lost(owner.node)
                await self.hub.rehome(self.id, lost=owner.node)
                continue
            try:
                ack = raise_if_error(first)
            except StaleEpoch:
                continue
            return RemoteTurn(self, int(ack["turn"]), owner, gen, ack.get("events"))
        raise NodeLost("the session's node kept failing", session_id=self.id)

    async def events(self, after: int = 0, *, follow: bool = True) -> AsyncIterator[Event]:
        """Every event after ``after`` once: replay, then live ones, across node losses."""
        async for event in _follow(self, after, follow=follow, turn=0):
            yield event

    async def interrupt(self) -> bool:
        """Interrupt the running turn on its node."""
        return bool(await self.hub.call(self.id, "interrupt"))

    async def warm(self) -> bool:
        """Resume-ahead on the owning node."""
        return bool(await self.hub.call(self.id, "warm"))

    async def answer_permission(
        self,
        request_id: str,
        behavior: str,
        *,
        updated_input: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> None:
        """Answer a permission request of this session's running turn."""
        await self.hub.call(self.id, "answer", request_id, behavior, updated_input, message)

    async def snapshot(self) -> dict[str, Any]:
        """The live view from the owning node."""
        reply = await self.hub.call(self.id, "view")
        view: dict[str, Any] = reply["session"]
        self.view = view
        return view


class RemoteTurn:
    """A turn running on some node; iterate it for its events (as ``Session.send``'s turn).

    ``take_ready`` hands over what the last batch still holds, so the API writes a batch of
    events in one go as it does for a local turn."""

    def __init__(
        self,
        session: RemoteSession,
        number: int,
        owner: Owner,
        gen: Any,
        first: list[EventTuple] | None = None,
    ) -> None:
        self.session = session
        self.number = number
        self.owner = owner
        self._gen = gen
        self._first = first  # the events that came with the acknowledgement
        self._ready: list[Event] = []
        self.last_seq = 0
        self.terminal: Event | None = None

    def take_ready(self) -> list[Event]:
        """Events already here (the rest of the current batch)."""
        out, self._ready = self._ready, []
        if out:
            self.last_seq = out[-1].seq
            if out[-1].terminal:
                self.terminal = out[-1]
        return out

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _batches(self) -> AsyncIterator[list[Event]]:
        hub = self.session.hub
        first, self._first = self._first, None
        if first:
            yield [event_in(e) for e in first]
            if first[-1][3] in TERMINAL_TYPES:
                return
        try:
            async for ref in self._gen:
                item = await ref
                if isinstance(item, dict):  # the node dropped the session: it moved
                    raise_if_error(item)
                yield [event_in(e) for e in item]
            return
        except StaleEpoch:
            pass
        except LOST:
            # The node went away mid-turn: the session is re-homed on a live node.
            await hub.node_lost(self.owner.node)
            await hub.rehome(self.session.id, lost=self.owner.node, min_seq=self.last_seq)
        # Follow the rest of this turn where the session is now.
        async for event in _follow(self.session, self.last_seq, follow=True, turn=self.number):
            yield [event]

    async def _iterate(self) -> AsyncIterator[Event]:
        async for batch in self._batches():
            self._ready.extend(batch)
            self.session.hub.saw(self.session.id, batch[-1].seq)
            while self._ready:
                event = self._ready.pop(0)
                self.last_seq = event.seq
                yield event
                if event.terminal:
                    self.terminal = event
                    return

    async def wait(self) -> Event:
        """Run to the end; the terminal event."""
        async for _ in self:
            pass
        assert self.terminal is not None
        return self.terminal


async def _follow(
    session: RemoteSession, after: int, *, follow: bool, turn: int
) -> AsyncIterator[Event]:
    """Events of ``session`` after ``after`` from its owning node, re-routed when it moves or
    its node is lost."""
    hub = session.hub
    last = after
    for attempt in range(ROUTE_TRIES):
        owner = await hub.owner(session.id, fresh=attempt > 0)
        try:
            gen = remote_stream(
                hub.actor(owner.node), "follow", session.id, owner.epoch, last, follow, turn
            )
            raise_if_error(await (await gen.__anext__()))
            async for ref in gen:
                item = await ref
                if isinstance(item, dict):
                    raise_if_error(item)
                for data in item:
                    event = event_in(data)
                    last = event.seq
                    hub.saw(session.id, last)
                    yield event
                    if turn and event.terminal:
                        return
            return
        except StaleEpoch:
            await asyncio.sleep(0.05)  # it is moving: read the owner again
        except LOST:
            await hub.node_lost(owner.node)
            await hub.rehome(session.id, lost=owner.node, min_seq=last)
    raise NodeLost("the session's node kept failing", session_id=session.id)


__all__ = ["ClusterConfig", "ClusterHub", "RemoteSession", "RemoteTurn"]
