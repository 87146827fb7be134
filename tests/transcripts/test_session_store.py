"""The transcript stores: the Agent SDK's SessionStore conformance suite, plus what it does not
cover (uuid dedupe, concurrent appends from two machines, big and odd payloads, tenants)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk.testing import run_session_store_conformance
from claude_agent_sdk.types import SessionKey, SessionStore

from hotsession.registry.pgconn import PgPool
from hotsession.testing.postgres import PrivatePostgres
from hotsession.transcripts.postgres import PostgresSessionStore
from hotsession.transcripts.sqlite import SqliteSessionStore

Make = Callable[..., Awaitable[SessionStore]]
KEY: SessionKey = {"project_key": "-srv-work", "session_id": "4a0c5a47-2b8f-4f55-9d39-0d2f1b8f9e11"}


@pytest.fixture(params=["postgres", "sqlite"])
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Make]:
    """``make(shared=None)``: a fresh, isolated store; ``make(shared=name)``: the store
    ``name`` (another handle on the same state, as a second machine would hold)."""
    opened: list[Any] = []
    names: dict[str, str] = {}
    pool: PgPool | None = None
    if request.param == "postgres":
        server: PrivatePostgres = request.getfixturevalue("postgres_server")
        pool = PgPool(server.url, schema=request.getfixturevalue("pg_schema"))
        await pool.open()

    async def factory(shared: str | None = None, tenant: str | None = None) -> SessionStore:
        name = names.setdefault(shared, secrets.token_hex(4)) if shared else secrets.token_hex(4)
        store: PostgresSessionStore | SqliteSessionStore
        if pool is not None:
            store = PostgresSessionStore(pool, tenant=tenant if tenant is not None else name)
        else:
            store = SqliteSessionStore(tmp_path / f"{name}.db")
        await store.open()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()
    if pool is not None:
        await pool.close()


async def test_sdk_conformance(make: Make) -> None:
    await run_session_store_conformance(make)


async def test_sdk_conformance_required_methods_only(make: Make) -> None:
    await run_session_store_conformance(
        make,
        skip_optional=frozenset(
            {"list_sessions", "list_session_summaries", "delete", "list_subkeys"}
        ),
    )


async def test_uuid_is_an_idempotency_key_and_lines_without_one_are_kept(make: Make) -> None:
    store = await make()
    await store.append(KEY, [{"type": "user", "uuid": "u1", "n": 1}])
    await store.append(KEY, [{"type": "user", "uuid": "u1", "n": 1}, {"type": "title", "t": "x"}])
    await store.append(KEY, [{"type": "title", "t": "x"}, {"type": "user", "uuid": "u2", "n": 2}])
    assert await store.load(KEY) == [
        {"type": "user", "uuid": "u1", "n": 1},
        {"type": "title", "t": "x"},
        {"type": "title", "t": "x"},
        {"type": "user", "uuid": "u2", "n": 2},
    ]


async def test_a_uuid_twice_in_one_append_and_an_append_without_uuids(make: Make) -> None:
    """One append is one statement on Postgres: its lines keep their order, a uuid met twice
    in it is kept once (as across appends), and lines without any uuid all stay."""
    store = await make()
    await store.append(KEY, [{"type": "title", "t": "a"}, {"type": "title", "t": "b"}])
    await store.append(
        KEY,
        [
            {"type": "user", "uuid": "u1", "n": 1},
            {"type": "title", "t": "c"},
            {"type": "user", "uuid": "u1", "n": 2},
            {"type": "user", "uuid": "u2", "n": 3},
        ],
    )
    assert await store.load(KEY) == [
        {"type": "title", "t": "a"},
        {"type": "title", "t": "b"},
        {"type": "user", "uuid": "u1", "n": 1},
        {"type": "title", "t": "c"},
        {"type": "user", "uuid": "u2", "n": 3},
    ]


async def test_big_and_odd_entries_round_trip(make: Make) -> None:
    store = await make()
    odd = 'nul \x00 line\u2028sep emoji \U0001f600 quote" back\\slash'
    entries: list[Any] = [
        {"type": "user", "uuid": "a", "message": {"content": odd, "z": 1, "a": [1, 2.5, None]}},
        {"type": "assistant", "uuid": "b", "blob": "x" * 2_000_000},
    ]
    await store.append(KEY, entries)
    assert await store.load(KEY) == entries


async def test_two_machines_appending_at_once_keep_every_line_and_one_summary(
    make: Make,
) -> None:
    a = await make(shared="s")
    b = await make(shared="s")

    async def writer(store: SessionStore, who: str) -> None:
        for n in range(30):
            await store.append(KEY, [{"type": "user", "uuid": f"{who}{n}", "timestamp":
                                      f"2026-01-01T00:00:{n:02d}.000Z"}])  # fmt: skip

    await asyncio.gather(writer(a, "a"), writer(b, "b"))
    loaded = await a.load(KEY)
    assert loaded is not None
    assert sorted(e["uuid"] for e in loaded) == sorted(
        [f"a{n}" for n in range(30)] + [f"b{n}" for n in range(30)]
    )
    # Each machine's own lines stay in its call order.
    for who in "ab":
        mine = [int(e["uuid"][1:]) for e in loaded if e["uuid"].startswith(who)]
        assert mine == list(range(30))
    summaries = await b.list_session_summaries(KEY["project_key"])
    assert [s["session_id"] for s in summaries] == [KEY["session_id"]]
    listed = await b.list_sessions(KEY["project_key"])
    assert summaries[0]["mtime"] >= listed[0]["mtime"]


async def test_summary_folds_every_append_when_two_machines_take_turns(make: Make) -> None:
    """A store folds its next append into the summary it wrote last (Postgres: one round trip);
    when another machine appended since, it folds into the stored summary instead, so the
    summary is that of every line, in order, whoever wrote them (and a deleted one restarts)."""
    from claude_agent_sdk import fold_session_summary

    a = await make(shared="s")
    b = await make(shared="s")
    # Each machine sets a field the other never does: a fold into a summary that missed the
    # other's lines would lose it.
    writes = [(a, "one"), (a, "two"), (b, "three"), (a, "four"), (a, "five"), (b, "six")]
    expected = None
    for n, (store, prompt) in enumerate(writes):
        field = "customTitle" if store is a else "gitBranch"
        entry = {"type": "user", "uuid": f"u{n}", "lastPrompt": prompt, field: f"{prompt}!",
                 "timestamp": f"2026-01-01T00:00:{n:02d}.000Z"}  # fmt: skip
        await store.append(KEY, [entry])  # type: ignore[list-item]
        expected = fold_session_summary(expected, KEY, [entry])  # type: ignore[list-item]
        fresh = await make(shared="s")
        [summary] = await fresh.list_session_summaries(KEY["project_key"])
        assert summary["data"] == expected["data"], prompt
        [listed] = await fresh.list_sessions(KEY["project_key"])
        assert summary["mtime"] >= listed["mtime"]
    await a.delete(KEY)
    await b.append(KEY, [{"type": "user", "uuid": "new", "lastPrompt": "again"}])
    await a.append(KEY, [{"type": "user", "uuid": "new2", "lastPrompt": "and again"}])
    [summary] = await (await make(shared="s")).list_session_summaries(KEY["project_key"])
    assert summary["data"]["last_prompt"] == "and again"
    assert "custom_title" not in summary["data"]  # nothing of before the delete


@pytest.mark.parametrize("make", ["postgres"], indirect=True)  # one SQLite file: one tenant
async def test_tenants_do_not_see_each_other(make: Make) -> None:
    alice = await make(shared="t", tenant="alice")
    bob = await make(shared="t", tenant="bob")
    await alice.append(KEY, [{"type": "user", "uuid": "u1", "secret": "alice's"}])
    assert await bob.load(KEY) is None
    assert await bob.list_sessions(KEY["project_key"]) == []
    await bob.append(KEY, [{"type": "user", "uuid": "u1", "secret": "bob's"}])
    assert await alice.load(KEY) == [{"type": "user", "uuid": "u1", "secret": "alice's"}]


async def test_postgres_restart_during_appends_loses_and_doubles_nothing(
    postgres_server: PrivatePostgres, pg_schema: str
) -> None:
    store = PostgresSessionStore(postgres_server.url, schema=pg_schema, retry_for=30.0)
    await store.open()
    done = 0

    async def writer() -> None:
        nonlocal done
        for n in range(400):
            await store.append(KEY, [{"type": "user", "uuid": f"u{n}", "n": n}])
            done = n + 1
            await asyncio.sleep(0.002)

    try:
        task = asyncio.create_task(writer())
        while done < 30:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(postgres_server.restart)
        await task
        loaded = await store.load(KEY)
        assert [e["n"] for e in loaded or []] == list(range(400))
    finally:
        if not postgres_server.running():
            postgres_server.start()
        await store.close()
