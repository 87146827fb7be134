"""Per-tenant limits: memory (a cgroup) and tasks (``RLIMIT_NPROC``).

Memory. All agents of a tenant (and their tools) share one cgroup,
``hotsession.<daemon pid>.<tenant>``, with ``memory.max`` (cgroup v2) or
``memory.limit_in_bytes`` (the v1 memory controller, where the host mounts it so, as on hybrid
hosts); the kernel reclaims, then OOM-kills inside that group only. v2: below the daemon's own
group when memory is enabled there, else beside it (in its parent: a systemd service's slice);
else v1 below the daemon's group when mounted; with neither, a tenant with ``memory_max_mb`` is
refused at start. Measured here on the v1 path only (this machine's v2 hierarchy has no memory
controller). A child joins its group between fork and exec
(supervisor.RunAs.cgroups), so its tools are inside from their first fork.

Tasks. ``RLIMIT_NPROC`` counts the tasks (processes and threads) of a *user*: with an account
per tenant that is the tenant's count, whatever the cgroup set-up. It is set in each child after
the switch to the account. A Claude Code CLI runs ~15-20 threads, so allow ~40 per session.
"""

from __future__ import annotations

import contextlib
import os
import resource
from dataclasses import dataclass
from pathlib import Path

from hotsession.isolation.accounts import IsolationError

_MOUNTINFO = "/proc/self/mountinfo"
_CGROUP = "/proc/self/cgroup"


@dataclass(frozen=True)
class MemoryGroup:
    """A tenant's memory cgroup."""

    path: str
    version: int

    @property
    def procs(self) -> str:
        """The file a process writes itself into to join."""
        return os.path.join(self.path, "cgroup.procs")


def nproc_limit(processes_max: int) -> tuple[int, int]:
    """The ``(resource, limit)`` pair for ``supervisor.RunAs.rlimits``."""
    return (resource.RLIMIT_NPROC, processes_max)


def memory_base() -> tuple[str, int] | None:
    """The daemon's cgroup directory where child groups get a memory limit, and its version."""
    mounts = _mounts()
    own = _own_groups()
    v2 = mounts.get("cgroup2")
    if v2 is not None and "" in own:
        # The daemon's own group can hold child groups with a memory limit only when memory is
        # enabled below it, which a group with processes in it cannot have (the root group
        # aside). Its parent usually has it (systemd: the slice of a service with memory
        # accounting), so the tenants' groups become siblings of the daemon's.
        own_dir = _join(v2, own[""])
        for base in (own_dir, os.path.dirname(own_dir)):
            if not base.startswith(v2):
                break
            controls = _read(os.path.join(base, "cgroup.subtree_control")).split()
            if "memory" in controls:
                return base, 2
    v1 = mounts.get("memory")
    if v1 is not None and "memory" in own:
        base = _join(v1, own["memory"])
        if os.path.isfile(os.path.join(base, "memory.limit_in_bytes")):
            return base, 1
    return None


def memory_group(tenant: str, memory_max_mb: float) -> MemoryGroup:
    """Create (or reuse) the tenant's group with its limit; raises ``IsolationError``."""
    found = memory_base()
    if found is None:
        raise IsolationError(
            f"tenant {tenant}: memory_max_mb needs a cgroup memory controller this daemon can "
            "use (cgroup v2 with memory enabled in its subtree_control, or the v1 memory "
            "controller); none here: remove memory_max_mb or run the daemon in such a cgroup"
        )
    base, version = found
    _remove_stale(base)
    path = os.path.join(base, f"hotsession.{os.getpid()}.{tenant}")
    limit = str(int(memory_max_mb * 1024 * 1024))
    try:
        os.makedirs(path, exist_ok=True)
        if version == 2:
            _write(os.path.join(path, "memory.max"), limit)
            with contextlib.suppress(OSError):  # no swap accounting: nothing to close
                _write(os.path.join(path, "memory.swap.max"), "0")
        else:
            _write(os.path.join(path, "memory.limit_in_bytes"), limit)
            with contextlib.suppress(OSError):
                _write(os.path.join(path, "memory.memsw.limit_in_bytes"), limit)
    except OSError as exc:
        raise IsolationError(
            f"tenant {tenant}: cannot set up its memory cgroup {path}: {exc.strerror}"
        ) from None
    return MemoryGroup(path, version)


def remove_group(group: MemoryGroup) -> None:
    """Remove a tenant's group once its processes are gone (best effort)."""
    with contextlib.suppress(OSError):
        os.rmdir(group.path)


def _remove_stale(base: str) -> None:
    """Empty groups of daemons that are gone."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(base):
            parts = entry.name.split(".", 2)
            if len(parts) == 3 and parts[0] == "hotsession" and parts[1].isdigit():
                pid = int(parts[1])
                if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
                    with contextlib.suppress(OSError):
                        os.rmdir(entry.path)


def _mounts() -> dict[str, str]:
    """``cgroup2`` and each v1 controller -> mount point (whose root is the hierarchy's)."""
    out: dict[str, str] = {}
    for line in _read(_MOUNTINFO).splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3 or fields[3] != "/":
            continue  # a bind of a sub-hierarchy: its paths do not map simply
        if rfields[0] == "cgroup2":
            out.setdefault("cgroup2", fields[4])
        elif rfields[0] == "cgroup":
            for opt in rfields[2].split(","):
                out.setdefault(opt, fields[4])
    return out


def _own_groups() -> dict[str, str]:
    """Controller -> this process's group path ("" for the v2 hierarchy)."""
    out: dict[str, str] = {}
    for line in _read(_CGROUP).splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            out[""] = path
        for c in controllers.split(","):
            out[c] = path
    return out


def _join(mount: str, path: str) -> str:
    return os.path.join(mount, path.lstrip("/"))


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(value)
