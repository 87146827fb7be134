"""Routes under ``/v1``: sessions, turns, events, permissions, quick turns, the pool, the stream.

Every lookup goes through the caller's tenant, so another tenant's session answers 404 exactly
like an unknown id. Errors are raised as :class:`~hotsession.errors.HotsessionError` and
rendered by the app's handler; a request that starts a stream is fully checked first (closed
session 409, prompt too large 413, queue full 429), so a stream, once started, only carries
events.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hotsession import memory
from hotsession.api import events as sse
from hotsession.api.auth import resolve_cwd
from hotsession.api.deps import Api, ApiState, CurrentTenant
from hotsession.api.docs import SESSION_EVENTS, errors, ok, sse_events
from hotsession.api.feed import Feed
from hotsession.api.schemas import (
    AskIn,
    InterruptOut,
    PermissionAnsweredOut,
    PermissionAnswerIn,
    PoolOut,
    SessionDetailOut,
    SessionListOut,
    SessionOptionsIn,
    SessionOut,
    TurnIn,
    WarmOut,
)
from hotsession.api.turnstream import FollowStream, TurnStream
from hotsession.errors import Conflict, InvalidRequest, NotFound
from hotsession.registry import SessionRecord
from hotsession.session import Session, Turn, replay
from hotsession.session import check_prompt as session_check_prompt
from hotsession.session import session_view as view_of
from hotsession.settings import Tenant

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1")
MAX_SEQ = 2**63 - 1  # SQLite's INTEGER

_BODY = (400, 413, 422)  # a route that reads a JSON body
_LIVE = (404, 409)  # a route on an open session
_OPENS = (403, 404, 409, 502, 503, 504)  # a route that opens a session (claim, spawn, resume)


# -- helpers ------------------------------------------------------------------------------------


def session_view(api: ApiState, session: Session, *, with_memory: bool = False) -> dict[str, Any]:
    """A live session as the API shows it."""
    out = session.snapshot()
    out["source"] = api.sources.get(session.id)
    out["closed_at"] = None
    out["memory"] = None
    if with_memory:
        pid = out.get("pid")
        sample = memory.sample(pid, pss=True) if pid else None
        out["memory"] = sample.to_dict() if sample is not None else None
    return out


def session_views(api: ApiState, sessions: list[Session]) -> list[dict[str, Any]]:
    """List views of live sessions, each with ``memory`` (anon and rss, no pss: one cheap
    ``sample_many`` for all of them; ``GET /v1/sessions/{id}`` adds pss)."""
    out = [session_view(api, s) for s in sessions]
    pids = [v["pid"] for v in out if v.get("pid")]
    samples = memory.sample_many(pids) if pids else {}
    for v in out:
        sample = samples.get(v["pid"]) if v.get("pid") else None
        v["memory"] = sample.to_dict() if sample is not None else None
    return out


def record_view(rec: SessionRecord) -> dict[str, Any]:
    """A session known only from the registry (closed), in the same shape."""
    return {**view_of(rec), "source": None, "closed_at": rec.closed_at, "memory": None}


async def live_session(api: ApiState, session_id: str, tenant: Tenant) -> Session:
    """The tenant's open session; 409 when it is closed, 404 when unknown or someone else's."""
    try:
        return api.hub.get(session_id, tenant=tenant.name)
    except NotFound:
        await api.hub.record(session_id, tenant=tenant.name)  # raises NotFound if unknown
        raise Conflict("the session is closed", session_id=session_id) from None


def check_prompt(api: ApiState, prompt: str) -> None:
    """The checks ``Session.send`` makes, done before a session is opened for a quick turn."""
    session_check_prompt(prompt, api.hub.config.prompt_limit_bytes)


def open_fields(tenant: Tenant, body: SessionOptionsIn) -> dict[str, Any]:
    """The engine's ``open`` arguments for ``tenant`` and the body (cwd checked against its
    roots), one machine's and a cluster's alike."""
    if body.fork and not body.resume:
        raise InvalidRequest("fork needs resume", field="fork")
    return {
        "cwd": resolve_cwd(tenant, body.cwd),
        "tenant": tenant.name,
        "resume": body.resume,
        "fork": body.fork,
        "metadata": body.metadata,
        "include_partial_messages": body.include_partial_messages,
        **body.option_fields(),
    }


def event_cursor(after: int | None, last_event_id: str | None) -> int:
    """Where an event stream starts: ``after``, else the ``Last-Event-ID`` header, else 0."""
    if after is not None:
        return after
    if last_event_id is None or not last_event_id.strip():
        return 0
    try:
        cursor = int(last_event_id.strip())
    except ValueError:
        raise InvalidRequest(
            "Last-Event-ID must be an event seq (an integer)", field="Last-Event-ID"
        ) from None
    if not 0 <= cursor <= MAX_SEQ:
        raise InvalidRequest("Last-Event-ID is out of range", field="Last-Event-ID")
    return cursor


def turn_summary(t: dict[str, Any]) -> dict[str, Any]:
    """A recent turn as a session's view lists it (``t``: a turn record's fields)."""
    return {
        "turn": t["turn"],
        "status": t["status"],
        "prompt": t["prompt"][:200],
        "queued_at": t["queued_at"],
        "started_at": t["started_at"],
        "ended_at": t["ended_at"],
        "timing": t["timing"],
        "error_code": t["error_code"],
        "error_message": t["error_message"],
    }


async def open_session(api: ApiState, tenant: Tenant, body: SessionOptionsIn) -> Session:
    """Open a session for ``tenant`` with the body's options (cwd checked against its roots)."""
    session = await api.hub.open(**open_fields(tenant, body))
    source = str(session.open_source or "spawn")
    api.sources[session.id] = source
    api.metrics.sessions_created.labels(source).inc()
    # No prewarm hint here: the pool saw the claim, and sizes spares once demand repeats (a
    # floor of one spare per opened profile kept an idle process for every one-off profile).
    return session


