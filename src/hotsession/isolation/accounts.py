"""OS accounts of tenants: lookup, their private directories, and what they can reach.

What an account can reach is asked of the kernel, not computed from mode bits: a short
``/bin/sh`` runs as the account and applies ``test -r/-w/-x`` (``access(2)``: ACLs, mounts and
every parent directory count). It runs once per account at start.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from dataclasses import dataclass
from typing import Protocol

from hotsession.errors import HotsessionError

_PROBE = r"""
for spec do
  need=${spec%%:*}; path=${spec#*:}
  ok=1
  case $need in *d*) [ -d "$path" ] || ok=0;; esac
  case $need in *r*) [ -r "$path" ] || ok=0;; esac
  case $need in *w*) [ -w "$path" ] || ok=0;; esac
  case $need in *x*) [ -x "$path" ] || ok=0;; esac
  [ $ok = 1 ] || printf '%s\n' "$spec"
done
"""


class IsolationError(HotsessionError):
    """Tenants cannot be isolated as configured; the message says which and how to fix it."""

    code = "isolation"


@dataclass(frozen=True)
class Account:
    """An OS user a tenant's agents run as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def lookup(user: str, *, tenant: str) -> Account:
    """The account named ``user``; refuses unknown and privileged ones."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise IsolationError(
            f"tenant {tenant}: no OS user {user!r} (create it: useradd --system {user})"
        ) from None
    if pw.pw_uid == 0 or pw.pw_gid == 0:
        raise IsolationError(f"tenant {tenant}: user {user!r} is privileged (uid or gid 0)")
    groups = tuple(sorted(set(os.getgrouplist(user, pw.pw_gid))))
    if 0 in groups:
        raise IsolationError(f"tenant {tenant}: user {user!r} is in the root group")
    return Account(user, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir)


class Identity(Protocol):
    """Who to run as: an :class:`Account`, or a spawn plan's ``RunAs``."""

    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def groups(self) -> tuple[int, ...]: ...


def run_as(
    account: Identity, argv: list[str], *, timeout: float = 20.0, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``account`` (the daemon is root) with an empty environment."""
    return subprocess.run(
        argv,
        user=account.uid,
        group=account.gid,
        extra_groups=list(account.groups),
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        cwd="/",
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def unreachable(account: Account, needs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``(need, path)`` pairs the account does not have; need is letters of ``drwx``."""
    if not needs:
        return []
    proc = run_as(account, ["/bin/sh", "-c", _PROBE, "sh", *(f"{n}:{p}" for n, p in needs)])
    if proc.returncode != 0:
        raise IsolationError(
            f"cannot check paths as user {account.name}: {proc.stderr.strip()[:200]}"
        )
    out = []
    for line in proc.stdout.splitlines():
        need, _, path = line.partition(":")
        out.append((need, path))
    return out


def why_unreachable(account: Account, path: str) -> str:
    """Which directory on the way to ``path`` stops the account, with its owner and mode."""
    parts = []
    current = path
    while True:
        parts.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    blocked = {p for _, p in unreachable(account, [("x", p) for p in parts[1:]])}
    for p in reversed(parts[1:]):  # from / down: the first directory it cannot enter
        if p in blocked:
            return f"{p} is not searchable by it ({describe(p)})"
    return f"{describe(path)}"


def describe(path: str) -> str:
    """``drwx------ root:root`` for a path, or why it cannot be described."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    return f"{stat.filemode(st.st_mode)} {_user(st.st_uid)}:{_group(st.st_gid)}"


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def private_dir(path: str, account: Account, *, tenant: str, what: str) -> list[str]:
    """Make ``path`` a directory of the account closed to others (0700); returns warnings.

    Created (with missing parents owned by root) when absent; an existing one must belong to
    the account (a directory of someone else is refused, not taken over).
    """
    warnings: list[str] = []
    try:
        st = os.stat(path)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path) or "/", mode=0o755, exist_ok=True)
        os.mkdir(path, 0o700)
        os.chown(path, account.uid, account.gid)
        os.chmod(path, 0o700)
        return warnings
    if not stat.S_ISDIR(st.st_mode):
        raise IsolationError(f"tenant {tenant}: {what} {path} is not a directory")
    if st.st_uid != account.uid:
        raise IsolationError(
            f"tenant {tenant}: {what} {path} belongs to {_user(st.st_uid)}, not to "
            f"{account.name} (chown -R {account.name}: {path})"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
        warnings.append(
            f"tenant {tenant}: {what} {path} was open to others "
            f"({stat.filemode(st.st_mode)}); now 0700"
        )
    return warnings
