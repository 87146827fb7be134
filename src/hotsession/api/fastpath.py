"""``POST /v1/sessions/{id}/turns`` and ``POST /v1/sessions`` without FastAPI's router: the
follow-up's hot path, and the claim of a spare.

Why hand-written. A follow-up is the request the service exists for, and its budget is 2 ms
over the bare CLI (issue 4). Traced per hop on the 2-core box (100 follow-ups, 2026-11-24), the
daemon spent a median 0.34–0.36 ms between the edge middleware and the route's first line: the
router's linear scan of every route, FastAPI's dependency solving (``Api``, ``CurrentTenant``,
the bearer scheme), the body's JSON parse and the pydantic model — for a body that is one string.
This module answers the well-formed request directly from the edge middleware, which has
already authenticated the caller and capped the body.

It declines anything but a JSON object whose only key is a ``prompt`` string of valid Unicode
(``prompt_of`` gives None and the edge replays the body to the route), so every malformed or
invalid body still gets the route's own 400/422 answer, word for word. The route in
``sessions.py`` stays the one definition of the endpoint: it is what the OpenAPI document shows
and what answers declined requests. Both hand the parsed prompt to ``sessions.start_turn``, so
the two cannot drift in what a turn does; ``tests/api`` drives the endpoint over real HTTP and
covers both.

``POST /v1/sessions`` (the claim, issue 13's ≤ 3 ms) is answered the same way: a body that is
empty or a JSON object the route's own model (``SessionOptionsIn``) accepts is validated here
and handed to ``sessions.created_response``, which the route calls too; anything else goes to
the route. The router, the dependencies and FastAPI's body handling cost ~0.4–0.6 ms of the
claim's ~1.5 ms of daemon CPU (measured: daemon log timings around the handler, 2026-11-30).
"""

from __future__ import annotations

import json
import re

from pydantic import ValidationError
from starlette.types import Receive, Scope

from hotsession.api.schemas import SessionOptionsIn

TURNS_PATH = re.compile(r"/v1/sessions/([^/]+)/turns")
SESSIONS_PATH = "/v1/sessions"


def match(scope: Scope) -> str | None:
    """The session id when ``scope`` is a ``POST …/turns`` (None otherwise)."""
    if scope["method"] != "POST":
        return None
    found = TURNS_PATH.fullmatch(scope["path"])
    return found.group(1) if found is not None else None


def is_open(scope: Scope) -> bool:
    """True when ``scope`` is ``POST /v1/sessions``."""
    return bool(scope["method"] == "POST" and scope["path"] == SESSIONS_PATH)


def options_of(body: bytes) -> SessionOptionsIn | None:
    """The options of a ``POST /v1/sessions`` body the route would accept; None otherwise
    (the route then answers it). An empty body takes every default, as on the route."""
    if not body.strip():
        return SessionOptionsIn()
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    try:
        return SessionOptionsIn.model_validate(doc)
    except ValidationError:
        return None


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body (None if the client went away first)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def prompt_of(body: bytes) -> str | None:
    """The prompt of a well-formed ``{"prompt": "..."}`` body; None for anything else."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # deeply nested JSON raises the latter
        return None
    if not isinstance(doc, dict) or len(doc) != 1:
        return None
    prompt = doc.get("prompt")
    if not isinstance(prompt, str):
        return None
    try:
        prompt.encode("utf-8")  # lone surrogates: the route refuses them (422)
    except UnicodeEncodeError:
        return None
    return prompt
