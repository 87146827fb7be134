"""The conversation pane: the model's Markdown rendered safely, and following the newest turn."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard_harness import Daemon, login
from playwright.async_api import expect

pytestmark = pytest.mark.browser

MARKDOWN_JS = """async (texts) => {
  const { renderMarkdown } = await import("/static/markdown.js");
  return texts.map((t) => {
    const div = document.createElement("div");
    div.append(renderMarkdown(t));
    return div.innerHTML;
  });
}"""


async def turn(client: httpx.AsyncClient, sid: str, prompt: str) -> None:
    async with client.stream("POST", f"/v1/sessions/{sid}/turns", json={"prompt": prompt}) as r:
        assert r.status_code == 200
        body = "".join([chunk async for chunk in r.aiter_text()])
    assert "event: result" in body, body[-500:]


async def test_markdown_is_rendered_and_the_models_html_is_not(
    page: Any, daemon: Daemon, workdir: Path
) -> None:
    hostile = '<img src=x onerror="window.__pwned = 1"> and <b>bold?</b>'
    reply = f"The answer is **sixty**, in `code`. {hostile}"
    auth = daemon.auth
    async with httpx.AsyncClient(base_url=daemon.url, headers=auth, timeout=60) as client:
        res = await client.post("/v1/sessions", json={"cwd": str(workdir)})
        sid = res.json()["id"]
        await turn(client, sid, f"[[say:{reply}]]")

    await login(page, daemon)
    await page.goto(f"{daemon.url}/#/sessions/{sid}")
    answer = page.locator("#log .msg.assistant")
    await expect(answer.locator("strong")).to_have_text("sixty")
    await expect(answer.locator("code")).to_have_text("code")
    # The model's HTML shows as the text it is: no element made of it, no script run.
    await expect(answer).to_contain_text(hostile)
    assert await answer.locator("img, b").count() == 0
    assert await page.evaluate("window.__pwned") is None

    # The renderer itself, on what a model may write.
    out = await page.evaluate(
        MARKDOWN_JS,
        [
            "**x**",
            "<script>window.__pwned = 2</script>",
            "[click](javascript:window.__pwned=3)",
            "![tracker](https://example.invalid/p.png)",
            "```python\nprint('<b>')\n```",
            '<a href="https://example.invalid" onclick="x()">raw link</a>',
            "| a | b |\n|---|---|\n| 1 | 2 |",
        ],
    )
    assert out[0].strip() == "<p><strong>x</strong></p>"
    assert "<script" not in out[1] and "&lt;script&gt;" in out[1]
    assert "javascript:" not in out[2]
    assert "<img" not in out[3] and 'href="https://example.invalid/p.png"' in out[3]
    assert re.search(r'<pre><code class="language-python">print\(.*&lt;b&gt;', out[4])
    assert "<a " not in out[5] and "&lt;a href" in out[5]  # shown as text
    assert "<table>" in out[6] and "<td>2</td>" in out[6]
    assert await page.evaluate("window.__pwned") is None


async def _log_position(page: Any) -> dict[str, float]:
    pos: dict[str, float] = await page.evaluate(
        "(() => { const l = document.getElementById('log');"
        " return {top: l.scrollTop, height: l.scrollHeight, client: l.clientHeight}; })()"
    )
    return pos


def _at_bottom(pos: dict[str, float]) -> bool:
    return pos["height"] - pos["top"] - pos["client"] < 4


async def test_the_conversation_follows_its_newest_turn(
    page: Any, daemon: Daemon, workdir: Path
) -> None:
    auth = daemon.auth
    async with httpx.AsyncClient(base_url=daemon.url, headers=auth, timeout=60) as client:
        res = await client.post("/v1/sessions", json={"cwd": str(workdir)})
        sid = res.json()["id"]
        for i in range(6):  # a history several screens long
            await turn(client, sid, f"[[say:turn {i}\n\n{'long line ' * 150}]]")

        await page.set_viewport_size({"width": 1000, "height": 600})
        await login(page, daemon)
        await page.goto(f"{daemon.url}/#/sessions/{sid}")
        await expect(page.locator("#log .turn .timing")).to_have_count(6)
        # Opened at the tail: the newest turn's end is in view.
        await expect(page.locator("#log .turn").last.locator(".timing")).to_be_in_viewport()
        pos = await _log_position(page)
        assert pos["height"] > 2 * pos["client"], pos  # there is something to scroll
        assert _at_bottom(pos), pos

        # Scrolled up by the user: a turn sent elsewhere does not pull the view down.
        await page.locator("#log").hover()
        await page.mouse.wheel(0, -1500)
        # The wheel scrolls smoothly: wait for it (not with wait_for_function, whose eval the
        # page's Content-Security-Policy forbids).
        up = await _log_position(page)
        for _ in range(100):  # until it has moved up and come to rest
            await page.wait_for_timeout(100)
            now = await _log_position(page)
            if now["top"] == up["top"] and not _at_bottom(now):
                break
            up = now
        assert not _at_bottom(up)
        await turn(client, sid, "[[say:from another client]]")
        await expect(page.locator("#log .turn .timing")).to_have_count(7)
        still = await _log_position(page)
        assert still["top"] == up["top"], (up, still)

    # Sending a prompt follows the tail again: the answer stays visible.
    await page.fill("#prompt", "[[delay:300]][[say:the answer to this prompt]]")
    await page.press("#prompt", "Enter")
    answer = page.locator("#log .msg.assistant").last
    await expect(answer).to_have_text("the answer to this prompt")
    await expect(page.locator("#log .turn .timing")).to_have_count(8)
    await expect(page.locator("#log .turn").last.locator(".timing")).to_be_in_viewport()
    assert _at_bottom(await _log_position(page))


def _frame(seq: int, event: str, data: dict[str, Any]) -> str:
    return f"id: {seq}\nevent: {event}\ndata: {json.dumps(data)}\n\n"


def _delta(index: int, text: str) -> dict[str, Any]:
    return {
        "type": "stream_event",
        "event": {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "text_delta", "text": text},
        },
    }


def _block(kind: str, index: int, **extra: Any) -> dict[str, Any]:
    return {"type": "stream_event", "event": {"type": kind, "index": index, **extra}}


def _assistant(*content: dict[str, Any]) -> dict[str, Any]:
    return {"type": "assistant", "message": {"role": "assistant", "content": list(content)}}


async def test_streamed_deltas_are_not_shown_twice(
    page: Any, daemon: Daemon, workdir: Path
) -> None:
    """The streaming contract (docs/api.md, include_partial_messages) as a turn's stream brings
    it: text deltas, then the same text whole in `assistant` messages, around a tool call."""
    auth = daemon.auth
    async with httpx.AsyncClient(base_url=daemon.url, headers=auth, timeout=60) as client:
        sid = (await client.post("/v1/sessions", json={"cwd": str(workdir)})).json()["id"]
    events: list[tuple[str, dict[str, Any]]] = [
        ("message", _block("content_block_start", 0, content_block={"type": "text", "text": ""})),
        ("message", _delta(0, "Let me **che")),
        ("message", _delta(0, "ck** the ")),
        ("message", _delta(0, "files.")),
        ("message", _block("content_block_stop", 0)),
        ("message", _assistant({"type": "text", "text": "Let me **check** the files."})),
        ("message", _block("content_block_start", 1, content_block={"type": "tool_use"})),
        ("message", _block("content_block_stop", 1)),
        (
            "message",
            _assistant(
                {"type": "tool_use", "id": "tu_1", "name": "Bash", "input": {"command": "ls"}}
            ),
        ),
        (
            "message",
            {
                "type": "user",
                "message": {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": "a.py"}],
                },
            },
        ),
        ("message", _delta(0, "There is ")),  # no content_block_start: a delta opens the block
        ("message", _delta(0, "`a.py`.")),
        ("message", _block("content_block_stop", 0)),
        ("message", _assistant({"type": "text", "text": "There is `a.py`."})),
        (
            "result",
            {
                "turn": 2,
                "subtype": "success",
                "is_error": False,
                "result": "There is `a.py`.",
                "timing": {
                    "total_ms": 500,
                    "ttfe_ms": 50,
                    "thinking_ms": 400,
                    "tools_ms": 50,
                    "tool_calls": 1,
                    "source": "hot",
                },
            },
        ),
    ]
    # First a turn cut short after its deltas (interrupted): the text shows from them alone.
    cut: list[tuple[str, dict[str, Any]]] = [
        ("message", _delta(0, "Partial **te")),
        ("message", _delta(0, "xt**")),
        ("error", {"turn": 1, "code": "interrupted", "message": "the turn was interrupted"}),
    ]
    bodies = [
        "".join(_frame(10_000 + i, kind, data) for i, (kind, data) in enumerate(cut)),
        "".join(_frame(20_000 + i, kind, data) for i, (kind, data) in enumerate(events)),
    ]

    async def turn_stream(route: Any) -> None:
        body = bodies.pop(0)
        await route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    await page.route(f"**/v1/sessions/{sid}/turns", turn_stream)
    await login(page, daemon)
    await page.goto(f"{daemon.url}/#/sessions/{sid}")
    await expect(page.locator("#d-id")).to_have_text(sid)
    await page.fill("#prompt", "start")
    await page.press("#prompt", "Enter")
    await expect(page.locator("#log .msg.error")).to_contain_text("interrupted")
    partial = page.locator("#log .turn").last.locator(".msg.assistant")
    await expect(partial).to_have_text("Partial text")
    await expect(partial.locator("strong")).to_have_text("text")

    await page.fill("#prompt", "look around")
    await page.press("#prompt", "Enter")
    await expect(page.locator("#log .turn .timing")).to_have_count(1)
    turn = page.locator("#log .turn").last
    texts = await turn.locator(".msg.assistant, .tool").evaluate_all(
        "(els) => els.map((e) => e.classList.contains('tool') ? 'TOOL' : e.textContent.trim())"
    )
    assert texts == ["Let me check the files.", "TOOL", "There is a.py."]
    await expect(turn.locator(".msg.assistant strong")).to_have_text("check")
    await expect(turn.locator(".msg.assistant code")).to_have_text("a.py")
    await expect(turn.locator(".streaming")).to_have_count(0)


async def test_streamed_text_shows_before_the_turn_ends(
    page: Any, daemon: Daemon, workdir: Path
) -> None:
    """The real thing: a session opened from the form streams (the default), the CLI writes the
    model's 40 deltas 150 ms apart, the page shows the text growing, then once, whole."""
    words = " ".join(f"word{i}" for i in range(40))
    await login(page, daemon)
    await page.click("#new-btn")
    await page.fill("#new-form [name=cwd]", str(workdir))
    await expect(page.locator("#new-form [name=include_partial_messages]")).to_be_checked()
    await page.click("#new-form button[type=submit]")
    await expect(page.locator("#d-id")).to_have_text(re.compile(r"^hs_"))

    await page.fill("#prompt", f"[[stream:40:150]][[say:{words}]]")
    await page.press("#prompt", "Enter")
    live = page.locator("#log .turn").last.locator(".msg.assistant")
    await expect(live).to_contain_text("word1 ")
    # Part of the text is there, and the turn has not ended.
    shown = str(await live.first.text_content()).strip()
    assert await page.locator("#log .turn .timing").count() == 0
    assert 0 < len(shown) < len(words), shown
    await expect(live.first).to_have_class(re.compile(r"\bstreaming\b"))

    await expect(page.locator("#log .turn .timing")).to_have_count(1)
    await expect(live).to_have_count(1)  # the whole message took the streamed text's place
    await expect(live).to_have_text(words)
    await expect(live).not_to_have_class(re.compile(r"\bstreaming\b"))
