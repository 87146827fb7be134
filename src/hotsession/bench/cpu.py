"""``hotsession bench --cpu``: the daemon's own CPU per turn, against the CLI's for the same turns.

Method. One ``hotsession serve`` (the bench's harness, :mod:`hotsession.bench.daemon`) with its
default pool. CPU times are the processes' own CPU clocks (user + system, in nanoseconds, see
``cpu_s``): the daemon's own process (its threads included: the registry's, uvicorn's), and the
session's CLI process.

1. Idle rate: a few sessions with a turn each, the pool's spares ready, nothing running; the
   daemon's CPU over ``idle_s`` seconds gives its idle rate (ms of CPU per second).
2. Per kind of turn, ``turns`` turns one after the other on one session, each read to its
   ``result`` by the bench's lean client (:mod:`hotsession.bench.wire`; the client's CPU is the
   bench's, not counted) on one kept-alive connection, as a client sending follow-ups does.
   Daemon CPU per turn = (its CPU over the run − idle rate × the run's wall time) / turns; CLI
   CPU per turn = the session's process CPU over the run / turns.

Kinds: ``plain follow-up`` (a one-word reply: 3 lines from the CLI); ``plain follow-up, new
connection`` (the same, each turn on a new TCP connection: what a client that connects per
request, e.g. ``curl``, costs the daemon; before 2026-11-30 every kind was measured this way,
as the lean client left each stream at its ``result`` and closed the socket);
``plain follow-up, model 200 ms`` (the same reply after the model waits 200 ms, as any real
model does: the turn outlasts the registry's event timer, ``flush_interval``, 50 ms);
``streamed 500 deltas`` (``[[stream:500]]`` on a session opened with
``include_partial_messages``: ~510 lines);
``500 deltas, not asked`` (the same reply on a session that did not ask for partial messages:
the CLI still writes the deltas, which the daemon drops unread beyond their first bytes);
``streamed 500 deltas, 1 follower`` (the streamed turn while a client follows the session's
``GET …/events``, as a dashboard watching it does).
Targets (issue 13): plain ≤ 3 % of the CLI's CPU, streamed ≤ 8 %.

The floor under them, ``bare relay (no daemon)`` (measured right after ``plain follow-up``):
:mod:`hotsession.bench.relay`, a separate process on uvloop + httptools with no framework, no
registry and no auth, which spawns one CLI as the bare-CLI mode does and relays its lines to the
same client loop (one kept-alive connection, the same prompt and turn count). Its CPU per turn
(minus its own idle rate, over ``RELAY_IDLE_S``) against its CLI's is the least any Python daemon
could spend on a plain follow-up on this machine, in this run. ``bare relay + durable log (no
daemon)`` is the same relay keeping the issue's reliability rule (a prompt recorded before the
CLI gets it, a turn's events by its end) in a SQLite file of the registry's schema, settings and
rows (``--durable``): the floor of a daemon that loses no event.

Many sessions (the issue's reason for the target is a machine full of them):
``plain follow-ups, N sessions at once`` opens ``SESSIONS_AT_ONCE`` sessions and drives each
with its own client loop of plain follow-ups, all at once (``turns`` in all); the daemon's CPU
per turn minus its idle rate, against the N CLIs' CPU per turn. One wake-up of the daemon's
loop then may serve several sessions' reads. ``bare relay[ + durable log], N sessions at once``
are the two floors at the same N: one relay process with N CLIs, a client loop each.

Why the CPU clocks and not ``psutil``'s ``cpu_times``. Those come from ``/proc/PID/stat`` in
clock ticks (10 ms): over the ``--quick`` idle window (5 s at ~3 ms/s, ~15 ms of CPU) the idle
rate could be off by ±2 ms/s, ±0.15 ms per plain turn once subtracted, against a target of
~1 ms. A process's CPU clock (``clock_gettime`` of ``clock_getcpuclockid(pid)``) counts the
same time in nanoseconds, the time of threads that ended included.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psutil

from hotsession.bench.daemon import Daemon
from hotsession.bench.environment import BenchEnv, BenchError
from hotsession.bench.modes import bare_command, wait_idle
from hotsession.bench.relay import start_relay
from hotsession.bench.stats import Sample
from hotsession.bench.wire import WireClient

IDLE_SESSIONS = 3
SESSIONS_AT_ONCE = 4
"""Sessions of the ``… sessions at once`` rows: a few, each with its CLI, on this 2-core box."""
RELAY_IDLE_S = 2.0
"""The relay's idle window: it sleeps in epoll between turns (~0 ms/s), so a short one will do."""
TARGETS = {"plain follow-up": 0.03, "streamed 500 deltas": 0.08}


