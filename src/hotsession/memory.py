"""Memory of agent processes, measured so that shared pages are not counted once per process.

Every CLI process maps the same 200+ MB binary; its resident pages are shared, so plain RSS
over-counts N processes by roughly (N-1) times the shared text (pools-and-scale-out notes §4). We
use:

* ``anon_mb`` — ``RssAnon`` from ``/proc/PID/status``: the process's own (anonymous) memory, cheap
  to read (~25 µs); what recycling and the budget are decided on.
* ``pss_mb`` — proportional set size from ``/proc/PID/smaps_rollup`` (shared pages divided among
  their sharers): summing it over processes gives the real total; ~2 ms to read, so it is
  sampled less often.
* ``rss_mb`` — plain RSS, reported only to show how much it over-counts.

Children of the CLI (tools it runs, MCP servers) are included when ``tree=True``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import psutil

_MB = 1024 * 1024


@dataclass(frozen=True)
class Memory:
    """One sample, in MiB."""

    anon_mb: float
    rss_mb: float
    pss_mb: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        """JSON form."""
        return {"anon_mb": self.anon_mb, "rss_mb": self.rss_mb, "pss_mb": self.pss_mb}


def _status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _pss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _pids(pid: int, tree: bool) -> list[int]:
    pids = [pid]
    if tree:
        found = _descendants(pid)
        if found is None:
            with contextlib.suppress(psutil.Error):
                found = [c.pid for c in psutil.Process(pid).children(recursive=True)]
        pids += found or []
    return pids


def _descendants(pid: int) -> list[int] | None:
    """Every descendant of ``pid`` from ``/proc/PID/task/TID/children`` (None: the kernel has no
    such file). One process's tree costs a few small reads; psutil's ``children`` scans every
    process of the machine (~2–5 ms with 130), which put ~10 ms on ``POST /v1/sessions``."""
    out: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            tids = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue  # gone
        for tid in tids:
            try:
                with open(f"/proc/{current}/task/{tid}/children", "rb") as f:
                    kids = [int(k) for k in f.read().split()]
            except FileNotFoundError:
                if current == pid and not os.path.exists(f"/proc/{current}/task/{tid}"):
                    continue  # the thread ended meanwhile
                if current == pid:
                    return None
                continue
            except (OSError, ValueError):
                continue
            out += kids
            todo += kids
    return out


def sample(pid: int, *, pss: bool = False, tree: bool = True) -> Memory | None:
    """Memory of a process (and its children); None when it is gone."""
    anon = rss = 0
    pss_total: int | None = 0 if pss else None
    found = False
    for p in _pids(pid, tree):
        a = _status_kb(p, "RssAnon:")
        r = _status_kb(p, "VmRSS:")
        if a is None or r is None:
            continue
        found = True
        anon += a
        rss += r
        if pss_total is not None:
            pss_total += _pss_kb(p) or 0
    if not found:
        return None
    return Memory(
        anon_mb=round(anon / 1024, 1),
        rss_mb=round(rss / 1024, 1),
        pss_mb=round(pss_total / 1024, 1) if pss_total is not None else None,
    )


def available_mb() -> float:
    """Memory available to new processes on this machine, in MiB."""
    return round(psutil.virtual_memory().available / _MB, 1)


def _children_map() -> dict[int, list[int]]:
    """``{ppid: [pid, ...]}`` of every process, from one pass over ``/proc``.

    Read by hand: ``psutil.process_iter(["ppid"])`` builds a ``Process`` per entry and cost ~5 ms
    for 130 processes on the 2-core box (the pool samples every few seconds, so it was most of an
    idle daemon's CPU); reading each ``/proc/PID/stat`` directly costs about a fifth of that.
    """
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        entries = []
    if not entries:  # not Linux: psutil knows how
        for proc in psutil.process_iter(["pid", "ppid"]):
            children.setdefault(proc.info["ppid"], []).append(proc.info["pid"])
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            ppid = int(stat[stat.rindex(b")") + 2 :].split(b" ", 2)[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry))
    return children


def sample_many(pids: list[int], *, tree: bool = True) -> dict[int, Memory]:
    """``sample`` for many processes at once; the process tree is read in one pass.

    ``sample(tree=True)`` walks ``/proc`` once per process, which is quadratic for a pool of
    hundreds; here children are found from a single ``ppid`` map.
    """
    children = _children_map() if tree else {}
    out: dict[int, Memory] = {}
    for pid in pids:
        group = [pid]
        i = 0
        while i < len(group):
            group.extend(children.get(group[i], ()))
            i += 1
        anon = rss = 0
        found = False
        for p in group:
            a = _status_kb(p, "RssAnon:")
            r = _status_kb(p, "VmRSS:")
            if a is None or r is None:
                continue
            found = True
            anon += a
            rss += r
        if found:
            out[pid] = Memory(anon_mb=round(anon / 1024, 1), rss_mb=round(rss / 1024, 1))
    return out