def sse_response(api: ApiState, body: Any) -> StreamingResponse:
    """A ``text/event-stream`` response around one of ``sse.stream``'s generators."""
    return StreamingResponse(body, media_type="text/event-stream", headers=sse.SSE_HEADERS)


def turn_response(api: ApiState, turn: Turn, head: bytes = b"") -> TurnStream:
    """The SSE response of a turn (:class:`~hotsession.api.turnstream.TurnStream`)."""
    streams = api.metrics.streams
    return TurnStream(
        turn,
        api.closing,
        keepalive_s=api.settings.sse_keepalive_s,
        head=head,
        opened=streams.inc,
        closed=streams.dec,
    )


async def _counted(api: ApiState, body: Any) -> Any:
    api.metrics.streams.inc()
    try:
        async for chunk in body:
            yield chunk
    finally:
        api.metrics.streams.dec()


# -- sessions -----------------------------------------------------------------------------------


@router.post(
    "/sessions",
    status_code=201,
    summary="Open a session",
    response_class=JSONResponse,
    responses={
        **ok(SessionOut, 201, "The session, with a live process."),
        **errors(*_BODY, *_OPENS),
    },
)
async def create_session(
    api: Api, tenant: CurrentTenant, body: Annotated[SessionOptionsIn | None, Body()] = None
) -> JSONResponse:
    """Open a session (a warm spare of its profile when one is ready). `source` says how its
    process came: `spare`, `spawn` or `resume`. An empty body takes every default."""
    return await created_response(api, tenant, body or SessionOptionsIn())


async def created_response(api: ApiState, tenant: Tenant, body: SessionOptionsIn) -> JSONResponse:
    """Open the session and answer ``POST /v1/sessions`` (the route and the edge's fast path,
    :mod:`hotsession.api.fastpath`, both answer with this)."""
    session = await open_session(api, tenant, body)
    # One process's memory (anon and rss, its tree from /proc): the list views' one pass over
    # every process of the machine cost ~10 ms here, on the claim's path (issue 13: ≤ 3 ms).
    out = session_view(api, session)
    pid = out.get("pid")
    sample = memory.sample(pid) if pid else None
    out["memory"] = sample.to_dict() if sample is not None else None
    return JSONResponse(out, status_code=201)


