"""The OpenAPI document and its viewers (``/openapi.json``, ``/docs``, ``/redoc``).

The document tells what the API really answers: every error is ``ErrorOut`` (``{"error":
{"code", "message", ...}}``, never FastAPI's ``{"detail": ...}``), each route lists the error
statuses it can answer (:func:`errors`) and its success body's schema (:func:`ok`; the models are
in :mod:`hotsession.api.schemas`). The hostile-input test checks answers against it.

The viewers load nothing from another host (FastAPI's own pages take their scripts from a CDN,
so they are blank offline or behind a strict proxy): Swagger UI and ReDoc are the files the
``fastapi-offline`` package ships, served under ``/docs-assets/``, and each page carries a
Content-Security-Policy that lets it reach its own origin only (ReDoc's sidebar would fetch a
logo from its maker's host; the policy stops it in the browser). The pages are FastAPI's own
HTML builders with those URLs.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any, get_args

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from hotsession.api.schemas import ErrorOut
from hotsession.events import EventType

DOCS_ASSETS = "/docs-assets"
"""Where the viewers' scripts and styles are served (no token: they hold no data)."""

_ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def _csp(page: str) -> str:
    """A policy for ``page``: its own origin only; its inline scripts by hash."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(m.encode()).digest()).decode()}'"
        for m in _INLINE_SCRIPT.findall(page)
    )
    return (
        f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


def _page(response: HTMLResponse) -> HTMLResponse:
    html = bytes(response.body).decode()
    return HTMLResponse(
        html, headers={"Content-Security-Policy": _csp(html), "Cache-Control": "no-cache"}
    )


def add_viewers(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) from the package's files (module docstring).

    The app must be made with ``docs_url=None, redoc_url=None`` (FastAPI's CDN pages off).
    """
    openapi_url = app.openapi_url or "/openapi.json"
    title = app.title
    app.mount(DOCS_ASSETS, StaticFiles(directory=_ASSETS_DIR), name="docs-assets")
    swagger = _page(
        get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            # No validator badge: Swagger UI would fetch it from another host.
            swagger_ui_parameters={"validatorUrl": None},
        )
    )
    redoc = _page(
        get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} API",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )
    )

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return swagger

    @app.get("/redoc", include_in_schema=False)
    async def redoc_page() -> HTMLResponse:
        return redoc


Responses = dict[int | str, dict[str, Any]]

# When each error status is answered (docs/api.md, "Errors"); every one has the body ErrorOut.
_ERROR_WHEN = {
    400: "The body is not JSON (`malformed`).",
    401: "No token, a bad one, or not `Bearer` (`unauthorized`).",
    403: "`cwd` is outside the tenant's roots (`forbidden`).",
    404: "Unknown, or another tenant's (`not_found`).",
    409: "The session is closed, or the request conflicts with its state (`conflict`, "
    "`lease_conflict`).",
    413: "The prompt is over the prompt limit (`prompt_too_large`, with `limit`), or the body "
    "over the body cap.",
    422: "Invalid fields (`invalid_request`, with `errors`: `loc`, `msg`, `type`).",
    429: "`queue_max` prompts already wait for this session (`queue_full`).",
    502: "The Claude Code CLI failed (`agent_start_failed`, `agent_died`, `agent_error`, "
    "`agent_protocol`; with `exit_code`, `stderr_tail`).",
    503: "The daemon is shutting down (`shutting_down`), spawns of this profile keep failing "
    "(`profile_failing`), or the store cannot be written (`registry_error`).",
    504: "No output from the agent for `watchdog_s` (`agent_timeout`).",
}


def errors(*statuses: int) -> Responses:
    """The error responses of a route, for the OpenAPI document (401 and 503 on every route
    under ``/v1``: the edge answers them before routing)."""
    return {
        status: {"model": ErrorOut, "description": _ERROR_WHEN[status]}
        for status in sorted({401, 503, *statuses})
    }


def ok(model: type[Any], status: int = 200, description: str = "Success") -> Responses:
    """A JSON success response of ``model``'s schema."""
    return {status: {"model": model, "description": description}}


def sse_events(*event_types: str, description: str) -> Responses:
    """A ``text/event-stream`` success: its schema describes each event (OpenAPI 3.1 reads a
    stream's ``schema`` per event), ``data`` being a JSON text (docs/api.md, "Events")."""
    event = {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": list(event_types)},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "description": "The event's payload, a JSON object.",
            },
            "id": {"type": "string", "description": "The event's seq, where it has one."},
        },
    }
    return {
        200: {
            "description": description,
            "content": {"text/event-stream": {"schema": event}},
        }
    }


SESSION_EVENTS = get_args(EventType)
"""The events of a session's turns (``message``, ``queued``, ..., ``result``, ``error``)."""
