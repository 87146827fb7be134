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
from hotsession.cli_binary import bundled_cli_path
from hotsession.testing.faults import Ledger
from hotsession.testing.model_server import ModelServer

CLI = bundled_cli_path()
LEDGER = Ledger()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            if CLI is None:
                item.add_marker(pytest.mark.skip(reason="the bundled Claude Code CLI is missing"))


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


@pytest.fixture
def agent_env(
    tmp_path: Path, model_server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Point every CLI this test starts at the model server, with a private config and home."""
    env = {
        "ANTHROPIC_BASE_URL": model_server.url,
        "ANTHROPIC_API_KEY": "test-key",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CONFIG_DIR": str(tmp_path / "claude-config"),
        "HOME": str(tmp_path / "home"),
    }
    (tmp_path / "home").mkdir()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("CLAUDECODE", raising=False)
    return env


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


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
