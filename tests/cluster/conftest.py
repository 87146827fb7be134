"""The cluster tier: a local three-node Ray cluster, a shared store, the real CLI.

One Ray cluster serves the whole tier (starting one costs ~10 s); each node has its own custom
resources (``hotsession_memory_mb``: its memory budget) and, through its host actor, its own state
directory and Claude Code config dir, so nothing is shared between nodes but the store.

The cluster is set up as docs/cluster.md asks for tenants with their own users: Ray's token
authentication on (``RAY_AUTH_MODE=token``, the token in a root-only file named by
``RAY_AUTH_TOKEN_PATH``), Ray's temp dir (session logs, sockets, spilled objects) inside a
root-only directory (``RAY_TMPDIR``), and a Postgres that asks for a password.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import signal
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402
from tests.conftest import private_postgres  # noqa: E402

from hotsession.cluster.bench import local_cluster, node_environment  # noqa: E402
from hotsession.cluster.hub import ClusterConfig, ClusterHub  # noqa: E402
from hotsession.config import Config  # noqa: E402
from hotsession.registry.postgres import PostgresRegistry  # noqa: E402
from hotsession.testing.model_server import ModelServer  # noqa: E402
from hotsession.testing.postgres import PrivatePostgres  # noqa: E402
from hotsession.transcripts.postgres import PostgresSessionStore  # noqa: E402

NODE_MB = (1200, 1100, 1000)


@pytest.fixture(scope="session")
def cluster_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="session")
def ray_private() -> Iterator[dict[str, str]]:
    """Ray's token auth and temp dir, root-only (what every Ray process and client needs)."""
    base = Path(tempfile.mkdtemp(prefix="hs-ray-"))  # 0700, root's
    token = base / "auth_token"
    token.write_text(secrets.token_hex(32))
    os.chmod(token, 0o600)
    (base / "tmp").mkdir(mode=0o700)
    yield {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_TMPDIR": str(base / "tmp"),
    }
    import shutil

    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def node_env(
    cluster_root: Path, model_server: ModelServer, ray_private: dict[str, str]
) -> dict[str, str]:
    """What every node's agents need: the scripted model server, a private home; and Ray's
    token and temp dir."""
    home = cluster_root / "home"
    home.mkdir(exist_ok=True)
    return {
        "ANTHROPIC_BASE_URL": model_server.url,
        "ANTHROPIC_API_KEY": "test-key",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "HOME": str(home),
        "RAY_USAGE_STATS_ENABLED": "0",
        **ray_private,
    }


def _reload_ray_auth() -> None:
    """Make this process's Ray read ``RAY_AUTH_*`` again (it caches its config and token)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@pytest.fixture(scope="session")
def ray_cluster(node_env: dict[str, str], ray_private: dict[str, str]) -> Iterator[Cluster]:
    """Three Ray nodes on this machine (the head and two workers), each with its resources.

    This process (the driver) and the daemons it starts keep Ray's token settings for the
    tier (``serve_process`` and the Ray Client server inherit them); restored after."""
    saved_env = {k: os.environ.get(k) for k in ray_private}
    os.environ.update(ray_private)
    _reload_ray_auth()
    cluster: Cluster = local_cluster(node_env, NODE_MB)
    # Ray's driver installs its own SIGTERM / SIGINT handlers: the tiers after this one expect
    # Python's (a test sends the CLI client a Ctrl-C, the daemon tests install their own).
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    ray.init(address=cluster.address, namespace="hotsession", log_to_driver=False)
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _reload_ray_auth()


@pytest.fixture(scope="session")
def cluster_pg() -> Iterator[PrivatePostgres]:
    """The tier's own private Postgres (a test restarts it under load), with a password: other
    local users (tenants' agents) must not get in (docs/cluster.md)."""
    yield from private_postgres(password=secrets.token_hex(16))


@pytest.fixture(scope="session")
def store_factory(cluster_pg: PrivatePostgres) -> Any:
    return functools.partial(PostgresRegistry, cluster_pg.url, retry_for=30.0)


@pytest.fixture(scope="session")
def transcripts_factory(cluster_pg: PrivatePostgres) -> Any:
    return functools.partial(PostgresSessionStore, cluster_pg.url, retry_for=30.0)


@pytest.fixture
def cluster_config(
    ray_cluster: Cluster,
    cluster_root: Path,
    store_factory: Any,
    transcripts_factory: Any,
) -> ClusterConfig:
    return ClusterConfig(
        address=ray_cluster.address,
        store=store_factory,
        transcripts=transcripts_factory,
        state_root=str(cluster_root / "nodes"),
        node_config={
            "allow_root_bypass": True,
            "watchdog_s": 60,
            "pool_enabled": True,
            "pool_deep_warmup": False,
        },
        refresh_s=0.5,
        fence_check_s=0.5,
    )


@pytest.fixture
async def chub(cluster_config: ClusterConfig, cluster_root: Path) -> AsyncIterator[ClusterHub]:
    async with ClusterHub(Config(state_dir=cluster_root / "daemon"), cluster_config) as hub:
        yield hub


@pytest.fixture
def workdir(cluster_root: Path) -> Path:
    path = cluster_root / "work"
    path.mkdir(exist_ok=True)
    return path


def worker_node(cluster: Cluster) -> Any:
    """A worker node (the head cannot be removed without ending the cluster)."""
    return (
        cluster.worker_nodes[-1]
        if isinstance(cluster.worker_nodes, list)
        else next(iter(cluster.worker_nodes))
    )


def replace_node(cluster: Cluster, env: dict[str, str], mb: int = NODE_MB[-1]) -> Any:
    """Add a worker node (after a test removed one), so the tier keeps three nodes."""
    with node_environment(env):
        node = cluster.add_node(num_cpus=1, resources={"hotsession_memory_mb": mb})
    cluster.wait_for_nodes()
    return node


TOKEN = "cluster-token-0123456789abcdef"


@dataclass
class ApiDaemon:
    """A cluster-mode API daemon under test (uvicorn on a free port, on the test's loop)."""

    url: str
    hub: ClusterHub
    server: Any
    task: asyncio.Task[None]

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
        )


