"""The registry conformance suite: every case runs against memory, SQLite and Postgres."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from regtools import Store, event, seqs, session

from hotsession.errors import RegistryError, StaleEpoch
from hotsession.registry import (
    EventRecord,
    ProcessRecord,
    Registry,
    TurnRecord,
)

# ---------------------------------------------------------------------------- sessions


async def test_get_unknown_session_is_none(registry: Registry) -> None:
    assert await registry.get_session("nope") is None


async def test_session_round_trip_keeps_every_field(registry: Registry) -> None:
    rec = session(
        "s1",
        state="running",
        turns=3,
        metadata={"title": "fix the bug", "tags": ["a", "b"], "nested": {"x": 1.5}},
        pid=4242,
        last_timing={"ttft_ms": 812.5, "total_ms": 2000},
        error="previous spawn failed",
        closed_at=None,
        updated_at=1001.0,
        last_active_at=1002.0,
    )
    await registry.put_session(rec)
    assert await registry.get_session("s1") == rec

    bare = session("s2", last_timing=None, pid=None, metadata={}, closed_at=1234.5)
    await registry.put_session(bare)
    assert await registry.get_session("s2") == bare


async def test_stored_session_is_a_copy(registry: Registry) -> None:
    rec = session("s1")
    await registry.put_session(rec)
    rec.state = "closed"
    rec.options["model"] = "changed"
    got = await registry.get_session("s1")
    assert got is not None
    assert got.state == "idle"
    assert got.options["model"] == "sonnet"


async def test_put_session_replaces(registry: Registry) -> None:
    await registry.put_session(session("s1"))
    await registry.put_session(session("s1", state="evicted", turns=7, pid=None, error="x"))
    got = await registry.get_session("s1")
    assert got is not None
    assert (got.state, got.turns, got.error) == ("evicted", 7, "x")
    assert [s.id for s in await registry.list_sessions()] == ["s1"]


async def test_list_sessions_newest_first_by_created_at(registry: Registry) -> None:
    # Inserted out of order, with updated_at in the opposite order to created_at.
    for sid, created in [("b", 2000.0), ("a", 1000.0), ("d", 4000.0), ("c", 3000.0)]:
        await registry.put_session(session(sid, created_at=created, updated_at=10_000 - created))
    assert [s.id for s in await registry.list_sessions()] == ["d", "c", "b", "a"]
    # An update does not move a session.
    await registry.put_session(session("a", created_at=1000.0, updated_at=99_999.0))
    assert [s.id for s in await registry.list_sessions()] == ["d", "c", "b", "a"]


async def test_list_sessions_filters_by_tenant(registry: Registry) -> None:
    await registry.put_session(session("a1", tenant="acme", created_at=1.0))
    await registry.put_session(session("b1", tenant="beta", created_at=2.0))
    await registry.put_session(session("a2", tenant="acme", created_at=3.0))
    assert [s.id for s in await registry.list_sessions("acme")] == ["a2", "a1"]
    assert [s.id for s in await registry.list_sessions("beta")] == ["b1"]
    assert await registry.list_sessions("nobody") == []
    assert [s.id for s in await registry.list_sessions()] == ["a2", "b1", "a1"]


async def test_list_sessions_hides_closed_unless_asked(registry: Registry) -> None:
    await registry.put_session(session("open", created_at=1.0))
    await registry.put_session(session("shut", created_at=2.0, state="closed", closed_at=5.0))
    await registry.put_session(session("gone", created_at=3.0, state="evicted"))
    assert [s.id for s in await registry.list_sessions()] == ["gone", "open"]
    assert [s.id for s in await registry.list_sessions(include_closed=True)] == [
        "gone",
        "shut",
        "open",
    ]
    assert [s.id for s in await registry.list_sessions("acme", include_closed=True)] == [
        "gone",
        "shut",
        "open",
    ]


# ---------------------------------------------------------------------------- turns


async def test_turns_upsert_order_and_limit(registry: Registry) -> None:
    for n in (3, 1, 2, 4):
        await registry.put_turn(TurnRecord("s1", n, f"prompt {n}", queued_at=float(n)))
    await registry.put_turn(TurnRecord("other", 1, "elsewhere"))
    assert [t.turn for t in await registry.list_turns("s1")] == [1, 2, 3, 4]

    done = TurnRecord(
        "s1",
        2,
        "prompt 2",
        status="done",
        queued_at=2.0,
        started_at=2.5,
        ended_at=3.0,
        timing={"ttft_ms": 100.0, "turns": [1, 2]},
        error_code=None,
    )
    await registry.put_turn(done)
    turns = await registry.list_turns("s1")
    assert len(turns) == 4
    assert turns[1] == done

    failed = TurnRecord("s1", 4, "p", status="error", error_code="agent_died", error_message="x")
    await registry.put_turn(failed)
    assert [t.turn for t in await registry.list_turns("s1", limit=2)] == [3, 4]
    assert (await registry.list_turns("s1", limit=1)) == [failed]
    assert [t.turn for t in await registry.list_turns("s1", limit=10)] == [1, 2, 3, 4]
    assert await registry.list_turns("s1", limit=0) == []
    assert await registry.list_turns("nope") == []


# ---------------------------------------------------------------------------- events


async def test_events_visible_before_and_after_flush(registry: Registry) -> None:
    registry.add_events([event("s1", n) for n in range(1, 6)])
    registry.add_events([event("s2", 1)])
    # Not flushed yet: a replay must still see them.
    assert seqs(await registry.events_after("s1", 0)) == [1, 2, 3, 4, 5]
    assert await registry.last_seq("s1") == 5
    await registry.flush()
    got = await registry.events_after("s1", 0)
    assert got == [event("s1", n) for n in range(1, 6)]
    assert seqs(await registry.events_after("s1", 3)) == [4, 5]
    assert seqs(await registry.events_after("s1", 1, limit=2)) == [2, 3]
    assert await registry.events_after("s1", 5) == []
    assert seqs(await registry.events_after("s2", 0)) == [1]
    assert await registry.last_seq("s1") == 5
    assert await registry.last_seq("s2") == 1
    assert await registry.last_seq("unknown") == 0

    # Half flushed, half pending: one ordered answer.
    registry.add_events([event("s1", n) for n in range(6, 9)])
    assert seqs(await registry.events_after("s1", 4)) == [5, 6, 7, 8]
    assert seqs(await registry.events_after("s1", 4, limit=3)) == [5, 6, 7]
    assert await registry.last_seq("s1") == 8


async def test_event_data_round_trips(registry: Registry) -> None:
    ev = EventRecord(
        "s1", 1, 2, "tool_use", {"name": "Bash", "input": {"cmd": "ls"}, "ok": True, "v": None}, 5.5
    )
    registry.add_events([ev])
    await registry.flush()
    assert await registry.events_after("s1", 0) == [ev]


async def test_an_event_with_the_clis_line_reads_back_as_its_data(registry: Registry) -> None:
    """A CLI message's event carries the CLI's own line (``EventRecord.line``), which a SQL store
    writes instead of encoding ``data`` again: it reads back as the same data."""
    line = b'{"type":"assistant", "text":"caf\\u00e9 \xe2\x9c\x93", "n":[1,2.5,null]}'
    ev = EventRecord("s1", 1, 1, "message", json.loads(line), 5.5, line)
    registry.add_events([ev])
    assert await registry.events_after("s1", 0) == [ev]
    await registry.flush()
    [back] = await registry.events_after("s1", 0)
    assert back == ev and back.data == {"type": "assistant", "text": "café ✓", "n": [1, 2.5, None]}


async def test_event_with_same_seq_replaces(registry: Registry) -> None:
    registry.add_events([event("s1", 1, v="old")])
    await registry.flush()
    registry.add_events([event("s1", 1, v="new")])
    assert [e.data["v"] for e in await registry.events_after("s1", 0)] == ["new"]
    await registry.flush()
    assert [e.data["v"] for e in await registry.events_after("s1", 0)] == ["new"]


async def test_many_events_across_batches_stay_in_order(registry: Registry) -> None:
    total = 5_000
    n = 0
    while n < total:
        chunk = [event("s1", s) for s in range(n + 1, min(n + 38, total) + 1)]
        registry.add_events(chunk)
        n += len(chunk)
        if n % 190 == 0:
            await asyncio.sleep(0)  # let the timer and size triggers commit some batches
    assert await registry.last_seq("s1") == total
    await registry.flush()

    got: list[EventRecord] = []
    after = 0
    while page := await registry.events_after("s1", after, limit=1000):
        assert len(page) <= 1000
        got.extend(page)
        after = page[-1].seq
    assert seqs(got) == list(range(1, total + 1))
    assert got[1234] == event("s1", 1235)


# ---------------------------------------------------------------------------- processes


async def test_processes_put_forget_list(registry: Registry) -> None:
    assert await registry.list_processes() == []
    p1 = ProcessRecord(300, 1.5, "session", "s1", "cli-1")
    p2 = ProcessRecord(100, 2.5, "spare")
    p3 = ProcessRecord(200, 3.5, "warm")
    for p in (p1, p2, p3):
        await registry.put_process(p)
    assert await registry.list_processes() == [p2, p3, p1]
    # The same pid again (a reused pid): replaced.
    p1b = ProcessRecord(300, 9.5, "session", "s9", "cli-9")
    await registry.put_process(p1b)
    await registry.forget_process(100)
    await registry.forget_process(999)  # unknown: no error
    assert await registry.list_processes() == [p3, p1b]


# ---------------------------------------------------------------------------- lifecycle


async def test_closed_registry_refuses_and_close_is_idempotent(registry: Registry) -> None:
    await registry.put_session(session("s1"))
    await registry.close()
    await registry.close()
    with pytest.raises(RegistryError):
        await registry.get_session("s1")
    with pytest.raises(RegistryError):
        registry.add_events([event("s1", 1)])
    with pytest.raises(RegistryError):
        await registry.flush()


async def test_unopened_registry_refuses(store: Store) -> None:
    reg = store.handle()
    with pytest.raises(RegistryError, match="not open"):
        await reg.get_session("s1")
    with pytest.raises(RegistryError, match="not open"):
        reg.add_events([event("s1", 1)])
    await reg.close()


# ---------------------------------------------------------------------------- concurrency


async def test_many_coroutines_at_once(registry: Registry) -> None:
    n_sessions, n_events = 40, 150

    async def worker(i: int) -> None:
        sid = f"s{i:02d}"
        await registry.put_session(session(sid, created_at=float(i)))
        for start in range(1, n_events + 1, 10):
            registry.add_events([event(sid, s) for s in range(start, start + 10)])
            if start % 30 == 1:
                await asyncio.sleep(0)
                assert await registry.last_seq(sid) == start + 9
        await registry.put_turn(TurnRecord(sid, 1, "p", status="done"))
        await registry.list_sessions()

    await asyncio.gather(*(worker(i) for i in range(n_sessions)))
    await registry.flush()
    sessions = await registry.list_sessions()
    assert [s.id for s in sessions] == [f"s{i:02d}" for i in reversed(range(n_sessions))]
    for i in range(n_sessions):
        sid = f"s{i:02d}"
        assert seqs(await registry.events_after(sid, 0)) == list(range(1, n_events + 1))
        assert len(await registry.list_turns(sid)) == 1


async def test_add_events_from_threads(registry: Registry) -> None:
    def producer(sid: str) -> None:
        for s in range(1, 1001):
            registry.add_events([event(sid, s)])

    threads = [threading.Thread(target=producer, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        await asyncio.to_thread(t.join)
    await registry.flush()
    for i in range(4):
        assert seqs(await registry.events_after(f"t{i}", 0, limit=5000)) == list(range(1, 1001))


# ---------------------------------------------------------------------------- text


async def test_text_with_nul_and_odd_unicode_round_trips(registry: Registry) -> None:
    odd = "a\x00b \u2028 \U0001f600 'quote\" \\back"
    rec = session("s1", error=odd, metadata={"k": odd, odd: 1}, options={"system": odd})
    await registry.put_session(rec)
    assert await registry.get_session("s1") == rec
    turn = TurnRecord("s1", 1, odd, status="error", error_code="x", error_message=odd)
    await registry.put_turn(turn)
    assert await registry.list_turns("s1") == [turn]
    ev = EventRecord("s1", 1, 1, "assistant", {"text": odd}, 1.0)
    registry.add_events([ev])
    await registry.flush()
    assert await registry.events_after("s1", 0) == [ev]


# ---------------------------------------------------------------------------- handles


async def test_a_second_handle_sees_the_first_ones_writes(store: Store) -> None:
    a = await store.open()
    b = await store.open()
    await a.put_session(session("s1"))
    await a.put_turn(TurnRecord("s1", 1, "hi"))
    a.add_events([event("s1", n) for n in range(1, 4)])
    await a.flush()
    assert await b.get_session("s1") == session("s1")
    assert [t.prompt for t in await b.list_turns("s1")] == ["hi"]
    assert seqs(await b.events_after("s1", 0)) == [1, 2, 3]
    assert await b.last_seq("s1") == 3


async def test_end_turn_writes_the_events_the_turn_and_the_session(store: Store) -> None:
    a = await store.open(flush_interval=60.0)  # no timer: only end_turn can write the events
    b = await store.open()
    await a.put_turn(TurnRecord("s1", 1, "hi"))
    a.add_events([event("s1", n) for n in range(1, 4)])
    a.add_events([event("s2", 1)])  # another session's event, queued in the same batch
    done = TurnRecord("s1", 1, "hi", status="done", started_at=1.0, ended_at=2.0)
    await a.end_turn(done, session("s1", turns=1, state="idle"))
    # Seen through a second handle: written to the store, not merged from a's memory.
    assert seqs(await b.events_after("s1", 0)) == [1, 2, 3]
    assert seqs(await b.events_after("s2", 0)) == [1]
    assert await b.list_turns("s1") == [done]
    got = await b.get_session("s1")
    assert got is not None and got.turns == 1
    # With nothing queued it still writes both records.
    await a.end_turn(TurnRecord("s1", 2, "again", status="done"), session("s1", turns=2))
    assert [t.turn for t in await b.list_turns("s1")] == [1, 2]
    got = await b.get_session("s1")
    assert got is not None and got.turns == 2


async def test_end_turn_is_fenced_and_keeps_other_sessions_events(store: Store) -> None:
    node_a = await store.open()
    node_b = await store.open()
    held = await node_a.claim("s1", "node-a", expect_epoch=0)
    await node_a.end_turn(
        TurnRecord("s1", 1, "from a", status="done"), session("s1", turns=1), epoch=held.epoch
    )
    taken = await node_b.claim("s1", "node-b", expect_epoch=held.epoch)
    await node_b.put_session(session("s1", turns=5), epoch=taken.epoch)

    node_a.add_events([event("s1", 2, who="a")], epoch=held.epoch)  # stale: dropped
    node_a.add_events([event("s9", 1)])  # another session's, unfenced: must be written
    with pytest.raises(StaleEpoch) as info:
        await node_a.end_turn(
            TurnRecord("s1", 2, "late from a", status="done"),
            session("s1", turns=99),
            epoch=held.epoch,
        )
    assert info.value.details["current_epoch"] == taken.epoch
    got = await node_b.get_session("s1")
    assert got is not None and got.turns == 5  # neither record of node-a's landed
    assert [t.prompt for t in await node_b.list_turns("s1")] == ["from a"]
    assert await node_b.events_after("s1", 1) == []
    assert seqs(await node_b.events_after("s9", 0)) == [1]


async def test_end_turn_writes_its_records_then_reports_stale_events(registry: Registry) -> None:
    mine = await registry.claim("s1", "n1", expect_epoch=0)
    gone = await registry.claim("s2", "n1", expect_epoch=0)
    await registry.claim("s2", "n2", expect_epoch=gone.epoch)  # s2 moved away
    registry.add_events([event("s2", 1)], epoch=gone.epoch)
    registry.add_events([event("s1", 1)], epoch=mine.epoch)
    with pytest.raises(StaleEpoch) as info:
        await registry.end_turn(
            TurnRecord("s1", 1, "hi", status="done"), session("s1", turns=1), epoch=mine.epoch
        )
    assert info.value.details["sessions"] == ["s2"]
    assert [t.status for t in await registry.list_turns("s1")] == ["done"]
    got = await registry.get_session("s1")
    assert got is not None and got.turns == 1
    assert seqs(await registry.events_after("s1", 0)) == [1]
    assert await registry.events_after("s2", 0) == []
    await registry.flush()  # reported once


# ---------------------------------------------------------------------------- ownership


async def test_claim_renew_release_and_claim_again(registry: Registry) -> None:
    assert await registry.owner("s1") is None
    first = await registry.claim("s1", "node-a", expect_epoch=0)
    assert (first.session_id, first.node, first.epoch) == ("s1", "node-a", 1)
    assert first.claimed_at == first.renewed_at
    assert await registry.owner("s1") == first

    await asyncio.sleep(0.01)
    renewed = await registry.renew("s1", "node-a", 1)
    assert renewed.epoch == 1 and renewed.claimed_at == first.claimed_at
    assert renewed.renewed_at > first.renewed_at

    assert [o.session_id for o in await registry.list_owned("node-a")] == ["s1"]
    await registry.release("s1", "node-a", 1)
    await registry.release("s1", "node-a", 1)  # released already: no error
    released = await registry.owner("s1")
    assert released is not None and (released.node, released.epoch) == (None, 1)
    assert await registry.list_owned("node-a") == []
    with pytest.raises(StaleEpoch):
        await registry.renew("s1", "node-a", 1)

    second = await registry.claim("s1", "node-b", expect_epoch=1)
    assert (second.node, second.epoch) == ("node-b", 2)
    assert [o.session_id for o in await registry.list_owned("node-b")] == ["s1"]


async def test_claim_with_a_stale_expectation_is_refused(registry: Registry) -> None:
    await registry.claim("s1", "node-a", expect_epoch=0)
    with pytest.raises(StaleEpoch) as info:
        await registry.claim("s1", "node-b", expect_epoch=0)
    assert info.value.code == "stale_epoch" and info.value.status == 409
    assert info.value.details["current_epoch"] == 1
    assert info.value.details["owner"] == "node-a"
    with pytest.raises(StaleEpoch):
        await registry.claim("s1", "node-b", expect_epoch=5)
    with pytest.raises(StaleEpoch):
        await registry.renew("s1", "node-b", 1)  # right epoch, wrong node
    with pytest.raises(StaleEpoch):
        await registry.release("s1", "node-a", 2)
    owner = await registry.owner("s1")
    assert owner is not None and (owner.node, owner.epoch) == ("node-a", 1)


async def test_racing_claimants_only_one_wins(store: Store) -> None:
    # Several handles on one store (two nodes), each with several claimants at once.
    handles = [await store.open() for _ in range(2)]
    for rnd in range(5):
        sid = f"race-{rnd}"
        expect = 0
        if rnd % 2:  # also race a takeover of a held session
            expect = (await handles[0].claim(sid, "old-node", expect_epoch=0)).epoch

        async def attempt(i: int, sid: str = sid, expect: int = expect) -> str | None:
            try:
                won = await handles[i % 2].claim(sid, f"node-{i}", expect_epoch=expect)
            except StaleEpoch:
                return None
            return won.node

        results = await asyncio.gather(*(attempt(i) for i in range(8)))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, results
        owner = await handles[1].owner(sid)
        assert owner is not None and owner.node == winners[0] and owner.epoch == expect + 1


async def test_stale_holder_writes_are_refused(store: Store) -> None:
    node_a = await store.open()
    node_b = await store.open()
    held = await node_a.claim("s1", "node-a", expect_epoch=0)
    await node_a.put_session(session("s1", turns=1), epoch=held.epoch)
    await node_a.put_turn(TurnRecord("s1", 1, "from a"), epoch=held.epoch)
    node_a.add_events([event("s1", 1, who="a")], epoch=held.epoch)
    await node_a.flush()

    # node-a is partitioned; node-b takes the session over.
    taken = await node_b.claim("s1", "node-b", expect_epoch=held.epoch)
    await node_b.put_session(session("s1", turns=2), epoch=taken.epoch)

    with pytest.raises(StaleEpoch) as info:
        await node_a.put_session(session("s1", turns=99), epoch=held.epoch)
    assert info.value.details["current_epoch"] == 2
    assert info.value.details["owner"] == "node-b"
    with pytest.raises(StaleEpoch):
        await node_a.put_turn(TurnRecord("s1", 1, "late from a"), epoch=held.epoch)
    with pytest.raises(StaleEpoch):
        await node_a.renew("s1", "node-a", held.epoch)
    node_a.add_events([event("s1", 2, who="a")], epoch=held.epoch)
    with pytest.raises(StaleEpoch) as dropped:
        await node_a.flush()
    assert dropped.value.details["dropped_events"] == 1
    await node_a.flush()  # reported once

    node_b.add_events([event("s1", 2, who="b")], epoch=taken.epoch)
    await node_b.flush()
    got = await node_b.get_session("s1")
    assert got is not None and got.turns == 2
    assert [t.prompt for t in await node_b.list_turns("s1")] == ["from a"]
    assert [e.data["who"] for e in await node_b.events_after("s1", 0)] == ["a", "b"]

    # Unfenced writes (the single-machine mode) are not affected by ownership.
    await node_a.put_session(session("s1", turns=3))
    # A fenced write to a session nobody claimed, or after a release, is refused too.
    with pytest.raises(StaleEpoch):
        await node_a.put_session(session("s2"), epoch=1)
    await node_b.release("s1", "node-b", taken.epoch)
    with pytest.raises(StaleEpoch):
        await node_b.put_turn(TurnRecord("s1", 2, "after release"), epoch=taken.epoch)


async def test_fenced_events_of_several_sessions_in_one_batch(registry: Registry) -> None:
    a = await registry.claim("a", "n1", expect_epoch=0)
    b = await registry.claim("b", "n1", expect_epoch=0)
    await registry.claim("b", "n2", expect_epoch=b.epoch)  # b moved away
    registry.add_events([event("a", 1)], epoch=a.epoch)
    registry.add_events([event("b", 1)], epoch=b.epoch)
    registry.add_events([event("c", 1)])  # unfenced
    registry.add_events([event("a", 2)], epoch=a.epoch)
    with pytest.raises(StaleEpoch) as info:
        await registry.flush()
    assert info.value.details["sessions"] == ["b"]
    assert seqs(await registry.events_after("a", 0)) == [1, 2]
    assert await registry.events_after("b", 0) == []
    assert seqs(await registry.events_after("c", 0)) == [1]


async def test_writes_racing_a_takeover_never_land_after_it(store: Store) -> None:
    node_a = await store.open()
    node_b = await store.open()
    held = await node_a.claim("s1", "node-a", expect_epoch=0)
    written: list[int] = []

    async def old_owner() -> None:  # keeps writing until the store refuses it
        for i in range(1, 10_000):
            try:
                await node_a.put_session(session("s1", turns=i), epoch=held.epoch)
            except StaleEpoch:
                return
            written.append(i)
            await asyncio.sleep(0)
        raise AssertionError("never fenced")

    writer = asyncio.create_task(old_owner())
    while len(written) < 20:
        await asyncio.sleep(0.001)
    taken = await node_b.claim("s1", "node-b", expect_epoch=held.epoch)
    await node_b.put_session(session("s1", turns=-1), epoch=taken.epoch)
    await writer
    got = await node_b.get_session("s1")
    assert got is not None and got.turns == -1  # nothing of node-a's after the takeover
