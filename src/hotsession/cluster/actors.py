"""Ray glue: joining the cluster, and the host actor of each node (created once, found by name).

A host actor is named after its node (``hotsession-host-<node id>``) in the ``hotsession``
namespace and is *detached*, so it outlives the daemon that created it and every daemon finds the
same one (``get_if_exists``). It is pinned to its node with a hard node affinity and is not
restarted by Ray: when its node is gone it cannot be scheduled anywhere else, and its sessions
are re-homed by the daemons instead (``hotsession.cluster.hub``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from hotsession.cluster.node import NodeHost, NodeSpec
from hotsession.errors import HotsessionError

log = logging.getLogger(__name__)

NAMESPACE = "hotsession"
PREFIX = "hotsession-host-"


JOIN_TRIES = 3
"""Connection attempts through Ray Client: its server starts a process per client connection,
which a loaded head may not have ready within Ray Client's own ~30 s of retries."""


class ClusterUnreachable(HotsessionError):
    """The daemon cannot join the Ray cluster (the start fails with this one line)."""

    code = "cluster_unreachable"
    status = 503


def join(address: str, *, namespace: str = NAMESPACE) -> None:
    """Connect this process to the Ray cluster at ``address`` (``auto``, ``host:port`` or
    ``ray://host:port``); raises ``ClusterUnreachable`` with one line when it cannot."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    tries = JOIN_TRIES if address.startswith("ray://") else 1
    for attempt in range(1, tries + 1):
        try:
            ray.init(address=address, namespace=namespace, log_to_driver=False)
            return
        except (ConnectionError, TimeoutError) as exc:
            why = str(exc) or type(exc).__name__
            if attempt == tries:
                raise ClusterUnreachable(
                    f"cannot join the Ray cluster at {address}: {why}", address=address
                ) from None
            log.warning("joining %s failed (%s); trying again", address, why)
            with contextlib.suppress(Exception):
                ray.shutdown()


def via_client() -> bool:
    """Whether this process joined through Ray Client (``ray://``): streaming calls are then
    pulled (``hotsession.cluster.streams``), as Ray Client does not carry Ray's generators."""
    from ray.util.client import ray as client

    return bool(client.is_connected())  # type: ignore[no-untyped-call]


def alive_nodes() -> list[str]:
    """Ids of the cluster's live nodes."""
    import ray

    return [str(n["NodeID"]) for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]


def host_actor(spec: NodeSpec) -> Any:
    """The host actor of ``spec.name``'s node (created if there is none yet)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cls = ray.remote(NodeHost)
    return cls.options(
        name=PREFIX + spec.name,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        max_restarts=0,
        max_concurrency=10_000,
        scheduling_strategy=NodeAffinitySchedulingStrategy(spec.name, soft=False),
    ).remote(spec)


def existing_actor(node: str) -> Any | None:
    """The host actor of ``node`` if one is registered."""
    import ray

    try:
        return ray.get_actor(PREFIX + node, namespace=NAMESPACE)
    except ValueError:
        return None
