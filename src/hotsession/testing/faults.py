"""Bookkeeping for fault injection: what the client saw, what recovered, what was lost.

Used by the reliability tests (``tests/reliability``) and the soak (``hotsession.testing.soak``).

* :class:`Conversation` drives a session and keeps every event the client received, per turn.
  :meth:`Conversation.probe` runs a turn with a marker and returns how many messages the model
  got for it (the conversation's context: it must grow across a fault). :meth:`Conversation.lost`
  replays the session from the registry and counts the received events that are missing or differ.
* :class:`Tally` / :class:`Ledger` count, per fault, ``injected / recovered / lost`` and the
  outcomes the client saw (``result``, ``result:is_error``, ``error:<code>``); the ledger renders
  the table published in ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hotsession.events import Event
from hotsession.session import Session
from hotsession.testing.model_server import ModelServer


def outcome(event: Event) -> str:
    """A terminal event as the client sees it: ``result``, ``result:is_error``, ``error:X``."""
    if event.type == "result":
        return "result:is_error" if event.data.get("is_error") else "result"
    return f"{event.type}:{event.data.get('code')}"


def new_marker() -> str:
    """A unique ``[[marker:ID]]`` argument."""
    return uuid.uuid4().hex[:12]


def context_size(server: ModelServer, marker: str) -> int:
    """Messages the model received in the last main request carrying ``marker`` (0: none)."""
    sizes = [int(e["n_messages"]) for e in server.log() if e.get("main") and marker in e["markers"]]
    return sizes[-1] if sizes else 0


class Conversation:
    """A session plus every event its client received (to prove nothing was lost)."""

    def __init__(self, session: Session, server: ModelServer | None = None) -> None:
        self.session = session
        self.server = server
        self.received: dict[int, Event] = {}  # seq -> event, as the client got it
        self.outcomes: Counter[str] = Counter()

    async def turn(self, prompt: str) -> list[Event]:
        """Send a prompt, collect its events until the terminal one."""
        return await self.collect(self.session.send(prompt))

    async def collect(self, turn: Any) -> list[Event]:
        """Iterate a :class:`~hotsession.session.Turn` (already sent), keeping its events."""
        events: list[Event] = [e async for e in turn]
        for e in events:
            self.received[e.seq] = e
        if events:
            self.outcomes[outcome(events[-1])] += 1
        return events

    async def probe(self, say: str = "probe") -> int:
        """A normal turn with a marker; returns the model's message count for it (0: it failed)."""
        assert self.server is not None, "probe() needs the model server"
        marker = new_marker()
        events = await self.turn(f"[[marker:{marker}]] [[say:{say}]]")
        if not events or events[-1].type != "result" or events[-1].data.get("is_error"):
            return 0
        return context_size(self.server, marker)

    async def lost(self, session: Session | None = None) -> int:
        """Received events missing from (or different in) the replay; also checks seq order."""
        replay = [e async for e in (session or self.session).events(after=0, follow=False)]
        by_seq = {e.seq: e for e in replay}
        seqs = [e.seq for e in replay]
        lost = 0
        if seqs != list(range(1, len(seqs) + 1)):
            lost += 1  # a gap or a duplicate in the log
        for seq, got in self.received.items():
            stored = by_seq.get(seq)
            if (
                stored is None
                or stored.type != got.type
                or stored.turn != got.turn
                or _canon(stored.data) != _canon(got.data)
            ):
                lost += 1
        return lost


def _canon(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, default=str)


@dataclass
class Tally:
    """One fault's figures."""

    fault: str
    injected: int = 0
    recovered: int = 0
    lost: int = 0
    client_saw: Counter[str] = field(default_factory=Counter)
    how: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "fault": self.fault,
            "injected": self.injected,
            "recovered": self.recovered,
            "lost": self.lost,
            "client_saw": dict(self.client_saw),
            "how": self.how,
        }


class Ledger:
    """Tallies of every fault of a run, in the order they were first counted."""

    def __init__(self) -> None:
        self.tallies: dict[str, Tally] = {}

    def tally(self, fault: str, how: str = "") -> Tally:
        """The tally of ``fault`` (created on first use)."""
        if fault not in self.tallies:
            self.tallies[fault] = Tally(fault, how=how)
        return self.tallies[fault]

    def to_list(self) -> list[dict[str, Any]]:
        """JSON form."""
        return [t.to_dict() for t in self.tallies.values()]

    def markdown(self) -> str:
        """The figures as a Markdown table."""
        rows = [
            "| fault | injected | recovered | lost | the client saw |",
            "|---|---:|---:|---:|---|",
        ]
        for t in self.tallies.values():
            saw = ", ".join(f"`{k}` ×{v}" for k, v in sorted(t.client_saw.items()))
            rows.append(f"| {t.fault} | {t.injected} | {t.recovered} | {t.lost} | {saw} |")
        return "\n".join(rows)
