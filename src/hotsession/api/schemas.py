"""Request bodies at the HTTP edge (pydantic validates them; the engine never sees pydantic),
and the response schemas of the OpenAPI document.

Unknown request fields are refused (422), so a typo in an option never silently falls back to a
default. Responses are plain dicts built from the engine's own snapshots, described by the
``*Out`` models below but not validated per request; events are never validated per event (the
SSE hot path serialises each one once with :mod:`json`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hotsession.options import PermissionMode
from hotsession.registry.records import SessionState, TurnStatus


def _check_tool(rule: str) -> str:
    # Tool rules go to the CLI as one comma-joined argv value: a comma would split a rule, a
    # newline or a leading dash would be read as something else.
    if not rule.strip() or "," in rule or "\n" in rule or "\x00" in rule or rule.startswith("-"):
        raise ValueError(f"invalid tool rule {rule!r}")
    return rule


def _check_text(value: Any, where: str) -> None:
    # JSON may carry lone surrogates ("\ud800"): Python keeps them in str, but they cannot be
    # encoded as UTF-8 for the CLI's argv, its stdin or the registry; refuse them here (422).
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where}: text must be valid Unicode (no lone surrogates)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where)
            _check_text(item, where)
    elif isinstance(value, list):
        for item in value:
            _check_text(item, where)


class Strict(BaseModel):
    """Unknown fields refused; every string valid Unicode."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _valid_text(self) -> Strict:
        for name, value in self.__dict__.items():
            _check_text(value, name)
        return self


class SessionOptionsIn(Strict):
    """Options of a new session (its profile)."""

    cwd: str | None = Field(
        default=None, description="Working directory; the tenant's first root if omitted."
    )
    model: str | None = Field(default=None, min_length=1, max_length=200)
    # The one list of permission modes (``hotsession.options``): the schema cannot drift.
    permission_mode: PermissionMode | None = None
    allowed_tools: list[str] | None = Field(default=None, max_length=500)
    disallowed_tools: list[str] | None = Field(default=None, max_length=500)
    system_prompt: str | None = Field(
        default=None, description="Replaces Claude Code's system prompt."
    )
    append_system_prompt: str | None = None
    resume: str | None = Field(
        default=None, description="A Claude Code session id (UUID) to continue."
    )
    fork: bool = Field(default=False, description="With resume: continue a copy under a new id.")
    metadata: dict[str, Any] | None = Field(
        default=None, description="Free-form, kept with the session."
    )
    include_partial_messages: bool = Field(
        default=False,
        description=(
            "Stream the reply as the model writes it: each of the CLI's `stream_event` "
            "messages (token deltas) is a `message` event of its own, before the complete "
            "`assistant` message."
        ),
    )

    @field_validator("allowed_tools", "disallowed_tools")
    @classmethod
    def _tools(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for rule in value:
                _check_tool(rule)
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("-") or not value.strip()):
            raise ValueError("invalid model name")
        return value

    def option_fields(self) -> dict[str, Any]:
        """The fields ``Hotsession.open`` takes as session options."""
        out: dict[str, Any] = {}
        for name in (
            "model",
            "permission_mode",
            "allowed_tools",
            "disallowed_tools",
            "system_prompt",
            "append_system_prompt",
        ):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


class AskIn(SessionOptionsIn):
    """A quick turn: a new session's options plus the first prompt."""

    prompt: str = Field(description="The prompt of the turn.")


class TurnIn(Strict):
    """A prompt for an open session."""

    prompt: str


class PermissionAnswerIn(Strict):
    """The answer to a ``permission_request`` event."""

    behavior: Literal["allow", "deny"]
    updated_input: dict[str, Any] | None = Field(
        default=None, description="allow only: the tool input to use instead of the requested one."
    )
    message: str | None = Field(default=None, description="deny only: told to the model.")


# -- responses ------------------------------------------------------------------------------------
#
# What the routes answer, for the OpenAPI document (``responses=`` on each route). The routes build
# plain dicts and do not validate them per request (the hot path stays free of pydantic); the
# hostile-input test checks every answer against these schemas. Objects allow fields beyond the
# listed ones (``extra="allow"``), so a client written against the document keeps working when a
# field is added.


class Open(BaseModel):
    """A response object: the listed fields, and possibly more."""

    model_config = ConfigDict(extra="allow")


class ErrorDetail(Open):
    """What went wrong, machine-readable; some codes carry more fields (``limit``, ``field``,
    ``errors``, ``session_id``, ``exit_code``, ``stderr_tail``)."""

    code: str = Field(description="Machine-readable, e.g. `not_found`, `queue_full`.")
    message: str = Field(description="For a human.")


