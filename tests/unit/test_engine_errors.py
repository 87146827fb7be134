"""Errors inside the engine are logged with their context, never swallowed silently."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tests.conftest import wait_until

from hotsession import Config, Hotsession
from hotsession.errors import RegistryError
from hotsession.registry import MemoryRegistry, ProcessRecord
from hotsession.session import Session
from hotsession.supervisor import Supervisor


class ProcessTableDown(MemoryRegistry):
    """A store whose process table cannot be written (the rest works)."""

    async def put_process(self, rec: ProcessRecord) -> None:
        raise RegistryError("disk I/O error", cause="put_process")

    async def forget_process(self, pid: int) -> None:
        raise RegistryError("disk I/O error", cause="forget_process")


async def test_a_registry_failure_on_a_process_record_is_logged(
    fake_cli: str, workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sup = Supervisor(ProcessTableDown(), spawn_timeout=20)
    with caplog.at_level(logging.ERROR, logger="hotsession.supervisor"):
        agent = await sup.spawn(
            [fake_cli], cwd=str(workdir), env={}, label="t", role="spare", session_id="hs_x"
        )
        assert agent.alive  # the process runs regardless
        recorded = [r for r in caplog.records if "cannot record agent process" in r.getMessage()]
        assert len(recorded) == 1
        assert f"{agent.pid} (spare, session hs_x)" in recorded[0].getMessage()
        assert recorded[0].exc_info is not None  # with the registry's error
        await agent.close()
        await wait_until(lambda: "cannot remove agent process" in caplog.text)
    assert not sup.children


async def test_a_state_listeners_bug_is_logged_and_the_turn_goes_on(
    tmp_path: Path, fake_cli: str, workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = Config(state_dir=tmp_path / "state", cli_path=fake_cli, pool_enabled=False)
    calls: list[str] = []

    def broken(session: Session) -> None:
        calls.append(session.state)
        raise KeyError("listener bug")

    async with Hotsession(config) as hub:
        hub.add_state_listener(broken)
        with caplog.at_level(logging.ERROR, logger="hotsession.hub"):
            session = await hub.open(str(workdir))
            result = await session.send("[[say:fine]]").wait()
        assert result.type == "result" and result.data["result"] == "fine"
        assert calls  # the listener was called (and failed) on the turn's path
        failures = [r for r in caplog.records if "state listener" in r.getMessage()]
        assert len(failures) == len(calls)
        assert f"failed on session {session.id}" in failures[0].getMessage()
        assert failures[0].exc_info is not None and "listener bug" in caplog.text
