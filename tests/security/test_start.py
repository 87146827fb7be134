"""What ``hotsession serve`` refuses at start, and the insecure opt-in it allows.

The refusals run the real command (``hotsession serve``) and check its one line of reason; the
shared-user opt-in runs the attack harness of test_isolation to show what it gives up.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from tests.security.conftest import TOKEN_A, TOKEN_B, Lab, tenant_toml, turn, write_config

from hotsession.isolation import IsolationError, prepare
from hotsession.settings import load_settings

pytestmark = pytest.mark.integration


def serve(config: Path, state: Path) -> subprocess.CompletedProcess[str]:
    """Run ``hotsession serve`` until it exits (a refusal exits at once)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTSESSION_")}
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "hotsession"),
            "serve",
            "--config",
            str(config),
            "--state-dir",
            str(state),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def reason(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line of reason a refusal prints (no traceback)."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("hotsession: "), proc.stderr
    return lines[-1]


def test_several_tenants_without_users_are_refused(lab: Lab, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.toml",
        tenant_toml("a", TOKEN_A, lab.root_a),
        tenant_toml("b", TOKEN_B, lab.root_b),
    )
    line = reason(serve(config, tmp_path / "state"))
    assert "a, b have no 'user'" in line and "shared_user = true" in line


def test_a_tenant_on_another_tenants_user_is_refused(lab: Lab, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.toml",
        tenant_toml("a", TOKEN_A, lab.root_a, user=lab.a.name),
        tenant_toml("b", TOKEN_B, lab.root_b, user=lab.a.name),
    )
    line = reason(serve(config, tmp_path / "state"))
    assert f"tenants a and b share user {lab.a.name!r}" in line


def test_a_root_the_tenants_user_cannot_reach_is_named(lab: Lab, tmp_path: Path) -> None:
    closed = lab.base / f"closed-{secrets.token_hex(3)}"
    (closed / "inner").mkdir(parents=True, mode=0o700)
    os.chmod(closed, 0o700)  # root's, closed to everyone else
    config = write_config(
        tmp_path / "c.toml",
        tenant_toml("a", TOKEN_A, lab.root_a, user=lab.a.name),
        tenant_toml("b", TOKEN_B, closed / "inner", user=lab.b.name),
    )
    line = reason(serve(config, tmp_path / "state"))
    assert f"tenant b: root {closed / 'inner'} is not reachable by user {lab.b.name}" in line
    assert f"{closed} is not searchable by it (drwx------ root:root)" in line


def test_unknown_user_is_refused(lab: Lab, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.toml",
        tenant_toml("a", TOKEN_A, lab.root_a, user=lab.a.name),
        tenant_toml("b", TOKEN_B, lab.root_b, user="hs-no-such-user"),
    )
    line = reason(serve(config, tmp_path / "state"))
    assert "tenant b: no OS user 'hs-no-such-user'" in line


def test_a_daemon_that_is_not_root_refuses_several_tenants(lab: Lab) -> None:
    """prepare() in a child that dropped root (as a daemon started by a normal user would be)."""
    config = write_config(
        lab.root_a / "c.toml",
        tenant_toml("a", TOKEN_A, lab.root_a, user=lab.a.name),
        tenant_toml("b", TOKEN_B, lab.root_b, user=lab.b.name),
    )
    os.chown(config, lab.a.uid, lab.a.gid)
    settings = load_settings(config, {"state_dir": str(lab.root_a / "state")}, environ={})
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become tenant a's user, then start as a daemon would
        os.close(read)
        code = 0
        try:
            os.setgroups([])
            os.setgid(lab.a.gid)
            os.setuid(lab.a.uid)
            prepare(settings, cli_path=lab.cli_path)
            message = "started"
        except IsolationError as exc:
            message = exc.message
        except BaseException as exc:  # anything else is a test failure, reported as such
            message, code = f"unexpected: {exc!r}", 1
        os.write(write, message.encode())
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        message = f.read()
    os.waitpid(pid, 0)
    assert message.startswith("2 tenants need an OS user each, and this daemon runs as "), message
    assert f"runs as {lab.a.name}, which cannot switch users" in message
    assert "run `hotsession serve` as root" in message


async def test_shared_user_is_an_insecure_opt_in(
    lab: Lab, start_daemon, caplog: pytest.LogCaptureFixture
) -> None:
    """With shared_user the daemon starts, says so, and tenant A's agent reads B's file."""
    secret = "b-secret-" + secrets.token_hex(4)
    (lab.root_b / "shared-secret.txt").write_text(secret + "\n")
    config = write_config(
        lab.base / "shared.toml",
        tenant_toml("a", TOKEN_A, lab.root_a),
        tenant_toml("b", TOKEN_B, lab.root_b),
        shared_user=True,
        state_dir=str(lab.base / "shared-state"),
        cli_path=lab.cli_path,
        allow_root_bypass=True,
    )
    with caplog.at_level(logging.WARNING, logger="hotsession.isolation"):
        d = await start_daemon(config)
    assert any("INSECURE: shared_user = true" in r.getMessage() for r in caplog.records)
    a = d.client(TOKEN_A)
    r = await a.post("/v1/sessions", json={"permission_mode": "bypassPermissions"})
    assert r.status_code == 201, r.text
    out = lab.root_a / "shared-read.out"
    result = await turn(
        a,
        r.json()["id"],
        f"[[bash:cat {lab.root_b / 'shared-secret.txt'} > {out} 2>&1; echo rc=$? >> {out}]]",
    )
    assert result["result"] == "done"
    assert out.read_text().splitlines() == [secret, "rc=0"]  # no wall: what users are for
