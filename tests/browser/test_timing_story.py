"""One timing story: the CLI's line and the dashboard's panel say the same for the same turn.

``hotsession.cli.render.timing_story`` (Python) and ``dashboard/static/timing.js`` (run here in
Chromium) are fed the same records, made-up ones covering the edges and a real turn's.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard_harness import Daemon, login
from playwright.async_api import expect

from hotsession.cli.render import format_timing, timing_story

pytestmark = pytest.mark.browser

STORY_JS = """async (records) => {
  const m = await import("/static/timing.js");
  return records.map((r) => m.timingStory(r));
}"""

FIELDS = ("queued_ms", "claim_ms", "ttfe_ms", "thinking_ms", "tools_ms", "waiting_ms")
SOURCES = ("hot", "warm", "spare", "spare-switched", "spawn", "resume", "", None, "other")


def _records() -> list[dict[str, Any]]:
    fixed: list[dict[str, Any]] = [
        {},
        {"total_ms": 0, "ttfe_ms": 5},
        {"total_ms": 1000, "ttfe_ms": 2},
        # the issue's turn: the CLI said Start 77%, the dashboard left start out of the bar
        {
            "queued_ms": 0.4,
            "claim_ms": 454,
            "ttfe_ms": 59,
            "thinking_ms": 77,
            "tools_ms": 0,
            "total_ms": 590,
            "source": "spawn",
        },
        # exactly half a percent and half a unit: both languages round half up
        {"queued_ms": 5, "claim_ms": 25, "ttfe_ms": 125, "total_ms": 1000, "source": "hot"},
        {"ttfe_ms": 1250, "thinking_ms": 61_000, "total_ms": 62_250, "source": "spare"},
        # a human answering a permission question: waiting, apart from tools
        {"ttfe_ms": 50, "thinking_ms": 150, "tools_ms": 430, "waiting_ms": 1000, "total_ms": 1630},
        {"ttfe_ms": 999.5, "total_ms": 999.5},
        {"ttfe_ms": -3, "thinking_ms": True, "total_ms": 10},  # junk: never a crash
        {"ttfe_ms": 40, "thinking_ms": 125_400, "tools_ms": 3_000_000, "total_ms": 3_125_440},
    ]
    rng = random.Random(20261130)
    for _ in range(300):
        parts = {f: rng.choice([0, rng.uniform(0, 5), rng.uniform(0, 5000)]) for f in FIELDS}
        parts = {k: round(v, rng.choice([0, 2])) for k, v in parts.items()}
        total = sum(parts.values()) + rng.choice([0, 0.3, rng.uniform(0, 50)])
        fixed.append({**parts, "total_ms": round(total, 2), "source": rng.choice(SOURCES)})
    return fixed


async def test_cli_and_dashboard_tell_the_same_timing_story(page: Any, daemon: Daemon) -> None:
    records = _records()
    await page.goto(daemon.url + "/")
    stories = await page.evaluate(STORY_JS, records)
    for record, js in zip(records, stories, strict=True):
        py = json.loads(json.dumps(timing_story(record)))
        assert js == py, record
        assert format_timing(record) == f"⏱ {js['text']}"
    # The optional segments appear only from 1 %, in both.
    issue = timing_story(records[3])
    assert issue["text"] == "590ms · Start 77% · TTFE 10% · Thinking 13% · Tools 0% · cold start"


async def test_a_real_turn_reads_the_same_in_the_cli_and_the_dashboard(
    page: Any, daemon: Daemon, workdir: Path
) -> None:
    auth = daemon.auth
    async with httpx.AsyncClient(base_url=daemon.url, headers=auth, timeout=60) as client:
        # A quick turn opens its session in the turn: a start segment (claim or spawn) is in it.
        body = {"prompt": "[[delay:200]][[say:timed]]", "cwd": str(workdir)}
        async with client.stream("POST", "/v1/ask", json=body) as res:
            assert res.status_code == 200
            text = "".join([chunk async for chunk in res.aiter_text()])
    frames = [f for f in text.split("\n\n") if "event: result" in f or "event: session" in f]
    data = {
        next(ln[7:] for ln in f.splitlines() if ln.startswith("event: ")): json.loads(
            next(ln[6:] for ln in f.splitlines() if ln.startswith("data: "))
        )
        for f in frames
    }
    sid, timing = data["session"]["id"], data["result"]["timing"]
    assert timing["claim_ms"] > 0

    await login(page, daemon)
    await page.goto(f"{daemon.url}/#/sessions/{sid}")
    panel = page.locator("#log .turn .timing")
    await expect(panel).to_have_count(1)
    shown = await panel.locator(".timing-text").text_content()
    assert f"⏱ {shown}" == format_timing(timing)
    # The bar has a segment per part of the story, start included, in the story's order.
    keys = await panel.locator(".bar > span[data-k]").evaluate_all(
        "(els) => els.map((e) => e.dataset.k)"
    )
    assert keys == [s["key"] for s in timing_story(timing)["segments"]]
    row = page.locator(f'#sessions li[data-id="{sid}"] .timing-text')
    await expect(row).to_have_text(timing_story(timing)["text"])
