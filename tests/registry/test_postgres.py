"""Postgres specifics of the registry: schema, per-node processes, batching, and server faults
(a restart under load, dropped connections, a server that is down)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import psycopg
import pytest
from regtools import event, eventually, seqs, session

from hotsession.errors import RegistryError, RegistryUnavailable
from hotsession.registry import EventRecord, ProcessRecord, TurnRecord
from hotsession.registry.postgres import BATCH_MAX, MIGRATIONS, PostgresRegistry
from hotsession.testing.postgres import PrivatePostgres

Factory = Callable[..., PostgresRegistry]


@pytest.fixture
async def make(postgres_server: PrivatePostgres, pg_schema: str) -> AsyncIterator[Factory]:
    made: list[PostgresRegistry] = []

    def factory(**kw: Any) -> PostgresRegistry:
        reg = PostgresRegistry(postgres_server.url, **{"schema": pg_schema, **kw})
        made.append(reg)
        return reg

    yield factory
    for reg in made:
        with contextlib.suppress(Exception):
            await reg.close()


def count(server: PrivatePostgres, schema: str, sql: str) -> int:
    with psycopg.connect(server.url, autocommit=True) as conn:
        row = conn.execute(sql.replace("{s}", schema)).fetchone()
    assert row is not None
    return int(row[0])


async def test_data_survives_close_and_reopen(make: Factory) -> None:
    reg = make(flush_interval=10.0)  # only close() can write the events
    await reg.open()
    rec = session("s1", metadata={"k": "v"}, last_timing={"a": 1})
    turn = TurnRecord("s1", 1, "hello", status="done", timing={"ms": 3})
    proc = ProcessRecord(123, 4.5, "session", "s1", "cli-s1")
    await reg.put_session(rec)
    await reg.put_turn(turn)
    await reg.put_process(proc)
    owned = await reg.claim("s1", "n1", expect_epoch=0)
    reg.add_events([event("s1", n) for n in range(1, 101)])
    await reg.close()

    again = make()
    await again.open()
    assert await again.get_session("s1") == rec
    assert await again.list_turns("s1") == [turn]
    assert await again.list_processes() == [proc]
    assert await again.owner("s1") == owned
    assert seqs(await again.events_after("s1", 0)) == list(range(1, 101))


async def test_schema_version_is_recorded_and_a_newer_one_refused(
    make: Factory, postgres_server: PrivatePostgres, pg_schema: str
) -> None:
    # Two daemons starting at once migrate once.
    a, b = make(), make()
    await asyncio.gather(a.open(), b.open())
    version = count(postgres_server, pg_schema, "SELECT version FROM {s}.registry_schema_version")
    assert version == len(MIGRATIONS)
    rows = count(postgres_server, pg_schema, "SELECT count(*) FROM {s}.registry_schema_version")
    assert rows == 1
    await a.close()
    await b.close()

    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"UPDATE {pg_schema}.registry_schema_version SET version = version + 1")
    newer = make()
    with pytest.raises(RegistryError, match="newer") as info:
        await newer.open()
    assert info.value.details["schema_version"] == len(MIGRATIONS) + 1
    with pytest.raises(RegistryError, match="closed"):  # not half-open
        await newer.get_session("s1")


async def test_processes_belong_to_their_node(make: Factory) -> None:
    a, b = make(node="host-a"), make(node="host-b")
    await a.open()
    await b.open()
    await a.put_process(ProcessRecord(100, 1.0, "spare"))
    await b.put_process(ProcessRecord(100, 2.0, "session", "s1", "c1"))  # the same pid
    assert await a.list_processes() == [ProcessRecord(100, 1.0, "spare")]
    await a.forget_process(100)
    assert await a.list_processes() == []
    assert await b.list_processes() == [ProcessRecord(100, 2.0, "session", "s1", "c1")]


async def test_timer_and_batch_size_commit_without_flush(
    make: Factory, postgres_server: PrivatePostgres, pg_schema: str
) -> None:
    def stored() -> int:
        return count(postgres_server, pg_schema, "SELECT count(*) FROM {s}.events")

    reg = make(flush_interval=1.0)  # long enough for stored()'s own connection, under load
    await reg.open()
    reg.add_events([event("s1", n) for n in range(1, 11)])
    assert stored() == 0  # batched, not written at once
    await eventually(lambda: stored() == 10, timeout=10.0)
    await reg.close()

    slow = make(flush_interval=60.0)
    await slow.open()
    slow.add_events([event("s2", n) for n in range(1, BATCH_MAX)])
    await asyncio.sleep(0.2)
    assert stored() == 10  # below the size trigger: waits for the timer
    slow.add_events([event("s2", BATCH_MAX)])
    await eventually(lambda: stored() == 10 + BATCH_MAX, timeout=10.0)


async def test_malformed_event_does_not_poison_the_batch(make: Factory) -> None:
    reg = make(flush_interval=60.0)
    await reg.open()
    circular: dict[str, Any] = {}
    circular["self"] = circular
    bad_turn = EventRecord("s1", 2, cast(Any, None), "assistant", {}, 1.0)  # NOT NULL
    odd_data = EventRecord("s1", 3, 1, "assistant", circular, 1.0)  # not JSON
    huge_seq = EventRecord("s1", 2**70, 1, "assistant", {}, 1.0)  # out of bigint
    reg.add_events([event("s1", 1), bad_turn, odd_data, huge_seq, event("s1", 4)])
    await reg.flush()
    got = await reg.events_after("s1", 0)
    assert seqs(got) == [1, 3, 4]
    assert "unserialisable" in got[1].data
    reg.add_events([event("s1", 5)])
    await reg.flush()  # nothing left stuck
    assert await reg.last_seq("s1") == 5


# ---------------------------------------------------------------------------- faults


async def _load(
    reg: PostgresRegistry,
    sid: str,
    stop: asyncio.Event,
    errors: list[Exception],
    progress: dict[str, int],
) -> int:
    """Write sessions, turns and events until ``stop``; returns the last seq added."""
    seq = 0
    while not stop.is_set():
        seq += 1
        progress[sid] = seq
        reg.add_events([event(sid, seq)])
        if seq % 5 == 0:
            try:
                await reg.put_turn(TurnRecord(sid, seq, f"prompt {seq}"))
                await reg.put_session(session(sid, turns=seq))
            except RegistryError as exc:  # only once retrying gave up: must not happen here
                errors.append(exc)
        await asyncio.sleep(0.002)
    return seq


async def test_server_restart_under_load_loses_nothing(
    make: Factory, postgres_server: PrivatePostgres
) -> None:
    reg = make(retry_for=30.0, pool_max=4)
    await reg.open()
    stop = asyncio.Event()
    errors: list[Exception] = []
    progress: dict[str, int] = {}
    writers = [asyncio.create_task(_load(reg, f"s{i}", stop, errors, progress)) for i in range(4)]
    await eventually(lambda: len(progress) == 4 and min(progress.values()) > 10)
    try:
        await asyncio.to_thread(postgres_server.restart)
        after = dict(progress)
        # The load goes on after the restart (each writer did 3 turns more).
        await eventually(lambda: all(progress[k] > after[k] + 15 for k in after), timeout=60)
    finally:
        stop.set()
        last = await asyncio.gather(*writers)
        if not postgres_server.running():
            postgres_server.start()
    await reg.flush()
    assert errors == []
    for i, top in enumerate(last):
        assert seqs(await reg.events_after(f"s{i}", 0, limit=100_000)) == list(range(1, top + 1))
        got = await reg.get_session(f"s{i}")
        assert got is not None and got.turns == top - top % 5


async def test_dropped_connections_are_replaced(
    make: Factory, postgres_server: PrivatePostgres
) -> None:
    reg = make(retry_for=10.0, pool_max=4)
    await reg.open()
    stop = asyncio.Event()
    errors: list[Exception] = []
    progress: dict[str, int] = {}
    writers = [asyncio.create_task(_load(reg, f"d{i}", stop, errors, progress)) for i in range(3)]

    async def moved_on() -> None:
        seen = dict(progress)
        await eventually(lambda: all(progress[k] > seen[k] + 10 for k in seen), timeout=60)

    await eventually(lambda: len(progress) == 3)
    for _ in range(3):
        await moved_on()
        assert await asyncio.to_thread(postgres_server.terminate_connections) >= 1
    await moved_on()
    stop.set()
    last = await asyncio.gather(*writers)
    await reg.flush()
    assert errors == []
    for i, top in enumerate(last):
        assert seqs(await reg.events_after(f"d{i}", 0, limit=100_000)) == list(range(1, top + 1))


async def test_unreachable_server_raises_unavailable_then_recovers(
    make: Factory, postgres_server: PrivatePostgres
) -> None:
    reg = make(retry_for=0.5, connect_timeout=1.0)
    await reg.open()
    await reg.put_session(session("s1"))
    reg.add_events([event("s1", 1)])
    await reg.flush()
    await asyncio.to_thread(postgres_server.stop)
    try:
        with pytest.raises(RegistryUnavailable) as info:
            await reg.put_session(session("s1", turns=2))
        assert info.value.code == "registry_unavailable" and info.value.status == 503
        with pytest.raises(RegistryUnavailable):
            await reg.get_session("s1")
        reg.add_events([event("s1", n) for n in range(2, 6)])  # still accepted
        with pytest.raises(RegistryUnavailable):
            await reg.flush()
        with pytest.raises(RegistryUnavailable):
            await reg.events_after("s1", 0)
    finally:
        await asyncio.to_thread(postgres_server.start)
    await reg.flush()  # the kept batch is written
    assert seqs(await reg.events_after("s1", 0)) == [1, 2, 3, 4, 5]
    await reg.put_session(session("s1", turns=2))
    got = await reg.get_session("s1")
    assert got is not None and got.turns == 2


async def test_open_against_a_dead_server_is_unavailable() -> None:
    reg = PostgresRegistry("postgresql://nobody@127.0.0.1:1/x", connect_timeout=1.0)
    with pytest.raises(RegistryUnavailable, match="cannot connect"):
        await reg.open()
    await reg.close()


async def test_writes_of_one_session_commit_in_call_order(
    make: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine writes a turn "queued" and then "running" from two background tasks; on a
    pool of connections the first can reach the server last (here: its connection is slow to
    come). The registry itself keeps a session's writes in call order, so the turn is not left
    "queued" (a re-homed session would run it again) and a session's later state stands."""
    reg = make()
    await reg.open()
    await reg.put_session(session("s1"))
    run = reg._db.run
    slow = {"first": True}

    async def slow_first(fn: Any, doing: str) -> Any:
        if slow["first"] and doing in ("write a turn", "write a session"):
            slow["first"] = False
            await asyncio.sleep(0.2)  # e.g. waiting for a connection of the pool
        return await run(fn, doing)

    monkeypatch.setattr(reg._db, "run", slow_first)
    turn = TurnRecord("s1", 1, "hello", status="queued")
    queued = asyncio.create_task(reg.put_turn(TurnRecord(**vars(turn))))
    running = asyncio.create_task(reg.put_turn(TurnRecord(**{**vars(turn), "status": "running"})))
    await asyncio.gather(queued, running)
    assert [t.status for t in await reg.list_turns("s1")] == ["running"]

    slow["first"] = True
    first = asyncio.create_task(reg.put_session(session("s1", state="idle")))
    closed = asyncio.create_task(reg.put_session(session("s1", state="closed")))
    await asyncio.gather(first, closed)
    stored = await reg.get_session("s1")
    assert stored is not None and stored.state == "closed"
    assert len(reg._order) == 0  # nothing kept for a session with no write under way
