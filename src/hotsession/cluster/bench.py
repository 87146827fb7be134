"""``hotsession bench --cluster``: cluster mode measured on a local Ray cluster of three nodes.

Everything runs on this machine, in one run: a private Postgres
(:class:`~hotsession.testing.postgres.PrivatePostgres`), a Ray cluster of three nodes
(``ray.cluster_utils.Cluster``: the head and two workers, each its own raylet and processes, each
with a ``hotsession_memory_mb`` budget), ``hotsession serve --cluster … --database-url …`` as a
subprocess (the API daemon), a single-machine ``hotsession serve`` for comparison, and the bare
CLI (the floor). Figures:

* ``followup_overhead_ms`` — median follow-up through the cluster daemon (the session lives in a
  host actor, another process reached over Ray) minus the median follow-up of a bare CLI
  (``floor_ms``) whose follow-ups are interleaved with the daemon's, one each per round in
  alternating order, so both see the same machine; ``followup_single_ms`` and
  ``single_overhead_ms`` the same for the single-machine daemon (its own paired floor,
  ``floor_single_ms``), and ``followup_vs_single_ms`` the cluster's minus the single machine's;
* ``new_session_ms`` — median ``/v1/ask`` (a new session from a node's spare and its first
  turn) on the cluster, with ``new_session_single_ms`` on one machine beside it;
* ``recovery_ms`` — a worker node with idle sessions is removed; the time until each of them
  answered a follow-up on another node with its context (median), in two parts: ``rehome_ms``
  (detecting the loss, the new epoch, adopting from the store, materializing the transcript) and
  ``resume_ms`` (the ``--resume`` spawn on the new node, the turn's ``claim_ms``);
* ``lost_turns`` — turns accepted and never completed or errored (a turn running on the removed
  node must end with ``node_lost``; the one queued behind it must run on the new node);
* ``nodes`` — how many nodes ran;
* ``followup_overhead_pinned_ms`` / ``single_overhead_pinned_ms`` — the paired follow-ups once
  more with the session's CLI and the bare CLI on a core of their own and every other process
  on the others (:mod:`hotsession.bench.pinning`): what the overhead is when the cluster's CPU
  does not land on the CLI's core, as on real machines (a node's cores for its CLIs and host
  actor; daemons and Postgres elsewhere).
* ``path_floor_overhead_ms`` — the cluster path's floor (:mod:`hotsession.cluster.path_floor`):
  a plain Ray actor on a worker node holding a bare CLI, called once per follow-up by this
  process, with the prompt's fenced record and the turn's transcript write in Postgres on the
  way; its median follow-up (``path_floor_ms``) minus the median of the bare CLI paired with it
  (``path_floor_bare_ms``), after the cluster daemon's follow-ups; ``path_floor_overhead_pinned_ms``
  the same with the two CLIs pinned. What any design with the issue's guarantees adds at least.

On a shared 2-core machine the absolute numbers are noisy: compare within one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import httpx
import psutil

from hotsession.bench.daemon import Daemon
from hotsession.bench.environment import BenchEnv, BenchError
from hotsession.bench.modes import BareCli
from hotsession.bench.pinning import can_pin, pinned
from hotsession.bench.stats import Sample
from hotsession.cluster.node import MEMORY_RESOURCE
from hotsession.cluster.path_floor import measure_path_floor
from hotsession.cluster.process_cpu import ProcessCpu, postmaster_pid, roles

if TYPE_CHECKING:
    from hotsession.testing.postgres import PrivatePostgres

NODE_MB = 4000
KILLED_SESSIONS = 3
TURN_TIMEOUT_S = 120.0
IDLE_S = 2.0
"""The idle stretch before each daemon's timed follow-ups (each process's idle CPU rate)."""
FIGURES_AGE_S = 1.2
"""Longer than a node's figure check (``FIGURES_CHECK_S``, 1 s: the open ``figures`` call
answers within it of a change): the cluster daemon's ``/v1/pool`` is fresh again."""


