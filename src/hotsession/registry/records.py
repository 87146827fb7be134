"""Plain records kept by a registry: sessions, turns, events and child processes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

SessionState = Literal[
    "starting",  # process being spawned or claimed
    "idle",  # hot: a live process waits for the next prompt
    "running",  # a turn is in progress
    "waiting_permission",  # a turn waits for a permission answer
    "evicted",  # no process; the next turn resumes with --resume
    "failed",  # the last spawn failed; the next turn tries again
    "closed",  # closed by the user; kept for listing and replay
]

TurnStatus = Literal["queued", "running", "done", "error", "interrupted"]


def now() -> float:
    """Wall-clock seconds, the unit of every timestamp in the registry."""
    return time.time()


@dataclass
class SessionRecord:
    """One conversation: hotsession's id and the CLI's session id, with its spawn options."""

    id: str
    tenant: str
    cli_session_id: str
    cwd: str
    options: dict[str, Any]
    profile_key: str
    state: SessionState = "starting"
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)
    last_active_at: float = field(default_factory=now)
    turns: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None
    last_timing: dict[str, Any] | None = None
    error: str | None = None
    closed_at: float | None = None


@dataclass
class TurnRecord:
    """One prompt and what became of it; ``timing`` holds the breakdown of the result event."""

    session_id: str
    turn: int
    prompt: str
    status: TurnStatus = "queued"
    queued_at: float = field(default_factory=now)
    started_at: float | None = None
    ended_at: float | None = None
    timing: dict[str, Any] | None = None
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class EventRecord:
    """One event of a session's stream; ``seq`` is unique and increasing per session."""

    session_id: str
    seq: int
    turn: int
    type: str
    data: dict[str, Any]
    t: float
    # The CLI's own line of ``data`` when the event is one of its messages: a SQL store writes
    # it as the event's JSON instead of encoding ``data`` again (not part of the record's value).
    line: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ProcessRecord:
    """A child process the daemon started, kept so a restarted daemon can end orphans."""

    pid: int
    create_time: float
    role: str  # "session" | "spare" | "warm"
    session_id: str | None = None
    cli_session_id: str | None = None


@dataclass(frozen=True)
class Ownership:
    """Which node drives a session, and the epoch (fencing token) of that ownership.

    ``epoch`` grows by one at every claim, never goes back, and is 0 for a session never
    claimed. ``node`` is None after a release. Times are the store's clock (Postgres: the
    server's), so lease ages compare across machines.
    """

    session_id: str
    node: str | None
    epoch: int
    claimed_at: float
    renewed_at: float
