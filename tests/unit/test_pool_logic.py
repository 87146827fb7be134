"""The warm pool's logic with the fake agent (real small processes speaking the CLI protocol).

Small numbers where the point is logic; hundreds of processes where the point is scale.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from tests.conftest import wait_until

from hotsession import Config, Hotsession
from hotsession.errors import AgentStartError, ProfileFailing
from hotsession.memory import sample_many
from hotsession.options import SessionOptions
from hotsession.pool import Pool
from hotsession.pool.budget import SPARE_SHARE


def make_config(tmp_path: Path, fake_cli: str, **kw: Any) -> Config:
    defaults: dict[str, Any] = {
        "state_dir": tmp_path / "state",
        "cli_path": fake_cli,
        "pool_tick_s": 0.05,
        "pool_refill_per_s": 1000.0,
        "memory_budget_mb": 20_000.0,
        "agent_recycle_jitter": 0.0,
        "spawn_timeout_s": 20.0,
        "pool_max": 8,
    }
    defaults.update(kw)
    return Config(**defaults)


def opts(workdir: Path, **env: str) -> SessionOptions:
    return SessionOptions.create(str(workdir), env=env)


@pytest.fixture
async def hub(tmp_path: Path, fake_cli: str) -> AsyncIterator[Hotsession]:
    async with Hotsession(make_config(tmp_path, fake_cli)) as hs:
        yield hs


def pool_of(hub: Hotsession) -> Pool:
    assert isinstance(hub.pool, Pool)
    return hub.pool


def profile_stats(hub: Hotsession, options: SessionOptions) -> dict[str, Any]:
    key = options.profile_key()
    return next(p for p in pool_of(hub).stats()["profiles"] if p["profile"] == key)


async def test_claim_adopts_spare_id_and_replaces_it(hub: Hotsession, workdir: Path) -> None:
    pool = pool_of(hub)
    o = opts(workdir)
    pool.prewarm(o, 2)
    await wait_until(lambda: profile_stats(hub, o)["ready"] == 2)
    spare_ids = [s.cli_session_id for s in pool.profiles[o.profile_key()].ready]
    session = await hub.open(options=o)
    assert session.open_source == "spare"
    assert session.cli_session_id == spare_ids[0]  # the pre-generated id is adopted
    result = await session.send("hello [[say:hi]]").wait()
    assert result.type == "result" and result.data["cli_session_id"] == spare_ids[0]
    await wait_until(lambda: profile_stats(hub, o)["ready"] == 2)  # replaced at once
    st = profile_stats(hub, o)
    assert (st["hits"], st["misses"], st["hit_rate"]) == (1, 0, 1.0)
    assert st["live_sessions"] == 1
    assert st["tau_s"] is not None and st["tau_s"] > 0


async def test_miss_spawns_directly_and_repeated_demand_orders_spares(
    hub: Hotsession, workdir: Path
) -> None:
    o = opts(workdir, PROFILE="miss")
    session = await hub.open(options=o)
    assert session.open_source == "spawn"  # an empty pool never fails a request
    st = profile_stats(hub, o)
    assert st["misses"] == 1 and st["hits"] == 0
    assert st["lambda_per_s"] > 0
    await session.send("one").wait()
    await asyncio.sleep(0.3)  # several control-loop ticks
    st = profile_stats(hub, o)
    assert st["ready"] + st["spawning"] == 0 and st["target"] == 0  # used once: no spare
    second = await hub.open(options=o)  # demand repeats
    assert second.open_source == "spawn"
    await second.send("two").wait()
    await wait_until(lambda: profile_stats(hub, o)["ready"] >= 1)  # λ > 0 -> S ≥ 1
    third = await hub.open(options=o)
    assert third.open_source == "spare"


async def test_spare_health_checks(tmp_path: Path, fake_cli: str, workdir: Path) -> None:
    async with Hotsession(make_config(tmp_path, fake_cli, pool_spare_max_age_s=3600)) as hub:
        pool = pool_of(hub)
        o = opts(workdir)
        pool.prewarm(o, 1)
        await wait_until(lambda: profile_stats(hub, o)["ready"] == 1)
        dead = pool.profiles[o.profile_key()].ready[0]
        dead.process.kill()
        await dead.process.exited.wait()
        session = await hub.open(options=o)  # the dead spare is skipped, never handed out
        assert session.process is not None and session.process.pid != dead.process.pid
        await wait_until(lambda: pool.spares_retired["died"] == 1)

        # a spare that talks while idle is discarded and replaced
        stray = opts(workdir, FAKE_AGENT_STRAY_AFTER_MS="300")
        pool.prewarm(stray, 1)
        await wait_until(lambda: pool.spares_retired["stray_output"] >= 1, timeout=15)


async def test_spare_max_age(tmp_path: Path, fake_cli: str, workdir: Path) -> None:
    async with Hotsession(make_config(tmp_path, fake_cli, pool_spare_max_age_s=0.3)) as hub:
        pool = pool_of(hub)
        o = opts(workdir)
        pool.prewarm(o, 1)
        await wait_until(lambda: pool.spares_retired["max_age"] >= 2, timeout=15)
        # each old one was replaced
        await wait_until(lambda: profile_stats(hub, o)["spawned"] >= 3)


async def test_failing_profile_does_not_spawn_in_a_loop(
    tmp_path: Path, fake_cli: str, workdir: Path
) -> None:
    cfg = make_config(tmp_path, fake_cli, pool_failing_after=3, pool_failing_retry_s=600)
    async with Hotsession(cfg) as hub:
        o = opts(workdir, FAKE_AGENT_EXIT="1")
        with pytest.raises(AgentStartError):  # the direct spawn of the miss fails
            await hub.open(options=o)
        pool_of(hub).prewarm(o, 4)
        await wait_until(lambda: profile_stats(hub, o)["failing"] is not None, timeout=20)
        st = profile_stats(hub, o)
        assert "fail at start-up" in st["failing"]  # the CLI's own words
        with pytest.raises(ProfileFailing) as info:
            await hub.open(options=o)
        assert info.value.code == "profile_failing" and info.value.status == 503
        spawned = hub.supervisor.spawned_total
        for _ in range(3):
            with pytest.raises(ProfileFailing):
                await hub.open(options=o)
        # the control loop runs every 50 ms: give it many passes to (wrongly) respawn
        for _ in range(20):
            await pool_of(hub).tick()
            await asyncio.sleep(0.02)
        assert hub.supervisor.spawned_total == spawned
        assert profile_stats(hub, o)["spawning"] == 0
        # the direct try + the spare tries (+ those already in flight when it was marked)
        assert spawned <= 1 + cfg.pool_failing_after + cfg.max_concurrent_spawns - 1


async def test_recycle_on_max_turns_keeps_context(
    tmp_path: Path, fake_cli: str, workdir: Path
) -> None:
    store = tmp_path / "transcripts"
    store.mkdir()
    async with Hotsession(make_config(tmp_path, fake_cli, agent_max_turns=2)) as hub:
        session = await hub.open(options=opts(workdir, FAKE_AGENT_DIR=str(store)))
        pids, counts = [], []
        for i in range(5):
            result = await session.send(f"turn {i}").wait()
            assert result.type == "result", result.data
            counts.append(result.data["num_turns"])
            assert session.process is not None
            pids.append(session.process.pid)
        assert counts == [1, 2, 3, 4, 5]  # the conversation continues across processes
        assert len(set(pids)) == 3  # recycled after turns 2 and 4
        assert hub.recycles["max_turns"] == 2
        old = [pid for pid in set(pids) if pid != session.process.pid]
        await wait_until(lambda: not any(_alive(pid) for pid in old))


async def test_recycle_on_memory_cap(tmp_path: Path, fake_cli: str, workdir: Path) -> None:
    store = tmp_path / "transcripts"
    store.mkdir()
    async with Hotsession(make_config(tmp_path, fake_cli, agent_memory_cap_mb=40)) as hub:
        session = await hub.open(options=opts(workdir, FAKE_AGENT_DIR=str(store)))
        assert (await session.send("small").wait()).type == "result"
        assert hub.recycles["memory"] == 0
        pid = session.process.pid if session.process else None
        result = await session.send("[[grow:60]] big").wait()
        assert result.data["num_turns"] == 2
        await wait_until(lambda: hub.recycles["memory"] == 1)  # at the turn boundary
        assert session.process is not None and session.process.pid != pid
        assert (await session.send("after").wait()).data["num_turns"] == 3


async def test_spares_never_exceed_their_share_of_the_budget(
    tmp_path: Path, fake_cli: str, workdir: Path
) -> None:
    budget = 400.0  # spares may hold SPARE_SHARE of it: 200 MB, four 40 MB spares at most
    cfg = make_config(tmp_path, fake_cli, memory_budget_mb=budget, max_concurrent_spawns=4)
    async with Hotsession(cfg) as hub:
        pool = pool_of(hub)
        o = opts(workdir, FAKE_AGENT_BALLAST_MB="40")
        pool.prewarm(o, 30)  # asks for far more than fits
        peak = 0.0

        async def observe() -> None:
            nonlocal peak
            while True:
                pids = list(hub.supervisor.children)
                used = sum(m.anon_mb for m in sample_many(pids).values())
                peak = max(peak, used)
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(observe())
        try:
            await wait_until(lambda: profile_stats(hub, o)["ready"] >= 3, timeout=20)
            for _ in range(30):  # many control passes at the limit
                await pool.tick()
                await asyncio.sleep(0.02)
        finally:
            watcher.cancel()
        st = profile_stats(hub, o)
        assert 3 <= st["ready"] <= SPARE_SHARE * budget // 40
        assert peak <= SPARE_SHARE * budget, (peak, pool.stats()["memory"])
        assert pool.stats()["memory"]["spares_mb"] <= SPARE_SHARE * budget


async def test_over_budget_retires_spares_then_evicts_lru(
    tmp_path: Path, fake_cli: str, workdir: Path
) -> None:
    cfg = make_config(tmp_path, fake_cli, memory_budget_mb=150.0)
    async with Hotsession(cfg) as hub:
        pool = pool_of(hub)
        o = opts(workdir)
        old = await hub.open(options=o)
        assert (await old.send("first").wait()).type == "result"
        new = await hub.open(options=o)
        assert (await new.send("second").wait()).type == "result"
        await wait_until(lambda: profile_stats(hub, o)["ready"] >= 1)
        # the newer session grows past the budget: spares go first, then the LRU session
        assert (await new.send("[[grow:160]] grow").wait()).type == "result"
        await wait_until(lambda: old.state == "evicted", timeout=15)
        assert old.process is None and hub.evictions["memory_budget"] >= 1
        assert pool.spares_retired["memory_budget"] >= 1
        # an evicted session resumes on its next turn
        assert (await old.send("back").wait()).type == "result"


async def test_scale_hundreds_sessions_evicted_after_keep_alive(
    tmp_path: Path, fake_cli: str, workdir: Path
) -> None:
    n = 150
    cfg = make_config(
        tmp_path,
        fake_cli,
        keep_alive_s=3600.0,
        pool_max=20,
        max_concurrent_spawns=4,
        pool_rate_window_s=5.0,
    )
    async with Hotsession(cfg) as hub:
        pool = pool_of(hub)
        o = opts(workdir)
        sessions = []
        for _ in range(n):  # a burst of new sessions: the panic window raises the target
            sessions.append(await hub.open(options=o))
        assert len(hub.supervisor.children) >= n
        st = profile_stats(hub, o)
        assert st["hits"] + st["misses"] == n
        assert st["hits"] > 0  # the pool caught up with the burst
        assert 1 < st["target"] <= 20  # the burst raised it, within the profile max
        peak_spawning = 0
        for _ in range(20):
            peak_spawning = max(peak_spawning, pool.spawning)
            await pool.tick()
            await asyncio.sleep(0.01)
        assert peak_spawning <= cfg.max_concurrent_spawns
        results = await asyncio.gather(*(s.send("hi").wait() for s in sessions))
        assert all(r.type == "result" for r in results)
        # keep-alive: every idle live session loses its process, the sessions stay
        hub.config = hub.config.model_copy(update={"keep_alive_s": 0.0})  # live tuning
        await wait_until(lambda: hub.evictions["keep_alive"] == n, timeout=60)
        assert all(s.process is None and s.state == "evicted" for s in sessions)
        assert len(hub.sessions) == n
        # and with no demand the spares decay to the minimum (0)
        await wait_until(lambda: profile_stats(hub, o)["ready"] == 0, timeout=30)
        assert pool.spares_retired["surplus"] > 0


async def test_no_orphans_after_shutdown(tmp_path: Path, fake_cli: str, workdir: Path) -> None:
    hub = await Hotsession(make_config(tmp_path, fake_cli)).start()
    pool = pool_of(hub)
    o = opts(workdir)
    pool.prewarm(o, 5)
    sessions = [await hub.open(options=o) for _ in range(3)]
    await wait_until(lambda: profile_stats(hub, o)["ready"] == 5)
    pids = set(hub.supervisor.children)
    assert len(pids) >= 8 and all(s.process is not None for s in sessions)
    await hub.stop()
    await wait_until(lambda: not any(_alive(pid) for pid in pids))
    assert pool.stats()["profiles"][0]["ready"] == 0


async def test_stats_shape(hub: Hotsession, workdir: Path) -> None:
    o = opts(workdir)
    await hub.open(options=o)
    stats = hub.stats()["pool"]
    assert set(stats) >= {"profiles", "memory", "evictions", "recycles", "spawned_total"}
    assert set(stats["memory"]) >= {"used_mb", "budget_mb", "spares_mb", "sessions_mb"}
    prof = stats["profiles"][0]
    keys = {
        "profile", "tenant", "cwd", "model", "permission_mode", "ready", "spawning",
        "live_sessions", "hits", "misses", "hit_rate", "lambda_per_s", "tau_s", "target",
        "min", "max", "memory_mb", "failing",
    }  # fmt: skip
    assert set(prof) >= keys
    assert prof["cwd"] == str(workdir) and prof["tenant"] == "local"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_fake_agent_is_standalone() -> None:
    # python -S must be enough: the module imports only the standard library
    import hotsession.testing.fake_agent as fa

    with open(fa.__file__, encoding="utf-8") as f:
        source = f.read()
    assert "import hotsession" not in source and "from hotsession" not in source
    assert os.path.basename(fa.__file__) == "fake_agent.py"


async def test_a_miss_spawns_the_session_before_the_replacement(
    tmp_path: Path, fake_cli: str, workdir: Path
) -> None:
    cfg = make_config(tmp_path, fake_cli)
    async with Hotsession(cfg) as hub:
        spawns: list[tuple[str, str, float]] = []  # (role, "start" | "end", when)
        spawn = hub.host.spawn

        async def recorded(*args: Any, **kw: Any) -> Any:
            spawns.append((kw["role"], "start", asyncio.get_running_loop().time()))
            try:
                return await spawn(*args, **kw)
            finally:
                spawns.append((kw["role"], "end", asyncio.get_running_loop().time()))

        hub.host.spawn = recorded  # type: ignore[method-assign]
        o = opts(workdir, PROFILE="repeat", FAKE_AGENT_STARTUP_DELAY_MS="300")
        first = await hub.open(options=o)
        await first.send("one").wait()
        second = await hub.open(options=o)  # demand repeats, no spare yet: a miss
        assert second.open_source == "spawn"
        turn_ended = None
        await second.send("two").wait()
        turn_ended = asyncio.get_running_loop().time()
        await wait_until(lambda: profile_stats(hub, o)["ready"] >= 1)
        roles = [(role, what) for role, what, _ in spawns]
        assert roles[:4] == [
            ("session", "start"),
            ("session", "end"),
            ("session", "start"),
            ("session", "end"),
        ]
        spare_start = next(t for role, what, t in spawns if role == "spare" and what == "start")
        session_end = [t for role, what, t in spawns if role == "session" and what == "end"][-1]
        assert spare_start >= session_end  # the session's own spawn went first
        assert spare_start >= turn_ended - 0.05  # ... and its first turn (not HOLD_S later)


async def test_a_spare_of_a_profile_no_longer_used_is_retired_after_keep_alive(
    tmp_path: Path, fake_cli: str, workdir: Path
) -> None:
    cfg = make_config(tmp_path, fake_cli, keep_alive_s=1.0)
    async with Hotsession(cfg) as hub:
        o = opts(workdir, PROFILE="twice")
        for n in range(2):
            session = await hub.open(options=o)
            await session.send(f"turn {n}").wait()
        await wait_until(lambda: profile_stats(hub, o)["ready"] >= 1)
        pool = pool_of(hub)
        # no more demand: past the keep-alive the spare goes (and the idle sessions' processes)
        await wait_until(lambda: profile_stats(hub, o)["ready"] == 0, timeout=15)
        assert pool.spares_retired["surplus"] >= 1
        await asyncio.sleep(0.5)
        assert profile_stats(hub, o)["ready"] + profile_stats(hub, o)["spawning"] == 0
