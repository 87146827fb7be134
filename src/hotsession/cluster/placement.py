"""Where a new session goes: a node with a ready spare of its profile, else the most headroom.

Figures come from each host actor's ``stats`` (refreshed in the background and after each
placement); a placement takes the spare it counted on out of the cached figures, so a burst of
opens spreads over the nodes' spares instead of piling onto the first one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SESSION_MB = 120.0
"""What one more live session is assumed to take until the node's next figures say."""


@dataclass
class NodeFigures:
    """What placement knows of one node."""

    node: str
    spares: dict[str, int] = field(default_factory=dict)  # profile key → ready spares
    headroom_mb: float = 0.0
    sessions: int = 0

    @classmethod
    def from_stats(cls, stats: dict[str, Any]) -> NodeFigures:
        """From a host actor's ``stats()``."""
        mem = stats.get("memory") or {}
        headroom = mem.get("headroom_mb")
        if headroom is None:
            headroom = mem.get("available_mb") or 0.0
        return cls(
            node=str(stats["node"]),
            spares=dict(stats.get("spares") or {}),
            headroom_mb=float(headroom),
            sessions=int(stats.get("sessions") or 0),
        )


def choose(nodes: Iterable[NodeFigures], profile_key: str) -> NodeFigures | None:
    """The node for a new session of ``profile_key`` (None when there is no node)."""
    candidates = list(nodes)
    if not candidates:
        return None
    with_spare = [n for n in candidates if n.spares.get(profile_key, 0) > 0]
    if with_spare:
        best = max(with_spare, key=lambda n: (n.spares[profile_key], n.headroom_mb))
        best.spares[profile_key] -= 1
    else:
        # Ties (equal headroom) go to the node with fewer sessions.
        best = max(candidates, key=lambda n: (n.headroom_mb, -n.sessions))
        best.headroom_mb -= SESSION_MB
    best.sessions += 1
    return best