@dataclass(frozen=True)
class Kind:
    """One kind of turn measured (``keep_alive``: every turn on one connection)."""

    name: str
    prompt: str
    partial: bool
    keep_alive: bool = True
    followers: int = 0  # clients following the session's events (GET …/events) meanwhile


KINDS = (
    Kind("plain follow-up", "hi", False),
    Kind("plain follow-up, new connection", "hi", False, keep_alive=False),
    Kind("plain follow-up, model 200 ms", "[[delay:200]]hi", False),
    Kind("streamed 500 deltas", "[[stream:500]]", True),
    Kind("500 deltas, not asked", "[[stream:500]]", False),
    Kind("streamed 500 deltas, 1 follower", "[[stream:500]]", True, followers=1),
)


def cpu_s(pid: int) -> float:
    """The process's CPU time (user + system, every thread's, ended ones too) in seconds."""
    if sys.platform == "linux":
        # clock_getcpuclockid(pid): Linux encodes a process's CPU clock as ((~pid) << 3) | 2
        # (CPUCLOCK_SCHED); Python has no wrapper for it.
        try:
            return time.clock_gettime(((~pid) << 3) | 2)
        except OSError:
            pass
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def _open(d: Daemon, env: BenchEnv, partial: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"cwd": str(env.workdir), "permission_mode": env.permission_mode}
    if partial:
        body["include_partial_messages"] = True
    out = await d.json("POST", "/v1/sessions", body)
    assert isinstance(out, dict)
    return out


async def _turn(d: Daemon, session_id: str, prompt: str, *, keep_alive: bool = True) -> None:
    s = Sample("cpu", 0, "", 0.0)
    await d.stream(f"/v1/sessions/{session_id}/turns", {"prompt": prompt}, s, to_end=keep_alive)
    if not s.ok:
        raise BenchError(f"a turn failed: {s.error}")


async def _fresh_connections(d: Daemon) -> None:
    """Close the lean client's idle sockets: the rows before may have left them idle past the
    daemon's keep-alive (30 s, the relays' rows run in between), and a request on a socket the
    server closed fails. A row's first turns (not counted) open its connections."""
    if d.wire is not None:
        await d.wire.aclose()


async def _follow(d: Daemon, session_id: str) -> None:
    """Read the session's events (replay, then live) until cancelled, as a dashboard does; its
    CPU is the bench's."""
    async with d.http.stream("GET", f"/v1/sessions/{session_id}/events") as resp:
        if resp.status_code >= 400:
            raise BenchError(f"GET …/events: {resp.status_code}")
        async for _ in resp.aiter_raw():
            pass


async def idle_rate(d: Daemon, env: BenchEnv, idle_s: float) -> dict[str, Any]:
    """The daemon's CPU per second with a few idle sessions and the pool's spares ready."""
    opened = []
    for _ in range(IDLE_SESSIONS):
        created = await _open(d, env, False)
        await _turn(d, str(created["id"]), "[[say:idle]]")
        opened.append(str(created["id"]))
    await d.wait_spare()
    await asyncio.sleep(1.0)
    assert d.proc is not None
    c0, t0 = cpu_s(d.proc.pid), time.monotonic()
    await asyncio.sleep(idle_s)
    c1, t1 = cpu_s(d.proc.pid), time.monotonic()
    for sid in opened:
        await d.close_session(sid)
    return {
        "sessions": IDLE_SESSIONS,
        "seconds": round(t1 - t0, 2),
        "ms_per_s": round((c1 - c0) / (t1 - t0) * 1000, 3),
    }


