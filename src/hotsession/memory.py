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
import functools
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


def _anon_rss_kb(pid: int) -> tuple[int, int] | None:
    """``RssAnon`` and ``VmRSS`` of a process in KiB, from one read of ``/proc/PID/status``."""
    anon = rss = None
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f.read().split(b"\n"):
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith(b"RssAnon:"):
                    anon = int(line.split()[1])
                    break  # it comes after VmRSS
    except (OSError, ValueError, IndexError):
        return None
    return None if anon is None or rss is None else (anon, rss)


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
        kb = _anon_rss_kb(p)
        if kb is None:
            continue
        found = True
        anon += kb[0]
        rss += kb[1]
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


@functools.cache
def _children_files() -> bool:
    """Whether the kernel lists a thread's children (``/proc/PID/task/TID/children``)."""
    return os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _process_count() -> int:
    """How many processes the machine has (0 where ``/proc`` cannot be listed)."""
    try:
        return sum(1 for entry in os.listdir("/proc") if entry.isdigit())
    except OSError:
        return 0


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
    """``sample`` for many processes at once.

    Children are found per process (``/proc/PID/task/TID/children``: ~60 µs for a CLI of ~11
    threads) while the processes are few against the machine's, else from one ``ppid`` map of
    every process (~12 µs per process of the machine). Measured on the 2-core box with 195
    processes: 6 agents' trees 0.36 ms one by one, 2.4 ms through the map, which the pool's
    sample every 2 s made most of an idle daemon's CPU (docs/benchmarks.md).
    """
    one_by_one = tree and _children_files() and 5 * len(pids) < _process_count()
    children = _children_map() if tree and not one_by_one else {}
    out: dict[int, Memory] = {}
    for pid in pids:
        if not tree:
            group = [pid]
        elif one_by_one:
            group = [pid, *(_descendants(pid) or ())]
        else:
            group = [pid]
            i = 0
            while i < len(group):
                group.extend(children.get(group[i], ()))
                i += 1
        anon = rss = 0
        found = False
        for p in group:
            kb = _anon_rss_kb(p)
            if kb is None:
                continue
            found = True
            anon += kb[0]
            rss += kb[1]
        if found:
            out[pid] = Memory(anon_mb=round(anon / 1024, 1), rss_mb=round(rss / 1024, 1))
    return out
