"""Durable state: the registry interface, its records, and the SQLite implementation.

The Postgres implementation (:class:`hotsession.registry.postgres.PostgresRegistry`) is imported
from its module: it needs the ``postgres`` extra.
"""

from hotsession.registry.base import Registry
from hotsession.registry.memory import MemoryRegistry
from hotsession.registry.records import (
    EventRecord,
    Ownership,
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
    "Ownership",
    "ProcessRecord",
    "Registry",
    "SessionRecord",
    "SessionState",
    "SqliteRegistry",
    "TurnRecord",
    "TurnStatus",
]
