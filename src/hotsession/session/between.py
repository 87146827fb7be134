"""Between turns: what a front reads of a session's process, and writes to it, outside a turn.

Design
======
A session owns its process: during a turn its runner alone reads what the CLI writes
(``Session._pump``). Between turns the CLI still writes on its own — ``session_state_changed``
after each turn (the Agent SDK waits for it), task notifications, answers to control requests
sent between turns — and a front that relays the CLI's whole stream to a client of its own (the
drop-in, ``hotsession.dropin.bridge``) needs those lines, and needs to send the CLI control
requests and other lines. A front asks the session (``Session.between_turns``) for this view
instead of holding the transport.

One view per process the session adopts: a resumed or recycled process is a new view, so a front
can keep notes about the process it talked to (what it initialized it with) keyed by the view.

The front stops reading before it starts a turn: cancelling a pending ``next_message`` loses
nothing (a message is taken from the process only when it is delivered), and what was delivered
is the front's. Control requests and other lines may be sent at any time, in a turn too (the
process routes control answers itself, never through the turn's messages).
"""

from __future__ import annotations

from typing import Any

from hotsession.agent import AgentProcess


class BetweenTurns:
    """A session's live process as a front sees it between turns."""

    __slots__ = ("__weakref__", "_proc")

    def __init__(self, proc: AgentProcess) -> None:
        self._proc = proc

    @property
    def alive(self) -> bool:
        """True until the process is known to be gone."""
        return self._proc.alive

    @property
    def init_response(self) -> dict[str, Any] | None:
        """The CLI's answer to the ``initialize`` the process was started with."""
        return self._proc.init_response

    async def next_message(self) -> dict[str, Any]:
        """The next message the idle process wrote; raises the process's ``AgentError`` once it
        is gone. Only while no turn runs (a turn's messages are the session's)."""
        return await self._proc.next_message()

    async def request(self, subtype: str, *, timeout: float, **fields: Any) -> dict[str, Any]:
        """A control request to the CLI and its answer (``AgentTimeout`` past ``timeout``)."""
        return await self._proc.request(subtype, timeout=timeout, **fields)

    def drain_idle(self) -> list[dict[str, Any]]:
        """Take what the idle process wrote so far, without waiting (only while no turn runs and
        no ``next_message`` is pending)."""
        return self._proc.drain_idle()

    async def send(self, message: dict[str, Any]) -> None:
        """Write one stream-json line to the CLI (``AgentDied`` when it is gone)."""
        await self._proc.send(message)
