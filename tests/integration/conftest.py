"""The integration tier: the real Claude Code CLI against the scripted model server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hotsession import Config, Hotsession
from hotsession.cli_binary import bundled_cli_path
from hotsession.testing.model_server import ModelServer

CLI = bundled_cli_path()

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            if CLI is None:
                item.add_marker(pytest.mark.skip(reason="the bundled Claude Code CLI is missing"))


@pytest.fixture(scope="session")
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


@pytest.fixture
def config(tmp_path: Path, agent_env: dict[str, str]) -> Config:
    return Config(
        state_dir=tmp_path / "state",
        pool_enabled=False,
        allow_root_bypass=True,
        watchdog_s=60,
        spawn_timeout_s=60,
    )


@pytest.fixture
async def hub(config: Config) -> AsyncIterator[Hotsession]:
    async with Hotsession(config) as hs:
        yield hs
