"""The HTTP application: ``create_app(hub, settings)``.

Design
======
One edge middleware (pure ASGI, so it adds no task or copy per request) runs before any routing
or body parsing: during shutdown it answers 503; for ``/v1/*`` and ``/metrics`` it maps the bearer
token to a tenant (401 otherwise) and stores it in the scope; it refuses bodies over the cap
(413) before they are parsed — by ``Content-Length`` when given, by counting when chunked. Then
FastAPI routes (``sessions.py``) validate bodies with pydantic.

Errors. Every failure is JSON ``{"error": {"code", "message", ...}}``: ``HotsessionError`` with
its own status and code; pydantic errors 422 ``invalid_request`` (with the failing fields);
malformed JSON 400 ``malformed``; unknown routes 404 ``not_found``; wrong methods 405; anything
unexpected 500 ``internal`` (logged; it would be a bug).

Public without a token: ``/healthz``, the dashboard's HTML and assets (``/``, ``/static/``; the
data they show is loaded from ``/v1`` with a token), and the OpenAPI document and its viewers
(``/openapi.json``, ``/docs``, ``/redoc``, ``/docs-assets/``: no data; see
:mod:`hotsession.api.docs`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from contextlib import asynccontextmanager
from pathlib import Path
from types import CoroutineType
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hotsession import __version__
from hotsession.api import dropin, fastpath, sessions
from hotsession.api.auth import Authenticator
from hotsession.api.deps import Api, ApiState, CurrentTenant
from hotsession.api.docs import add_viewers, errors, ok
from hotsession.api.metrics import CONTENT_TYPE, Metrics
from hotsession.api.schemas import HealthOut, SessionOptionsIn
from hotsession.errors import (
    BodyTooLarge,
    HotsessionError,
    RegistryUnavailable,
    ShuttingDown,
    Unauthorized,
)
from hotsession.hub import Hotsession
from hotsession.session import prompt_too_large
from hotsession.settings import Settings, Tenant

log = logging.getLogger(__name__)

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard" / "static"
_HTTP_CODES = {
    400: "malformed",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}


# The dashboard runs its own scripts only: even if the model's text got past the Markdown
# sanitiser (dashboard/static/markdown.js), no inline script or handler of it would run, and the
# page reaches no other host.
_PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def error_body(code: str, message: str, **details: Any) -> bytes:
    """The JSON body of every error."""
    err: dict[str, Any] = {"code": code, "message": message}
    err.update({k: v for k, v in details.items() if v is not None})
    return json.dumps({"error": err}, default=str).encode()


def error_response(status: int, code: str, message: str, **details: Any) -> Response:
    """An error as a response."""
    return Response(
        error_body(code, message, **details), status_code=status, media_type="application/json"
    )


class EdgeState(Protocol):
    """What the edge needs of an app's state (``ApiState``; cluster mode has its own)."""

    settings: Settings
    auth: Authenticator

    @property
    def is_closing(self) -> bool: ...


StartTurn = Callable[[Any, str, str, Tenant], Awaitable[Response]]
"""Queues a prompt and returns the SSE response of its turn (``sessions.start_turn``)."""

OpenSession = Callable[[Any, Tenant, SessionOptionsIn], Awaitable[Response]]
"""Opens a session and answers ``POST /v1/sessions`` (``sessions.created_response``)."""


