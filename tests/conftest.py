"""Fixtures shared by every tier.

The tiers that run the real Claude Code CLI (integration, api, reliability) get the
``integration`` marker here, and are skipped with a reason when the bundled CLI is missing.

``postgres_server`` is one private Postgres for the whole test session (``make test`` installs
the distribution's server when missing); a test isolates itself in a fresh schema
(``pg_schema``) or database (``postgres_url``). Without the server binaries the Postgres
tests are skipped with the reason, except under CI, where that is a failure.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from hotsession.cli_binary import bundled_cli_path
from hotsession.daemon import Daemon, bind
from hotsession.settings import Settings
from hotsession.testing.model_server import ModelServer
from hotsession.testing.postgres import PostgresNotFound, PrivatePostgres

# The cluster tier's Ray on loopback: by default Ray binds and dials the machine's interface
# address; with this setting (meant for laptops) every node, the driver (pytest) and the daemons
# started from it use 127.0.0.1. Ray reads it when it is imported, so it is set here, before
# tests/cluster imports ray.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

CLI = bundled_cli_path()
CLI_TIERS = (
    "tests/integration",
    "tests/api",
    "tests/reliability",
    "tests/security",
    "tests/cluster",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(tier in str(item.fspath) for tier in CLI_TIERS):
            item.add_marker(pytest.mark.integration)
            if CLI is None:
                item.add_marker(pytest.mark.skip(reason="the bundled Claude Code CLI is missing"))


@pytest.fixture(scope="session")
def model_server() -> Iterator[ModelServer]:
    """The scripted Anthropic API stand-in, on loopback."""
    with ModelServer() as server:
        yield server


def private_postgres(password: str | None = None) -> Iterator[PrivatePostgres]:
    """A private Postgres server for a fixture to yield from; skipped without the server's
    binaries, except under CI, where that is a failure."""
    try:
        server = PrivatePostgres(password=password)
    except PostgresNotFound as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    with server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PrivatePostgres]:
    """A private Postgres server (see the module doc), removed after the session."""
    yield from private_postgres()


@pytest.fixture
def pg_schema() -> str:
    """A schema name of this test's own (created by whoever opens a store in it)."""
    return f"t_{secrets.token_hex(6)}"


@pytest.fixture
def postgres_url(postgres_server: PrivatePostgres) -> Iterator[str]:
    """A fresh database on the private server for this test; dropped after it."""
    import psycopg

    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres_server.url_for(name)
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


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
    for key in list(os.environ):
        if key.startswith("HOTSESSION_"):  # a developer's own settings must not leak in
            monkeypatch.delenv(key)
    return env


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory for a session."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def fake_cli(tmp_path: Path) -> str:
    """The fake agent (``hotsession.testing.fake_agent``) as an executable CLI path."""
    from hotsession.testing.fake_agent import write_launcher

    return write_launcher(tmp_path / "fake-claude")


async def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def run_daemon(settings: Settings) -> tuple[Daemon, asyncio.Task[None]]:
    """A daemon in this process on a free loopback port, once it is ready (or its startup
    error, raised); stop it with ``stop_daemon``."""
    daemon = Daemon(settings, install_signals=False)
    task = asyncio.create_task(daemon.run(bind("127.0.0.1", 0)))
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()
    assert daemon.url is not None
    return daemon, task


async def stop_daemon(daemon: Daemon, task: asyncio.Task[None]) -> None:
    """Shut a ``run_daemon`` daemon down and wait for it (at most 30 s)."""
    daemon.request_shutdown()
    await asyncio.wait_for(task, 30)


@dataclass
class RunningDaemon:
    """A ``run_daemon`` daemon under test, with the HTTP clients its test opened."""

    daemon: Daemon
    task: asyncio.Task[None]
    url: str
    settings: Settings
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    client_timeout: float = 60.0

    def client(self, token: str | None) -> httpx.AsyncClient:
        """A client with ``token`` (None: no Authorization header), closed by ``stop``."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=self.client_timeout)
        self.clients.append(c)
        return c

    async def stop(self) -> None:
        """Close the clients, then the daemon."""
        for c in self.clients:
            await c.aclose()
        await stop_daemon(self.daemon, self.task)
