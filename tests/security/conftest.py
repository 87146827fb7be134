"""The security tier: tenants as their own OS users, attacked by each other's agents.

These tests need what the daemon needs for isolation: root (to create the test users with
``useradd --system`` and to switch to them). The users, their homes and roots live under a
directory every user can traverse (``/tmp/hs-sec-*``, 0711), and are removed after.

The CLI must be executable by the test users; when the bundled one sits below a directory they
cannot enter (a checkout under /root), the fixture links (or copies) it to where they can.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import RunningDaemon as Running
from tests.conftest import run_daemon

from hotsession.cli_binary import bundled_cli_path
from hotsession.settings import load_settings

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates OS users)")

TOKEN_A = "tenant-a-token-0123456789"
TOKEN_B = "tenant-b-token-0123456789"


@dataclass
class User:
    name: str
    uid: int
    gid: int


@dataclass
class Lab:
    """The test's world: a base dir, two users, their roots and homes."""

    base: Path
    a: User
    b: User
    cli_path: str

    @property
    def root_a(self) -> Path:
        return self.base / "root-a"

    @property
    def root_b(self) -> Path:
        return self.base / "root-b"

    @property
    def state(self) -> Path:
        return self.base / "state"

    def home(self, user: User) -> Path:
        return self.base / f"home-{user.name}"


def _useradd(name: str, home: Path) -> User:
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            str(home),
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        check=True,
        capture_output=True,
    )
    import pwd

    pw = pwd.getpwnam(name)
    return User(name, pw.pw_uid, pw.pw_gid)


def _userdel(name: str) -> None:
    subprocess.run(["userdel", name], check=False, capture_output=True)


def _reachable_cli(base: Path, user: User) -> str:
    """The bundled CLI, or a link/copy of it the test users can execute."""
    cli = bundled_cli_path()
    assert cli is not None
    probe = subprocess.run(
        ["/bin/sh", "-c", 'test -x "$1"', "sh", str(cli)], user=user.uid, group=user.gid
    )
    if probe.returncode == 0:
        return str(cli)
    target = base / "cli" / "claude"
    target.parent.mkdir(mode=0o755)
    try:
        os.link(cli, target)
    except OSError:
        shutil.copy2(cli, target)
    return str(target)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Two fresh system users and a base dir they can traverse (all removed after)."""
    with make_lab() as made:
        yield made


@contextlib.contextmanager
def make_lab() -> Iterator[Lab]:
    """Two fresh system users and a base dir they can traverse, removed on leaving (the
    ``lab`` fixture; the cluster tier's tenant tests use it too)."""
    base = Path(tempfile.mkdtemp(prefix="hs-sec-"))
    os.chmod(base, 0o711)
    tag = secrets.token_hex(3)
    made: list[str] = []
    try:
        a = _useradd(f"hs-t{tag}-a", base / f"home-hs-t{tag}-a")
        made.append(a.name)
        b = _useradd(f"hs-t{tag}-b", base / f"home-hs-t{tag}-b")
        made.append(b.name)
        lab = Lab(base, a, b, _reachable_cli(base, a))
        for user, root in ((a, lab.root_a), (b, lab.root_b)):
            root.mkdir(mode=0o700)
            os.chown(root, user.uid, user.gid)
        yield lab
    finally:
        for name in made:
            _userdel(name)
        shutil.rmtree(base, ignore_errors=True)


def tenant_toml(name: str, token: str, root: Path, *, user: str | None = None, **extra: Any) -> str:
    """One ``[[tenants]]`` table."""
    lines = ["[[tenants]]", f'name = "{name}"', f'token = "{token}"', f'roots = ["{root}"]']
    if user is not None:
        lines.append(f'user = "{user}"')
    for key, value in extra.items():
        lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def write_config(path: Path, *tables: str, **top: Any) -> Path:
    """A config file of top-level keys and tenant tables, mode 0644 (the daemon tightens it)."""
    head = "".join(f"{k} = {_toml(v)}\n" for k, v in top.items())
    path.write_text(head + "\n".join(tables))
    os.chmod(path, 0o644)
    return path


BASE = {
    "pool_enabled": False,
    "watchdog_s": 120.0,
    "spawn_timeout_s": 90.0,
}


@pytest.fixture
async def start_daemon(
    agent_env: dict[str, str],
) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """Run a daemon (as root, in this process) from a config file."""
    running: list[Running] = []

    async def start(config: Path, **overrides: Any) -> Running:
        settings = load_settings(config, {**BASE, **overrides})
        daemon, task = await run_daemon(settings)
        r = Running(daemon, task, daemon.url, settings, client_timeout=120)
        running.append(r)
        return r

    yield start
    for r in running:
        await r.stop()


async def turn(client: httpx.AsyncClient, sid: str, prompt: str) -> dict[str, Any]:
    """Run one turn over HTTP; the data of its ``result`` event (fails on an ``error``)."""
    async with client.stream("POST", f"/v1/sessions/{sid}/turns", json={"prompt": prompt}) as r:
        assert r.status_code == 200, await r.aread()
        kind = None
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind in ("result", "error"):
                data: dict[str, Any] = json.loads(line[6:])
                assert kind == "result", data
                return data
    raise AssertionError("the turn ended without a result")
