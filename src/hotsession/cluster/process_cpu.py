"""CPU per process role over a timed stretch of ``bench --cluster`` (one machine, every process).

Why. On a shared 2-core machine a follow-up's latency moves by more between two runs than most
changes move it; the CPU each process spends per follow-up is far steadier, and on this bench it
is what the latency is made of (the node's CLI runs slower while the host actor, the cluster
daemon and Postgres use the other core, docs/cluster.md). So every change to the turn path is
judged by these figures.

How. A :class:`ProcessCpu` names the run's processes by role (:func:`roles`: the API daemon, the
host actor holding the session and the other host actors, the session's CLI and every other CLI
of the run, Postgres, the rest of the Ray cluster, the bench itself) and reads each one's CPU
clock before and after the stretch (``hotsession.bench.cpu.cpu_s``: nanoseconds, the time of
ended threads included). A process that started during the stretch counts from zero; one that
ended during it is not counted (none does in a follow-up run).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from hotsession.bench.cpu import cpu_s

__all__ = ["ProcessCpu", "Snapshot", "postmaster_pid", "roles"]

Snapshot = dict[int, tuple[str, float]]
"""pid → (role, CPU seconds so far)."""


def postmaster_pid(data_dir: str | os.PathLike[str]) -> int | None:
    """The pid of the Postgres server of ``data_dir`` (first line of its ``postmaster.pid``)."""
    try:
        return int((Path(data_dir) / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _tree(pid: int) -> list[int]:
    try:
        proc = psutil.Process(pid)
        return [pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.Error:
        return []


MODEL_SERVER = "hotsession.testing.model_server"
"""The scripted model server's module: its process is the role ``model_server``."""


def _is_model_server(pid: int) -> bool:
    with contextlib.suppress(psutil.Error):
        return MODEL_SERVER in psutil.Process(pid).cmdline()
    return False


def roles(
    *,
    model_url: str,
    daemon: int | None = None,
    session_cli: int | None = None,
    host_actor: int | None = None,
    other_host_actors: Iterable[int] = (),
    postmaster: int | None = None,
) -> dict[int, str]:
    """Every process of this run by role. This process's descendants that are nothing else are
    ``ray`` (raylets, the GCS, Ray's idle workers: the cluster is started from here), except
    the scripted model server (``model_server``: it answers the CLIs' requests, ~2 ms of CPU a
    follow-up here, which ``ray`` counted until 2026-11-30)."""
    me = os.getpid()
    out: dict[int, str] = {
        pid: "model_server" if _is_model_server(pid) else "ray" for pid in _tree(me)
    }
    out[me] = "bench"
    if postmaster is not None:
        out.update(dict.fromkeys(_tree(postmaster), "postgres"))
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("ANTHROPIC_BASE_URL") == model_url:
                out[proc.pid] = "other_clis"
    out.update(dict.fromkeys(other_host_actors, "other_host_actors"))
    if host_actor is not None:
        out[host_actor] = "host_actor"
    if daemon is not None:
        out[daemon] = "daemon"
    if session_cli is not None:
        out[session_cli] = "session_cli"
    return out


def _read(by_role: dict[int, str]) -> Snapshot:
    out: Snapshot = {}
    for pid, role in by_role.items():
        with contextlib.suppress(psutil.Error, OSError):
            out[pid] = (role, cpu_s(pid))
    return out


@dataclass
class ProcessCpu:
    """CPU per role between :meth:`start` and :meth:`stop` (see module doc)."""

    by_role: dict[int, str]
    before: Snapshot = field(default_factory=dict)
    after: Snapshot = field(default_factory=dict)

    def start(self) -> None:
        self.before = _read(self.by_role)

    def stop(self, by_role: dict[int, str] | None = None) -> None:
        """Read again (``by_role``: the processes now, when some may have started)."""
        if by_role is not None:
            self.by_role = by_role
        self.after = _read(self.by_role)

    def ms(self, per: float = 1.0) -> dict[str, float]:
        """CPU milliseconds per role, divided by ``per`` (the stretch's follow-ups, or seconds)."""
        total: dict[str, float] = {}
        for pid, (role, now) in self.after.items():
            used = now - self.before.get(pid, (role, 0.0))[1]
            total[role] = total.get(role, 0.0) + max(used, 0.0)
        return {role: round(v * 1000 / per, 2) for role, v in sorted(total.items())}
