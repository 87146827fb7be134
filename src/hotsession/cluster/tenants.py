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
from hotsession.settings import SettingsError, Tenant, load_settings

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
        except IsolationError as exc:
            raise IsolationError(f"node {self.node[:12]}: {exc}") from None
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
