"""Events a session emits, and the per-turn timing breakdown carried by ``result``."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

EventType = Literal[
    "queued",  # the prompt waits behind another turn
    "message",  # a CLI message, as the CLI sent it
    "permission_request",  # a tool call waits for allow / deny
    "permission_resolved",  # that request was answered, timed out or withdrawn
    "result",  # the turn ended; carries the timing breakdown
    "error",  # the turn failed; carries a machine-readable code
]
TERMINAL_TYPES = frozenset({"result", "error"})


class Event:
    """One event; ``seq`` is the session's sequence number (the SSE ``id:``).

    ``raw``: the CLI's own line when the event is one of its messages passed through unparsed
    (a partial message: hundreds a turn). ``data`` is then parsed from it on first use, and the
    SSE framing writes ``raw`` as it came (parsing and re-encoding a token delta cost ~2/3 of the
    daemon's CPU per delta). Hand-written rather than a dataclass for that lazy ``data``.

    ``line``: the CLI's own line of any of its messages, parsed or not (``raw`` when given): the
    SSE frame and the stored event are that line rather than ``data`` encoded again (a tool's
    result of 100 KB took ~1 ms to encode, twice). None for hotsession's own events.
    """

    __slots__ = ("_data", "line", "raw", "seq", "session_id", "t", "turn", "type")

    def __init__(
        self,
        session_id: str,
        seq: int,
        turn: int,
        type: str,
        data: dict[str, Any] | None,
        t: float | None = None,
        *,
        raw: bytes | None = None,
        line: bytes | None = None,
    ) -> None:
        self.session_id = session_id
        self.seq = seq
        self.turn = turn
        self.type = type
        self._data = data if raw is None else None
        self.raw = raw
        self.line = raw if line is None else line
        self.t = time.time() if t is None else t

    @property
    def data(self) -> dict[str, Any]:
        """The event's JSON payload (a CLI message for ``message`` events)."""
        if self._data is None:
            parsed = json.loads(self.raw) if self.raw is not None else {}
            self._data = parsed if isinstance(parsed, dict) else {}
        return self._data

    @property
    def terminal(self) -> bool:
        """True for the last event of a turn."""
        return self.type in TERMINAL_TYPES

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (self.session_id, self.seq, self.turn, self.type, self.data, self.t) == (
            other.session_id,
            other.seq,
            other.turn,
            other.type,
            other.data,
            other.t,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable payload, as before

    def __repr__(self) -> str:
        return (
            f"Event(session_id={self.session_id!r}, seq={self.seq}, turn={self.turn}, "
            f"type={self.type!r}, data={self.data!r}, t={self.t!r})"
        )


class TurnClock:
    """Collects the timing of one turn from monotonic timestamps.

    * queued: prompt accepted → turn started (waiting behind other turns)
    * claim: turn started → process ready (0 when hot; a spawn, a claim or a resume otherwise)
    * ttfe: prompt written → first CLI event
    * time_to_request: as the CLI reports it (``time_to_request_ms``), when it does
    * waiting: a permission question asked → answered (a human's time, not the tool's); the
      broker's first pending request opens it, its last answer closes it
    * tools: the sum of tool_use → tool_result intervals, less the waiting inside them
    * thinking: what is left of the turn after ttfe, tools and waiting (the model's time)
    """

    __slots__ = (
        "_open_tools",
        "accepted",
        "claim_offset",
        "first_event",
        "process_ready",
        "source",
        "started",
        "tool_calls",
        "tools_s",
        "waiting_s",
        "waiting_since",
        "written",
    )

    def __init__(self, accepted: float) -> None:
        self.accepted = accepted
        self.started = accepted
        self.process_ready = accepted
        self.written = accepted
        self.first_event: float | None = None
        self.tool_calls = 0
        self.tools_s = 0.0
        self.waiting_s = 0.0
        self.waiting_since: float | None = None  # a permission question is open since then
        self.source = "hot"
        self.claim_offset = 0.0  # process obtained before the turn began (an /v1/ask's open)
        self._open_tools: dict[str, float] = {}

    def observe(self, msg: dict[str, Any], now: float) -> None:
        """Account one CLI message."""
        if self.first_event is None:
            self.first_event = now
        kind = msg.get("type")
        if kind not in ("assistant", "user"):
            return
        content = (msg.get("message") or {}).get("content")
        if not isinstance(content, list):
            return
        for block in content:
            if not isinstance(block, dict):
                continue
            if kind == "assistant" and block.get("type") == "tool_use":
                self.tool_calls += 1
                self._open_tools[str(block.get("id"))] = now
            elif kind == "user" and block.get("type") == "tool_result":
                began = self._open_tools.pop(str(block.get("tool_use_id")), None)
                if began is not None:
                    self.tools_s += now - began

    def wait_began(self, now: float) -> None:
        """A permission question is open (a second one while the first waits changes nothing)."""
        if self.waiting_since is None:
            self.waiting_since = now

    def wait_ended(self, now: float) -> None:
        """No permission question is open any more."""
        if self.waiting_since is not None:
            self.waiting_s += now - self.waiting_since
            self.waiting_since = None

    def breakdown(self, now: float, result: dict[str, Any] | None = None) -> dict[str, Any]:
        """The timing dict of the ``result`` event (milliseconds)."""

        def ms(x: float) -> float:
            return round(max(0.0, x) * 1000, 2)

        run = now - self.written
        ttfe = (self.first_event - self.written) if self.first_event is not None else run
        waiting = self.waiting_s
        if self.waiting_since is not None:  # the turn ended with a question open
            waiting += now - self.waiting_since
        # The CLI asks between a tool_use and its tool_result, so the wait is inside that
        # interval: it leaves tools (what is left over, if any, leaves thinking).
        tools = max(0.0, self.tools_s - waiting)
        out: dict[str, Any] = {
            "queued_ms": ms(self.started - self.accepted - self.claim_offset),
            "claim_ms": ms(self.process_ready - self.started + self.claim_offset),
            "ttfe_ms": ms(ttfe),
            "thinking_ms": ms(run - ttfe - tools - waiting),
            "tools_ms": ms(tools),
            "waiting_ms": ms(waiting),
            "tool_calls": self.tool_calls,
            "total_ms": ms(now - self.accepted),
            "source": self.source,
        }
        if result is not None:
            for key in ("time_to_request_ms", "duration_ms", "duration_api_ms", "ttft_ms"):
                if isinstance(result.get(key), (int, float)):
                    out[key] = result[key]
        return out
