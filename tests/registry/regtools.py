"""Record builders and helpers shared by the registry tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotsession.registry import EventRecord, MemoryRegistry, Registry, SessionRecord, SqliteRegistry
from hotsession.testing.postgres import PrivatePostgres

BACKENDS = ["memory", "sqlite", "postgres"]


def session(
    sid: str, *, tenant: str = "acme", created_at: float = 1000.0, **kw: Any
) -> SessionRecord:
    base: dict[str, Any] = {
        "cli_session_id": f"cli-{sid}",
        "cwd": "/srv/work",
        "options": {"model": "sonnet", "allowed_tools": ["Read", "Bash"]},
        "profile_key": "p1",
        "state": "idle",
        "updated_at": created_at,
        "last_active_at": created_at,
    }
    base.update(kw)
    return SessionRecord(id=sid, tenant=tenant, created_at=created_at, **base)


def event(sid: str, seq: int, *, turn: int = 1, **data: Any) -> EventRecord:
    return EventRecord(
        session_id=sid,
        seq=seq,
        turn=turn,
        type="assistant",
        data={"n": seq, **data},
        t=1000.0 + seq,
    )


def seqs(events: list[EventRecord]) -> list[int]:
    return [e.seq for e in events]


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class Store:
    """One backend's state; ``handle()`` is a new (unopened) registry on it."""

    def __init__(self, kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self.kind = kind
        self._memory: MemoryRegistry | None = None
        self._path = tmp_path / "state" / "registry.db"
        self._pg: PrivatePostgres | None = None
        if kind == "postgres":
            self._pg = request.getfixturevalue("postgres_server")
            self._schema: str = request.getfixturevalue("pg_schema")
        self.opened: list[Registry] = []

    @property
    def postgres(self) -> PrivatePostgres:
        assert self._pg is not None
        return self._pg

    def handle(self, **kw: Any) -> Registry:
        reg: Registry
        if self.kind == "memory":
            if self._memory is None:
                self._memory = MemoryRegistry()
            return self._memory
        if self.kind == "sqlite":
            reg = SqliteRegistry(self._path, **{"flush_interval": 0.02, **kw})
        else:
            from hotsession.registry.postgres import PostgresRegistry

            reg = PostgresRegistry(
                self.postgres.url, schema=self._schema, **{"flush_interval": 0.02, **kw}
            )
        return reg

    async def open(self, **kw: Any) -> Registry:
        reg = self.handle(**kw)
        await reg.open()
        self.opened.append(reg)
        return reg

    async def close_all(self) -> None:
        for reg in reversed(self.opened):
            try:
                await reg.close()
            except Exception:  # a test that broke the store on purpose
                pass
