"""What a session needs from the engine around it, and what it tells that engine.

The session layer owns these protocols; the hub (the composition root) implements them. So the
session never imports the hub, and the hub never reaches into a session's private state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from hotsession.config import Config
    from hotsession.host import ProcessHost
    from hotsession.registry import Registry
    from hotsession.session.actor import Session

T = TypeVar("T")


class SessionContext(Protocol):
    """The parts of the engine a session uses: settings, the store, the process host."""

    @property
    def config(self) -> Config:
        """The engine's settings (read at use, so live tuning applies)."""

    @property
    def registry(self) -> Registry:
        """The durable store of sessions, turns and events."""

    @property
    def host(self) -> ProcessHost:
        """Where the session's processes come from and go back to."""

    @property
    def shutting_down(self) -> bool:
        """True once the engine stops: no new prompts."""

    def check_registry(self, session: Session) -> None:
        """Raise ``RegistryError`` while the store cannot be written (prompts are refused)."""

    def registry_task(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run a registry write in the background (failures are logged and noted)."""

    def note_registry(self, failure: BaseException | None) -> None:
        """The outcome of a write to the store (None: it succeeded)."""


class SessionListener(Protocol):
    """Told about a session's changes; called on the turn's path, so it must be quick."""

    def session_state_changed(self, session: Session) -> None:
        """The session's ``state`` changed (or it opened)."""

    async def turn_finished(self, session: Session) -> None:
        """A turn's bookkeeping is done; the next queued prompt runs after this returns."""
