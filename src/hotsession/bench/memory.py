"""Memory of the run's CLI processes, by role, so spares and live sessions can be priced.

Per process: anonymous memory (the process's own), PSS (shared pages divided among sharers) and
plain RSS. Summed over N processes, PSS is the real total, while RSS counts the shared 200+ MB
CLI binary once per process (see ``hotsession.memory``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import psutil

from hotsession.memory import sample


def cli_children(root_pid: int, cli_path: str) -> list[int]:
    """Descendants of ``root_pid`` that run the CLI binary (not the tools they run)."""
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for child in children:
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if cmd and (cmd[0] == cli_path or cmd[0].endswith("/claude")):
            out.append(child.pid)
    return out


def measure(pids_by_role: Mapping[str, Iterable[int]]) -> dict[str, Any]:
    """``{"processes": [...], "roles": {role: {n, *_mean, *_sum}}}`` in MiB."""
    processes: list[dict[str, Any]] = []
    roles: dict[str, Any] = {}
    for role, pids in pids_by_role.items():
        rows = []
        for pid in pids:
            mem = sample(pid, pss=True, tree=False)
            if mem is None:
                continue
            row = {"role": role, "pid": pid, **mem.to_dict()}
            rows.append(row)
            processes.append(row)
        if rows:
            roles[role] = summarize_role(rows)
    return {"processes": processes, "roles": roles}


def summarize_role(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means and sums of anon / PSS / RSS over some processes."""
    n = len(rows)
    out: dict[str, Any] = {"n": n}
    for key in ("anon", "pss", "rss"):
        values = [float(r[f"{key}_mb"] or 0.0) for r in rows]
        out[f"{key}_sum"] = round(sum(values), 1)
        out[f"{key}_mean"] = round(sum(values) / n, 1)
    return out
