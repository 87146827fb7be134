"""Sessions: one conversation each, with its queue of turns, its process and its resume.

The package holds one noun per module:

* ``actor`` — :class:`Session`, the actor that runs a session's turns one at a time;
* ``turn`` — :class:`Turn`, one prompt's stream of events, and the one prompt check;
* ``permissions`` — the broker of tool calls waiting for allow / deny;
* ``fanout`` — event numbering, the log, live subscribers and the one event replay;
* ``views`` — the one view of a session that listings show;
* ``between`` — :class:`BetweenTurns`, the session's process as a front reads and writes it
  between turns (what the idle CLI writes on its own, control requests);
* ``context`` — what a session needs of the engine (:class:`SessionContext`) and tells it
  (:class:`SessionListener`); the hub implements both.
"""

from hotsession.session.actor import Session
from hotsession.session.between import BetweenTurns
from hotsession.session.context import SessionContext, SessionListener
from hotsession.session.fanout import EventFanout, Subscription, replay
from hotsession.session.permissions import PermissionBroker, PermissionRequest
from hotsession.session.turn import HANDOVER_S, Turn, check_prompt, prompt_too_large
from hotsession.session.views import LiveState, session_view

__all__ = [
    "HANDOVER_S",
    "BetweenTurns",
    "EventFanout",
    "LiveState",
    "PermissionBroker",
    "PermissionRequest",
    "Session",
    "SessionContext",
    "SessionListener",
    "Subscription",
    "Turn",
    "check_prompt",
    "prompt_too_large",
    "replay",
    "session_view",
]