@contextlib.contextmanager
def node_environment(env: dict[str, str]) -> Iterator[None]:
    """``env`` for the Ray processes started meanwhile (nodes' agents inherit it)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def local_cluster(env: dict[str, str], node_mb: Sequence[float]) -> Any:
    """A ``ray.cluster_utils.Cluster`` on this machine, one node per ``node_mb`` (the head first;
    one CPU and that memory resource each), its processes started with ``env``; ready. Shared
    by ``bench --cluster`` and the ``tests/cluster`` tier."""
    from ray.cluster_utils import Cluster

    with node_environment(env):
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "include_dashboard": False,
                "resources": {MEMORY_RESOURCE: node_mb[0]},
            },
        )
        for mb in node_mb[1:]:
            cluster.add_node(num_cpus=1, resources={MEMORY_RESOURCE: mb})
    cluster.wait_for_nodes()
    return cluster


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


async def _turn(daemon: Daemon, path: str, body: dict[str, Any], label: str) -> Sample:
    s = Sample(label, 0, "", 0.0)
    first = await asyncio.wait_for(daemon.stream(path, body, s), TURN_TIMEOUT_S)
    s.extra["session"] = first
    if s.error is not None:
        raise BenchError(f"{label}: {s.error}")
    return s


async def _followups(
    daemon: Daemon,
    rounds: int,
    label: str,
    *,
    bare: BareCli,
    postmaster: int | None = None,
) -> tuple[list[float], list[float], dict[str, Any], dict[str, Any] | None]:
    """Follow-ups on one session through ``daemon``, each round paired with one follow-up of
    the bare CLI ``bare`` (the floor), in alternating order; the daemon's times (ms), the
    floor's times (ms), the CPU each process of the run spent per round and per second of
    an idle stretch just before them (``hotsession.cluster.process_cpu``; the bare CLI is the
    role ``floor_cli``), and the pinned pass's figures (``_pinned_pass``).

    Why paired: the floor measured in a phase of its own, before the daemons, read 20–33 ms in
    five quiet-machine runs of the same code (2026-11-30), more than the overhead it is
    subtracted from; the machine's background (Ray's workers, the nodes' spares) differs
    between phases. Interleaved, both see the same machine."""
    session = await daemon.json(
        "POST",
        "/v1/sessions",
        {"permission_mode": "bypassPermissions", "cwd": str(daemon.env.workdir)},
    )
    path = f"/v1/sessions/{session['id']}/turns"
    await _turn(daemon, path, {"prompt": "[[say:warm]]"}, label)
    # The bare CLI's turn right after the session's warm one: an idle CLI's CPU depends on how
    # long ago its last turn was (its post-turn work, Bun's GC ticks; docs/benchmarks.md "Idle
    # CLIs"), so the idle stretch reads both at the same age (it read the session's CLI 10x
    # the bare one's when the bare CLI's last turn was minutes older).
    await _bare_turn(bare, -1)
    await _settle(daemon)
    floor_pids = dict.fromkeys(bare.pids().values(), "floor_cli")
    by_role = {**await _roles(daemon, str(session["id"]), postmaster), **floor_pids}
    idle = ProcessCpu(by_role)
    idle.start()
    t0 = time.monotonic()
    await asyncio.sleep(IDLE_S)
    idle_s = time.monotonic() - t0
    idle.stop()
    busy = ProcessCpu(by_role)
    busy.start()
    t0 = time.monotonic()
    out, floor = await _paired(daemon, path, bare, rounds, label)
    wall_s = time.monotonic() - t0
    busy.stop({**await _roles(daemon, str(session["id"]), postmaster), **floor_pids})
    per_turn = busy.ms(per=rounds)
    idle_rate = idle.ms(per=idle_s)
    cpu = {
        "ms_per_followup": per_turn,
        "idle_ms_per_s": idle_rate,
        # What the follow-ups cost beyond the idle rate over the same wall time.
        "net_ms_per_followup": {
            role: round(v - idle_rate.get(role, 0.0) * wall_s / rounds, 2)
            for role, v in per_turn.items()
        },
        "wall_ms_per_followup": round(wall_s * 1000 / rounds, 2),
    }
    return out, floor, cpu, await _pinned_pass(daemon, path, bare, rounds, label, by_role)


async def _paired(
    daemon: Daemon, path: str, bare: BareCli, rounds: int, label: str
) -> tuple[list[float], list[float]]:
    """``rounds`` follow-ups on ``path``, each paired with one of the bare CLI in alternating
    order; the daemon's times and the floor's (ms)."""
    out: list[float] = []
    floor: list[float] = []
    for i in range(rounds):
        if i % 2 == 0:
            floor.extend(await _bare_turn(bare, i))
        s = await _turn(daemon, path, {"prompt": f"[[say:f{i}]]"}, label)
        ms = s.ms("result_ms")
        if ms is not None:
            out.append(ms)
        if i % 2 == 1:
            floor.extend(await _bare_turn(bare, i))
    return out, floor


async def _pinned_pass(
    daemon: Daemon,
    path: str,
    bare: BareCli,
    rounds: int,
    label: str,
    by_role: dict[int, str],
) -> dict[str, Any] | None:
    """The paired follow-ups again with the session's CLI and the bare CLI on a core of their
    own and every other process of the machine on the rest (``hotsession.bench.pinning``):
    the overhead when the daemon's, the nodes' and Postgres's CPU does not land on the CLI's
    core, as on real machines. None on a machine with one CPU."""
    clis = {pid for pid, role in by_role.items() if role in ("session_cli", "floor_cli")}
    if not can_pin() or len(clis) < 2:
        return None
    with pinned(clis) as (cli_cpus, other_cpus):
        out, floor = await _paired(daemon, path, bare, rounds, f"{label} (pinned)")
    follow_ms, floor_ms = _median(out), _median(floor)
    overhead = None
    if follow_ms is not None and floor_ms is not None:
        overhead = round(follow_ms - floor_ms, 2)
    return {
        "cli_cpus": sorted(cli_cpus),
        "other_cpus": sorted(other_cpus),
        "followup_ms": follow_ms,
        "floor_ms": floor_ms,
        "overhead_ms": overhead,
    }


async def _bare_turn(bare: BareCli, i: int) -> list[float]:
    """One follow-up of the bare CLI: its time (ms), if it had one."""
    s = Sample(bare.name, i, "", 0.0)
    await bare.sample(s, f"[[say:b{i}]]")
    ms = s.ms("result_ms")
    return [] if ms is None else [ms]


async def _roles(daemon: Daemon, session_id: str, postmaster: int | None) -> dict[int, str]:
    """The run's processes by role, with this session's CLI and (in cluster mode) the host
    actor that holds it."""
    view = await daemon.session(session_id)
    pool = await daemon.pool()
    hosts = {str(n.get("node")): int(n["pid"]) for n in pool.get("nodes") or [] if n.get("pid")}
    mine = hosts.pop(str(view.get("node")), None)
    assert daemon.proc is not None
    pid = view.get("pid")
    return await asyncio.to_thread(
        roles,
        model_url=daemon.env.model_url,
        daemon=daemon.proc.pid,
        session_cli=pid if isinstance(pid, int) else None,
        host_actor=mine,
        other_host_actors=hosts.values(),
        postmaster=postmaster,
    )


async def _settle(daemon: Daemon) -> None:
    """Until the pool spawns nothing and this run's CLIs are idle, before follow-ups are timed
    (both daemons the same way), as the other benches wait before theirs: a node prewarms a
    spare when a session opens there, and a spare's start-up (~0.5 s of CPU over both cores)
    landed among the cluster's first timed follow-ups. ``/v1/pool`` in cluster mode shows a
    node's change up to its figure check (1 s) later, hence the second look; a spare counted ready
    (its ``initialize`` answered) may still be at its start-up work, hence the CPU check."""
    await daemon.wait_quiet()
    await asyncio.sleep(FIGURES_AGE_S)
    await daemon.wait_quiet()
    await asyncio.to_thread(_clis_idle, daemon.env.model_url)


def _clis_idle(model_url: str, *, quiet_s: float = 0.3, timeout_s: float = 20.0) -> bool:
    """Until this run's CLIs (the daemons' and the nodes': every process that talks to this
    run's model server; Ray's nodes are not this process's descendants) used under 5 ms of CPU
    in ``quiet_s``; bounded, so a busy machine does not stall the run. False if it timed out."""
    deadline = time.monotonic() + timeout_s
    last: float | None = None
    while time.monotonic() < deadline:
        used = 0.0
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.environ().get("ANTHROPIC_BASE_URL") == model_url:
                    times = proc.cpu_times()
                    used += times.user + times.system
        if last is not None and used - last < 0.005:
            return True
        last = used
        time.sleep(quiet_s)
    return False


async def _new_sessions(daemon: Daemon, rounds: int, label: str) -> list[float]:
    """``/v1/ask`` with a spare ready each time; their times (ms)."""
    body = {
        "permission_mode": "bypassPermissions",
        "cwd": str(daemon.env.workdir),
        "prompt": "[[say:new]]",
    }
    await _turn(daemon, "/v1/ask", body, label)  # the profile's first: teaches the pool
    out = []
    for _ in range(rounds):
        await daemon.wait_spare()
        s = await _turn(daemon, "/v1/ask", body, label)
        ms = s.ms("result_ms")
        if ms is not None:
            out.append(ms)
        if s.extra["session"].get("id"):
            await daemon.close_session(s.extra["session"]["id"])
    return out


async def _recovery(daemon: Daemon, cluster: Any, env: BenchEnv) -> dict[str, Any]:
    """Remove a worker node holding idle sessions (and a running and a queued turn); measure."""
    worker_ids = {n.node_id: n for n in cluster.worker_nodes}
    victims: list[dict[str, Any]] = []
    others = 0
    # Open sessions until KILLED_SESSIONS sit on one worker node (placement spreads them).
    by_node: dict[str, list[dict[str, Any]]] = {}
    for _ in range(KILLED_SESSIONS * 4):
        view = await daemon.json(
            "POST",
            "/v1/sessions",
            {"permission_mode": "bypassPermissions", "cwd": str(daemon.env.workdir)},
        )
        by_node.setdefault(view["node"], []).append(view)
        full = [n for n, vs in by_node.items() if n in worker_ids and len(vs) > KILLED_SESSIONS]
        if full:
            victims = by_node[full[0]]
            break
    else:
        full = [n for n in by_node if n in worker_ids]
        if not full:
            raise BenchError("no session landed on a worker node")
        victims = by_node[full[0]]
    node_id = victims[0]["node"]
    others = sum(len(vs) for n, vs in by_node.items() if n != node_id)
    busy, idle = victims[0], victims[1:]
    for i, view in enumerate(victims):  # each conversation has a fact to remember
        await _turn(
            daemon, f"/v1/sessions/{view['id']}/turns", {"prompt": f"[[say:fact {i}]]"}, "setup"
        )
    env_log_before = len(env.model_log())
    # A turn running on the node when it goes, and one queued behind it.
    running = asyncio.create_task(
        _turn_outcome(daemon, busy["id"], "[[marker:running]][[delay:4000]]")
    )
    await asyncio.sleep(0.3)
    queued = asyncio.create_task(_turn_outcome(daemon, busy["id"], "[[say:queued]]"))
    deadline = time.monotonic() + 30
    while not any("running" in (e.get("markers") or []) for e in env.model_log()):
        if time.monotonic() > deadline:
            raise BenchError("the running turn never reached the model")
        await asyncio.sleep(0.05)
    killed_at = time.monotonic()
    await asyncio.to_thread(cluster.remove_node, worker_ids[node_id])
    answers = await asyncio.gather(*(_recovered(daemon, v["id"], killed_at) for v in idle))
    outcomes = [await asyncio.wait_for(t, TURN_TIMEOUT_S) for t in (running, queued)]
    log = env.model_log()[env_log_before:]
    with_context = sum(
        1
        for e in log
        if e.get("main")
        and str(e.get("last_user_text", "")).startswith("[[say:after")
        and (e.get("n_messages") or 0) >= 3
    )
    total = [a["total_ms"] for a in answers]
    resume = [a["claim_ms"] for a in answers]
    lost = sum(1 for o in outcomes if o is None)
    return {
        "node": node_id,
        "sessions_on_node": len(victims),
        "sessions_elsewhere": others,
        "recovery_ms": _median(total),
        "rehome_ms": _median([t - r for t, r in zip(total, resume, strict=True)]),
        "resume_ms": _median(resume),
        "answered_with_context": with_context,
        "idle_sessions": len(idle),
        "running_turn": outcomes[0],
        "queued_turn": outcomes[1],
        "lost_turns": lost,
    }


async def _turn_outcome(daemon: Daemon, session_id: str, prompt: str) -> str | None:
    """How a turn ended: ``result``, an error code, or None if it never ended."""
    s = Sample("recovery", 0, "", 0.0)
    try:
        await asyncio.wait_for(
            daemon.stream(f"/v1/sessions/{session_id}/turns", {"prompt": prompt}, s),
            TURN_TIMEOUT_S,
        )
    except (BenchError, TimeoutError, httpx.HTTPError):
        return None
    if s.error is not None:
        return s.error.split(":", 1)[0]
    return "result"


async def _recovered(daemon: Daemon, session_id: str, since: float) -> dict[str, float]:
    """A follow-up right after the node went away: ms from the loss to its result."""
    s = await _turn(
        daemon, f"/v1/sessions/{session_id}/turns", {"prompt": "[[say:after]]"}, "recovery"
    )
    assert s.t_result is not None
    timing = s.extra.get("timing") or {}
    return {"total_ms": (s.t_result - since) * 1000, "claim_ms": float(timing.get("claim_ms", 0))}


# Ray uses loopback addresses when this is "0" (see run_cluster_bench).
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


async def run_cluster_bench(env: BenchEnv, *, rounds: int, console: Any) -> dict[str, Any]:
    """The whole run (see the module docstring); returns the figures."""
    # Every node of this one-machine cluster on loopback: by default Ray binds and dials the
    # machine's interface address; this setting (meant for laptops) makes it use 127.0.0.1. Ray
    # reads it at import, and the nodes and daemons it starts inherit it.
    os.environ[LOOPBACK_ONLY] = "0"
    import ray

    from hotsession.testing.postgres import PrivatePostgres

    node_env = {k: v for k, v in env.agent_vars().items() if k != "CLAUDE_CONFIG_DIR"}
    node_env["RAY_USAGE_STATS_ENABLED"] = "0"
    node_env[LOOPBACK_ONLY] = "0"
    console.print("starting a private Postgres and a 3-node Ray cluster …")
    pg = PrivatePostgres()
    pg.start()
    try:
        cluster = local_cluster(node_env, [NODE_MB] * 3)
        try:
            return await _measure(env, cluster, pg, rounds, console)
        finally:
            with contextlib.suppress(Exception):
                ray.shutdown()
            cluster.shutdown()
    finally:
        pg.cleanup()


async def _measure(
    env: BenchEnv, cluster: Any, pg: PrivatePostgres, rounds: int, console: Any
) -> dict[str, Any]:
    database_url, postmaster = pg.url, postmaster_pid(pg.data)
    bare = BareCli(env)  # the floor: its follow-ups are paired with each daemon's
    await bare.setup()
    try:
        console.print(f"single machine: hotsession serve, {rounds} follow-ups (+ the bare CLI's) …")
        single = Daemon(env)
        await single.start()
        try:
            follow_single, floor_single, cpu_single, pinned_single = await _followups(
                single, rounds, "single follow-up", bare=bare
            )
            new_single = await _new_sessions(single, max(3, rounds // 4), "single new")
        finally:
            await single.stop()
        console.print("cluster: hotsession serve --cluster … --database-url … (3 nodes)")
        daemon = Daemon(
            env, extra_args=("--cluster", cluster.address, "--database-url", database_url)
        )
        daemon.state_dir = env.root / "cluster-daemon-state"
        await daemon.start()
        try:
            followups, floor, cpu_cluster, pinned_cluster = await _followups(
                daemon, rounds, "cluster follow-up", bare=bare, postmaster=postmaster
            )
            console.print(f"path floor: a plain Ray actor on a worker node, {rounds} rounds …")
            path_floor = await measure_path_floor(env, cluster, database_url, bare, rounds)
            new_cluster = await _new_sessions(daemon, max(3, rounds // 4), "cluster new")
            console.print("recovery: removing a worker node …")
            recovery = await _recovery(daemon, cluster, env)
            health = await daemon.json("GET", "/healthz")
        finally:
            await daemon.stop()
    finally:
        await bare.teardown()
    floor_ms = _median(floor)
    follow_ms = _median(followups)
    single_ms = _median(follow_single)
    floor_single_ms = _median(floor_single)
    overhead = None
    if follow_ms is not None and floor_ms is not None:
        overhead = round(follow_ms - floor_ms, 2)
    return {
        "nodes": 3,
        "nodes_after_loss": health.get("nodes"),
        "rounds": rounds,
        "floor_ms": floor_ms,
        "followup_ms": follow_ms,
        "followup_overhead_ms": overhead,
        "followup_single_ms": single_ms,
        "floor_single_ms": floor_single_ms,
        "single_overhead_ms": (
            round(single_ms - floor_single_ms, 2)
            if single_ms is not None and floor_single_ms is not None
            else None
        ),
        "followup_vs_single_ms": (
            round(follow_ms - single_ms, 2)
            if follow_ms is not None and single_ms is not None
            else None
        ),
        # The same paired follow-ups with the two CLIs on a core of their own and everything
        # else on the others (bench.pinning): the overhead when the cluster's CPU does not land
        # on the CLI's core, as on real machines; None where the machine has one CPU.
        "followup_overhead_pinned_ms": (pinned_cluster or {}).get("overhead_ms"),
        "single_overhead_pinned_ms": (pinned_single or {}).get("overhead_ms"),
        "pinned": {"single": pinned_single, "cluster": pinned_cluster},
        # The least any cluster design with the guarantees adds (path_floor): a plain
        # actor on a worker node, one call per follow-up, the fenced prompt record and the
        # transcript write; paired with the bare CLI as the daemons' follow-ups are.
        "path_floor_ms": path_floor["followup_ms"],
        "path_floor_bare_ms": path_floor["floor_ms"],
        "path_floor_overhead_ms": path_floor["overhead_ms"],
        "path_floor_overhead_pinned_ms": (path_floor["pinned"] or {}).get("overhead_ms"),
        "path_floor": path_floor,
        # CPU per timed round of every process of the run, by role (process_cpu), in each
        # daemon's run (``net``: beyond each process's idle rate); ``floor_cli``: the bare CLI's
        # paired follow-up.
        "cpu": {
            "single": cpu_single,
            "cluster": cpu_cluster,
        },
        "new_session_ms": _median(new_cluster),
        "new_session_single_ms": _median(new_single),
        "recovery_ms": {
            "total": recovery["recovery_ms"],
            "rehome": recovery["rehome_ms"],
            "resume_spawn": recovery["resume_ms"],
        },
        "recovery": recovery,
        "lost_turns": recovery["lost_turns"],
    }
