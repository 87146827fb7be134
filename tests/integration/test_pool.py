"""The warm pool with the real CLI and the scripted model server."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import uuid
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
from hotsession.testing.model_server import ModelServer


def pool_config(tmp_path: Path, **kw: Any) -> Config:
    base: dict[str, Any] = {
        "state_dir": tmp_path / "state",
        "pool_enabled": True,  # the conftest's `config` fixture turns it off
        "allow_root_bypass": True,
        "watchdog_s": 60,
        "spawn_timeout_s": 60,
        "pool_tick_s": 0.1,
        "agent_recycle_jitter": 0.0,
    }
    base.update(kw)
    return Config(**base)


def pool_of(hub: Hotsession) -> Pool:
    assert isinstance(hub.pool, Pool)
    return hub.pool


def ready(hub: Hotsession, options: SessionOptions) -> int:
    prof = pool_of(hub).profiles.get(options.profile_key())
    return len(prof.ready) if prof else 0


def mark() -> str:
    return uuid.uuid4().hex[:10]


async def test_claimed_spare_leaves_no_warmup_trace(
    tmp_path: Path, agent_env: dict[str, str], workdir: Path, model_server: ModelServer
) -> None:
    async with Hotsession(pool_config(tmp_path)) as hub:
        options = SessionOptions.create(str(workdir), permission_mode="bypassPermissions")
        before = len(model_server.log())
        pool_of(hub).prewarm(options, 1)
        await wait_until(lambda: ready(hub, options) == 1, timeout=60)
        spare = pool_of(hub).profiles[options.profile_key()].ready[0]
        assert spare.warmup["steps_ms"], spare.warmup  # the deep warm-up ran
        assert model_server.log()[before:] == []  # ... without a model request
        session = await hub.open(options=options)
        assert session.open_source == "spare"
        m = mark()
        result = await session.send(f"first prompt [[marker:{m}]] [[say:hello]]").wait()
        assert result.type == "result" and result.data["result"] == "hello"
        assert result.data["timing"]["source"] in ("spare", "hot")  # the claimed process
        # the only model requests since the spare was ordered are the user's
        requests = model_server.log()[before:]
        assert requests and all(m in r["markers"] for r in requests), requests
        # the transcript starts with the user's first prompt: no warm-up entry before it
        config_dir = agent_env["CLAUDE_CONFIG_DIR"]
        files = glob.glob(f"{config_dir}/projects/*/{session.cli_session_id}.jsonl")
        assert len(files) == 1, files
        records = [json.loads(line) for line in Path(files[0]).read_text().splitlines()]
        conversation = [r for r in records if r.get("type") in ("user", "assistant")]
        assert conversation[0]["type"] == "user"
        assert m in json.dumps(conversation[0]["message"]["content"])


async def test_memory_cap_recycles_and_keeps_context(
    tmp_path: Path, agent_env: dict[str, str], workdir: Path, model_server: ModelServer
) -> None:
    cfg = pool_config(tmp_path, agent_memory_cap_mb=1.0, pool_max=0)  # every process is over
    async with Hotsession(cfg) as hub:
        session = await hub.open(workdir, permission_mode="bypassPermissions")
        marks = [mark() for _ in range(3)]
        pids = []
        for i, m in enumerate(marks):
            assert session.process is not None
            pids.append(session.process.pid)
            result = await session.send(f"turn {i} [[marker:{m}]]").wait()
            assert result.type == "result", result.data
            await wait_until(lambda i=i: hub.recycles["memory"] == i + 1, timeout=60)
        counts = [
            next(r for r in model_server.log() if m in r["markers"] and r["main"])["n_messages"]
            for m in marks
        ]
        assert counts[0] < counts[1] < counts[2], counts  # the conversation kept its context
        assert len(set(pids)) == 3  # each turn ran on a fresh (resumed) process
        await wait_until(lambda: not psutil.pid_exists(pids[0]) or _zombie(pids[0]))


async def test_spares_stay_in_budget_and_no_orphans(
    tmp_path: Path, agent_env: dict[str, str], workdir: Path
) -> None:
    budget = 450.0
    hub = await Hotsession(pool_config(tmp_path, memory_budget_mb=budget)).start()
    try:
        pool = pool_of(hub)
        options = SessionOptions.create(str(workdir))
        pool.prewarm(options, 10)  # far more than fits
        await wait_until(lambda: ready(hub, options) >= 1, timeout=60)
        peaks = []
        for _ in range(40):  # many control passes while it would like more spares
            await pool.tick()
            used = sum(m.anon_mb for m in sample_many(list(hub.supervisor.children)).values())
            peaks.append(used)
            await asyncio.sleep(0.05)
        assert max(peaks) <= budget, (peaks, pool.stats()["memory"])
        assert ready(hub, options) < 10
        pids = set(hub.supervisor.children)
        assert pids
    finally:
        await hub.stop()
    await wait_until(lambda: not any(psutil.pid_exists(p) and not _zombie(p) for p in pids))


async def test_failing_profile_reports_and_does_not_loop(
    tmp_path: Path, agent_env: dict[str, str], workdir: Path
) -> None:
    script = tmp_path / "broken-claude"
    script.write_text("#!/bin/sh\necho 'broken: cannot start' >&2\nexit 1\n")
    os.chmod(script, 0o755)
    cfg = pool_config(tmp_path, cli_path=str(script), pool_failing_retry_s=600)
    async with Hotsession(cfg) as hub:
        options = SessionOptions.create(str(workdir))
        with pytest.raises(AgentStartError):
            await hub.open(options=options)
        pool_of(hub).prewarm(options, 3)
        await wait_until(
            lambda: pool_of(hub).profiles[options.profile_key()].failing is not None,
            timeout=30,
        )
        stats = pool_of(hub).stats()["profiles"][0]
        assert "broken: cannot start" in stats["failing"]
        with pytest.raises(ProfileFailing):
            await hub.open(options=options)
        spawned = hub.supervisor.spawned_total
        for _ in range(10):
            await pool_of(hub).tick()
        assert hub.supervisor.spawned_total == spawned
        assert spawned <= 1 + cfg.pool_failing_after + cfg.max_concurrent_spawns - 1


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
