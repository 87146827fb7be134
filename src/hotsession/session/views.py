"""The one view of a session as listings show it (the API, the dashboard's stream, the CLI).

A live session and a closed one known only from the registry have the same shape: the record's
fields, plus what only a live session knows (its process, queue and pending permissions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hotsession.registry import SessionRecord


@dataclass(frozen=True)
class LiveState:
    """What only a live session knows."""

    pid: int | None
    queued: int
    last_seq: int
    pending_permissions: list[dict[str, Any]] = field(default_factory=list)


def session_view(rec: SessionRecord, live: LiveState | None = None) -> dict[str, Any]:
    """A JSON-able view of a session; ``live`` None: known only from the registry (closed)."""
    return {
        "id": rec.id,
        "tenant": rec.tenant,
        "cli_session_id": rec.cli_session_id,
        "state": rec.state,
        "cwd": rec.cwd,
        "model": rec.options.get("model"),
        "permission_mode": rec.options.get("permission_mode"),
        "profile": rec.profile_key,
        "pid": live.pid if live else None,
        "turns": rec.turns,
        "queued": live.queued if live else 0,
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
        "last_active_at": rec.last_active_at,
        "last_timing": rec.last_timing,
        "pending_permissions": live.pending_permissions if live else [],
        "metadata": rec.metadata,
        "error": rec.error,
        "last_seq": live.last_seq if live else None,
    }
