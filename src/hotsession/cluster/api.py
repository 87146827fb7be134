"""The HTTP API of a cluster-mode daemon: the same routes as one machine, served by any daemon.

Design
======
Same contract. The routes, bodies, events and error codes are those of
:mod:`hotsession.api.sessions` (its schemas, SSE framing, edge middleware and error handlers are
reused); only the engine behind them differs: a :class:`~hotsession.cluster.hub.ClusterHub`
routes each call to the node that owns the session. A daemon keeps no session of its own, so
every daemon answers for every session of a tenant, and a client may switch daemons between two
turns or reconnect its event stream (``Last-Event-ID``) to another daemon.

What differs. Views carry ``node`` (which node holds the session). ``/v1/pool`` adds ``nodes``
(per-node sessions, spares, memory and hit rate) and sums the nodes' figures (the cluster's
budget is the sum of the nodes'). ``/v1/stream`` holds one streaming call per node, which pushes
that node's session changes and turn milestones as they happen (:class:`ClusterFeed`,
:mod:`hotsession.cluster.watch`), so it carries the same events as on one machine. A call that
finds no live node for a session answers 503 ``node_lost`` (retryable); a store that cannot be
reached answers 503 ``registry_unavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hotsession import __version__
from hotsession.api import events as sse
from hotsession.api.app import EdgeMiddleware, add_dashboard, add_error_handlers
from hotsession.api.auth import Authenticator
from hotsession.api.deps import CurrentTenant, Shutdown
from hotsession.api.metrics import CONTENT_TYPE
from hotsession.api.schemas import AskIn, PermissionAnswerIn, SessionOptionsIn, TurnIn
from hotsession.api.sessions import MAX_SEQ, event_cursor, open_fields, record_view, turn_summary
from hotsession.cli_binary import cli_version, resolve_cli_path
from hotsession.cluster import dropin
from hotsession.cluster.hub import LOST, ClusterHub, RemoteSession
from hotsession.cluster.streams import cancel_stream, remote_stream
from hotsession.session import check_prompt, replay
from hotsession.settings import Settings, Tenant

router = APIRouter(prefix="/v1")
_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-sent events: `id:` seq, `event:` type, `data:` JSON.",
        "content": {"text/event-stream": {}},
    }
}


@dataclass
class ClusterState(Shutdown):
    """Shared by the routes of one cluster-mode app."""

    hub: ClusterHub
    settings: Settings
    auth: Authenticator
    registry: CollectorRegistry
    turns: Counter
    cli: dict[str, str] = field(default_factory=dict)


async def _state(request: Request) -> ClusterState:
    state: ClusterState = request.app.state.api
    return state


Api = Annotated[ClusterState, Depends(_state)]


def _stream(api: ClusterState, source: Any, head: bytes = b"") -> StreamingResponse:
    body = sse.stream(source, api.closing, keepalive_s=api.settings.sse_keepalive_s, head=head)
    return StreamingResponse(body, media_type="text/event-stream", headers=sse.SSE_HEADERS)


def _check_prompt(api: ClusterState, prompt: str) -> None:
    check_prompt(prompt, api.hub.config.prompt_limit_bytes)  # the engine's one prompt check


async def _open(api: ClusterState, tenant: Tenant, body: SessionOptionsIn) -> RemoteSession:
    return await api.hub.open(**open_fields(tenant, body))


# -- sessions -------------------------------------------------------------------------------------


@router.post("/sessions", status_code=201, summary="Open a session")
async def create_session(
    api: Api, tenant: CurrentTenant, body: Annotated[SessionOptionsIn | None, Body()] = None
) -> JSONResponse:
    """Open a session on the node placement picks (its `node` is in the view)."""
    session = await _open(api, tenant, body or SessionOptionsIn())
    return JSONResponse(session.view, status_code=201)


@router.get("/sessions", summary="List sessions")
async def list_sessions(
    api: Api,
    tenant: CurrentTenant,
    include_closed: Annotated[bool, Query(description="Closed sessions too.")] = False,
) -> JSONResponse:
    """The tenant's open sessions on every node, newest first."""
    out = await api.hub.views(tenant=tenant.name)
    if include_closed:
        live = {s["id"] for s in out}
        for rec in await api.hub.registry.list_sessions(tenant.name, include_closed=True):
            if rec.id not in live and rec.state == "closed":
                out.append(record_view(rec))
        out.sort(key=lambda s: s["created_at"], reverse=True)
    return JSONResponse({"sessions": out})


