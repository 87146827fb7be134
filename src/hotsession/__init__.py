"""hotsession: Claude Code sessions that answer instantly.

Persistent stream-json sessions, a warm pool of spare processes and transparent ``--resume``.

The names below are imported on first use (PEP 562), so a command that needs none of them (the
``hotsession-claude`` shim, whose start-up time users pay on every call) does not load the engine.
"""

from __future__ import annotations

# Not ``typing.TYPE_CHECKING``: importing typing costs the shim several milliseconds.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from hotsession.config import Config
    from hotsession.errors import HotsessionError
    from hotsession.events import Event
    from hotsession.hub import Hotsession
    from hotsession.options import SessionOptions
    from hotsession.session import Session, Turn

__version__ = "0.1.0"

_LAZY = {
    "Config": "hotsession.config",
    "Event": "hotsession.events",
    "Hotsession": "hotsession.hub",
    "HotsessionError": "hotsession.errors",
    "Session": "hotsession.session",
    "SessionOptions": "hotsession.options",
    "Turn": "hotsession.session",
}

__all__ = [
    "Config",
    "Event",
    "Hotsession",
    "HotsessionError",
    "Session",
    "SessionOptions",
    "Turn",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hotsession' has no attribute {name!r}")
    import importlib  # here: the package ``importlib`` costs the shim ~1 ms at start-up

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
