"""``hotsession serve --cluster ADDRESS --database-url postgresql://…``: what the daemon builds.

The daemon's own settings become the host actors' engine settings (pool, memory, recycling,
limits); each node keeps its state under the same ``state_dir`` path on its own machine
(``<state_dir>/nodes/<node id>``). Agents on a node get that node's environment (what
``ray start`` ran with), or for a tenant with its own ``user`` what ``hotsession.isolation``
gives it: nodes read the tenants (users, ``env`` secrets, config dirs) from the daemon's config
file at the same path on their own machine (``hotsession.cluster.tenants``); no secret is sent
by a daemon.
"""

from __future__ import annotations

import functools
import os

from hotsession.cluster.hub import ClusterConfig, ClusterHub
from hotsession.errors import InvalidRequest
from hotsession.registry.postgres import PostgresRegistry
from hotsession.settings import Settings
from hotsession.state_lock import StateLock
from hotsession.transcripts.postgres import PostgresSessionStore

# Engine settings that belong to the daemon's machine, not to the nodes'.
_LOCAL_ONLY = ("state_dir", "cli_path")


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


def cluster_config(settings: Settings) -> ClusterConfig:
    """The ClusterHub's settings from the daemon's."""
    check(settings)
    config = settings.config
    assert settings.cluster is not None and config.database_url is not None
    url, schema, retry = config.database_url, config.database_schema, config.database_retry_s
    engine = config.model_dump(exclude=set(_LOCAL_ONLY))
    return ClusterConfig(
        address=settings.cluster,
        store=functools.partial(PostgresRegistry, url, schema=schema, retry_for=retry),
        transcripts=functools.partial(PostgresSessionStore, url, schema=schema, retry_for=retry),
        state_root=os.path.join(str(settings.config.state_dir), "nodes"),
        node_config=engine,
        tenants_file=str(settings.config_file) if settings.config_file is not None else None,
    )


def cluster_hub(settings: Settings, *, state_lock: StateLock | None = None) -> ClusterHub:
    """The daemon's engine in cluster mode (it keeps ``state_lock`` until it stops)."""
    return ClusterHub(settings.config, cluster_config(settings), state_lock=state_lock)
