"""Encoding shared by the SQL stores (SQLite, Postgres): JSON columns and the event row."""

from __future__ import annotations

import json
import logging
from typing import Any

from hotsession.registry.records import EventRecord

log = logging.getLogger("hotsession.registry")


def dumps(value: Any) -> str:
    """A JSON column's text: compact, UTF-8 kept, anything else as its ``str``."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def event_row(ev: EventRecord) -> tuple[Any, ...]:
    """(session_id, seq, turn, type, data, t) of an event (``data``: the CLI's own line when the
    event carries it, else ``data`` encoded)."""
    if ev.line is not None:
        try:
            return (ev.session_id, ev.seq, ev.turn, ev.type, ev.line.decode(), ev.t)
        except UnicodeDecodeError:  # JSON in another encoding than UTF-8 (the CLI writes UTF-8)
            pass
    try:
        data = dumps(ev.data)
    except (TypeError, ValueError) as exc:
        # A circular structure: keep the event (its seq must not leave a hole in the replay)
        # rather than poisoning the whole batch, which would then be retried forever.
        log.error("event %s/%s has unserialisable data: %s", ev.session_id, ev.seq, exc)
        data = dumps({"unserialisable": repr(exc)})
    return (ev.session_id, ev.seq, ev.turn, ev.type, data, ev.t)