@router.get("/sessions/{session_id}", summary="One session")
async def get_session(session_id: str, api: Api, tenant: CurrentTenant) -> JSONResponse:
    """State, node, pid, memory, recent turns."""
    rec = await api.hub.record(session_id, tenant=tenant.name)
    recent = {t.turn: vars(t) for t in await api.hub.registry.list_turns(session_id, limit=20)}
    if rec.state == "closed":
        out = record_view(rec)
    else:
        out = dict(await (await api.hub.session(session_id, tenant=tenant.name)).snapshot())
        for t in out.pop("recent_turns_live", []):
            recent[t["turn"]] = t  # the node's own records are the newest
    out["recent_turns"] = [turn_summary(t) for _, t in sorted(recent.items())[-20:]]
    return JSONResponse(out)


@router.delete("/sessions/{session_id}", summary="Close a session")
async def delete_session(session_id: str, api: Api, tenant: CurrentTenant) -> JSONResponse:
    """End its process; queued prompts fail, a running turn is interrupted. History stays."""
    return JSONResponse(await api.hub.close_session(session_id, tenant=tenant.name))


# -- turns and events -----------------------------------------------------------------------------


@router.post(
    "/sessions/{session_id}/turns",
    summary="Send a prompt (SSE)",
    response_class=StreamingResponse,
    responses=_SSE_DOC,
)
async def post_turn(session_id: str, body: TurnIn, api: Api, tenant: CurrentTenant) -> Response:
    """Stream the turn's events from the session's node."""
    return await start_turn(api, session_id, body.prompt, tenant)


async def start_turn(api: ClusterState, session_id: str, prompt: str, tenant: Tenant) -> Response:
    """Queue ``prompt`` on the session's node; raises (404 / 409 / 413 / 429 / 503) before any
    byte is streamed. The edge's fast path ends here too."""
    _check_prompt(api, prompt)
    session = await api.hub.session(session_id, tenant=tenant.name)
    turn = await session.send(prompt)
    api.turns.labels("turns").inc()
    return _stream(api, turn)


@router.get(
    "/sessions/{session_id}/events",
    summary="Replay and follow events (SSE)",
    response_class=StreamingResponse,
    responses=_SSE_DOC,
)
async def get_events(
    session_id: str,
    api: Api,
    tenant: CurrentTenant,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_SEQ, description="Replay events after this seq.")
    ] = None,
    follow: Annotated[bool, Query(description="Keep streaming live events.")] = True,
    last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> StreamingResponse:
    """Every event after `Last-Event-ID` (or `after`) exactly once, then live ones, from
    whichever node holds the session now."""
    after = event_cursor(after, last_event_id)
    rec = await api.hub.record(session_id, tenant=tenant.name)
    if rec.state == "closed":
        return _stream(api, replay(api.hub.registry, session_id, after))
    session = await api.hub.session(session_id, tenant=tenant.name)
    return _stream(api, session.events(after, follow=follow))


@router.post("/sessions/{session_id}/interrupt", summary="Interrupt the running turn")
async def interrupt(session_id: str, api: Api, tenant: CurrentTenant) -> JSONResponse:
    """`interrupted` is false when no turn was running."""
    session = await api.hub.session(session_id, tenant=tenant.name)
    return JSONResponse({"id": session.id, "interrupted": await session.interrupt()})


@router.post("/sessions/{session_id}/warm", summary="Resume-ahead")
async def warm(session_id: str, api: Api, tenant: CurrentTenant) -> JSONResponse:
    """Start the session's process on its node now so its next turn is hot."""
    session = await api.hub.session(session_id, tenant=tenant.name)
    return JSONResponse({"id": session.id, "warming": await session.warm()})


