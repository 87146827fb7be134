"""``GET /v1/pool`` counts what the metrics count and lists every live profile (#12, item 16)."""

from __future__ import annotations

import re

from tests.api.conftest import Running, new_session, poll, stream_post


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, name
    return float(m.group(1))


async def test_pool_spawns_match_the_metric_and_resumed_profiles_are_listed(start_daemon):
    first_run: Running = await start_daemon(pool_enabled=True, pool_max=2)
    state_dir = first_run.settings.config.state_dir
    c = first_run.alice
    opened = await new_session(c, permission_mode="acceptEdits")
    url = f"/v1/sessions/{opened['id']}/turns"
    assert (await stream_post(c, url, {"prompt": "[[say:one]]"}))[-1].data["result"] == "one"
    first_run.daemon.request_shutdown()
    await first_run.task

    # After a restart the session resumes at its next turn: the new daemon's pool never served
    # its profile, yet its process is live and uses memory.
    d: Running = await start_daemon(pool_enabled=True, pool_max=2, state_dir=str(state_dir))
    c = d.alice
    assert (await stream_post(c, url, {"prompt": "[[say:two]]"}))[-1].data["result"] == "two"
    await new_session(c, permission_mode="plan")  # a pooled profile beside it (demand repeats)
    other = await new_session(c, permission_mode="plan")

    async def settled() -> bool:  # the spare the new session asked for is up
        pool = (await c.get("/v1/pool")).json()
        return all(p["spawning"] == 0 for p in pool["profiles"]) and any(
            p["ready"] for p in pool["profiles"]
        )

    await poll(settled, timeout=60)
    pool = (await c.get("/v1/pool")).json()
    metrics = (await c.get("/metrics")).text
    # "Processes spawned": every agent process (a session's own spawn and a resume too).
    assert pool["spawned_total"] == _metric(metrics, "hotsession_spawns_total")
    assert pool["spawned_total"] >= 3  # the resume, the new session, its spare
    assert pool["spares_spawned_total"] >= 1

    rows = {p["profile"]: p for p in pool["profiles"]}
    row = rows[opened["profile"]]
    assert row["live_sessions"] == 1 and row["ready"] == 0 and row["pooled"] is False
    assert row["permission_mode"] == "acceptEdits" and row["cwd"] == opened["cwd"]
    assert row["memory_mb"] > 0
    assert rows[other["profile"]]["pooled"] is True
    # Not another tenant's business.
    assert (await d.bob.get("/v1/pool")).json()["profiles"] == []
