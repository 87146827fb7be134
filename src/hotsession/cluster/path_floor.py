"""The cluster path's floor: the least a follow-up to a session on another node can cost.

Why it exists. Issue 16 holds ``followup_overhead_ms`` (a follow-up through an API daemon to a
session on another node, over the bare CLI paired in the same run) to ≤ 5 ms. Whether that is
reachable on a given machine depends on what the steps the issue itself requires cost there, so
the bench measures them bare, in the same run, as ``bench --cpu`` measures its bare relay
(``hotsession.bench.relay``): ``path_floor_overhead_ms``.

What it is. :class:`FloorActor` is a minimal Ray actor (async, plain Python: no hotsession
engine, registry, pool, supervisor or streams) placed on a worker node as the host actors are
(detached, a hard node affinity, no restarts, no CPU resource; its worker's niceness undone as
a host actor undoes it, so its CLI runs at the priority the bare CLI runs at). It holds one real
CLI spawned exactly as the bench's bare CLI (``hotsession.bench.modes.spawn_initialized``:
hotsession's argv and environment, ``initialize`` answered) and a ``psycopg_pool`` of autocommit
connections to the run's Postgres. The caller (the bench process, standing in for the API
daemon) sends each follow-up as one plain actor call, and the actor does what any design with
the issue's guarantees must do on the way, in order:

1. the prompt's record, fenced: one ``INSERT … SELECT … WHERE EXISTS (SELECT 1 FROM owners …
   AND epoch = %s FOR SHARE)`` (one round trip; the form of the registry's fenced writes). No
   row written: the session moved, :class:`~hotsession.errors.StaleEpoch`, and the prompt never
   reaches the CLI (nothing a node no longer owns may drive its conversation);
2. the prompt written to the CLI's stdin as a stream-json user message;
3. its stdout read until the ``result`` line (by the relay's byte match, no parsing);
4. the turn's transcript appended, one ``unnest`` insert (the CLI's lines of the turn stand in
   for the mirror's frames: a client that saw ``result`` may rely on the turn being in the
   store wherever the conversation continues);
5. the turn's lines returned as the call's result (bytes).

:func:`paired_followups` pairs its follow-ups with the bare CLI's one for one in alternating
order, as ``cluster.bench._paired`` pairs a daemon's, so ``path_floor_overhead_ms`` = the
floor actor's median minus the paired bare CLI's; ``steps_ms`` splits the floor's follow-up
(medians, stamped in the actor: the prompt's record, the CLI's turn from the prompt's write to
its result line, the transcript's insert; ``ray_call``: the call's time in the caller beyond
its time in the actor). Left out, and so not in the floor: the
client's HTTP request to the API daemon and its SSE answer (the bench process calls the actor
directly), any per-turn state beyond the two rows, and any concurrency with other sessions.

Tables live in their own schema (``path_floor``) of the run's database: ``owners`` (one row per
session: the node and the epoch it is held with), ``prompts`` and ``transcript``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from hotsession.bench.environment import BenchEnv, BenchError
from hotsession.bench.modes import BareCli, end_process, spawn_initialized, wait_idle
from hotsession.bench.pinning import can_pin, pinned
from hotsession.bench.stats import Sample
from hotsession.errors import StaleEpoch

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg.rows import TupleRow
    from psycopg_pool import AsyncConnectionPool

NAMESPACE: Final = "hotsession"
PREFIX: Final = "hotsession-path-floor-"
SCHEMA: Final = "path_floor"
TURN_TIMEOUT_S: Final = 120.0

# The relay's result match (``hotsession.bench.relay``): JSON escapes every quote inside a
# string, so this can only be a key and its value; the CLI writes a result's keys in no fixed
# order, hence no prefix match.
_RESULT: Final = b'"type":"result"'

_DDL: Final = (
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.owners (session_id text PRIMARY KEY,"
    " node text NOT NULL, epoch bigint NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.prompts (session_id text NOT NULL, seq bigint NOT NULL,"
    " epoch bigint NOT NULL, prompt text NOT NULL, PRIMARY KEY (session_id, seq))",
    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.transcript (session_id text NOT NULL,"
    " seq bigint NOT NULL, n bigint NOT NULL, line text NOT NULL,"
    " PRIMARY KEY (session_id, seq, n))",
)
_CLAIM: Final = (
    f"INSERT INTO {SCHEMA}.owners (session_id, node, epoch) VALUES (%s, %s, 1)"
    " ON CONFLICT (session_id) DO UPDATE SET node = excluded.node, epoch = owners.epoch + 1"
    " RETURNING epoch"
)
# One round trip: the record is written only while the session is held at the node's epoch
# (the share lock holds off a concurrent claim until this commits; a claim committed first
# makes it write nothing).
_PROMPT: Final = (
    f"INSERT INTO {SCHEMA}.prompts (session_id, seq, epoch, prompt) SELECT %s, %s, %s, %s"
    f" WHERE EXISTS (SELECT 1 FROM {SCHEMA}.owners WHERE session_id = %s AND epoch = %s FOR SHARE)"
)
_TRANSCRIPT: Final = (
    f"INSERT INTO {SCHEMA}.transcript (session_id, seq, n, line)"
    " SELECT %s, %s, e.n, e.line FROM unnest(%s::text[]) WITH ORDINALITY AS e(line, n)"
)


@dataclass(frozen=True)
class CliSpec:
    """What ``spawn_initialized`` reads of a ``BenchEnv`` (its CLI, permission mode, workdir and
    agent environment), taken in the bench process: a ``BenchEnv`` holds the model server's
    process and an HTTP client, so it cannot travel to the actor; this can. The actor's CLI then
    gets the bare CLI's argv and environment, not the Ray worker's."""

    cli_path: str
    permission_mode: str
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, env: BenchEnv) -> CliSpec:
        """The spec of ``env``'s bare CLI."""
        return cls(env.cli_path, env.permission_mode, env.workdir, env.agent_env())

    def agent_env(self) -> dict[str, str]:
        """The CLI's environment (``BenchEnv.agent_env`` as it was in the bench process)."""
        return dict(self.env)