@router.post(
    "/sessions/{session_id}/permissions/{request_id}", summary="Answer a permission request"
)
async def answer_permission(
    session_id: str,
    request_id: str,
    body: PermissionAnswerIn,
    api: Api,
    tenant: CurrentTenant,
) -> JSONResponse:
    """Allow or deny a tool call of a `permission_request` event (on the session's node)."""
    session = await api.hub.session(session_id, tenant=tenant.name)
    await session.answer_permission(
        request_id, body.behavior, updated_input=body.updated_input, message=body.message
    )
    return JSONResponse({"request_id": request_id, "behavior": body.behavior})


@router.post(
    "/ask", summary="Quick turn (SSE)", response_class=StreamingResponse, responses=_SSE_DOC
)
async def ask(body: AskIn, api: Api, tenant: CurrentTenant) -> StreamingResponse:
    """Open a session and run one turn; the first event, `session`, names it."""
    _check_prompt(api, body.prompt)
    session, turn = await api.hub.ask(prompt=body.prompt, **open_fields(tenant, body))
    api.turns.labels("ask").inc()
    head = sse.frame_untracked(
        "session",
        {
            "id": session.id,
            "cli_session_id": session.view.get("cli_session_id"),
            "source": session.view.get("source"),
            "node": session.owner.node,
        },
    )
    return _stream(api, turn, head=head)


# -- the pool and the stream ----------------------------------------------------------------------


def pool_view(api: ClusterState, tenant: str) -> dict[str, Any]:
    """``/v1/pool`` for the cluster: the nodes' figures, and their sums."""
    hub = api.hub
    nodes = hub.node_stats()
    profiles: list[dict[str, Any]] = []
    evictions: dict[str, int] = {}
    recycles: dict[str, int] = {}
    used = budget = spares_mb = 0.0
    spawned = 0
    for node in hub.nodes.values():
        if not node.alive:
            continue
        pool = node.stats.get("pool") or {}
        for prof in pool.get("profiles", []):
            if prof.get("tenant") == tenant:
                profiles.append({**prof, "node": node.name})
        mem = pool.get("memory") or {}
        used += mem.get("used_mb") or 0.0
        budget += mem.get("budget_mb") or 0.0
        spares_mb += mem.get("spares_mb") or 0.0
        spawned += node.stats.get("spawned_total", 0)
        for reason, n in (node.stats.get("evictions") or {}).items():
            evictions[reason] = evictions.get(reason, 0) + n
        for reason, n in (node.stats.get("recycles") or {}).items():
            recycles[reason] = recycles.get(reason, 0) + n
    return {
        "enabled": True,
        "cluster": True,
        "profiles": profiles,
        "memory": {
            "used_mb": round(used, 1),
            "budget_mb": round(budget, 1),
            "spares_mb": round(spares_mb, 1),
            "sessions_mb": round(max(0.0, used - spares_mb), 1),
        },
        "evictions": evictions,
        "recycles": recycles,
        "spawned_total": spawned,
        "nodes": nodes,
        "rehomed_total": hub.rehomed_total,
        "node_losses": hub.node_losses[-20:],
    }


@router.get("/pool", summary="Warm pool statistics")
async def pool(api: Api, tenant: CurrentTenant) -> JSONResponse:
    """Per-node pools (`nodes`), the tenant's profiles on every node, and the sums."""
    return JSONResponse(pool_view(api, tenant.name), headers={"Cache-Control": "no-store"})


@router.get(
    "/stream",
    summary="Every session, turn milestone and pool figure of the tenant (SSE)",
    response_class=StreamingResponse,
    responses=_SSE_DOC,
)
async def tenant_stream(
    api: Api,
    tenant: CurrentTenant,
    pool_interval: Annotated[
        float, Query(ge=0.5, le=60, description="Seconds between `pool` events.")
    ] = 2.0,
) -> StreamingResponse:
    """First a `session` event per open session (on every node) and a `pool` event; then a
    `session` event whenever one changes state, opens, closes or moves to another node, a
    `turn` event per `result` / `error` / `permission_request` / `permission_resolved`, and a
    `pool` event every `pool_interval` seconds."""
    feed = ClusterFeed(api, tenant.name, pool_interval)
    return StreamingResponse(feed.frames(), media_type="text/event-stream", headers=sse.SSE_HEADERS)


