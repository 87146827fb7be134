"""Tenants isolated below the API: an OS user per tenant, own secrets, the daemon's files closed.

Design
======
The API keeps tenants apart (another tenant's session answers 404); below it, every agent has
Bash, so the wall must be the kernel's. With the daemon running as root, each tenant's agents
(and the tools they run) run as the tenant's own unprivileged account (``user`` in
``[[tenants]]``), with a HOME and ``CLAUDE_CONFIG_DIR`` owned by it and closed to others (0700):
another tenant's files, transcripts and ``/proc/<pid>/environ`` are out of reach, and so are its
processes (no signal, no ptrace across uids). The daemon's own files (state dir 0700; registry,
token, config 0600) belong to root.

Start-up (``prepare``) checks the set-up and refuses with one line that says what to change:
several tenants without a user each (unless ``shared_user = true``, logged as insecure at every
start); users configured but a daemon that is not root; an unknown or privileged account, or two
tenants on one account; a root, the CLI binary or a home the account cannot reach. It also tightens
modes of the daemon's files, probes the Bash sandbox and sets up the limits.

At spawn the host asks ``TenantIsolation.plan(tenant)`` (hotsession.host.SpawnPolicy) for:

* the environment base: for a tenant with a user, only the daemon's pass-through variables
  (``DEFAULT_PASS_ENV`` plus ``pass_env``), then HOME/USER/LOGNAME/SHELL/``CLAUDE_CONFIG_DIR``
  of the account, then the tenant's own ``env``; never another tenant's. Tenants without a user
  get the daemon's whole environment plus their own ``env`` (a single-user install unchanged);
* ``RunAs`` (uid, gid, groups, ``RLIMIT_NPROC``, memory cgroup) for the supervisor;
* ``--settings`` with Claude Code's Bash sandbox (hotsession.isolation.sandbox) where it is on;
* the flag files (hotsession.isolation.argfiles): the system prompts, MCP config, settings and
  agents JSON go into files of the account instead of the command line, which every user reads.

The pool needs nothing more: a spare belongs to one profile, a profile to one tenant, and every
spawn (spares included) goes through the host. The CLI's transcripts live in the account's
``CLAUDE_CONFIG_DIR`` (``config_dir``): a resume reads them there, as that user.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hotsession.host import SpawnPlan
from hotsession.isolation import accounts, limits, sandbox
from hotsession.isolation.accounts import (
    Account,
    IsolationError,
    describe,
    lookup,
    private_dir,
    unreachable,
    why_unreachable,
)
from hotsession.isolation.argfiles import ArgFiles
from hotsession.supervisor import RunAs

if TYPE_CHECKING:
    from hotsession.settings import Settings, Tenant

__all__ = ["DEFAULT_PASS_ENV", "IsolationError", "TenantIsolation", "prepare", "write_file_as"]

log = logging.getLogger(__name__)

# Daemon variables an isolated tenant's agents inherit: locale, terminal, proxies, CA bundles,
# the API endpoint and the CLI's traffic switches. Credentials are not among them: a tenant
# brings its own (``env``), or the operator names a shared one in ``pass_env``.
DEFAULT_PASS_ENV: tuple[str, ...] = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TERM",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
    "ANTHROPIC_BASE_URL",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
    "DISABLE_AUTOUPDATER",
    "DISABLE_TELEMETRY",
    "DISABLE_ERROR_REPORTING",
)


@dataclass
class TenantIsolation:
    """The per-tenant spawn plans (``hotsession.host.SpawnPolicy``) and what start-up found."""

    plans: dict[str, SpawnPlan] = field(default_factory=dict)
    config_dirs: dict[str, str] = field(default_factory=dict)
    sandboxed: dict[str, bool] = field(default_factory=dict)
    memory_groups: list[limits.MemoryGroup] = field(default_factory=list)

    def plan(self, tenant: str) -> SpawnPlan:
        """How to start processes of ``tenant`` (the daemon's defaults when unknown)."""
        return self.plans.get(tenant) or SpawnPlan()

    def config_dir(self, tenant: str) -> str | None:
        """Where the CLI of ``tenant`` keeps its transcripts (None: the daemon's default)."""
        return self.config_dirs.get(tenant)

    def close(self) -> None:
        """Remove the memory cgroups (after every child has exited)."""
        for group in self.memory_groups:
            limits.remove_group(group)


def pass_through(environ: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """The variables of ``environ`` named in ``names`` (``PREFIX_*`` matches a prefix)."""
    exact = {n for n in names if not n.endswith("*")}
    prefixes = tuple(n[:-1] for n in names if n.endswith("*"))
    return {k: v for k, v in environ.items() if k in exact or (prefixes and k.startswith(prefixes))}


def prepare(
    settings: Settings,
    *,
    cli_path: str,
    environ: Mapping[str, str] | None = None,
    agents: bool = True,
) -> TenantIsolation:
    """Check the tenants' isolation and set it up; raises ``IsolationError`` (one line).

    ``agents=False`` (a cluster-mode API daemon: its nodes run the agents and each prepares
    its own machine, ``hotsession.cluster.tenants``): only the daemon's files and the tenant
    set are checked (several tenants need a user each, unless ``shared_user``)."""
    environ = os.environ if environ is None else environ
    tenants = settings.tenants
    euid = os.geteuid()
    with_user = [t for t in tenants if t.user is not None]
    secure_daemon_files(settings, strict=euid == 0 and bool(with_user))
    without = [t.name for t in tenants if t.user is None]
    if not agents:
        if len(tenants) > 1 and without and not settings.shared_user:
            raise IsolationError(
                f"tenant(s) {', '.join(without)} have no 'user': with several tenants each "
                "needs its own OS user (docs/security.md), or set shared_user = true "
                "(insecure: every tenant's agent can then read the others' files)"
            )
        return TenantIsolation()
    if len(tenants) > 1 and not settings.shared_user:
        if euid != 0:
            raise IsolationError(
                f"{len(tenants)} tenants need an OS user each, and this daemon runs as "
                f"{_whoami()}, which cannot switch users: run `hotsession serve` as root with "
                "`user` set for every tenant, or set shared_user = true (insecure: every "
                "tenant's agent can then read the others' files; docs/security.md)"
            )
        if without:
            raise IsolationError(
                f"tenant(s) {', '.join(without)} have no 'user': with several tenants each "
                "needs its own OS user (docs/security.md), or set shared_user = true "
                "(insecure: every tenant's agent can then read the others' files)"
            )
    if settings.shared_user and len(tenants) > 1 and (without or euid != 0):
        log.warning(
            "INSECURE: shared_user = true: tenant(s) %s run as the daemon's user %s; their "
            "agents can read each other's files, prompts and secrets (docs/security.md)",
            ", ".join(without if euid == 0 else [t.name for t in tenants]),
            _whoami(),
        )
    if with_user and euid != 0:
        own = [t for t in with_user if t.user != _whoami()]
        if own:
            raise IsolationError(
                f"tenant {own[0].name} has user {own[0].user!r}, but this daemon runs as "
                f"{_whoami()} and cannot switch users: run `hotsession serve` as root"
            )
    iso = TenantIsolation()
    accounts: dict[str, str] = {}
    for tenant in tenants:
        if tenant.user is None or euid != 0:
            iso.plans[tenant.name] = _shared_plan(tenant, environ)
            if tenant.claude_config_dir:
                iso.config_dirs[tenant.name] = tenant.claude_config_dir
            continue
        account = lookup(tenant.user, tenant=tenant.name)
        if account.name in accounts:
            raise IsolationError(
                f"tenants {accounts[account.name]} and {tenant.name} share user "
                f"{account.name!r}: give each its own"
            )
        accounts[account.name] = tenant.name
        iso.plans[tenant.name], iso.config_dirs[tenant.name], sandboxed, group = _isolate(
            tenant, account, settings, cli_path=cli_path, environ=environ
        )
        iso.sandboxed[tenant.name] = sandboxed
        if group is not None:
            iso.memory_groups.append(group)
    _warn_open_roots(tenants, accounts)
    return iso


def _warn_open_roots(tenants: tuple[Tenant, ...], accounts: dict[str, str]) -> None:
    """Warn about a root another tenant's user can read (shared on purpose, or a mistake)."""
    by_name = {t.name: t for t in tenants}
    for user, owner in accounts.items():
        other = lookup(user, tenant=owner)
        for tenant in tenants:
            if tenant.name == owner or tenant.user is None:
                continue
            roots = [r for r in tenant.roots if r not in by_name[owner].roots]
            readable = set(roots) - {p for _, p in unreachable(other, [("r", r) for r in roots])}
            for root in sorted(readable):
                log.warning(
                    "tenant %s's root %s is readable by tenant %s's user %s (chmod 0700 it, "
                    "unless it is shared on purpose)",
                    tenant.name,
                    root,
                    owner,
                    user,
                )


def _shared_plan(tenant: Tenant, environ: Mapping[str, str]) -> SpawnPlan:
    """A tenant that runs as the daemon's user: the daemon's environment plus its own."""
    if tenant.claude_config_dir is None and not tenant.env:
        return SpawnPlan()
    env = dict(environ)
    if tenant.claude_config_dir:
        env["CLAUDE_CONFIG_DIR"] = tenant.claude_config_dir
    env.update(dict(tenant.env))
    return SpawnPlan(env=env)


def _isolate(
    tenant: Tenant,
    account: Account,
    settings: Settings,
    *,
    cli_path: str,
    environ: Mapping[str, str],
) -> tuple[SpawnPlan, str, bool, limits.MemoryGroup | None]:
    name = tenant.name
    home = tenant.home or account.home
    if not home or home == "/" or not os.path.isabs(home):
        raise IsolationError(f"tenant {name}: user {account.name} has no usable home; set 'home'")
    config_dir = tenant.claude_config_dir or os.path.join(home, ".claude")
    state_dir = os.path.realpath(settings.config.state_dir)
    for path, what in ((home, "home"), (config_dir, "claude_config_dir")):
        real = os.path.realpath(path)
        if real == state_dir or real.startswith(state_dir + os.sep):
            raise IsolationError(f"tenant {name}: {what} {path} is inside the state dir")
    for warning in private_dir(home, account, tenant=name, what="home"):
        log.warning(warning)
    for warning in private_dir(config_dir, account, tenant=name, what="claude_config_dir"):
        log.warning(warning)
    needs = [("drwx", home), ("drwx", config_dir), ("x", cli_path)]
    needs += [("drx", root) for root in tenant.roots]
    missing = unreachable(account, needs)
    for need, path in missing:
        if path == cli_path:
            raise IsolationError(
                f"tenant {name}: user {account.name} cannot run the Claude Code CLI {path}: "
                f"{why_unreachable(account, path)} (install hotsession where every tenant "
                "user can read it, e.g. under /opt, or set cli_path)"
            )
        if path in tenant.roots:
            raise IsolationError(
                f"tenant {name}: root {path} is not reachable by user {account.name} "
                f"(needs read and search): {why_unreachable(account, path)}"
            )
        raise IsolationError(
            f"tenant {name}: user {account.name} cannot use {path} ({need}): {describe(path)}"
        )
    for _, root in unreachable(account, [("w", root) for root in tenant.roots]):
        log.warning("tenant %s: root %s is read-only for user %s", name, root, account.name)
    if any(k in ("HOME", "USER", "LOGNAME") for k in tenant.env):
        raise IsolationError(f"tenant {name}: 'env' must not set HOME, USER or LOGNAME")
    env = pass_through(environ, DEFAULT_PASS_ENV + settings.pass_env)
    env.update(
        HOME=home,
        USER=account.name,
        LOGNAME=account.name,
        SHELL="/bin/bash" if Path("/bin/bash").exists() else "/bin/sh",
        CLAUDE_CONFIG_DIR=config_dir,
    )
    env.update(dict(tenant.env))
    extra: tuple[str, ...] = ()
    on = False
    if tenant.sandbox is not False:
        reason = sandbox.unavailable(account)
        if reason is None:
            extra = ("--settings", sandbox.settings(tenant.roots, dict(tenant.sandbox_settings)))
            on = True
        elif tenant.sandbox is True:
            raise IsolationError(f"tenant {name}: sandbox = true, but {reason}")
        else:
            log.warning("tenant %s: Claude Code's Bash sandbox is off: %s", name, reason)
    rlimits: tuple[tuple[int, int], ...] = ()
    if tenant.processes_max is not None:
        rlimits = (limits.nproc_limit(tenant.processes_max),)
    group = None
    if tenant.memory_max_mb is not None:
        group = limits.memory_group(name, tenant.memory_max_mb)
    flag_files = ArgFiles(home, uid=account.uid, gid=account.gid)
    try:
        flag_files.prepare()
    except OSError as exc:
        raise IsolationError(
            f"tenant {name}: cannot prepare {flag_files.directory} for the agents' flag "
            f"files: {exc}"
        ) from exc
    run_as = RunAs(
        uid=account.uid,
        gid=account.gid,
        groups=account.groups,
        rlimits=rlimits,
        cgroups=(group.procs,) if group is not None else (),
    )
    log.info(
        "tenant %s: agents run as %s (uid %d), HOME %s, sandbox %s%s%s",
        name,
        account.name,
        account.uid,
        home,
        "on" if on else "off",
        f", memory {tenant.memory_max_mb:g} MB (cgroup v{group.version})" if group else "",
        f", {tenant.processes_max} tasks" if tenant.processes_max else "",
    )
    plan = SpawnPlan(env=env, extra_argv=extra, run_as=run_as, flag_files=flag_files)
    return plan, config_dir, on, group


def write_file_as(run_as: RunAs, path: Path, text: str) -> None:
    """Write ``path`` as ``run_as``'s user: atomically (a temporary name, then a rename), mode
    0600, missing parents 0700. For files root puts where a tenant's agents read them (a
    transcript materialized before ``--resume`` on another node): written as the tenant, root
    never creates or follows anything in a directory the tenant controls. A shell of the
    account does it (the daemon's Python need not be runnable by tenant users); paths are
    arguments, never parts of the script."""
    script = (
        'umask 077 && mkdir -p -- "$1" && t=$(mktemp -- "$1/.hs-XXXXXX") && '
        '{ cat > "$t" && mv -f -- "$t" "$2" || { rm -f -- "$t"; exit 1; }; }'
    )
    argv = ["/bin/sh", "-c", script, "sh", str(path.parent), str(path)]
    done = accounts.run_as(run_as, argv, timeout=60.0, stdin=text)
    if done.returncode != 0:
        raise OSError(f"cannot write {path} as uid {run_as.uid}: {done.stderr.strip()[:200]}")


def secure_daemon_files(settings: Settings, *, strict: bool) -> None:
    """State dir 0700; token file, config and registry files 0600.

    ``strict`` (tenants with users): each must belong to the daemon's user, else start-up is
    refused (its owner could open it again); otherwise files of others are left alone.
    """
    state_dir = Path(settings.config.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _tighten(state_dir, 0o700, strict=strict)
    db = settings.config.db_path
    files = [settings.token_file, settings.config_file, db]
    files += [db.with_name(db.name + suffix) for suffix in ("-wal", "-shm")]
    for path in files:
        if path is not None and path.exists():
            _tighten(path, 0o600, strict=strict)


def _tighten(path: Path, mode: int, *, strict: bool) -> None:
    st = path.stat()
    if st.st_uid != os.geteuid():
        if not strict:
            return
        raise IsolationError(
            f"{path} belongs to {_name(st.st_uid)}, not to the daemon's user {_whoami()}: "
            f"chown {_whoami()} {path}"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, mode)
        log.warning("%s was open to others (%s); now %o", path, stat.filemode(st.st_mode), mode)


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _whoami() -> str:
    return _name(os.geteuid())
