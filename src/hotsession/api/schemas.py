"""Request bodies at the HTTP edge (pydantic validates them; the engine never sees pydantic).

Unknown fields are refused (422), so a typo in an option never silently falls back to a
default. Responses are plain dicts built from the engine's own snapshots; events are never
validated per event (the SSE hot path serialises each one once with :mod:`json`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PermissionModeName = Literal[
    "default", "acceptEdits", "plan", "bypassPermissions", "dontAsk", "auto"
]


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
    permission_mode: PermissionModeName | None = None
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
