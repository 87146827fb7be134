"""The integration tier: the real Claude Code CLI against the scripted model server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hotsession import Config, Hotsession


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