async def measure_kind(
    d: Daemon, env: BenchEnv, kind: Kind, turns: int, idle_ms_per_s: float
) -> dict[str, Any]:
    """Daemon and CLI CPU per turn of one kind (see the module docstring)."""
    await _fresh_connections(d)
    created = await _open(d, env, kind.partial)
    sid = str(created["id"])
    followers: list[asyncio.Task[None]] = []
    try:
        for _ in range(3):  # the first turns of a process cost more; not counted
            await _turn(d, sid, kind.prompt, keep_alive=kind.keep_alive)
        pid = (await d.session(sid)).get("pid")
        if not isinstance(pid, int):
            raise BenchError("the session has no process")
        await d.wait_quiet()
        assert d.proc is not None
        followers = [asyncio.create_task(_follow(d, sid)) for _ in range(kind.followers)]
        if followers:
            await asyncio.sleep(0.5)  # connected, the replay of the first turns read
        d0, a0, t0 = cpu_s(d.proc.pid), cpu_s(pid), time.monotonic()
        for _ in range(turns):
            await _turn(d, sid, kind.prompt, keep_alive=kind.keep_alive)
        d1, a1, t1 = cpu_s(d.proc.pid), cpu_s(pid), time.monotonic()
    finally:
        for task in followers:
            task.cancel()
        failed = [
            r
            for r in await asyncio.gather(*followers, return_exceptions=True)
            if isinstance(r, Exception)
        ]
        await d.close_session(sid)
    if failed:
        raise BenchError(f"a follower failed: {failed[0]}")
    out = _per_turn(turns, t1 - t0, d1 - d0, a1 - a0, idle_ms_per_s)
    target = TARGETS.get(kind.name)
    if target is not None and out["ratio"] is not None:
        out["target"] = target
        out["met"] = out["ratio"] <= target
    return out


async def _relay_turn(wire: WireClient, request: bytes) -> None:
    ended = False
    async for kind, data in wire.events(request):
        ended = kind == "message" and b'"type":"result"' in data
    if not ended:
        raise BenchError("the bare relay's answer did not end with the CLI's result")


def relay_name(*, durable: bool, sessions: int) -> str:
    """The row of a relay run: ``bare relay[ + durable log]`` and, at N > 1, how many sessions."""
    base = "bare relay + durable log" if durable else "bare relay"
    return f"{base} (no daemon)" if sessions == 1 else f"{base}, {sessions} sessions at once"


