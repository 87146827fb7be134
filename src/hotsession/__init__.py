"""hotsession: Claude Code sessions that answer instantly.

Persistent stream-json sessions, a warm pool of spare processes and transparent ``--resume``.
"""

from hotsession.config import Config
from hotsession.errors import HotsessionError
from hotsession.events import Event
from hotsession.hub import Hotsession
from hotsession.options import SessionOptions
from hotsession.session import Session, Turn

__version__ = "0.1.0"

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