@router.get(
    "/sessions",
    summary="List sessions",
    response_class=JSONResponse,
    responses={**ok(SessionListOut), **errors(422)},
)
async def list_sessions(
    api: Api,
    tenant: CurrentTenant,
    include_closed: Annotated[bool, Query(description="Closed sessions too.")] = False,
) -> JSONResponse:
    """The tenant's open sessions, newest first (closed ones too with `include_closed`)."""
    out = session_views(api, api.hub.list(tenant=tenant.name))
    if include_closed:
        live = {s["id"] for s in out}
        for rec in await api.hub.registry.list_sessions(tenant.name, include_closed=True):
            if rec.id not in live and rec.state == "closed":
                out.append(record_view(rec))
        out.sort(key=lambda s: s["created_at"], reverse=True)
    return JSONResponse({"sessions": out})


@router.get(
    "/sessions/{session_id}",
    summary="One session",
    response_class=JSONResponse,
    responses={**ok(SessionDetailOut), **errors(404, 422)},
)
async def get_session(session_id: str, api: Api, tenant: CurrentTenant) -> JSONResponse:
    """State, pid, memory, turns (the recent ones with their timing), last timing."""
    session = api.hub.sessions.get(session_id)
    if session is not None and session.record.tenant == tenant.name:
        out = session_view(api, session, with_memory=True)
    else:
        out = record_view(await api.hub.record(session_id, tenant=tenant.name))
    recent = await api.hub.registry.list_turns(session_id, limit=20)
    if session is not None and session.record.tenant == tenant.name:
        # The live session's own records are the newest (a turn that just ended is written to
        # the registry after its reader got the result), so a client that reads right after a
        # turn sees it as it ended.
        by_turn = {t.turn: t for t in recent}
        by_turn.update((t.turn, t) for t in session.recent_turns)
        recent = sorted(by_turn.values(), key=lambda t: t.turn)[-20:]
    out["recent_turns"] = [turn_summary(vars(t)) for t in recent]
    return JSONResponse(out)


@router.delete(
    "/sessions/{session_id}",
    summary="Close a session",
    response_class=JSONResponse,
    responses={
        **ok(SessionOut, description="The session as it was closed."),
        **errors(*_LIVE, 422),
    },
)
async def delete_session(session_id: str, api: Api, tenant: CurrentTenant) -> JSONResponse:
    """End its process; queued prompts fail, a running turn is interrupted. History stays."""
    session = await live_session(api, session_id, tenant)
    await api.hub.close_session(session.id, tenant=tenant.name)
    out = session_view(api, session)
    api.sources.pop(session.id, None)
    return JSONResponse(out)


# -- turns and events ---------------------------------------------------------------------------


@router.post(
    "/sessions/{session_id}/turns",
    summary="Send a prompt (SSE)",
    response_class=StreamingResponse,
    responses={
        **sse_events(
            *SESSION_EVENTS, description="The turn's events; the last is `result` or `error`."
        ),
        **errors(*_BODY, *_LIVE, 429),
    },
)
async def post_turn(session_id: str, body: TurnIn, api: Api, tenant: CurrentTenant) -> Response:
    """Stream the turn's events; ends after its `result` or `error`. The turn runs on even if
    the client goes away (reconnect to `/events` with `Last-Event-ID`)."""
    return await start_turn(api, session_id, body.prompt, tenant)


async def start_turn(api: ApiState, session_id: str, prompt: str, tenant: Tenant) -> Response:
    """Queue ``prompt`` on the tenant's session; the SSE response of its turn. Raises
    ``HotsessionError`` (404, 409, 413, 429, 503) before anything is streamed. The route above
    and the edge's fast path (:mod:`hotsession.api.fastpath`) both end here."""
    session = await live_session(api, session_id, tenant)
    turn = session.send(prompt)
    api.metrics.turns.labels("turns").inc()
    return turn_response(api, turn)


@router.get(
    "/sessions/{session_id}/events",
    summary="Replay and follow events (SSE)",
    response_class=StreamingResponse,
    responses={
        **sse_events(
            *SESSION_EVENTS, description="The session's events after `after`, then live ones."
        ),
        **errors(404, 422),
    },
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
) -> Response:
    """Every event after `Last-Event-ID` (or `after`) exactly once, then live ones."""
    after = event_cursor(after, last_event_id)
    session = api.hub.sessions.get(session_id)
    if session is not None and session.record.tenant == tenant.name:
        if follow and not session.closed:
            streams = api.metrics.streams
            return FollowStream(
                session.fanout,
                after,
                api.closing,
                keepalive_s=api.settings.sse_keepalive_s,
                opened=streams.inc,
                closed=streams.dec,
            )
        source = session.events(after, follow=False)
    else:
        await api.hub.record(session_id, tenant=tenant.name)  # 404 unless a closed one of ours
        source = replay(api.hub.registry, session_id, after)
    gen = sse.stream(source, api.closing, keepalive_s=api.settings.sse_keepalive_s)
    return sse_response(api, _counted(api, gen))


