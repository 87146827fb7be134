"""Token streaming (``include_partial_messages``): the model's deltas as they are written.

The scripted model streams ``[[stream:N:GAP]]`` as N text deltas GAP ms apart; the real CLI turns
each into a ``stream_event`` line, and the daemon into a ``message`` event.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from tests.api.conftest import ALICE_TOKEN, Event, Running, new_session, read_sse, stream_post


def text_deltas(events: list[Event]) -> list[str]:
    """The text of every ``text_delta`` stream event, in the order received."""
    out = []
    for e in events:
        inner: dict[str, Any] = e.data.get("event") or {}
        if e.type == "message" and e.data.get("type") == "stream_event":
            delta = inner.get("delta") or {}
            if inner.get("type") == "content_block_delta" and delta.get("type") == "text_delta":
                out.append(delta["text"])
    return out


def words(n: int) -> list[str]:
    return [f"w{i} " for i in range(1, n)] + [f"w{n}"]


def assistant_text(events: list[Event]) -> str:
    for e in events:
        if e.type == "message" and e.data.get("type") == "assistant":
            return "".join(
                b.get("text", "") for b in e.data["message"]["content"] if b["type"] == "text"
            )
    raise AssertionError("no assistant message")


async def test_streamed_turn_delivers_every_delta_in_order_before_its_result(start_daemon):
    d: Running = await start_daemon()
    c = d.alice
    sid = (await new_session(c, include_partial_messages=True))["id"]
    events = await stream_post(c, f"/v1/sessions/{sid}/turns", {"prompt": "[[stream:60:5]]"})
    assert text_deltas(events) == words(60)
    assert assistant_text(events) == "".join(words(60))
    kinds = [e.type for e in events]
    assert kinds[-1] == "result"
    last_delta = max(i for i, e in enumerate(events) if e.data.get("type") == "stream_event")
    assert last_delta < kinds.index("result")
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    # /v1/ask takes the option too; a session that did not ask gets no stream events at all
    asked = await stream_post(
        c, "/v1/ask", {"prompt": "[[stream:5]]", "include_partial_messages": True}
    )
    assert text_deltas(asked) == words(5)
    plain = (await new_session(c))["id"]
    events = await stream_post(c, f"/v1/sessions/{plain}/turns", {"prompt": "[[stream:30]]"})
    assert not [e for e in events if e.data.get("type") == "stream_event"]
    assert assistant_text(events) == "".join(words(30))


async def test_reconnect_mid_stream_replays_each_delta_exactly_once(start_daemon):
    d: Running = await start_daemon()
    c = d.alice
    sid = (await new_session(c, include_partial_messages=True))["id"]
    seen: list[Event] = []
    prompt = {"prompt": "[[stream:40:40]]"}  # 40 deltas over ~1.6 s
    async with c.stream("POST", f"/v1/sessions/{sid}/turns", json=prompt) as r:
        while len(text_deltas(seen)) < 10:
            seen += await read_sse(r, limit=1)
    # the connection dropped mid-stream; reconnect where it stopped
    headers = {"Last-Event-ID": str(seen[-1].id)}
    async with c.stream("GET", f"/v1/sessions/{sid}/events", headers=headers) as r:
        while seen[-1].type != "result":
            batch = await read_sse(r, limit=1)
            assert batch, "the stream ended before the result"
            seen += batch
    ids = [e.id for e in seen]
    assert len(ids) == len(set(ids)), "an event came twice"
    assert text_deltas(seen) == words(40), "a delta was lost or reordered"

    async with c.stream("GET", f"/v1/sessions/{sid}/events?follow=false") as r:
        full = await read_sse(r)
    assert [e.id for e in full] == ids  # the replay holds the deltas too (kept in memory)
    after = seen[5].id
    async with c.stream("GET", f"/v1/sessions/{sid}/events?after={after}&follow=false") as r:
        assert [e.id for e in await read_sse(r)] == ids[6:]


async def test_deltas_stay_out_of_the_durable_log(start_daemon):
    d: Running = await start_daemon()
    c = d.alice
    sid = (await new_session(c, include_partial_messages=True))["id"]
    events = await stream_post(c, f"/v1/sessions/{sid}/turns", {"prompt": "[[stream:20]]"})
    assert len(text_deltas(events)) == 20
    hub = d.daemon.hub
    assert hub is not None
    await hub.registry.flush()
    stored = await hub.registry.events_after(sid, 0, limit=10_000)
    types = {(r.type, r.data.get("type")) for r in stored}
    assert ("message", "stream_event") not in types  # transient: not in the durable log
    assert ("message", "assistant") in types and ("result", None) in types
    # what was handed out is covered by a reservation: a restarted daemon continues past it
    assert await hub.registry.last_seq(sid) > max(e.id for e in events if e.id is not None)


async def test_ask_prints_partial_text_before_the_turn_ends(start_daemon, model_server):
    d: Running = await start_daemon()
    prompt = "[[marker:ask-stream]] [[stream:6:400]]"  # six words, 0.4 s apart
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "hotsession"),
        "ask",
        "--url",
        d.url,
        "--token",
        ALICE_TOKEN,
        "--cwd",
        str(d.alice_root),
        "--permission-mode",
        "bypassPermissions",
        "--stream",
        prompt,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    printed = b""
    async with asyncio.timeout(60):
        while b"w1" not in printed:
            chunk = await proc.stdout.read(64)
            assert chunk, f"ask ended before printing any text: {printed!r}"
            printed += chunk
    # the first word is on screen while the model is still writing the rest
    (request,) = [e for e in model_server.log() if "ask-stream" in e["markers"] and e["main"]]
    assert request["t_end_mono"] is None
    assert proc.returncode is None
    rest, err = await asyncio.wait_for(proc.communicate(), 60)
    out = (printed + rest).decode()
    assert proc.returncode == 0, err.decode()
    assert out.count("w1 w2 w3 w4 w5 w6") == 1, out  # streamed once, not repeated at the end
