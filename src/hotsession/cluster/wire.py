"""What crosses Ray between an API daemon and a host actor: events and errors as plain data.

Ray pickles whatever a call returns; an exception raised inside an actor comes back wrapped in
``RayTaskError``. Host actors therefore never raise a :class:`HotsessionError` across the wire:
they return ``{"error": exc.to_dict()}`` and the daemon rebuilds the same class from its code, so
the API answers 404 / 409 / 413 / 429 / 503 exactly as on one machine. Events travel as tuples
(smaller to pickle than the dataclass, and the daemon never needs more).
"""

from __future__ import annotations

from typing import Any

from hotsession import errors
from hotsession.events import Event

EventTuple = tuple[str, int, int, str, dict[str, Any] | bytes, float]
"""``(session_id, seq, turn, type, data, t)``; ``data`` is the CLI's own line (bytes) when the
event is one of its messages (``Event.line``), else the dict (hotsession's own events)."""


def _error_classes() -> dict[str, type[errors.HotsessionError]]:
    out: dict[str, type[errors.HotsessionError]] = {}
    stack: list[type[errors.HotsessionError]] = [errors.HotsessionError]
    while stack:
        cls = stack.pop()
        out.setdefault(cls.code, cls)
        stack.extend(cls.__subclasses__())
    return out


_ERRORS = _error_classes()


class NodeLost(errors.HotsessionError):
    """The node holding the session went away during the call (retryable: ask again)."""

    code = "node_lost"
    status = 503


_ERRORS[NodeLost.code] = NodeLost


def error_out(exc: errors.HotsessionError) -> dict[str, Any]:
    """An error as a host actor returns it."""
    return {"error": exc.to_dict()}


def error_in(data: dict[str, Any]) -> errors.HotsessionError:
    """The error a host actor returned, as the class it was raised as."""
    fields = dict(data)
    code = str(fields.pop("code", "internal"))
    message = str(fields.pop("message", "internal error"))
    cls = _ERRORS.get(code, errors.HotsessionError)
    exc = cls.__new__(cls)
    errors.HotsessionError.__init__(exc, message, **fields)
    if cls is errors.HotsessionError and code != "internal":
        exc.code = code  # an error class this side does not know: keep its code
    return exc


def raise_if_error(reply: Any) -> Any:
    """``reply`` unless it is an error reply (then that error is raised)."""
    if isinstance(reply, dict) and set(reply) == {"error"}:
        raise error_in(reply["error"])
    return reply


def event_out(event: Event) -> EventTuple:
    """An event as it crosses the wire: a CLI message stays the line it came as (neither side
    parses or re-encodes it: pickling a bytes object is a copy, a message's dict was walked
    object by object on both sides, and the daemon then encoded it again for its SSE frame)."""
    data: dict[str, Any] | bytes = event.line if event.line is not None else event.data
    return (event.session_id, event.seq, event.turn, event.type, data, event.t)


def event_in(data: EventTuple) -> Event:
    """The event again (a CLI line as ``raw``: its ``data`` is parsed if anybody asks)."""
    sid, seq, turn, kind, payload, t = data
    if isinstance(payload, bytes):
        return Event(sid, seq, turn, kind, None, t, raw=payload)
    return Event(sid, seq, turn, kind, payload, t)
