"""Durable state: the registry interface, its records, and the SQLite implementation."""

from hotsession.registry.base import Registry
from hotsession.registry.memory import MemoryRegistry
from hotsession.registry.records import (
    EventRecord,
    ProcessRecord,
    SessionRecord,
    SessionState,
    TurnRecord,
    TurnStatus,
)
from hotsession.registry.sqlite import SqliteRegistry

__all__ = [
    "EventRecord",
    "MemoryRegistry",
    "ProcessRecord",
    "Registry",
    "SessionRecord",
    "SessionState",
    "SqliteRegistry",
    "TurnRecord",
    "TurnStatus",
]