@pytest.fixture
async def api_daemons(
    cluster_config: ClusterConfig, cluster_root: Path, workdir: Path, tmp_path: Path
) -> AsyncIterator[Callable[[], Awaitable[ApiDaemon]]]:
    """Starts cluster-mode API daemons (each its own ClusterHub and app) on demand."""
    import uvicorn

    from hotsession.cluster.api import create_cluster_app
    from hotsession.daemon import bind
    from hotsession.settings import load_settings

    conf = tmp_path / "hotsession.toml"
    conf.write_text(
        f'[[tenants]]\nname = "alice"\ntoken = "{TOKEN}"\nroots = [{json.dumps(str(workdir))}]\n'
    )
    started: list[ApiDaemon] = []

    async def start() -> ApiDaemon:
        settings = load_settings(conf, {"state_dir": str(tmp_path / f"d{len(started)}")})
        hub = ClusterHub(settings.config, cluster_config)
        await hub.start()
        app = create_cluster_app(hub, settings)
        sock = bind("127.0.0.1", 0)
        server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            assert not task.done(), task.result()
            await asyncio.sleep(0.01)
        host, port = sock.getsockname()[:2]
        daemon = ApiDaemon(f"http://{host}:{port}", hub, server, task)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.server.should_exit = True
        await asyncio.wait_for(daemon.task, 30)
        await daemon.hub.stop()


@contextlib.asynccontextmanager
async def serve_process(
    cluster: str, database_url: str | None, config: Path, state: Path, *args: str
) -> AsyncIterator[str]:
    """``hotsession serve --cluster CLUSTER --database-url …`` as a real process; its URL
    (``database_url`` None: the URL is in ``config``, as with tenants that have users).

    On leaving, the daemon is stopped with SIGTERM and must exit 0."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTSESSION_")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "hotsession"),
        "serve",
        "--cluster",
        cluster,
        *(("--database-url", database_url) if database_url is not None else ()),
        "--port",
        "0",
        "--state-dir",
        str(state),
        "--config",
        str(config),
        *args,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        discovery = state / "daemon.json"
        for _ in range(1200):
            if discovery.exists() or proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        if not discovery.exists():
            if proc.returncode is None:
                proc.terminate()
            _, err = await proc.communicate()
            raise AssertionError(f"the daemon did not start: {err.decode()[-3000:]}")
        yield str(json.loads(discovery.read_text())["url"])
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]


async def cli_ask(url: str, prompt: str, cwd: Path) -> str:
    """``hotsession ask PROMPT --cwd CWD`` (the real CLI client) against the daemon at ``url``;
    its output (it must exit 0)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HOTSESSION_URL": url, "HOTSESSION_TOKEN": TOKEN}
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "hotsession"),
        "ask",
        prompt,
        "--cwd",
        str(cwd),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    return out.decode()