class ErrorOut(BaseModel):
    """Every error: ``{"error": {"code", "message", ...}}``."""

    error: ErrorDetail


class MemoryOut(Open):
    """A process tree's memory in MB (``pss_mb`` only where asked for: one session's details)."""

    anon_mb: float | None = None
    rss_mb: float | None = None
    pss_mb: float | None = None


class TimingOut(Open):
    """A turn's timing in milliseconds (docs/api.md, "timing")."""

    queued_ms: float = 0
    claim_ms: float = 0
    ttfe_ms: float = 0
    thinking_ms: float = 0
    tools_ms: float = 0
    waiting_ms: float = Field(
        default=0, description="Permission questions open: asked → answered (a human's time)."
    )
    tool_calls: int = 0
    total_ms: float = 0
    source: str | None = Field(default=None, description="hot, warm, spare, spawn, resume, ...")


class PendingPermissionOut(Open):
    """A permission request waiting for an answer."""

    request_id: str
    tool_name: str
    input: dict[str, Any]
    tool_use_id: str | None = None
    turn: int


class SessionOut(Open):
    """A session as listings show it."""

    id: str
    tenant: str
    cli_session_id: str
    state: SessionState
    cwd: str
    model: str | None
    permission_mode: str | None
    profile: str = Field(description="The key of its profile (equal options, equal key).")
    pid: int | None
    turns: int
    queued: int
    created_at: float = Field(description="Unix time.")
    updated_at: float
    last_active_at: float | None
    last_timing: TimingOut | None
    pending_permissions: list[PendingPermissionOut]
    metadata: dict[str, Any]
    error: str | None
    source: str | None = Field(description="How its process came: spare, spawn, resume.")
    closed_at: float | None
    memory: MemoryOut | None = Field(
        default=None, description="Its process tree's memory (null without a process)."
    )
    last_seq: int | None = Field(default=None, description="The seq of its newest event.")


class TurnSummaryOut(Open):
    """One of a session's recent turns."""

    turn: int
    status: TurnStatus
    prompt: str = Field(description="Its first 200 characters.")
    queued_at: float
    started_at: float | None
    ended_at: float | None
    timing: TimingOut | None
    error_code: str | None
    error_message: str | None


class SessionDetailOut(SessionOut):
    """One session, with its recent turns."""

    recent_turns: list[TurnSummaryOut]


class SessionListOut(BaseModel):
    """The tenant's sessions."""

    sessions: list[SessionOut]


class InterruptOut(BaseModel):
    """``interrupted`` is false when no turn was running."""

    id: str
    interrupted: bool


class WarmOut(BaseModel):
    """``warming`` is false when there was nothing to do."""

    id: str
    warming: bool


class PermissionAnsweredOut(BaseModel):
    """The answer was passed to the CLI."""

    request_id: str
    behavior: Literal["allow", "deny"]


class PoolProfileOut(Open):
    """One profile of the warm pool (or, ``pooled`` false, of live sessions it never served)."""

    profile: str
    tenant: str
    cwd: str
    model: str | None
    permission_mode: str | None
    client: str | None = Field(
        None,
        description='"hotsession-claude" when a drop-in client\'s flags or initialize fields '
        "are part of the profile; null for the API, the CLI and the library.",
    )
    flags: list[str] = Field(
        default_factory=list,
        description="What sets the profile apart besides cwd, tenant, model and permission "
        "mode, in short words: other options not at their default, a drop-in client's flags, "
        "the names of its initialize fields and environment variables.",
    )
    ready: int
    spawning: int
    live_sessions: int
    hits: int
    misses: int
    hit_rate: float | None
    lambda_per_s: float
    tau_s: float | None
    target: int
    min: int
    max: int | None
    memory_mb: float
    failing: str | None
    pooled: bool


class PoolMemoryOut(Open):
    """The pool's memory figures in MB."""

    used_mb: float
    budget_mb: float
    spares_mb: float
    sessions_mb: float


class PoolOut(Open):
    """The warm pool's statistics (``enabled`` false: no pool, ``profiles`` empty)."""

    enabled: bool
    profiles: list[PoolProfileOut]
    memory: PoolMemoryOut | None
    evictions: dict[str, int]
    recycles: dict[str, int]
    spawned_total: int = Field(description="Agent processes started, as hotsession_spawns_total.")


class CliOut(BaseModel):
    """The Claude Code CLI in use."""

    path: str | None
    version: str | None


class HealthOut(BaseModel):
    """The daemon is up."""

    status: Literal["ok"]
    version: str
    cli: CliOut
