"""The registry conformance suite runs every case against each backend: memory, SQLite, Postgres.

``registry`` is an open registry of the backend; ``store`` opens more handles on the SAME
state (two daemons, or two nodes, sharing one SQLite file or one Postgres schema; the memory
backend has one handle only, shared).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from regtools import BACKENDS, Store

from hotsession.registry import Registry


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    st = Store(request.param, request, tmp_path)
    yield st
    await st.close_all()


@pytest.fixture
async def registry(store: Store) -> Registry:
    return await store.open()
