"""A node's tenants: their OS users, secrets and config dirs, set up on the node's own machine.

Design
======
On one machine the daemon runs ``hotsession.isolation.prepare`` at start and hands the engine
its spawn policy (issue 15: an account per tenant, its 0700 HOME and ``CLAUDE_CONFIG_DIR``, its
``env``, the Bash sandbox, memory cgroups and task limits). Accounts, homes, cgroups and the
sandbox probe are per machine, so in cluster mode every host actor does the same on its node.

Where the tenants come from. A tenant's ``env`` holds secrets (API keys). Ray keeps an actor's
creation arguments, and its calls' arguments while they run, in its GCS and shows them through
its state API; a daemon therefore never sends tenants to a node. It sends the **path** of its
config file (``--config``), and each node reads the tenants from the file at that path on its
own machine, provisioned there like the workspaces (the same content on every machine, owned by
root and 0600: ``prepare`` tightens and checks it as on one machine). A daemon starting against
a node reloads the file when it changed (path, size, modification time); tenants added since are
set up then. A tenant whose ``user`` changed keeps its spares of the old set-up until they are
used or recycled: restart the host actors (``ray stop`` / ``ray start`` on the node) to apply
such a change at once.

:class:`NodeTenants` is the engine's ``SpawnPolicy`` (``hotsession.host``) and answers, for the
node's transcript mirror and ``materialize_transcript``, where a tenant's transcripts live and
how to write one there as the tenant's user.

Ray is part of the wall. A node also runs Ray (its GCS or raylet ports, its session dir with
logs and the object store's socket), and the host actor holds the database URL. Without Ray's
token authentication any local user, so a tenant's agent (a shell as its user), can talk to
the GCS and the raylet: read the actor table and Ray's key-value store, call a host actor, run
code as Ray's user (root). So a node with tenants that have their own ``user`` refuses to set
them up (:func:`ray_exposure`, one line naming the node and what to change) unless Ray runs
with ``RAY_AUTH_MODE=token``, its token and its session dir are out of every such user's reach,
and no tenant's agent environment carries Ray's token or a database URL.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

from hotsession.errors import InvalidRequest
from hotsession.host import SpawnPlan
from hotsession.isolation import IsolationError, TenantIsolation, prepare, write_file_as
from hotsession.isolation.accounts import Account, unreachable
from hotsession.settings import SettingsError, Tenant, load_settings
from hotsession.supervisor import RunAs

log = logging.getLogger(__name__)


class NodeTenants:
    """The tenants of a node's engine (its ``SpawnPolicy``), from the tenants' config file."""

    def __init__(self, node: str, state_dir: Path) -> None:
        self.node = node
        self.state_dir = state_dir
        self.isolation = TenantIsolation()
        self.source: tuple[str, int, int] | None = None  # the file loaded: path, size, mtime
        self._old: list[TenantIsolation] = []  # replaced set-ups (their cgroups end at close)
        self.tenants: dict[str, Tenant] = {}  # as loaded (a tenant not here: the node's own)

    def plan(self, tenant: str) -> SpawnPlan:
        return self.isolation.plan(tenant)

    def config_dir(self, tenant: str) -> str | None:
        return self.isolation.config_dir(tenant)

    def config_dirs(self) -> list[str]:
        """Every tenant's own ``CLAUDE_CONFIG_DIR`` on this node."""
        return sorted(set(self.isolation.config_dirs.values()))

    def writer(self, tenant: str) -> Callable[[Path, str], None] | None:
        """How to write a file for ``tenant``'s agents (as its user); None: as this process."""
        run_as = self.plan(tenant).run_as
        return None if run_as is None else functools.partial(write_file_as, run_as)

    def load(self, path: str, *, cli_path: str) -> set[str]:
        """Read the tenants from ``path`` and set them up here, unless that file is what was
        loaded already; returns the tenants whose set-up changed (added, removed, or another
        user, ``env``, config dir…: their spares must go). Raises ``IsolationError`` or
        ``InvalidRequest`` with one line naming this node."""
        try:
            st = os.stat(path)
        except OSError as exc:
            raise InvalidRequest(
                f"node {self.node[:12]}: cannot read the tenants' config file {path} "
                f"({exc.strerror}): provision it at the same path on every node"
            ) from None
        source = (path, st.st_size, st.st_mtime_ns)
        if source == self.source:
            return set()
        try:
            settings = load_settings(path, {"state_dir": str(self.state_dir)}, environ={})
        except SettingsError as exc:
            raise InvalidRequest(f"node {self.node[:12]}: {exc}") from None
        try:
            isolation = prepare(settings, cli_path=cli_path)
            exposed = ray_exposure(isolation)
        except IsolationError as exc:
            raise IsolationError(f"node {self.node[:12]}: {exc}") from None
        if exposed is not None:
            isolation.close()
            raise IsolationError(f"node {self.node[:12]}: {exposed}")
        self._old.append(self.isolation)
        self.isolation, self.source = isolation, source
        new = {t.name: t for t in settings.tenants}
        changed = {n for n in {*self.tenants, *new} if self.tenants.get(n) != new.get(n)}
        self.tenants = new
        log.info(
            "node %s: tenants from %s: %s",
            self.node[:12],
            path,
            ", ".join(t.name for t in settings.tenants) or "none",
        )
        return changed

    def close(self) -> None:
        """Remove the tenants' memory cgroups (after their agents exited)."""
        for isolation in (*self._old, self.isolation):
            isolation.close()


