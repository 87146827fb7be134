"""Pinning processes to CPUs for a bench pass: the measured CLIs on cores of their own.

``bench --cluster`` runs a whole cluster (Ray's processes, three host actors, the API daemon,
Postgres, the model server) on the same machine as the CLIs it times. A follow-up's CLI is
CPU-bound across both cores of the development machine, so every ms the cluster spends beside it
slows the CLI itself (docs/cluster.md, "Where the rest of a follow-up goes"); on real machines
a node's cores run its CLIs and its host actor, and the API daemons and Postgres run elsewhere.
:func:`pinned` approximates that on one machine for a pass: the given processes (the session's
CLI and the bare CLI of the paired floor, both the same way) get the first core(s), every other
process of the machine the rest, every thread of each (``sched_setaffinity`` works per thread;
threads made later inherit their creator's mask). Kernel threads that cannot move are left as
they are. On leaving, every thread gets back the mask it had.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def _threads() -> Iterator[tuple[int, int]]:
    """(pid, tid) of every thread of the machine's processes (as /proc shows them now)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{name}/task"):
                yield int(name), int(tid)


def can_pin() -> bool:
    """Whether this machine can give the measured processes a core the others do not use."""
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2


@contextlib.contextmanager
def pinned(pids: set[int], cores: int = 1) -> Iterator[tuple[set[int], set[int]]]:
    """Within the block, ``pids`` run on the first ``cores`` CPUs this process may use and
    every other process on the others; yields (their CPUs, the others' CPUs)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) <= cores:
        raise ValueError(f"pinning needs more than {cores} CPU(s); this machine has {len(cpus)}")
    mine, rest = set(cpus[:cores]), set(cpus[cores:])
    saved: dict[int, set[int]] = {}
    try:
        for pid, tid in _threads():
            with contextlib.suppress(OSError):  # gone meanwhile, or a kernel thread
                before = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, mine if pid in pids else rest)
                saved[tid] = before
        yield mine, rest
    finally:
        for tid, before in saved.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, before)
