"""``hotsession serve --cluster ADDRESS --database-url postgresql://…``: what the daemon builds.

The daemon's own settings become the host actors' engine settings (pool, memory, recycling,
limits); each node keeps its state under the same ``state_dir`` path on its own machine
(``<state_dir>/nodes/<node id>``). Agents on a node get that node's environment (what
``ray start`` ran with), or for a tenant with its own ``user`` what ``hotsession.isolation``
gives it: nodes read the tenants (users, ``env`` secrets, config dirs) from the daemon's config
file at the same path on their own machine (``hotsession.cluster.tenants``); no secret is sent
by a daemon.

The database URL (its password) is a secret too. Ray keeps a host actor's creation arguments in
its GCS, where anyone who can talk to the GCS reads them, so the URL is never among them: the
engine settings sent to a node leave it out, and when the config file holds ``database_url`` the
nodes' store factories (:class:`NodeDatabase`) carry only the file's path and read the URL from
the file on their own machine. With tenants that have their own ``user`` (whose agents are a
shell on the nodes) that is required, and the URL's password must not be on the daemon's
command line either (``ps`` shows it to every user).
"""

from __future__ import annotations

import functools
import os
import sys
import tomllib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from hotsession.cluster.hub import ClusterConfig, ClusterHub
from hotsession.errors import InvalidRequest
from hotsession.registry.postgres import PostgresRegistry
from hotsession.settings import Settings
from hotsession.state_lock import StateLock
from hotsession.transcripts.postgres import PostgresSessionStore

# Engine settings that belong to the daemon's machine, not to the nodes'; the database URL is
# a secret and reaches a node through its store factory (never in Ray's actor arguments).
_LOCAL_ONLY = ("state_dir", "cli_path", "database_url")


def file_database_url(path: str) -> str | None:
    """``database_url`` as the config file at ``path`` has it (None: not there)."""
    with open(path, "rb") as f:
        url = tomllib.load(f).get("database_url")
    return url if isinstance(url, str) and url.strip().lower() not in ("", "none") else None


@dataclass(frozen=True)
class NodeDatabase:
    """A node's store factory (the registry, or with ``transcripts`` the transcript store) that
    reads the database URL from the config file at ``config_file`` on the node's own machine
    when it is called: what Ray pickles into the host actor's arguments holds only the path."""

    config_file: str
    schema: str
    retry_for: float
    transcripts: bool = False

    def __call__(self) -> Any:
        try:
            url = file_database_url(self.config_file)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidRequest(
                f"cannot read database_url from {self.config_file} on this node ({exc}): "
                "provision the config file at the same path on every node"
            ) from None
        if url is None:
            raise InvalidRequest(
                f"{self.config_file} on this node has no database_url: provision the same "
                "config file on every node"
            )
        store = PostgresSessionStore if self.transcripts else PostgresRegistry
        return store(url, schema=self.schema, retry_for=self.retry_for)


def _isolated(settings: Settings) -> list[str]:
    """Tenants whose agents run as their own user (a shell on the nodes: docs/security.md)."""
    return [t.name for t in settings.tenants if t.user and not settings.shared_user]


def _file_url(settings: Settings) -> str | None:
    if settings.config_file is None:
        return None
    try:
        return file_database_url(str(settings.config_file))
    except (OSError, tomllib.TOMLDecodeError):
        return None


def check(settings: Settings) -> None:
    """Refuse a cluster setting that cannot work, with one line saying why."""
    if settings.cluster is not None and not settings.config.database_url:
        raise InvalidRequest("cluster mode needs --database-url (a postgresql:// URL)")
    if settings.cluster is not None and settings.config_file is None:
        # Nodes read the tenants from the config file (at the same path on every machine).
        for tenant in settings.tenants:
            if tenant.user or tenant.env or tenant.claude_config_dir:
                raise InvalidRequest(
                    f"tenant {tenant.name}: user, env and claude_config_dir reach the nodes "
                    "through the config file: start with --config FILE (at the same path on "
                    "every node)"
                )
    address = settings.cluster
    if address is not None and address != "auto" and ":" not in address:
        raise InvalidRequest("--cluster takes auto, ray://host:port or host:port")
    isolated = _isolated(settings)
    url = settings.config.database_url
    if settings.cluster is None or not isolated or url is None:
        return
    if _file_url(settings) != url:
        raise InvalidRequest(
            f"tenant(s) {', '.join(isolated)} run agents as their own user on the nodes: put "
            f"database_url in the config file {settings.config_file} (root, 0600, the same on "
            "every node), not on the command line or in HOTSESSION_DATABASE_URL; the nodes "
            "read it there"
        )
    password = urlsplit(url).password
    if password and any(password in arg for arg in sys.argv[1:]):
        raise InvalidRequest(
            "the database password is on this daemon's command line, which every user of the "
            "machine can read (ps): keep database_url in the config file only"
        )


def cluster_config(settings: Settings) -> ClusterConfig:
    """The ClusterHub's settings from the daemon's."""
    check(settings)
    config = settings.config
    assert settings.cluster is not None and config.database_url is not None
    url, schema, retry = config.database_url, config.database_schema, config.database_retry_s
    engine = config.model_dump(exclude=set(_LOCAL_ONLY))
    store: Any = functools.partial(PostgresRegistry, url, schema=schema, retry_for=retry)
    transcripts: Any = functools.partial(PostgresSessionStore, url, schema=schema, retry_for=retry)
    if settings.config_file is not None and _file_url(settings) == url:
        path = str(settings.config_file)
        store = NodeDatabase(path, schema, retry)
        transcripts = NodeDatabase(path, schema, retry, transcripts=True)
    return ClusterConfig(
        address=settings.cluster,
        store=store,
        transcripts=transcripts,
        state_root=os.path.join(str(settings.config.state_dir), "nodes"),
        node_config=engine,
        tenants_file=str(settings.config_file) if settings.config_file is not None else None,
    )


def cluster_hub(settings: Settings, *, state_lock: StateLock | None = None) -> ClusterHub:
    """The daemon's engine in cluster mode (it keeps ``state_lock`` until it stops)."""
    return ClusterHub(settings.config, cluster_config(settings), state_lock=state_lock)
