"""Switching a sibling profile's spare at claim time (model, permission mode), with the fake agent.

The fake agent reports its model and permission mode in each turn's ``system/init`` (changed by
``set_model`` / ``set_permission_mode`` like the CLI), so a test sees what the claimed process
actually runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.conftest import wait_until
from tests.unit.test_pool_logic import make_config, pool_of, profile_stats

from hotsession import Hotsession
from hotsession.options import SessionOptions
from hotsession.pool import switch_plan
from hotsession.session import Session


def profile(cwd: Path, **kw: Any) -> SessionOptions:
    return SessionOptions.create(str(cwd), **kw)


async def first_turn(session: Session, prompt: str = "hi") -> list[dict[str, Any]]:
    """The CLI messages of one turn (it must end with a result)."""
    events = [e async for e in session.send(prompt)]
    assert events[-1].type == "result", events[-1].data
    return [e.data for e in events if e.type == "message"]


def init_of(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return next(m for m in messages if m.get("subtype") == "init")


def test_switch_plan_rules() -> None:
    base = profile(Path("/w"), model="sonnet", permission_mode="default")
    assert switch_plan(base, base.replace(model="haiku")) == {"model": "haiku"}
    assert switch_plan(base, base.replace(permission_mode="acceptEdits")) == {
        "permission_mode": "acceptEdits"
    }
    both = base.replace(model="haiku", permission_mode="dontAsk")
    assert switch_plan(base, both) == {"permission_mode": "dontAsk", "model": "haiku"}
    unset = profile(Path("/w"))
    assert switch_plan(unset, unset.replace(model="haiku")) == {"model": "haiku"}
    # never to or from bypassPermissions; plan and auto not at all (not even a model switch)
    for mode in ("bypassPermissions", "plan", "auto"):
        other = base.replace(permission_mode=mode)
        assert switch_plan(base, other) is None
        assert switch_plan(other, base) is None
        assert switch_plan(other, other.replace(model="haiku")) is None
    # an unset mode or model is never a target; an unset mode never a source of a mode switch
    assert switch_plan(base, base.replace(model=None)) is None
    assert switch_plan(base, base.replace(permission_mode=None)) is None
    assert switch_plan(base.replace(permission_mode=None), base) is None
    # everything else must be equal
    for change in (
        {"tenant": "bob"},
        {"cwd": "/x"},
        {"env": {"A": "1"}},
        {"allowed_tools": ["Read"]},
        {"system_prompt": "be brief"},
        {"mcp_config": "{}"},
        {"max_turns": 3},
    ):
        assert switch_plan(base, base.replace(**change).replace(model="haiku")) is None, change


async def test_miss_takes_a_sibling_spare_and_switches_it(
    tmp_path: Path, fake_cli: str, workdir: Path
) -> None:
    async with Hotsession(make_config(tmp_path, fake_cli)) as hub:
        pool = pool_of(hub)
        a = profile(workdir, model="sonnet", permission_mode="default")
        b = profile(workdir, model="haiku", permission_mode="acceptEdits")
        pool.prewarm(a, 1)
        await wait_until(lambda: profile_stats(hub, a)["ready"] == 1)
        spare = pool.profiles[a.profile_key()].ready[0]

        session = await hub.open(options=b)
        assert session.open_source == "spare-switched"
        assert session.cli_session_id == spare.cli_session_id  # adopted like any spare
        assert session.options == b  # later spawns (resume, recycle) use the requested profile
        messages = await first_turn(session)
        init = init_of(messages)
        assert (init["model"], init["permissionMode"]) == ("haiku", "acceptEdits")
        # the CLI's answer to the mode switch (system/status) does not leak into the turn
        assert not [m for m in messages if m.get("subtype") == "status"], messages
        st_b, st_a = profile_stats(hub, b), profile_stats(hub, a)
        assert (st_b["hits"], st_b["misses"], st_b["switched"]) == (1, 0, 1)
        assert (st_a["hits"], st_a["misses"], st_a["switched"]) == (0, 0, 0)
        await wait_until(lambda: profile_stats(hub, a)["ready"] == 1)  # the sibling refills

        # a mode-only switch, from the refilled spare
        c = a.replace(permission_mode="dontAsk")
        third = await hub.open(options=c)
        assert third.open_source == "spare-switched"
        init = init_of(await first_turn(third))
        assert (init["model"], init["permissionMode"]) == ("sonnet", "dontAsk")

        # evicted, the session resumes with the requested model and mode
        assert await session.evict()
        init = init_of(await first_turn(session, "again"))
        assert (init["model"], init["permissionMode"]) == ("haiku", "acceptEdits")


async def test_bypass_other_tenant_or_cwd_never_switch(
    tmp_path: Path, fake_cli: str, workdir: Path
) -> None:
    other_cwd = tmp_path / "elsewhere"
    other_cwd.mkdir()
    cfg = make_config(tmp_path, fake_cli, allow_root_bypass=True)
    async with Hotsession(cfg) as hub:
        pool = pool_of(hub)
        bypass = profile(workdir, model="sonnet", permission_mode="bypassPermissions")
        tenant = profile(workdir, model="sonnet", permission_mode="default", tenant="bob")
        cwd = profile(other_cwd, model="sonnet", permission_mode="default")
        siblings = (bypass, tenant, cwd)
        for s in siblings:
            pool.prewarm(s, 1)
        await wait_until(lambda: all(profile_stats(hub, s)["ready"] == 1 for s in siblings))

        want = profile(workdir, model="haiku", permission_mode="default")
        session = await hub.open(options=want)
        assert session.open_source == "spawn"
        to_bypass = await hub.open(options=bypass.replace(model="haiku"))
        assert to_bypass.open_source == "spawn"
        for s in siblings:
            st = profile_stats(hub, s)
            assert (st["ready"], st["hits"]) == (1, 0), st
        assert pool.spares_retired == {}


@pytest.mark.parametrize("how", ["FAKE_AGENT_FAIL_CONTROL", "FAKE_AGENT_IGNORE_CONTROL"])
async def test_failed_switch_discards_the_spare_and_spawns(
    tmp_path: Path, fake_cli: str, workdir: Path, how: str
) -> None:
    async with Hotsession(make_config(tmp_path, fake_cli)) as hub:
        pool = pool_of(hub)
        env = {how: "set_model"}  # an error answer, or none (the switch times out after 1 s)
        a = profile(workdir, model="sonnet", env=env)
        b = profile(workdir, model="haiku", env=env)
        pool.prewarm(a, 1)
        await wait_until(lambda: profile_stats(hub, a)["ready"] == 1)
        spare_pid = pool.profiles[a.profile_key()].ready[0].process.pid

        session = await hub.open(options=b)
        assert session.open_source == "spawn"  # the request did not fail
        assert session.process is not None and session.process.pid != spare_pid
        assert init_of(await first_turn(session))["model"] == "haiku"
        st = profile_stats(hub, b)
        assert (st["hits"], st["misses"], st["switched"]) == (0, 1, 0)
        assert pool.spares_retired["switch_failed"] == 1
        await wait_until(lambda: spare_pid not in hub.supervisor.children)


async def test_switching_can_be_turned_off(tmp_path: Path, fake_cli: str, workdir: Path) -> None:
    cfg = make_config(tmp_path, fake_cli, pool_switch_at_claim=False)
    async with Hotsession(cfg) as hub:
        pool = pool_of(hub)
        a = profile(workdir, model="sonnet")
        pool.prewarm(a, 1)
        await wait_until(lambda: profile_stats(hub, a)["ready"] == 1)
        session = await hub.open(options=a.replace(model="haiku"))
        assert session.open_source == "spawn"
        assert profile_stats(hub, a)["ready"] == 1
