"""The permission broker: tool calls of a session's process waiting for allow / deny.

The CLI asks over its control channel (``can_use_tool``); the broker turns each request into a
``permission_request`` event, waits for an answer (``answer``, from the API) or the timeout
(a deny), and emits ``permission_resolved``. A request the CLI withdraws
(``control_cancel_request``) resolves as ``cancelled``. Recently resolved ids are remembered, so
a late answer is a conflict rather than an unknown id.

Delegation. A drop-in client attached to the session answers every control request of the CLI
itself (``delegate``: can_use_tool, hook_callback, mcp_message); the turn's watchdog waits while
it does.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hotsession.errors import Conflict, HotsessionError, InvalidRequest, NotFound
from hotsession.events import Event
from hotsession.session.turn import Turn

_RESOLVED_KEPT = 1000

ControlDelegate = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass
class PermissionRequest:
    """A tool call waiting for allow / deny."""

    request_id: str
    tool_name: str
    input: dict[str, Any]
    tool_use_id: str | None
    turn: int
    future: asyncio.Future[dict[str, Any]] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Wire form."""
        return {
            "request_id": self.request_id,
            "tool_name": self.tool_name,
            "input": self.input,
            "tool_use_id": self.tool_use_id,
            "turn": self.turn,
        }


class PermissionOwner(Protocol):
    """What the broker needs of its session."""

    @property
    def current(self) -> Turn | None:
        """The running turn."""

    def emit(
        self, turn: Turn | None, kind: str, data: dict[str, Any], *, turn_no: int = 0
    ) -> Event:
        """Publish one of the session's events."""

    def permission_wait_began(self) -> None:
        """A request waits for a human: the session waits, the watchdog pauses."""

    def permissions_answered(self) -> None:
        """No request waits any more: the turn runs on, the watchdog resumes."""

    def pause_watchdog(self) -> None:
        """Someone outside the CLI answers a request: the turn's watchdog waits."""

    def resume_watchdog(self) -> None:
        """Nobody outside the CLI answers anything any more: the watchdog runs again."""


class PermissionBroker:
    """Pending and recently resolved permission requests of one session."""

    def __init__(self, owner: PermissionOwner, timeout_s: Callable[[], float]) -> None:
        self._owner = owner
        self._timeout_s = timeout_s
        self.pending: dict[str, PermissionRequest] = {}
        self._resolved: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.delegate: ControlDelegate | None = None
        self._delegated = 0  # delegated requests awaiting their answer

    @property
    def waiting(self) -> bool:
        """True while a request waits for an answer from outside the CLI (the watchdog waits)."""
        return bool(self.pending) or self._delegated > 0

    def views(self) -> list[dict[str, Any]]:
        """The pending requests in wire form."""
        return [p.to_dict() for p in self.pending.values()]

    async def on_control_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one of the CLI's control requests (only ``can_use_tool`` is known, unless a
        delegate answers them all)."""
        if self.delegate is not None:
            return await self._delegated_answer(self.delegate, request)
        if request.get("subtype") != "can_use_tool":
            raise HotsessionError(f"unsupported control request {request.get('subtype')!r}")
        owner = self._owner
        turn = owner.current
        request_id = str(request["request_id"])
        tool_input = request.get("input") or {}
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        pending = PermissionRequest(
            request_id=request_id,
            tool_name=str(request.get("tool_name")),
            input=tool_input,
            tool_use_id=request.get("tool_use_id"),
            turn=turn.number if turn else 0,
            future=fut,
        )
        self.pending[request_id] = pending
        data = pending.to_dict()
        for key in ("title", "description", "decision_reason", "blocked_path"):
            if request.get(key) is not None:
                data[key] = request[key]
        owner.emit(turn, "permission_request", data)
        owner.permission_wait_began()
        timeout = self._timeout_s()
        by = "client"
        try:
            async with asyncio.timeout(timeout):
                answer = await fut
        except TimeoutError:
            by = "timeout"
            answer = {
                "behavior": "deny",
                "message": f"No permission answer within {timeout:g}s; denied by hotsession.",
            }
        except asyncio.CancelledError:
            self._done(turn, request_id, "cancelled", by="agent")
            raise
        self._done(turn, request_id, answer["behavior"], by=by)
        if answer["behavior"] == "allow" and answer.get("updatedInput") is None:
            answer["updatedInput"] = tool_input
        return answer

    async def _delegated_answer(
        self, delegate: ControlDelegate, request: dict[str, Any]
    ) -> dict[str, Any]:
        self._delegated += 1
        self._owner.pause_watchdog()
        try:
            return await delegate(request)
        finally:
            self._delegated -= 1
            if not self.waiting:
                self._owner.resume_watchdog()

    def on_cancel(self, request_id: str) -> None:
        """The CLI withdrew a request."""
        pending = self.pending.get(request_id)
        if pending is not None and not pending.future.done():
            pending.future.cancel()

    def _done(self, turn: Turn | None, request_id: str, outcome: str, *, by: str) -> None:
        self.pending.pop(request_id, None)
        self._resolved[request_id] = outcome
        while len(self._resolved) > _RESOLVED_KEPT:
            self._resolved.popitem(last=False)
        self._owner.emit(
            turn, "permission_resolved", {"request_id": request_id, "outcome": outcome, "by": by}
        )
        if not self.pending:
            self._owner.permissions_answered()

    def answer(
        self,
        request_id: str,
        behavior: str,
        *,
        updated_input: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> None:
        """Allow or deny a pending tool call (``updated_input`` edits what the tool gets)."""
        pending = self.pending.get(request_id)
        if request_id in self._resolved or (pending is not None and pending.future.done()):
            raise Conflict(
                "that permission request was already resolved",
                request_id=request_id,
                outcome=self._resolved.get(request_id),
            )
        if pending is None:
            raise NotFound("no pending permission request with that id", request_id=request_id)
        if behavior == "allow":
            answer: dict[str, Any] = {"behavior": "allow", "updatedInput": updated_input}
        elif behavior == "deny":
            answer = {"behavior": "deny", "message": message or "Denied by the user."}
        else:
            raise InvalidRequest("behavior must be 'allow' or 'deny'", field="behavior")
        pending.future.set_result(answer)
