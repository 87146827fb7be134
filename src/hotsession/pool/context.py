"""What the pool needs of the engine around it: the pool layer owns these protocols.

:class:`PooledSession` is the pool's view of a session (the session layer's ``Session`` fits it
without importing the pool, and the pool never imports the session layer); :class:`PoolContext`
is what the hub gives the pool (settings, the host, the sessions, background tasks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from hotsession.agent import AgentProcess
    from hotsession.config import Config
    from hotsession.host import LocalHost, Placement
    from hotsession.options import SessionOptions
    from hotsession.registry import SessionRecord

T = TypeVar("T")


class PooledSession(Protocol):
    """A live session as the pool sees it: something holding a process it may evict or
    recycle at a turn boundary."""

    @property
    def id(self) -> str:
        """The session's id."""

    @property
    def record(self) -> SessionRecord:
        """Its record (state, profile, last activity)."""

    @property
    def options(self) -> SessionOptions:
        """Its spawn-time options (a recycled process gets the same)."""

    @property
    def cli_session_id(self) -> str:
        """The CLI session id a replacement resumes."""

    @property
    def state(self) -> str:
        """idle / running / ... (only ``idle`` sessions are evicted)."""

    @property
    def current(self) -> object | None:
        """The running turn, if any."""

    @property
    def queued(self) -> int:
        """Prompts waiting behind the running turn."""

    @property
    def closed(self) -> bool:
        """True once closed."""

    @property
    def process(self) -> AgentProcess | None:
        """Its live process, if any."""

    async def evict(self) -> bool:
        """End the process of the idle session; False when there was nothing to do."""

    async def replace_process(self, placement: Placement) -> None:
        """Swap in a new process (the old one is retired)."""

    def take_unused_warm(self, unused_for_s: float = 0.0) -> Placement | None:
        """A resume-ahead ready for over ``unused_for_s`` that nobody used (the caller then
        owns its process)."""


class PoolContext(Protocol):
    """What the hub gives the pool."""

    @property
    def config(self) -> Config:
        """The engine's settings (read at use, so live tuning applies)."""

    @property
    def host(self) -> LocalHost:
        """Spawns and retires the processes (and knows every child's pid)."""

    @property
    def shutting_down(self) -> bool:
        """True once the engine stops."""

    def pooled_sessions(self) -> Iterable[PooledSession]:
        """The open sessions."""

    def spawn_task(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run a background task the engine keeps (cancelled at stop)."""