SNAPSHOT_WAIT_S = 5.0
"""How long the first frames wait for a node's snapshot (a node that does not answer by then
joins the stream when it does)."""


class ClusterFeed:
    """``/v1/stream`` for a cluster: one streaming call per node (``NodeHost.watch``, see
    :mod:`hotsession.cluster.watch`) pushes that node's changes; this merges them, adds the
    ``pool`` events (the nodes' figures, refreshed by the hub every ``refresh_s``), and starts a
    call on every node that joins. A node that is lost ends its call; its sessions appear on
    the nodes that adopt them."""

    def __init__(self, api: ClusterState, tenant: str, interval: float) -> None:
        self.api = api
        self.tenant = tenant
        self.interval = interval
        self.out: asyncio.Queue[bytes] = asyncio.Queue()
        self.pumps: dict[str, asyncio.Task[None]] = {}
        self.snapshots: dict[str, asyncio.Event] = {}

    def _watch_new_nodes(self) -> None:
        for node in self.api.hub.live_nodes():
            pump = self.pumps.get(node.name)
            if pump is None or pump.done():
                self.snapshots.setdefault(node.name, asyncio.Event())
                self.pumps[node.name] = asyncio.create_task(self._pump(node.name, node.actor))

    async def _pump(self, name: str, actor: Any) -> None:
        gen = remote_stream(actor, "watch", self.tenant)
        try:
            async for ref in gen:
                batch = await ref
                if batch.get("resync"):
                    return  # fell behind: the next round opens a fresh call
                frames = [sse.frame_untracked("turn", t) for t in batch["turns"]]
                frames += [sse.frame_untracked("session", v) for v in batch["sessions"]]
                if frames:
                    self.out.put_nowait(b"".join(frames))
                self.snapshots[name].set()
        except LOST:
            pass  # the node is gone: the hub re-homes its sessions, their new nodes report them
        finally:
            self.snapshots[name].set()
            cancel_stream(gen)

    def _pool(self) -> bytes:
        pool = pool_view(self.api, self.tenant)
        pool["sample"] = {
            "t": round(time.time(), 3),
            "used_mb": pool["memory"]["used_mb"],
            "budget_mb": pool["memory"]["budget_mb"],
        }
        return sse.frame_untracked("pool", pool)

    async def frames(self) -> AsyncIterator[bytes]:
        """The stream's bytes: the snapshot of every node and a ``pool`` event, then changes as
        they come and a ``pool`` event every ``interval`` (until shutdown or disconnect)."""
        closing = self.api.closing
        loop = asyncio.get_running_loop()
        try:
            self._watch_new_nodes()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SNAPSHOT_WAIT_S):
                    await asyncio.gather(*(e.wait() for e in self.snapshots.values()))
            yield self._drain() + self._pool()
            next_pool = loop.time() + self.interval
            while True:
                getter = asyncio.ensure_future(self.out.get())
                try:
                    await asyncio.wait(
                        (getter, closing),
                        timeout=max(0.0, next_pool - loop.time()),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    if not getter.done():
                        getter.cancel()
                if closing.done():
                    yield sse.SHUTDOWN_FRAME
                    return
                chunk = getter.result() if getter.done() and not getter.cancelled() else b""
                chunk += self._drain()
                if loop.time() >= next_pool:
                    self._watch_new_nodes()
                    chunk += self._pool()
                    next_pool = loop.time() + self.interval
                if chunk:
                    yield chunk
        finally:
            for pump in self.pumps.values():
                pump.cancel()
            await asyncio.gather(*self.pumps.values(), return_exceptions=True)

    def _drain(self) -> bytes:
        chunks = []
        while not self.out.empty():
            chunks.append(self.out.get_nowait())
        return b"".join(chunks)


# -- metrics --------------------------------------------------------------------------------------


class ClusterCollector(Collector):
    """Per-node figures at scrape time (from the last background refresh)."""

    def __init__(self, hub: ClusterHub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        nodes = GaugeMetricFamily("hotsession_nodes", "Nodes by liveness.", labels=["alive"])
        alive = [n for n in hub.nodes.values() if n.alive]
        nodes.add_metric(["true"], len(alive))
        nodes.add_metric(["false"], len(hub.nodes) - len(alive))
        yield nodes
        gauges = {
            "sessions": GaugeMetricFamily(
                "hotsession_node_sessions", "Sessions held by a node.", labels=["node"]
            ),
            "live_processes": GaugeMetricFamily(
                "hotsession_node_agent_processes", "Live session processes.", labels=["node"]
            ),
            "spares": GaugeMetricFamily(
                "hotsession_node_spares", "Ready spares of a node.", labels=["node"]
            ),
            "used_mb": GaugeMetricFamily(
                "hotsession_node_memory_used_mb", "Agent memory of a node.", labels=["node"]
            ),
            "budget_mb": GaugeMetricFamily(
                "hotsession_node_memory_budget_mb", "Memory budget of a node.", labels=["node"]
            ),
            "hit_rate": GaugeMetricFamily(
                "hotsession_node_pool_hit_rate", "Spare hits / claims.", labels=["node"]
            ),
        }
        for node in alive:
            stats = node.stats
            mem = stats.get("memory") or {}
            values = {
                "sessions": stats.get("sessions", 0),
                "live_processes": stats.get("live_processes", 0),
                "spares": sum((stats.get("spares") or {}).values()),
                "used_mb": mem.get("used_mb") or 0.0,
                "budget_mb": mem.get("budget_mb") or 0.0,
                "hit_rate": stats.get("hit_rate"),
            }
            for name, family in gauges.items():
                if values[name] is not None:
                    family.add_metric([node.name], float(values[name]))
        yield from gauges.values()
        yield CounterMetricFamily(
            "hotsession_rehomed_sessions", "Sessions moved to another node.", hub.rehomed_total
        )
        yield CounterMetricFamily(
            "hotsession_node_losses", "Nodes lost.", value=len(hub.node_losses)
        )


# -- the app --------------------------------------------------------------------------------------


def create_cluster_app(hub: ClusterHub, settings: Settings) -> FastAPI:
    """The cluster-mode FastAPI app serving ``hub`` to ``settings.tenants``."""
    owns_hub = False

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal owns_hub
        if not hub.started:
            await hub.start()
            owns_hub = True
        path = str(resolve_cli_path(hub.config.cli_path))
        state.cli = {"path": path, "version": await asyncio.to_thread(cli_version, path)}
        try:
            yield
        finally:
            state.begin_shutdown()
            if owns_hub:
                await hub.stop()

    registry = CollectorRegistry()
    registry.register(ClusterCollector(hub))
    state = ClusterState(
        hub=hub,
        settings=settings,
        auth=Authenticator(settings.tenants),
        registry=registry,
        turns=Counter("hotsession_turns", "Prompts accepted.", ["route"], registry=registry),
    )
    app = FastAPI(
        title="hotsession",
        version=__version__,
        summary="Claude Code sessions that answer instantly (cluster mode).",
        lifespan=lifespan,
    )
    app.state.api = state
    app.add_middleware(EdgeMiddleware, state=state, start_turn=start_turn)
    add_error_handlers(app)
    app.include_router(router)
    app.include_router(dropin.router)

    @app.get("/healthz", summary="Liveness (no token)")
    async def healthz(api: Api) -> JSONResponse:
        """`status`, the version, the CLI, and the cluster's live nodes."""
        cli: dict[str, str | None] = dict(api.cli) or {"path": None, "version": None}
        nodes = len(api.hub.live_nodes())
        return JSONResponse({"status": "ok", "version": __version__, "cli": cli, "nodes": nodes})

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics(api: Api, tenant: CurrentTenant) -> Response:
        """The exposition format, with per-node figures."""
        return Response(generate_latest(api.registry), media_type=CONTENT_TYPE)

    add_dashboard(app)
    return app