@router.post(
    "/sessions/{session_id}/interrupt",
    summary="Interrupt the running turn",
    response_class=JSONResponse,
    responses={**ok(InterruptOut), **errors(*_LIVE, 413, 422)},
)
async def interrupt(session_id: str, api: Api, tenant: CurrentTenant) -> JSONResponse:
    """`interrupted` is false when no turn was running."""
    session = await live_session(api, session_id, tenant)
    return JSONResponse({"id": session.id, "interrupted": await session.interrupt()})


@router.post(
    "/sessions/{session_id}/warm",
    summary="Resume-ahead",
    response_class=JSONResponse,
    responses={**ok(WarmOut), **errors(*_LIVE, 413, 422)},
)
async def warm(session_id: str, api: Api, tenant: CurrentTenant) -> JSONResponse:
    """Start the session's process now so its next turn is hot; `warming` is false when there
    was nothing to do (already hot, or busy)."""
    session = await live_session(api, session_id, tenant)
    return JSONResponse({"id": session.id, "warming": await session.warm()})


@router.post(
    "/sessions/{session_id}/permissions/{request_id}",
    summary="Answer a permission request",
    response_class=JSONResponse,
    responses={**ok(PermissionAnsweredOut), **errors(*_BODY, *_LIVE)},
)
async def answer_permission(
    session_id: str,
    request_id: str,
    body: PermissionAnswerIn,
    api: Api,
    tenant: CurrentTenant,
) -> JSONResponse:
    """Allow (optionally with an edited `updated_input`) or deny (with a `message` for the
    model) a tool call of a `permission_request` event. 409 once it was resolved."""
    session = await live_session(api, session_id, tenant)
    session.answer_permission(
        request_id, body.behavior, updated_input=body.updated_input, message=body.message
    )
    return JSONResponse({"request_id": request_id, "behavior": body.behavior})


# -- quick turns and the pool -------------------------------------------------------------------


@router.post(
    "/ask",
    summary="Quick turn (SSE)",
    response_class=StreamingResponse,
    responses={
        **sse_events(
            "session", *SESSION_EVENTS, description="`session` (its id), then the turn's."
        ),
        **errors(*_BODY, *_OPENS),
    },
)
async def ask(body: AskIn, api: Api, tenant: CurrentTenant) -> Response:
    """Open a session (from the pool when a spare is ready) and run one turn. The first event,
    `session`, names it (`id`, `cli_session_id`, `source`); it stays open for follow-ups."""
    began = time.monotonic()
    check_prompt(api, body.prompt)
    session = await open_session(api, tenant, body)
    try:
        turn = session.send(body.prompt, since=began)
    except Exception:
        with contextlib.suppress(Exception):
            await api.hub.close_session(session.id)
        raise
    api.metrics.turns.labels("ask").inc()
    head = sse.frame_untracked(
        "session",
        {
            "id": session.id,
            "cli_session_id": session.cli_session_id,
            "source": api.sources.get(session.id),
        },
    )
    return turn_response(api, turn, head)


def pool_view(api: ApiState, tenant: str) -> dict[str, Any]:
    """The ``/v1/pool`` payload for ``tenant``.

    ``spawned_total`` counts every agent process started (sessions' own spawns and resumes
    too), as the ``hotsession_spawns_total`` metric does; the pool's own spare spawns are
    ``spares_spawned_total``.
    """
    hub = api.hub
    host = hub.host.stats()
    if hub.pool is not None:
        out = dict(hub.pool.stats())
        out.setdefault("enabled", True)
        out["spares_spawned_total"] = out.get("spawned_total")
        out["spawned_total"] = host["spawned_total"]
        # Other tenants' profiles (their cwds) are not this tenant's business.
        profiles = [p for p in out.get("profiles", []) if p.get("tenant") == tenant]
        for p in profiles:
            p.setdefault("pooled", True)
        known = {str(p.get("profile")) for p in out.get("profiles", [])}
        out["profiles"] = profiles + _unpooled_profiles(api, tenant, known)
        return out
    return {
        "enabled": False,
        "profiles": [],
        "memory": None,
        "evictions": dict(hub.evictions),
        "recycles": dict(hub.recycles),
        "spawned_total": host["spawned_total"],
    }