# What a tenant's agent must not be given (Ray's token; a database URL with its password).
_SECRET_ENV = ("RAY_AUTH_TOKEN", "HOTSESSION_DATABASE_URL", "PGPASSWORD", "DATABASE_URL")


def ray_exposure(isolation: TenantIsolation) -> str | None:
    """Why this node's Ray is open to the agents of tenants with their own user (one line:
    what to change), or None. Run in the host actor: it checks the Ray it runs in."""
    users = {t: p.run_as for t, p in isolation.plans.items() if p.run_as is not None}
    if not users:
        return None  # agents run as Ray's user: nothing of Ray is kept from them
    if not _token_auth():
        return (
            "Ray runs without authentication, so a tenant's agent can reach its GCS and raylet "
            "(every actor, every conversation, code run as Ray's user): start Ray on every node "
            "with RAY_AUTH_MODE=token and the token in a root-only file (RAY_AUTH_TOKEN_PATH, "
            "docs/cluster.md)"
        )
    for tenant, plan in isolation.plans.items():
        leaked = sorted(k for k in (plan.env or {}) if k in _SECRET_ENV)
        if plan.run_as is not None and leaked:
            return (
                f"tenant {tenant}'s agents would get {', '.join(leaked)} (pass_env or env): "
                "remove it"
            )
    needs = [("r", path) for path in _ray_private_paths()]
    for tenant, run_as in users.items():
        for _, path in _readable(run_as, needs):
            return (
                f"{path} is readable by tenant {tenant}'s user: keep Ray's token and temp dir "
                "(session logs, the object store's socket) in root-only directories "
                "(RAY_AUTH_TOKEN_PATH, RAY_TMPDIR or ray start --temp-dir under a 0700 "
                "directory, docs/cluster.md)"
            )
    return None


def _token_auth() -> bool:
    """Whether the Ray this process runs in uses token authentication (``RAY_AUTH_MODE``)."""
    from ray._raylet import (  # type: ignore[attr-defined]
        AuthenticationMode,
        get_authentication_mode,
    )

    return bool(get_authentication_mode() == AuthenticationMode.TOKEN)


def _ray_private_paths() -> list[str]:
    """Ray's token file (when the token is a file) and this node's session dir."""
    import ray

    paths = []
    if not os.environ.get("RAY_AUTH_TOKEN"):
        token = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
        paths.append(token)
    node = ray._private.worker.global_worker.node
    if node is not None:
        paths.append(node.get_session_dir_path())
    return paths


def _readable(run_as: RunAs, needs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``needs`` (``r``, path) that ``run_as`` *has* (``unreachable`` lists the others)."""
    account = Account(f"uid {run_as.uid}", run_as.uid, run_as.gid, run_as.groups, "")
    missing = set(unreachable(account, needs))
    return [need for need in needs if need not in missing]
