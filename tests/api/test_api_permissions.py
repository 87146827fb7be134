"""Permission forwarding end to end: the real CLI asks, the HTTP client answers."""

from __future__ import annotations

import asyncio
import json
import time
from io import StringIO
from typing import Any

import httpx
from rich.console import Console
from tests.api.conftest import ALICE_TOKEN, Event, Running, new_session, read_sse

from hotsession.cli.api import Api
from hotsession.cli.render import TurnPrinter, timing_story
from hotsession.cli.turns import TurnRun


async def until_permission(r: httpx.Response) -> tuple[list[Event], Event]:
    seen: list[Event] = []
    while True:
        batch = await read_sse(r, limit=1)
        assert batch, f"stream ended without a permission request: {seen}"
        seen.extend(batch)
        if batch[0].type == "permission_request":
            return seen, batch[0]
        assert batch[0].type not in ("result", "error"), seen


def tool_results(events: list[Event]) -> list[dict[str, Any]]:
    out = []
    for e in events:
        if e.type == "message" and e.data.get("type") == "user":
            content = e.data.get("message", {}).get("content")
            if isinstance(content, list):
                out += [b for b in content if b.get("type") == "tool_result"]
    return out


async def test_allow_deny_and_edited_input(start_daemon):
    d: Running = await start_daemon()
    c = d.alice
    sid = (await new_session(c, permission_mode="default"))["id"]
    turns = f"/v1/sessions/{sid}/turns"
    root = d.alice_root

    # allow as asked
    async with c.stream("POST", turns, json={"prompt": "[[bash:echo yes > p1.txt]]"}) as r:
        _, req = await until_permission(r)
        assert req.data["tool_name"] == "Bash"
        assert req.data["input"]["command"] == "echo yes > p1.txt"
        rid = req.data["request_id"]
        state = (await c.get(f"/v1/sessions/{sid}")).json()
        assert state["state"] == "waiting_permission"
        assert [p["request_id"] for p in state["pending_permissions"]] == [rid]
        r2 = await c.post(f"/v1/sessions/{sid}/permissions/{rid}", json={"behavior": "allow"})
        assert r2.status_code == 200, r2.text
        rest = await read_sse(r)
    assert rest[-1].type == "result"
    resolved = [e for e in rest if e.type == "permission_resolved"]
    assert resolved[0].data == {"request_id": rid, "outcome": "allow", "by": "client"}
    assert (root / "p1.txt").read_text().strip() == "yes"
    # a resolved request cannot be answered again; an unknown one is 404
    again = await c.post(f"/v1/sessions/{sid}/permissions/{rid}", json={"behavior": "deny"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    unknown = await c.post(f"/v1/sessions/{sid}/permissions/nope", json={"behavior": "deny"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"

    # deny with a message for the model
    async with c.stream("POST", turns, json={"prompt": "[[bash:echo no > p2.txt]]"}) as r:
        _, req = await until_permission(r)
        rid = req.data["request_id"]
        body = {"behavior": "deny", "message": "not in this repo"}
        assert (await c.post(f"/v1/sessions/{sid}/permissions/{rid}", json=body)).status_code == 200
        rest = await read_sse(r)
    assert rest[-1].type == "result"
    assert not (root / "p2.txt").exists()
    results = tool_results(rest)
    assert results and results[0].get("is_error") is True
    assert "not in this repo" in json.dumps(results[0])

    # allow with an edited input: the edited command is what runs
    async with c.stream("POST", turns, json={"prompt": "[[bash:echo asked > p3.txt]]"}) as r:
        _, req = await until_permission(r)
        rid = req.data["request_id"]
        body = {
            "behavior": "allow",
            "updated_input": {"command": "echo edited > p4.txt", "description": "edited"},
        }
        assert (await c.post(f"/v1/sessions/{sid}/permissions/{rid}", json=body)).status_code == 200
        rest = await read_sse(r)
    assert rest[-1].type == "result"
    assert not (root / "p3.txt").exists()
    assert (root / "p4.txt").read_text().strip() == "edited"


async def test_unanswered_request_is_denied_after_the_timeout(start_daemon):
    d: Running = await start_daemon(permission_timeout_s=0.5)
    c = d.alice
    sid = (await new_session(c, permission_mode="default"))["id"]
    async with c.stream(
        "POST", f"/v1/sessions/{sid}/turns", json={"prompt": "[[bash:echo late > t.txt]]"}
    ) as r:
        _, req = await until_permission(r)
        rest = await read_sse(r)
    assert rest[-1].type == "result"
    resolved = [e for e in rest if e.type == "permission_resolved"]
    assert resolved[0].data["outcome"] == "deny" and resolved[0].data["by"] == "timeout"
    assert "No permission answer" in json.dumps(tool_results(rest))
    assert not (d.alice_root / "t.txt").exists()
    rid = req.data["request_id"]
    late = await c.post(f"/v1/sessions/{sid}/permissions/{rid}", json={"behavior": "allow"})
    assert late.status_code == 409


async def test_interrupt_cancels_a_pending_request(start_daemon, model_server):
    d: Running = await start_daemon()
    c = d.alice
    sid = (await new_session(c, permission_mode="default"))["id"]
    async with c.stream(
        "POST", f"/v1/sessions/{sid}/turns", json={"prompt": "[[bash:echo x > i.txt]]"}
    ) as r:
        _, req = await until_permission(r)
        assert (await c.post(f"/v1/sessions/{sid}/interrupt")).json()["interrupted"] is True
        rest = await read_sse(r)
    assert rest[-1].type == "error" and rest[-1].data["code"] == "interrupted"
    rid = req.data["request_id"]
    assert (await c.get(f"/v1/sessions/{sid}")).json()["pending_permissions"] == []
    late = await c.post(f"/v1/sessions/{sid}/permissions/{rid}", json={"behavior": "allow"})
    assert late.status_code in (404, 409)
    assert not (d.alice_root / "i.txt").exists()
    # the session still works. (The CLI sends the next prompt in the same user message as the
    # rejected tool's result, where the model server does not read directives, so only the
    # outcome is checked here.)
    before = len(model_server.log())
    async with c.stream("POST", f"/v1/sessions/{sid}/turns", json={"prompt": "next"}) as r:
        after = await read_sse(r)
    assert after[-1].type == "result" and after[-1].data["is_error"] is False
    assert len(model_server.log()) > before


async def test_a_humans_wait_for_a_permission_answer_is_waiting_not_tools(start_daemon):
    """The CLI client asks on the terminal; the engine counts question → answer as waiting."""
    d: Running = await start_daemon()
    c = d.alice
    sid = (await new_session(c, permission_mode="default"))["id"]
    err = StringIO()
    printer = TurnPrinter(Console(file=err, width=200))
    delay_s = 1.0

    def slow_human(request: Any) -> dict[str, Any]:
        time.sleep(delay_s)
        return {"behavior": "allow"}

    def run() -> Any:
        api = Api(d.url, ALICE_TOKEN, "")
        try:
            turn = TurnRun(api, printer, slow_human, sid)
            return turn.drive(
                "POST", f"/v1/sessions/{sid}/turns", {"prompt": "[[bash:echo waited > w.txt]]"}
            )
        finally:
            api.close()

    end = await asyncio.to_thread(run)
    assert end.event == "result", end.data
    timing = end.data["timing"]
    assert timing["tool_calls"] == 1
    assert timing["waiting_ms"] >= delay_s * 1000
    assert (d.alice_root / "w.txt").read_text().strip() == "waited"
    assert timing["tools_ms"] < delay_s * 1000  # the echo ran in far less than the human took
    parts = timing["ttfe_ms"] + timing["thinking_ms"] + timing["tools_ms"] + timing["waiting_ms"]
    assert parts <= timing["total_ms"] + 1
    # The session's record keeps the same figures, and the CLI shows the engine's segment.
    view = (await c.get(f"/v1/sessions/{sid}")).json()
    assert view["last_timing"]["waiting_ms"] == timing["waiting_ms"]
    waiting = next(s for s in timing_story(timing)["segments"] if s["key"] == "waiting")
    assert f"Waiting {waiting['percent']}" in err.getvalue()