def _unpooled_profiles(api: ApiState, tenant: str, known: set[str]) -> list[dict[str, Any]]:
    """Rows for profiles of the tenant's live sessions that the pool never served (a session
    opened with ``resume``, for one): no spares, but live processes using memory."""
    groups: dict[str, list[Session]] = {}
    for s in api.hub.list(tenant=tenant):
        if s.process is not None and s.record.profile_key not in known:
            groups.setdefault(s.record.profile_key, []).append(s)
    if not groups:
        return []
    samples = memory.sample_many([s.process.pid for ss in groups.values() for s in ss if s.process])
    rows = []
    for key, ss in groups.items():
        opts = ss[0].options
        mem = [samples[s.process.pid].anon_mb for s in ss if s.process and s.process.pid in samples]
        rows.append(
            {
                "profile": key,
                "tenant": opts.tenant,
                "cwd": opts.cwd,
                "model": opts.model,
                "permission_mode": opts.permission_mode,
                "client": opts.client(),
                "flags": opts.flags(),
                "ready": 0,
                "spawning": 0,
                "live_sessions": len(ss),
                "hits": 0,
                "misses": 0,
                "hit_rate": None,
                "lambda_per_s": 0.0,
                "tau_s": None,
                "target": 0,
                "min": 0,
                "max": 0,
                "memory_mb": round(sum(m or 0.0 for m in mem), 1),
                "failing": None,
                "last_error": None,
                "spawned": 0,
                "switched": 0,
                "pooled": False,
            }
        )
    return rows


@router.get(
    "/pool",
    summary="Warm pool statistics",
    response_class=JSONResponse,
    responses={**ok(PoolOut), **errors()},
)
async def pool(api: Api, tenant: CurrentTenant) -> JSONResponse:
    """The pool's per-profile stats, memory, evictions and recycles."""
    return JSONResponse(pool_view(api, tenant.name), headers={"Cache-Control": "no-store"})


def pool_sample(api: ApiState, tenant: str) -> dict[str, Any]:
    """``pool_view`` plus ``sample``: the time, the pool's memory figures and the memory of each
    of the tenant's live sessions (one ``sample_many``)."""
    out = pool_view(api, tenant)
    pids = {s.id: s.process.pid for s in api.hub.list(tenant=tenant) if s.process is not None}
    samples = memory.sample_many(list(pids.values())) if pids else {}
    per = {sid: samples[pid].to_dict() for sid, pid in pids.items() if pid in samples}
    mem = out.get("memory") or {}
    out["sample"] = {
        "t": round(time.time(), 3),
        "used_mb": mem.get("used_mb"),
        "budget_mb": mem.get("budget_mb"),
        "sessions_anon_mb": round(sum(m["anon_mb"] or 0.0 for m in per.values()), 1),
        "sessions": per,
    }
    return out


# -- the tenant's stream ------------------------------------------------------------------------


@router.get(
    "/stream",
    summary="Every session, turn milestone and pool figure of the tenant (SSE)",
    response_class=StreamingResponse,
    responses={
        **sse_events(
            "session", "turn", "pool", "error", description="See the route's description."
        ),
        **errors(422),
    },
)
async def tenant_stream(
    api: Api,
    tenant: CurrentTenant,
    pool_interval: Annotated[
        float, Query(ge=0.5, le=60, description="Seconds between `pool` events.")
    ] = 2.0,
) -> StreamingResponse:
    """First a `session` event per open session and a `pool` event; then a `session` event
    (its list view) whenever one changes state, opens or closes, a `turn` event per
    `result` / `error` / `permission_request` / `permission_resolved`, and a `pool` event
    (with a memory `sample`) every `pool_interval` seconds."""
    feed = Feed(
        api.hub,
        tenant.name,
        view=lambda sessions: session_views(api, sessions),
        pool=lambda: pool_sample(api, tenant.name),
        pool_interval=pool_interval,
        keepalive_s=api.settings.sse_keepalive_s,
        closing=api.closing,
    )
    return sse_response(api, _counted(api, feed.frames()))