class EdgeMiddleware:
    """Shutdown gate, authentication and the body cap, before routing (see module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        state: EdgeState,
        start_turn: StartTurn | None = None,
        open_session: OpenSession | None = None,
    ) -> None:
        self.app = app
        self.state = state
        self.start_turn: StartTurn = start_turn or sessions.start_turn
        # None: every POST /v1/sessions goes to the route (cluster mode routes its own).
        self.open_session = open_session

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        state = self.state
        if state.is_closing and path != "/healthz":
            await _send_error(send, ShuttingDown("the service is shutting down"))
            return
        authorization = length = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                length = value
        if path == "/metrics" or path == "/v1" or path.startswith("/v1/"):
            try:
                scope["hotsession.tenant"] = state.auth.authenticate(authorization)
            except Unauthorized as exc:
                await _send_error(send, exc, {"www-authenticate": "Bearer"})
                return
        cap = state.settings.max_body_bytes
        if length is not None:
            try:
                too_big = int(length) > cap
            except ValueError:
                await _send_error(send, None, status=400, message="bad Content-Length")
                return
            if too_big:
                await _send_too_large(send, scope, state.settings)
                return
        elif scope["method"] in ("POST", "PUT", "PATCH"):
            # No length given (chunked): read the body here, counting, then replay it.
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                body = message.get("body", b"")
                size += len(body)
                if size > cap:
                    await _send_too_large(send, scope, state.settings)
                    return
                chunks.append(body)
                if not message.get("more_body", False):
                    break
            receive = _replay(b"".join(chunks), receive)
        send = _bounded_send(send, state.settings.sse_send_timeout_s)
        try:
            session_id = fastpath.match(scope) if "hotsession.tenant" in scope else None
            if session_id is not None:
                body = await fastpath.read_body(receive)
                if body is None:
                    return  # the client went away
                prompt = fastpath.prompt_of(body)
                if prompt is not None:
                    await self._fast_turn(scope, receive, send, session_id, prompt)
                    return
                receive = _replay(body, receive)  # the route answers it (400 / 422)
            elif (
                self.open_session is not None
                and "hotsession.tenant" in scope
                and fastpath.is_open(scope)
            ):
                body = await fastpath.read_body(receive)
                if body is None:
                    return  # the client went away
                options = fastpath.options_of(body)
                if options is not None:
                    await self._fast_open(scope, receive, send, self.open_session, options)
                    return
                receive = _replay(body, receive)  # the route answers it (400 / 422)
            if "hotsession.tenant" in scope and scope["method"] in ("POST", "PUT", "PATCH"):
                _force_json(scope)  # only for the routes: the fast paths parse JSON themselves
            await self.app(scope, receive, send)
        except _SlowClient:
            # Returning without finishing the response makes the server close the connection.
            log.warning("dropped a client that stopped reading (%s %s)", scope["method"], path)

    async def _fast_turn(
        self, scope: Scope, receive: Receive, send: Send, session_id: str, prompt: str
    ) -> None:
        """``POST …/turns`` with a well-formed body (see :mod:`hotsession.api.fastpath`)."""
        await self._answer(
            scope,
            receive,
            send,
            self.start_turn(self.state, session_id, prompt, scope["hotsession.tenant"]),
        )

    async def _fast_open(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        open_session: OpenSession,
        options: SessionOptionsIn,
    ) -> None:
        """``POST /v1/sessions`` with a valid body (see :mod:`hotsession.api.fastpath`)."""
        await self._answer(
            scope, receive, send, open_session(self.state, scope["hotsession.tenant"], options)
        )

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, making: Awaitable[Response]
    ) -> None:
        """Send the response ``making`` gives, or the error it raises (as the routes would)."""
        try:
            response = await making
        except HotsessionError as exc:
            if exc.status >= 500 and not isinstance(exc, ShuttingDown):
                log.warning("POST %s: %s (%s)", scope["path"], exc.message, exc.code)
            await _send_error(send, exc)
            return
        except Exception:
            log.exception("unhandled error in POST %s", scope["path"])
            failed = error_response(500, "internal", "internal error (a bug; see the daemon log)")
            await failed(scope, receive, send)
            return
        await response(scope, receive, send)


class _SlowClient(Exception):
    """A response write waited too long: the client stopped reading."""


def _bounded_send(send: Send, timeout: float) -> Send:
    """``send`` with a time limit on body writes, so a client that never reads is dropped.

    The turn itself never waits for a client (the session feeds the turn's queue regardless);
    this bounds what one stuck connection can hold: its task and the events queued for it.

    The limit costs nothing while the client reads: a server's ``send`` returns without waiting
    unless the connection's write buffer is full (uvicorn waits for it to drain then), so the
    send is stepped once by hand, and only a send that waits gets a timer for the rest. An
    ``asyncio.timeout`` around every body write (a timer armed and cancelled, the current task
    looked up) was ~3 % of the daemon's samples in plain follow-ups (py-spy, 2026-11-30).
    """

    async def bounded(message: Message) -> None:
        if message["type"] != "http.response.body":
            await send(message)
            return
        step = send(message)
        if type(step) is not CoroutineType:
            try:
                async with asyncio.timeout(timeout):
                    await step
            except TimeoutError:
                raise _SlowClient from None
            return
        try:
            waiting = step.send(None)
        except StopIteration:
            return  # written without waiting: the usual case
        try:
            async with asyncio.timeout(timeout):
                await _Rest(step, waiting)
        except TimeoutError:
            raise _SlowClient from None

    return bounded


class _Rest:
    """Awaiting it runs the rest of a coroutine that was stepped once and waits for ``waiting``
    (what its first step yielded to the task): ``_bounded_send``'s send that had to wait."""

    __slots__ = ("_coro", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting: Any) -> None:
        self._coro = coro
        self._waiting = waiting

    def __await__(self) -> Generator[Any, Any, None]:
        coro, value = self._coro, self._waiting
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # the task's cancellation (the timer), passed on
                try:
                    value = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = coro.send(sent)
                except StopIteration:
                    return


def _force_json(scope: Scope) -> None:
    """API bodies are JSON whatever the Content-Type says (``curl -d`` sends a form type), so a
    bad body is reported as malformed JSON rather than as a wrongly typed one."""
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
    headers.append((b"content-type", b"application/json"))
    scope["headers"] = headers


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _send_error(
    send: Send,
    exc: HotsessionError | None,
    headers: dict[str, str] | None = None,
    *,
    status: int = 400,
    message: str = "",
) -> None:
    if exc is not None:
        status, body = exc.status, error_body(**exc.to_dict())
    else:
        body = error_body(_HTTP_CODES.get(status, "http_error"), message)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


_PROMPT_PATHS = re.compile(r"/v1/ask|/v1/sessions/[^/]+/turns")


async def _send_too_large(send: Send, scope: Scope, settings: Settings) -> None:
    """413 for a body over the cap: on the endpoints that take a prompt, the body is the prompt,
    so the answer is the prompt's (``prompt_too_large`` with its ``limit``), as it is for a
    prompt under the body cap but over the prompt limit."""
    cap, prompt_limit = settings.max_body_bytes, settings.config.prompt_limit_bytes
    if scope["method"] == "POST" and _PROMPT_PATHS.fullmatch(scope["path"]):
        exc: HotsessionError = prompt_too_large(prompt_limit)
    else:
        exc = BodyTooLarge(f"the request body is over the {cap} byte limit", limit=cap)
    await _send_error(send, exc)


class _EdgeFirst(FastAPI):
    """FastAPI with the edge middleware in front of its whole stack, not inside it.

    Added with ``add_middleware`` the edge ran inside FastAPI's own layers (its telemetry
    check, Starlette's error and body-limit middleware: five coroutine frames per request, one
    more wrapper per body write); its fast paths (a follow-up, a claim) need none of them: they
    answer their own errors (``_answer``) and never raise past the start of a response. Every
    other request goes from the edge through the whole FastAPI stack as before. Measured with
    ``bench --cpu`` on the fake agent (2026-11-30): see docs/benchmarks.md."""

    edge: EdgeMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        edge = self.edge
        if edge is not None and scope["type"] == "http":
            await edge(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def behind_edge(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app the edge hands what it does not answer itself to."""
        await super().__call__(scope, receive, send)


def create_app(hub: Hotsession, settings: Settings) -> FastAPI:
    """The FastAPI app serving ``hub`` to ``settings.tenants``.

    The app starts the hub on startup if nobody did (and then stops it on shutdown); the daemon
    starts and stops the hub itself, around the server.
    """
    owns_hub = False

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal owns_hub
        if not hub.started:
            await hub.start()
            owns_hub = True
        state.cli = await asyncio.to_thread(hub.cli_info)
        try:
            yield
        finally:
            state.begin_shutdown()
            if owns_hub:
                await hub.stop()

    app = _EdgeFirst(
        title="hotsession",
        version=__version__,
        summary="Claude Code sessions that answer instantly.",
        description="The reference is docs/api.md; this document is at `/openapi.json`.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's viewers load their scripts from a CDN; add_viewers' do not
        redoc_url=None,
    )
    add_viewers(app)
    state = ApiState(
        hub=hub, settings=settings, auth=Authenticator(settings.tenants), metrics=Metrics(hub)
    )
    app.state.api = state
    app.edge = EdgeMiddleware(app.behind_edge, state=state, open_session=sessions.created_response)
    add_error_handlers(app)
    app.include_router(sessions.router)
    app.include_router(dropin.router)

    @app.get(
        "/healthz",
        summary="Liveness (no token)",
        response_class=JSONResponse,
        responses=ok(HealthOut),
    )
    async def healthz(api: Api) -> JSONResponse:
        """`status`, the version, and the Claude Code CLI in use."""
        cli: dict[str, str | None] = dict(api.cli) or {"path": None, "version": None}
        return JSONResponse({"status": "ok", "version": __version__, "cli": cli})

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {
                "description": "The Prometheus text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **errors(),
        },
    )
    async def metrics(api: Api, tenant: CurrentTenant) -> Response:
        """The exposition format."""
        return Response(api.metrics.render(), media_type=CONTENT_TYPE)

    add_dashboard(app)
    return app


def add_dashboard(app: FastAPI) -> None:
    """``/`` (the dashboard's page) and ``/static`` (its assets)."""

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = DASHBOARD_DIR / "index.html"
        if page.is_file():
            return FileResponse(
                page, headers={"Cache-Control": "no-cache", "Content-Security-Policy": _PAGE_CSP}
            )
        return HTMLResponse(
            "<!doctype html><title>hotsession</title><p>hotsession is running; "
            'the dashboard is not installed. API: <a href="/docs">/docs</a>.</p>'
        )

    if DASHBOARD_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=DASHBOARD_DIR), name="static")


def add_error_handlers(app: FastAPI) -> None:
    """The JSON error responses of every app (see the module docstring)."""

    @app.exception_handler(HotsessionError)
    async def _hotsession_error(request: Request, exc: HotsessionError) -> Response:
        if exc.status >= 500 and not isinstance(exc, ShuttingDown):
            log.warning("%s %s: %s (%s)", request.method, request.url.path, exc.message, exc.code)
        # The store is down (a Postgres restart): the client may try again shortly.
        retry = {"Retry-After": "1"} if isinstance(exc, RegistryUnavailable) else None
        return Response(
            error_body(**exc.to_dict()),
            status_code=exc.status,
            media_type="application/json",
            headers=retry,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "malformed", "the request body is not valid JSON")
        fields = [
            {
                "loc": [str(part) for part in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in errors
        ]
        first = fields[0] if fields else {"loc": [], "msg": "invalid request"}
        where = ".".join(p for p in first["loc"] if p != "body") or "body"
        return error_response(422, "invalid_request", f"{where}: {first['msg']}", errors=fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return Response(
            error_body(code, message),
            status_code=exc.status_code,
            media_type="application/json",
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error (a bug; see the daemon log)")
