"""The error tree of hotsession.

Every error the library raises derives from :class:`HotsessionError` and carries a
machine-readable ``code`` (the API sends it as ``{"error": {"code", "message"}}``) and the HTTP
status the service answers with. Foreign exceptions are translated at the boundary with
``raise X(...) from exc``.

* HotsessionError (code "internal", 500)
  + InvalidRequest ("invalid_request", 422)      bad options, bad prompt
    - PromptTooLarge ("prompt_too_large", 413)  with ``limit``, wherever the prompt comes in
    - BodyTooLarge ("body_too_large", 413)      a request body over the cap (not a prompt's)
  + Forbidden ("forbidden", 403)                 cwd outside the tenant's roots
  + Unauthorized ("unauthorized", 401)
  + NotFound ("not_found", 404)                  unknown (or another tenant's) session
    - ConversationNotFound ("conversation_not_found", 404)  resume of an unknown CLI session id
  + Conflict ("conflict", 409)                   closed session, lease held elsewhere, bad state
    - LeaseConflict ("lease_conflict", 409)
    - StaleEpoch ("stale_epoch", 409)            a session's ownership moved to a newer epoch
  + QueueFull ("queue_full", 429)
  + ShuttingDown ("shutting_down", 503)
  + ProfileFailing ("profile_failing", 503)      spawns of a profile keep failing
  + AgentError ("agent_error", 502)              the CLI failed (exit_code, stderr_tail)
    - AgentStartError ("agent_start_failed", 502)
    - AgentDied ("agent_died", 502)              exited or was killed mid-turn
    - AgentTimeout ("agent_timeout", 504)        watchdog: no output for too long
    - AgentProtocolError ("agent_protocol", 502) corrupt output, line over the limit
  + TurnInterrupted ("interrupted", 409)
  + RegistryError ("registry_error", 503)        the store cannot be written
    - RegistryUnavailable ("registry_unavailable", 503)  the store cannot be reached
  + StateDirBusy ("state_dir_busy", 409)         another hotsession holds the state directory
"""

from __future__ import annotations

from typing import Any


class HotsessionError(Exception):
    """Base of every hotsession error."""

    code = "internal"
    status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The wire form: ``{"code", "message", ...details}``."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        out.update({k: v for k, v in self.details.items() if v is not None})
        return out


class InvalidRequest(HotsessionError):
    code = "invalid_request"
    status = 422


class PromptTooLarge(InvalidRequest):
    code = "prompt_too_large"
    status = 413


class BodyTooLarge(InvalidRequest):
    code = "body_too_large"
    status = 413


class Unauthorized(HotsessionError):
    code = "unauthorized"
    status = 401


class Forbidden(HotsessionError):
    code = "forbidden"
    status = 403


class NotFound(HotsessionError):
    code = "not_found"
    status = 404


class ConversationNotFound(NotFound):
    code = "conversation_not_found"


class Conflict(HotsessionError):
    code = "conflict"
    status = 409


class LeaseConflict(Conflict):
    code = "lease_conflict"


class StaleEpoch(Conflict):
    """A write or claim carried an ownership epoch that is no longer the session's current one.

    Fencing: a node that lost a session (it was re-homed while the node was partitioned or
    slow) must stop driving it. ``details`` hold ``session_id``, the ``epoch`` offered, and the
    ``current_epoch`` and ``owner`` the store holds.
    """

    code = "stale_epoch"


class QueueFull(HotsessionError):
    code = "queue_full"
    status = 429


class ShuttingDown(HotsessionError):
    code = "shutting_down"
    status = 503


class ProfileFailing(HotsessionError):
    code = "profile_failing"
    status = 503


class AgentError(HotsessionError):
    """The Claude Code process failed. ``exit_code`` and ``stderr_tail`` say how."""

    code = "agent_error"
    status = 502

    def __init__(
        self,
        message: str,
        *,
        exit_code: int | None = None,
        stderr_tail: str | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message, exit_code=exit_code, stderr_tail=stderr_tail, **details)
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail


class AgentStartError(AgentError):
    code = "agent_start_failed"


class AgentDied(AgentError):
    code = "agent_died"


class AgentTimeout(AgentError):
    code = "agent_timeout"
    status = 504


class AgentProtocolError(AgentError):
    code = "agent_protocol"


class TurnInterrupted(HotsessionError):
    code = "interrupted"
    status = 409


class RegistryError(HotsessionError):
    code = "registry_error"
    status = 503


class StateDirBusy(HotsessionError):
    """Another hotsession (daemon or library) holds the state directory's lock (``pid``)."""

    code = "state_dir_busy"
    status = 409


class RegistryUnavailable(RegistryError):
    """The store cannot be reached (server down, connection refused or dropped) after retrying."""

    code = "registry_unavailable"
