"""The pool page's figures: processes spawned as the metrics count them, a memory chart that shows
the use (issue 12, item 16)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard_harness import Daemon, login
from playwright.async_api import expect

pytestmark = pytest.mark.browser

_MB = {"MB": 1.0, "GB": 1024.0}


def _mb(text: str) -> float:
    m = re.fullmatch(r"([\d.]+) (MB|GB)", text.strip())
    assert m, text
    return float(m.group(1)) * _MB[m.group(2)]


async def test_spawned_matches_the_metric_and_the_chart_shows_use(
    page: Any, daemon: Daemon, workdir: Path
) -> None:
    auth = daemon.auth
    async with httpx.AsyncClient(base_url=daemon.url, headers=auth, timeout=60) as client:
        res = await client.post("/v1/sessions", json={"cwd": str(workdir)})
        assert res.status_code == 201
        pool = (await client.get("/v1/pool")).json()
        if pool.get("enabled") is False:
            pytest.skip("the daemon runs without a pool")

        await login(page, daemon)
        await page.click('#nav a[data-view="pool"]')
        await expect(page.locator("#chart svg path.used")).to_have_count(1)

        # "Processes spawned" is hotsession_spawns_total (sessions' own spawns included). The
        # pool may be spawning meanwhile: the two agree once it has settled.
        async def spawns() -> int:
            metrics = (await client.get("/metrics")).text
            m = re.search(r"^hotsession_spawns_total (\S+)$", metrics, re.M)
            assert m
            return int(float(m.group(1)))

        for _ in range(60):
            shown = str(await page.locator("#p-spawned").text_content())
            if shown == str(await spawns()):
                break
            await page.wait_for_timeout(500)  # the next pool event (every 2 s)
        else:
            pytest.fail(f"the page shows {shown} processes spawned, the metric {await spawns()}")

    # The chart is scaled to the use: its top is within a small multiple of the peak, not the
    # whole budget (which here is many times the use, and is then named in the legend only).
    # One look at both, so the chart and the samples read are the same.
    used, top_text = await page.evaluate(
        "[Math.max(...JSON.parse(sessionStorage.getItem('hotsession.memory')).map((s) => s.used)),"
        " document.querySelector('#chart .y-top').textContent]"
    )
    budget = pool["memory"]["budget_mb"]
    assert budget > 4 * used, (used, budget)  # the case the issue saw
    top = _mb(top_text)
    assert used <= top <= 2.5 * used, (used, top)
    await expect(page.locator("#chart path.budget")).to_have_count(0)
    await expect(page.locator("#chart .k-budget")).to_contain_text("above the chart")


async def test_drop_in_profiles_are_told_apart(page: Any, daemon: Daemon, workdir: Path) -> None:
    """Two ``hotsession-claude`` runs in one cwd with other flags: two rows that name the client
    and the flag that sets one apart (they read the same before)."""
    shim = str(Path(sys.executable).with_name("hotsession-claude"))
    env = {**os.environ, "HOTSESSION_STATE_DIR": str(daemon.state_dir)}
    for extra in ([], ["--append-system-prompt", "be brief"]):
        proc = await asyncio.create_subprocess_exec(
            shim, "-p", "[[say:hi]]", *extra, cwd=workdir, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode() + daemon.log_tail()
    await login(page, daemon)
    await page.click('#nav a[data-view="pool"]')
    # (the cwd cell is cut to its tail; the only drop-in client of this daemon is this test)
    rows = page.locator("#profiles tr", has_text="hotsession-claude")
    await expect(rows).to_have_count(2)
    flagged = rows.filter(has=page.locator('[data-k="flag"]', has_text="--append-system-prompt"))
    await expect(flagged).to_have_count(1)