async def measure_relay(
    env: BenchEnv, turns: int, *, durable: bool = False, sessions: int = 1
) -> dict[str, Any]:
    """The floor: the bare relay's CPU per plain follow-up against its CLIs' (module docstring).

    ``durable``: the relay records each prompt before its CLI gets it and each turn's events by
    its end in a SQLite file of the registry's schema and settings (``--durable``).
    ``sessions``: that many CLIs behind the one relay, each driven by its own client loop of
    ``turns // sessions`` follow-ups, all at once (the per-turn figures are over all of them).
    """
    argvs = [bare_command(env)[0] for _ in range(sessions)]  # each its own --session-id
    cli_env = bare_command(env)[1]
    log = env.root / f"relay-{uuid.uuid4().hex[:8]}.db" if durable else None
    relay = await start_relay(*argvs, env=cli_env, cwd=env.workdir, durable=log)
    wires = [WireClient("127.0.0.1", relay.port, "") for _ in range(sessions)]
    requests = [w.request_bytes(f"/turn/{i}", {"prompt": "hi"}) for i, w in enumerate(wires)]
    per = max(1, turns // sessions)

    async def loop(i: int, n: int) -> None:
        for _ in range(n):
            await _relay_turn(wires[i], requests[i])

    try:
        # The first turns of a process cost more; not counted.
        await asyncio.gather(*(loop(i, 3) for i in range(sessions)))
        for pid in relay.cli_pids:
            await wait_idle(pid)
        i0, t0 = cpu_s(relay.pid), time.monotonic()
        await asyncio.sleep(RELAY_IDLE_S)
        i1, t1 = cpu_s(relay.pid), time.monotonic()
        idle_ms_per_s = (i1 - i0) * 1000 / (t1 - t0)
        r0, a0, t0 = cpu_s(relay.pid), _cpu_sum(relay.cli_pids), time.monotonic()
        await asyncio.gather(*(loop(i, per) for i in range(sessions)))
        r1, a1, t1 = cpu_s(relay.pid), _cpu_sum(relay.cli_pids), time.monotonic()
    finally:
        for wire in wires:
            await wire.aclose()
        await relay.stop()
    out = _per_turn(per * sessions, t1 - t0, r1 - r0, a1 - a0, idle_ms_per_s)
    out.update({"idle_ms_per_s": round(idle_ms_per_s, 3), "floor": True})
    if sessions > 1:
        out["sessions"] = sessions
    if log is not None:
        out["durable_log"] = str(log)
    return out


def _cpu_sum(pids: list[int]) -> float:
    return sum(cpu_s(pid) for pid in pids)


def _per_turn(
    turns: int, wall_s: float, server_s: float, cli_s: float, idle_ms_per_s: float
) -> dict[str, Any]:
    """A row's figures: the server's CPU (``server_s``, the daemon's or a relay's, minus its idle
    rate over ``wall_s``) and the CLIs' CPU (``cli_s``) per turn, and their ratio."""
    server_ms = (server_s * 1000 - idle_ms_per_s * wall_s) / turns
    cli_ms = cli_s * 1000 / turns
    return {
        "turns": turns,
        "wall_ms_per_turn": round(wall_s * 1000 / turns, 2),
        "daemon_ms_per_turn": round(server_ms, 3),
        "cli_ms_per_turn": round(cli_ms, 3),
        "ratio": round(server_ms / cli_ms, 4) if cli_ms > 0 else None,
    }


async def measure_sessions(
    d: Daemon, env: BenchEnv, sessions: int, turns: int, idle_ms_per_s: float
) -> dict[str, Any]:
    """``plain follow-ups, N sessions at once``: N sessions, each its own client loop of
    ``turns // N`` plain follow-ups, all at once (the daemon's loop then serves several
    sessions' reads per wake-up, as on a machine full of sessions). Daemon CPU per turn (minus
    its idle rate) over all the turns, against the N CLIs' CPU per turn."""
    await _fresh_connections(d)
    sids = [str((await _open(d, env, False))["id"]) for _ in range(sessions)]
    per = max(1, turns // sessions)

    async def loop(sid: str, n: int) -> None:
        for _ in range(n):
            await _turn(d, sid, "hi")

    try:
        await asyncio.gather(*(loop(sid, 3) for sid in sids))  # the first turns: not counted
        pids = [(await d.session(sid)).get("pid") for sid in sids]
        if not all(isinstance(pid, int) for pid in pids):
            raise BenchError("a session has no process")
        cli_pids = [int(pid) for pid in pids if isinstance(pid, int)]
        await d.wait_quiet()
        assert d.proc is not None
        d0, a0, t0 = cpu_s(d.proc.pid), _cpu_sum(cli_pids), time.monotonic()
        await asyncio.gather(*(loop(sid, per) for sid in sids))
        d1, a1, t1 = cpu_s(d.proc.pid), _cpu_sum(cli_pids), time.monotonic()
    finally:
        for sid in sids:
            await d.close_session(sid)
    return {
        **_per_turn(per * sessions, t1 - t0, d1 - d0, a1 - a0, idle_ms_per_s),
        "sessions": sessions,
    }


async def measure_floors(
    d: Daemon, env: BenchEnv, turns: int, idle_ms_per_s: float
) -> dict[str, Any]:
    """The rows beside ``plain follow-up``: the bare relay with and without the durable log, then
    the same at ``SESSIONS_AT_ONCE`` sessions at once beside the daemon's row at that N."""
    rows: dict[str, Any] = {}
    for durable in (False, True):
        rows[relay_name(durable=durable, sessions=1)] = await measure_relay(
            env, turns, durable=durable
        )
    n = SESSIONS_AT_ONCE
    rows[f"plain follow-ups, {n} sessions at once"] = await measure_sessions(
        d, env, n, turns, idle_ms_per_s
    )
    for durable in (False, True):
        rows[relay_name(durable=durable, sessions=n)] = await measure_relay(
            env, turns, durable=durable, sessions=n
        )
    return rows


async def run_cpu(
    env: BenchEnv, *, turns: int, streamed_turns: int, idle_s: float
) -> dict[str, Any]:
    """The whole ``--cpu`` run: idle rate, then each kind of turn."""
    d = Daemon(env)
    await d.start()
    try:
        idle = await idle_rate(d, env, idle_s)
        kinds: dict[str, Any] = {}
        for kind in KINDS:
            n = turns if kind.prompt == "hi" else streamed_turns
            kinds[kind.name] = await measure_kind(d, env, kind, n, idle["ms_per_s"])
            if kind.name == "plain follow-up":
                kinds.update(await measure_floors(d, env, n, idle["ms_per_s"]))
        from hotsession.bench.idle_cli import measure_idle_clis  # it imports this module

        return {"idle": idle, "turns": kinds, "idle_clis": await measure_idle_clis(d, env)}
    finally:
        await d.stop()
