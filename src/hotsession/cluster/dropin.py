"""``/v1/dropin`` on a cluster-mode daemon: what ``hotsession-claude`` gets from it.

A cluster daemon does not serve drop-in runs: a run (:class:`hotsession.dropin.bridge.DropinRun`)
drives a session of a local engine, and a cluster daemon holds none. Rather than a failed
upgrade (which the shim would read as a refused token), it authenticates the WebSocket as
:mod:`hotsession.api.dropin` does and answers with the error code :data:`UNSERVED`: the shim
then runs the real CLI with the same argv (and the stdin it had already sent) and says why in one
stderr line; ``HOTSESSION_FALLBACK=0`` makes that an error (exit 1).
"""

from __future__ import annotations

import contextlib
import json

from fastapi import APIRouter, WebSocket

from hotsession.errors import HotsessionError, Unauthorized

router = APIRouter()

UNSERVED = "dropin_unavailable"
"""The error code of a daemon that does not serve drop-in runs (the shim falls back on it)."""
UNSERVED_MESSAGE = "is a cluster-mode daemon, which does not serve drop-in runs (docs/drop-in.md)"


@router.websocket("/v1/dropin")
async def dropin(websocket: WebSocket) -> None:
    """Refuse the run with :data:`UNSERVED` (a wrong token: ``unauthorized``)."""
    await websocket.accept()
    error: dict[str, str] = {"code": UNSERVED, "message": UNSERVED_MESSAGE}
    try:
        websocket.app.state.api.auth.authenticate(websocket.headers.get("authorization"))
    except Unauthorized as exc:
        error = {"code": exc.code, "message": exc.message}
    except HotsessionError as exc:  # pragma: no cover - authenticate raises Unauthorized only
        error = {"code": exc.code, "message": exc.message}
    with contextlib.suppress(Exception):  # the shim may be gone already
        await websocket.send_text(json.dumps({"error": error}))
        await websocket.close()