class FloorActor:
    """The floor's host: one CLI and a Postgres pool on a node (see the module docstring).
    Created through :func:`start_floor` as a Ray actor; plain Python otherwise."""

    def __init__(self, spec: CliSpec, database_url: str, node: str) -> None:
        self.spec = spec
        self.database_url = database_url
        self.node = node
        self.session_id = str(uuid.uuid4())
        self.epoch = 0
        self.seq = 0
        self.steps: list[tuple[float, float, float, float]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.pool: AsyncConnectionPool[AsyncConnection[TupleRow]] | None = None

    async def start(self) -> dict[str, Any]:
        """Spawn the CLI (as the bare CLI), open the pool, make the tables and claim the
        session (epoch 1); the CLI's pid, the session id, the epoch and the Ray node it runs on."""
        import ray
        from psycopg_pool import AsyncConnectionPool

        from hotsession.cluster.node import undo_worker_niceness

        undo_worker_niceness()  # as a host actor: its CLI at the raylet's priority, not nice 15
        self.proc = await spawn_initialized(cast(BenchEnv, self.spec))
        self.pool = AsyncConnectionPool(
            self.database_url, min_size=2, max_size=2, open=False, kwargs={"autocommit": True}
        )
        await self.pool.open(wait=True)
        async with self.pool.connection() as conn:
            for ddl in _DDL:
                await conn.execute(ddl)
        await self.claim()
        return {
            "pid": self.proc.pid,
            "session_id": self.session_id,
            "epoch": self.epoch,
            "node": ray.get_runtime_context().get_node_id(),
        }

    async def claim(self) -> int:
        """Take the session (a new epoch, as a node adopting it); the epoch."""
        assert self.pool is not None
        async with self.pool.connection() as conn:
            cur = await conn.execute(_CLAIM, (self.session_id, self.node))
            row = await cur.fetchone()
        assert row is not None
        self.epoch = int(row[0])
        return self.epoch

    async def followup(self, prompt: str) -> bytes:
        """One follow-up: the fenced prompt record, the CLI's turn, the transcript's rows; the
        turn's lines. ``StaleEpoch`` (nothing written, nothing sent) when the session moved."""
        assert self.pool is not None and self.proc is not None
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        t0 = time.monotonic()
        self.seq += 1
        seq, epoch, sid = self.seq, self.epoch, self.session_id
        async with self.pool.connection() as conn:
            cur = await conn.execute(_PROMPT, (sid, seq, epoch, prompt, sid, epoch))
        if cur.rowcount == 0:
            raise StaleEpoch(
                f"session {sid}: epoch {epoch} is not the current one",
                session_id=sid,
                epoch=epoch,
            )
        message = {
            "type": "user",
            "message": {"role": "user", "content": prompt},
            "parent_tool_use_id": None,
        }
        t1 = time.monotonic()
        stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        await stdin.drain()
        lines: list[bytes] = []
        async with asyncio.timeout(TURN_TIMEOUT_S):
            while True:
                line = await stdout.readline()
                if not line:
                    raise RuntimeError("the floor's CLI ended without a result")
                lines.append(line)
                if _RESULT in line:
                    break
        t2 = time.monotonic()
        async with self.pool.connection() as conn:
            await conn.execute(
                _TRANSCRIPT, (sid, seq, [x.decode(errors="replace").rstrip() for x in lines])
            )
        t3 = time.monotonic()
        self.steps.append(((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, (t3 - t0) * 1e3))
        return b"".join(lines)

    async def take_steps(self) -> list[tuple[float, float, float, float]]:
        """Each follow-up's steps since the last call, in ms (the prompt's record, the CLI's
        turn from the prompt's write to its result line, the transcript's insert, the whole
        call in the actor), oldest first; forgets them."""
        steps, self.steps = self.steps, []
        return steps

    async def close(self) -> None:
        """End the CLI and close the pool."""
        proc, self.proc = self.proc, None
        if proc is not None:
            await end_process(proc)
        pool, self.pool = self.pool, None
        if pool is not None:
            await pool.close()


@dataclass
class Floor:
    """A started floor actor, seen from the caller."""

    actor: Any
    pid: int
    session_id: str
    node: str

    async def followup(self, prompt: str) -> tuple[float, bytes]:
        """One timed follow-up (ms from the call to its result in this process) and its lines;
        ``BenchError`` when the CLI's result is an error."""
        t0 = time.monotonic()
        out: bytes = await asyncio.wait_for(self.actor.followup.remote(prompt), TURN_TIMEOUT_S)
        ms = (time.monotonic() - t0) * 1000.0
        last = json.loads(out.rstrip().rsplit(b"\n", 1)[-1])
        if last.get("is_error"):
            raise BenchError(f"path floor: result is_error: {str(last.get('result'))[:200]}")
        return ms, out

    async def stop(self) -> None:
        """End the CLI and the actor."""
        import ray

        try:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.actor.close.remote(), 30)
        finally:
            ray.kill(self.actor)


async def start_floor(spec: CliSpec, database_url: str, node: str) -> Floor:
    """A floor actor on ``node`` (a Ray node id), started; the caller must be a Ray driver."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor: Any = (
        ray.remote(FloorActor)
        .options(
            name=PREFIX + uuid.uuid4().hex[:12],
            namespace=NAMESPACE,
            lifetime="detached",
            num_cpus=0,
            max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        )
        .remote(spec, database_url, node)
    )
    try:
        info = await asyncio.wait_for(actor.start.remote(), 120)
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(actor.close.remote(), 30)
        ray.kill(actor)
        raise
    return Floor(actor, int(info["pid"]), str(info["session_id"]), str(info["node"]))


async def paired_followups(
    floor: Floor, bare: BareCli, rounds: int
) -> tuple[list[float], list[float]]:
    """``rounds`` follow-ups of the floor actor, each paired with one of the bare CLI in
    alternating order (as ``cluster.bench._paired``); the floor's times and the bare CLI's (ms)."""
    out: list[float] = []
    base: list[float] = []

    async def bare_turn(i: int) -> None:
        s = Sample(bare.name, i, "", 0.0)
        await bare.sample(s, f"[[say:pb{i}]]")
        ms = s.ms("result_ms")
        if ms is not None:
            base.append(ms)

    for i in range(rounds):
        if i % 2 == 0:
            await bare_turn(i)
        ms, _ = await floor.followup(f"[[say:pf{i}]]")
        out.append(ms)
        if i % 2 == 1:
            await bare_turn(i)
    return out, base


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


async def _figures(floor: Floor, out: list[float], base: list[float]) -> dict[str, Any]:
    """The medians of a pass: the floor actor's follow-up, the paired bare CLI's, the overhead,
    and the floor's steps (``ray_call``: the call's time here beyond its time in the actor)."""
    follow, bare = _median(out), _median(base)
    steps = await asyncio.wait_for(floor.actor.take_steps.remote(), 30)
    return {
        "followup_ms": follow,
        "floor_ms": bare,
        "overhead_ms": None if follow is None or bare is None else round(follow - bare, 2),
        "steps_ms": {
            "prompt_record": _median([s[0] for s in steps]),
            "cli": _median([s[1] for s in steps]),
            "transcript": _median([s[2] for s in steps]),
            "ray_call": _median([t - s[3] for t, s in zip(out, steps, strict=True)]),
        },
    }


async def measure_path_floor(
    env: BenchEnv, cluster: Any, database_url: str, bare: BareCli, rounds: int
) -> dict[str, Any]:
    """The floor's pass of ``bench --cluster``: a floor actor on a worker node of ``cluster``,
    ``rounds`` follow-ups paired with ``bare``'s, then (where the machine can pin) the same
    again with the two CLIs on a core of their own (``hotsession.bench.pinning``); the figures."""
    import ray

    from hotsession.cluster.actors import join

    joined = not ray.is_initialized()
    if joined:
        join(cluster.address, namespace=NAMESPACE)
    try:
        workers = cluster.worker_nodes
        worker = workers[-1] if isinstance(workers, list) else next(iter(workers))
        floor = await start_floor(CliSpec.of(env), database_url, worker.node_id)
        try:
            # A warm turn, then the bare CLI's right after it: both CLIs at the same age.
            await floor.followup("[[say:warm]]")
            await bare.sample(Sample(bare.name, -1, "", 0.0), "[[say:pbw]]")
            await wait_idle(floor.pid)
            await floor.actor.take_steps.remote()
            out, base = await paired_followups(floor, bare, rounds)
            figures: dict[str, Any] = {
                "node": floor.node,
                "rounds": rounds,
                **await _figures(floor, out, base),
            }
            bare_pid = next(iter(bare.pids().values()), None)
            figures["pinned"] = None
            if can_pin() and bare_pid is not None:
                with pinned({floor.pid, bare_pid}) as (cli_cpus, other_cpus):
                    out_p, base_p = await paired_followups(floor, bare, rounds)
                figures["pinned"] = {
                    "cli_cpus": sorted(cli_cpus),
                    "other_cpus": sorted(other_cpus),
                    **await _figures(floor, out_p, base_p),
                }
            return figures
        finally:
            await floor.stop()
    finally:
        if joined:
            ray.shutdown()
