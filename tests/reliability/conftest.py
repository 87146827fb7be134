"""The reliability tier: faults injected many times into the real CLI, hostile input, a soak.

Every test counts what it injected, what recovered and what was lost in the session-wide
``ledger``; the table is printed at the end of the run and written as JSON to
``$HOTSESSION_RELIABILITY_FIGURES`` when that is set (docs/reliability.md quotes it).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hotsession import Config, Hotsession
from hotsession.testing.faults import Ledger
from hotsession.testing.model_server import ModelServer

LEDGER = Ledger()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not LEDGER.tallies:
        return
    terminalreporter.section("reliability figures")
    terminalreporter.write_line(LEDGER.markdown())
    out = os.environ.get("HOTSESSION_RELIABILITY_FIGURES")
    if out:
        Path(out).write_text(json.dumps(LEDGER.to_list(), indent=2) + "\n")


@pytest.fixture(scope="session")
def ledger() -> Ledger:
    return LEDGER


@pytest.fixture(scope="module")
def model_server() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


def make_config(tmp_path: Path, **changes: object) -> Config:
    """The tier's engine settings: no pool, a short watchdog (hangs are injected on purpose)."""
    fields: dict[str, object] = {
        "state_dir": tmp_path / "state",
        "pool_enabled": False,
        "allow_root_bypass": True,
        "watchdog_s": 3.0,
        "spawn_timeout_s": 30.0,
    }
    fields.update(changes)
    return Config(**fields)  # type: ignore[arg-type]


@pytest.fixture
def config(tmp_path: Path, agent_env: dict[str, str]) -> Config:
    return make_config(tmp_path)


@pytest.fixture
async def hub(config: Config) -> AsyncIterator[Hotsession]:
    async with Hotsession(config) as hs:
        yield hs
