"""What ``hotsession serve`` refuses at start, and the insecure opt-in it allows.

The refusals run the real command (``hotsession serve``) and check its one line of reason; the
shared-user opt-in runs the attack harness of test_isolation to show what it gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
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
        cli_path=lab.cli_path,
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
        cli_path=lab.cli_path,
    )
    line = reason(serve(config, tmp_path / "state"))
    assert f"tenant b: root {closed / 'inner'} is not reachable by user {lab.b.name}" in line
    assert f"{closed} is not searchable by it (drwx------ root:root)" in line


def test_unknown_user_is_refused(lab: Lab, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.toml",
        tenant_toml("a", TOKEN_A, lab.root_a, user=lab.a.name),
        tenant_toml("b", TOKEN_B, lab.root_b, user="hs-no-such-user"),
        cli_path=lab.cli_path,
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


def _discover(state: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "hotsession serve exited"
        with contextlib.suppress(OSError, ValueError):
            return str(json.loads((state / "daemon.json").read_text())["url"])
        time.sleep(0.05)
    raise AssertionError("hotsession serve did not start")


async def test_agents_of_tenant_users_die_with_the_daemon(
    lab: Lab, tmp_path: Path, agent_env: dict[str, str]
) -> None:
    """kill -9 of the daemon: the CLI (another uid) dies by its parent-death signal, and no
    tool it ran is left once the next daemon has started (its orphan sweep)."""
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "c.toml",
        tenant_toml("a", TOKEN_A, lab.root_a, user=lab.a.name, sandbox=False),
        tenant_toml("b", TOKEN_B, lab.root_b, user=lab.b.name, sandbox=False),
        cli_path=lab.cli_path,
        pass_env=["ANTHROPIC_API_KEY"],
        pool_enabled=False,
    )
    argv = [str(Path(sys.executable).parent / "hotsession"), "serve", "--config", str(config)]
    argv += ["--state-dir", str(state), "--port", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTSESSION_")}
    log = (tmp_path / "serve.log").open("wb")
    daemon = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
    marker = f"hs-tool-{secrets.token_hex(4)}"
    try:
        url = _discover(state, daemon)
        headers = {"Authorization": f"Bearer {TOKEN_A}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as a:
            r = await a.post("/v1/sessions", json={"permission_mode": "bypassPermissions"})
            assert r.status_code == 201, r.text
            cli = psutil.Process(r.json()["pid"])
            assert cli.uids().real == lab.a.uid
            assert (await turn(a, r.json()["id"], "[[say:hi]]"))["result"] == "hi"
            # (The Bash tool refuses a bare long ``sleep``.)
            tool = f"python3 -c 'import time; time.sleep(600)' {marker}"
            prompt = {"prompt": f"[[bash:{tool}]]"}
            turns = f"/v1/sessions/{r.json()['id']}/turns"
            async with a.stream("POST", turns, json=prompt) as stream:
                lines = stream.aiter_lines()
                while not (await anext(lines)).startswith("event: "):
                    pass  # the turn has begun
                deadline = time.monotonic() + 30
                while not (tools := _sleepers(marker)):
                    assert time.monotonic() < deadline, (
                        "the tool did not start",
                        [p.cmdline() for p in psutil.process_iter() if p.uids().real == lab.a.uid],
                        (tmp_path / "serve.log").read_text()[-3000:],
                    )
                    await asyncio.sleep(0.05)
                assert all(t.uids().real == lab.a.uid for t in tools)
                daemon.kill()
                daemon.wait(10)
        cli.wait(10)  # the parent-death signal, though the CLI runs as another user
        # Its tool may outlive it (tools run in sessions of their own); the next daemon's orphan
        # sweep ends what is left, whatever its uid.
        again = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
        try:
            _discover(state, again)
            for tool in tools:
                tool.wait(10)  # ended by the orphan sweep
        finally:
            again.terminate()
            again.wait(30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        for tool in _sleepers(marker):
            tool.kill()
        log.close()


def _sleepers(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if (
            p.info["cmdline"]
            and p.info["cmdline"][-1] == marker
            and "python3" in p.info["cmdline"][0]
        ):
            out.append(p)
    return out


def test_run_as_switches_user_and_keeps_the_parent_death_signal(lab: Lab) -> None:
    """The supervisor's hook, alone: the child runs as the tenant's account with its rlimit, and
    still carries SIGKILL as parent-death signal (the kernel clears it on a uid change, so the
    hook must set it after the switch)."""
    from hotsession.supervisor import RunAs, _become

    run_as = RunAs(
        uid=lab.a.uid,
        gid=lab.a.gid,
        groups=(lab.a.gid,),
        rlimits=((resource.RLIMIT_NPROC, 77),),
    )
    code = (
        "import ctypes, os, resource, signal\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "sig = ctypes.c_int(0)\n"
        "libc.prctl(2, ctypes.byref(sig))\n"  # PR_GET_PDEATHSIG
        "print(os.getresuid(), os.getresgid(), os.getgroups(), sig.value,"
        " resource.getrlimit(resource.RLIMIT_NPROC))\n"
    )
    proc = subprocess.run(
        ["/usr/bin/python3", "-c", code],
        preexec_fn=_become(run_as),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    a = lab.a
    expected = (
        f"({a.uid}, {a.uid}, {a.uid}) ({a.gid}, {a.gid}, {a.gid}) [{a.gid}] "
        f"{int(signal.SIGKILL)} (77, 77)"
    )
    assert proc.stdout.strip() == expected


def test_a_root_another_tenant_can_read_is_warned(
    lab: Lab, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    open_root = lab.base / f"open-{secrets.token_hex(3)}"
    open_root.mkdir(mode=0o755)
    os.chmod(open_root, 0o755)
    os.chown(open_root, lab.b.uid, lab.b.gid)
    config = write_config(
        tmp_path / "c.toml",
        tenant_toml("a", TOKEN_A, lab.root_a, user=lab.a.name, sandbox=False),
        tenant_toml("b", TOKEN_B, open_root, user=lab.b.name, sandbox=False),
    )
    settings = load_settings(config, {"state_dir": str(tmp_path / "state")}, environ={})
    with caplog.at_level(logging.WARNING, logger="hotsession.isolation"):
        prepare(settings, cli_path=lab.cli_path)
    warned = [r.getMessage() for r in caplog.records if "is readable by tenant" in r.getMessage()]
    assert warned == [
        f"tenant b's root {open_root} is readable by tenant a's user {lab.a.name} (chmod 0700 "
        "it, unless it is shared on purpose)"
    ]
