"""``/v1/dropin``: the WebSocket that ``hotsession-claude`` (the drop-in executable) talks to.

The shim's hello comes in the upgrade request's ``X-Hotsession-Hello`` field (confirmed in the
``101``) or as the first message (see :mod:`hotsession.dropin.shim`). Authentication is the
API's: the bearer token of the upgrade request names the tenant (a wrong
one gets an ``error`` message with code ``unauthorized`` and the connection is closed); the run's
cwd must be inside the tenant's roots, as for ``POST /v1/sessions``. The messages are described
in :mod:`hotsession.dropin.shim`; the run itself is :class:`hotsession.dropin.bridge.DropinRun`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from hotsession.api.auth import Authenticator, resolve_cwd
from hotsession.api.deps import ApiState
from hotsession.dropin.bridge import Client, DropinRun, Peer
from hotsession.dropin.shim import HELLO_HEADER
from hotsession.errors import HotsessionError, Unauthorized
from hotsession.settings import Tenant

log = logging.getLogger(__name__)

router = APIRouter()


@router.websocket("/v1/dropin")
async def dropin(websocket: WebSocket) -> None:
    """One ``hotsession-claude`` run (see the module docstring)."""
    state: ApiState = websocket.app.state.api
    accepted = await accept_run(websocket, state.auth, closing=lambda: state.is_closing)
    if accepted is None:
        return
    tenant, hello, receive, _ = accepted

    async def send_json(obj: dict[str, Any]) -> None:
        await websocket.send_text(json.dumps(obj))

    client = Client(
        tenant=tenant.name,
        resolve_cwd=lambda cwd: resolve_cwd(tenant, cwd),
        reserved=reserved_env(tenant),
    )
    run = DropinRun(state.hub, client, Peer(receive, websocket.send_bytes, send_json), hello)
    try:
        await run.serve()
    except Exception:
        log.exception("drop-in run failed")
        await refuse(websocket, HotsessionError("internal error (a bug; see the daemon log)"))
        return
    with contextlib.suppress(Exception):  # the shim may be gone already
        await websocket.close()


Receive = Callable[[], Awaitable[bytes | dict[str, Any] | None]]


def reserved_env(tenant: Tenant) -> frozenset[str]:
    """The variables the tenant's settings fix: the client's are dropped (they come from the
    spawn plan). A tenant with an OS user also keeps its account's HOME and config dir."""
    return frozenset(
        [
            *tenant.env,
            *(["CLAUDE_CONFIG_DIR"] if tenant.claude_config_dir or tenant.user else []),
            *(["HOME", "USER", "LOGNAME"] if tenant.user else []),
        ]
    )


async def accept_run(
    websocket: WebSocket, auth: Authenticator, *, closing: Callable[[], bool]
) -> tuple[Tenant, dict[str, Any], Receive, bytes] | None:
    """Accept a drop-in WebSocket: its tenant, its hello, its stdin (``receive``, the
    :class:`Peer`'s) and what stdin held when the shim connected (``receive`` returns it
    first), or None when it was refused (the shim got the reason). Shared with the cluster
    daemon's ``/v1/dropin`` (``hotsession.cluster.dropin``)."""
    carried = websocket.headers.get(HELLO_HEADER)
    hello: Any = None
    early: list[bytes] = []
    bad: Exception | None = None
    if carried is not None:
        # The hello came with the upgrade (and what stdin held then): say so in the 101.
        try:
            hello = json.loads(carried)
            if not isinstance(hello, dict):
                raise ValueError("the hello must be an object")
            stdin = hello.pop("stdin", None)
            if stdin:
                early.append(base64.b64decode(str(stdin), validate=True))
        except (ValueError, binascii.Error) as exc:
            bad = exc
        await websocket.accept(headers=[(HELLO_HEADER.encode(), b"taken")])
    else:
        await websocket.accept()
    try:
        tenant = auth.authenticate(websocket.headers.get("authorization"))
    except Unauthorized as exc:
        await refuse(websocket, exc)
        return None
    if closing():
        await refuse(websocket, HotsessionError("the service is shutting down"))
        return None
    try:
        if bad is not None:
            raise ValueError(str(bad))
        if hello is None:
            first = await websocket.receive()
            hello = json.loads(first.get("text") or "{}").get("hello")
            if not isinstance(hello, dict):
                raise ValueError("the first message must be a hello")
    except (ValueError, AttributeError, WebSocketDisconnect) as exc:
        await refuse(websocket, HotsessionError(f"bad hello: {exc}"))
        return None

    # Stdin bytes a shim sends again after its hello message when it did not see the 101 confirm
    # the header (a proxy that drops the field from the answer): already had, so skipped.
    resent = 0

    async def receive() -> bytes | dict[str, Any] | None:
        nonlocal resent
        if early:
            return early.pop()
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return None
            if message.get("bytes") is not None:
                data: bytes = message["bytes"]
                if resent:
                    cut = min(resent, len(data))
                    resent -= cut
                    data = data[cut:]
                    if not data:
                        continue
                return data
            try:
                parsed = json.loads(message.get("text") or "{}")
            except ValueError:
                return {}
            if not isinstance(parsed, dict):
                return {}
            again = parsed.get("hello")
            if carried is not None and isinstance(again, dict):
                resent = int(again.get("stdin_sent") or 0)
                continue
            return parsed

    return tenant, hello, receive, early[0] if early else b""


async def refuse(websocket: WebSocket, exc: HotsessionError) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_text(json.dumps({"error": {"code": exc.code, "message": exc.message}}))
        await websocket.close()
