"""Flag values moved off the command line (hotsession.isolation.argfiles): the rewrite, the
files' lifetime and the supervisor's exit hook that ends it. The end-to-end proof with two
tenants' users is tests/security/test_argv.py."""

from __future__ import annotations

import logging
import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.conftest import wait_until

from hotsession.errors import AgentStartError
from hotsession.isolation.argfiles import DIR_NAME, ArgFiles, rewrite
from hotsession.supervisor import Supervisor


def _store(stored: list[tuple[str, str]]) -> Callable[[str, str], str]:
    def store(value: str, suffix: str) -> str:
        stored.append((value, suffix))
        return f"/f{len(stored)}{suffix}"

    return store


def test_rewrite_moves_prompts_and_inline_json_in_both_forms() -> None:
    stored: list[tuple[str, str]] = []
    argv = [
        "claude",
        "--system-prompt",
        "--secret prompt",
        "--append-system-prompt=more",
        "--mcp-config",
        '{"mcpServers":{}}',
        "/etc/mcp.json",
        "--settings",
        "/srv/settings.json",
        "--agents={}",
        "--model",
        "opus",
        "--",
        "--system-prompt",
        "operand",
    ]
    assert rewrite(argv, _store(stored)) == [
        "claude",
        "--system-prompt-file",
        "/f1.txt",
        "--append-system-prompt-file=/f2.txt",
        "--mcp-config",
        "/f3.json",
        "/etc/mcp.json",  # already a path
        "--settings",
        "/srv/settings.json",
        "--agents=/f4.json",
        "--model",
        "opus",
        "--",
        "--system-prompt",
        "operand",
    ]
    assert stored == [
        ("--secret prompt", ".txt"),
        ("more", ".txt"),
        ('{"mcpServers":{}}', ".json"),
        ("{}", ".json"),
    ]


def test_files_are_private_shared_per_content_and_removed_by_the_last_release(
    tmp_path: Path,
) -> None:
    files = ArgFiles(str(tmp_path), uid=os.getuid(), gid=os.getgid())
    (tmp_path / DIR_NAME).mkdir(mode=0o755)
    (tmp_path / DIR_NAME / "stale.txt").write_text("left by a dead daemon")
    files.prepare()
    directory = tmp_path / DIR_NAME
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700 and not any(directory.iterdir())

    argv1, release1 = files.externalize(["claude", "--system-prompt", "P", "--settings", "{}"])
    argv2, release2 = files.externalize(["claude", "--system-prompt", "P"])
    assert argv1[2] == argv2[2]  # one file per content: a profile's spares share it
    path = Path(argv1[2])
    assert path.parent == directory and path.read_text() == "P"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    release1()
    release1()  # idempotent
    assert path.exists() and not Path(argv1[4]).exists()
    release2()
    assert not any(directory.iterdir())


def test_a_planted_link_is_replaced_not_followed(tmp_path: Path) -> None:
    files = ArgFiles(str(tmp_path), uid=os.getuid(), gid=os.getgid())
    files.prepare()
    victim = tmp_path / "victim"
    victim.write_text("intact")
    argv, _ = files.externalize(["claude", "--system-prompt", "P"])
    name = Path(argv[2]).name
    Path(argv[2]).unlink()
    files._users.clear()  # a fresh daemon
    (tmp_path / DIR_NAME / name).symlink_to(victim)
    argv, _ = files.externalize(["claude", "--system-prompt", "P"])
    assert victim.read_text() == "intact"
    assert not Path(argv[2]).is_symlink() and Path(argv[2]).read_text() == "P"


def test_a_directory_replaced_by_a_link_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    (home / DIR_NAME).symlink_to(elsewhere)
    files = ArgFiles(str(home), uid=os.getuid(), gid=os.getgid())
    with pytest.raises(AgentStartError, match="flag file directory"):
        files.externalize(["claude", "--system-prompt", "P"])
    assert not any(elsewhere.iterdir())


async def test_the_supervisor_runs_on_exit_once_on_every_path(
    fake_cli: str, workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Failed start, a crash (kill -9), a close: the hook that removes the flag files runs once,
    after the process is gone; a failing hook is logged, not raised."""
    sup = Supervisor(spawn_timeout=20)
    calls: list[str] = []
    with pytest.raises(AgentStartError):
        await sup.spawn(
            [fake_cli],
            cwd=str(workdir / "gone"),
            env={},
            label="t",
            on_exit=lambda: calls.append("bad cwd"),
        )
    with pytest.raises(AgentStartError):
        await sup.spawn(
            [str(workdir / "no-cli")],
            cwd=str(workdir),
            env={},
            label="t",
            on_exit=lambda: calls.append("no cli"),
        )
    assert calls == ["bad cwd", "no cli"]

    def on_exit() -> None:
        assert agent.returncode is not None  # reaped first
        calls.append("crash")

    agent = await sup.spawn([fake_cli], cwd=str(workdir), env={}, label="t", on_exit=on_exit)
    os.kill(agent.pid, signal.SIGKILL)
    await wait_until(lambda: "crash" in calls)

    def broken() -> None:
        raise RuntimeError("boom")

    other = await sup.spawn([fake_cli], cwd=str(workdir), env={}, label="t2", on_exit=broken)
    with caplog.at_level(logging.ERROR, logger="hotsession.supervisor"):
        await other.close()
        await wait_until(lambda: "clean-up after agent t2 failed" in caplog.text)
    assert calls == ["bad cwd", "no cli", "crash"] and not sup.children
