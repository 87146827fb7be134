"""The dashboard end to end: real Chromium, real daemon, real Claude Code CLI, scripted model."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard_harness import Daemon, login
from playwright.async_api import expect
from tests.conftest import wait_until

pytestmark = pytest.mark.browser


async def new_session(page: Any, cwd: Path, permission_mode: str = "acceptEdits") -> str:
    """Start a session from the "New session" form; returns its id (shown in the detail pane)."""
    await page.click("#new-btn")
    await page.fill("#new-form [name=cwd]", str(cwd))
    await page.select_option("#new-form [name=permission_mode]", permission_mode)
    await page.click("#new-form button[type=submit]")
    await expect(page.locator("#detail")).to_be_visible()
    await expect(page.locator("#d-id")).to_have_text(re.compile(r"^hs_"))
    return str(await page.locator("#d-id").text_content())


async def send(page: Any, prompt: str) -> None:
    await page.fill("#prompt", prompt)
    await page.press("#prompt", "Enter")


async def test_login_keeps_the_token_in_the_tab_only(page: Any, daemon: Daemon) -> None:
    await page.goto(daemon.url + "/")
    await expect(page.locator("#login-view")).to_be_visible()
    await page.fill("#token", "not-the-token")
    await page.press("#token", "Enter")
    await expect(page.locator("#login-error")).to_contain_text("refused")
    await expect(page.locator("#sessions-view")).to_be_hidden()

    await page.fill("#token", daemon.token)
    await page.press("#token", "Enter")
    await expect(page.locator("#sessions-view")).to_be_visible()
    assert daemon.token not in page.url
    stored = await page.evaluate("sessionStorage.getItem('hotsession.token')")
    assert stored == daemon.token
    assert await page.evaluate("localStorage.length") == 0
    assert daemon.token not in await page.evaluate("document.cookie")

    await page.reload()  # the tab keeps its session
    await expect(page.locator("#sessions-view")).to_be_visible()
    await page.click("#logout")
    await expect(page.locator("#login-view")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('hotsession.token')") is None


async def test_prompt_streams_the_answer_and_its_timing(
    page: Any, daemon: Daemon, workdir: Path
) -> None:
    await login(page, daemon)
    sid = await new_session(page, workdir)
    row = page.locator(f'#sessions li[data-id="{sid}"]')
    await expect(row.locator(".cwd")).to_have_attribute("title", str(workdir))

    # A slow first byte: the session shows as working while the turn runs.
    await send(page, "[[delay:1500]][[say:Hello from the scripted model]]")
    await expect(page.locator("#log .msg.user")).to_have_text(
        "[[delay:1500]][[say:Hello from the scripted model]]"
    )
    await expect(page.locator("#d-state")).to_have_text("working")
    await expect(row.locator(".state")).to_have_text("working")
    await expect(page.locator("#interrupt")).to_be_enabled()
    await expect(page.locator("#log .msg.assistant")).to_have_text("Hello from the scripted model")

    timing = page.locator("#log .turn .timing")
    await expect(timing).to_contain_text(
        re.compile(r"\d.*s · TTFE \d+% · Thinking \d+% · Tools \d+%")
    )
    keys = await timing.locator(".bar > span[data-k]").evaluate_all(
        "(els) => els.map((e) => e.dataset.k)"
    )
    assert keys[-3:] == ["ttfe", "thinking", "tools"]
    # The list row shows the state and the last turn's timing, live.
    await expect(row.locator(".state")).to_have_text("idle · hot")
    await expect(row.locator(".timing")).to_contain_text("TTFE")
    await expect(row).to_contain_text("1 turn")
    await expect(page.locator("#interrupt")).to_be_disabled()
    await expect(page.locator("#d-facts")).to_contain_text(re.compile(r"\d+ MB pss"))

    # A turn sent by another client shows up live (SSE), without a reload.
    async with httpx.AsyncClient(base_url=daemon.url, headers=daemon.auth, timeout=60) as client:
        async with client.stream(
            "POST", f"/v1/sessions/{sid}/turns", json={"prompt": "[[say:sent from elsewhere]]"}
        ) as res:
            assert res.status_code == 200
            body = "".join([chunk async for chunk in res.aiter_text()])
    assert "event: result" in body
    await expect(page.locator("#log .msg.assistant").nth(1)).to_have_text("sent from elsewhere")
    # Its prompt comes from the daemon's record of the turn.
    await expect(page.locator('#log .turn[data-turn="2"] .msg.user')).to_have_text(
        "[[say:sent from elsewhere]]"
    )
    await expect(row).to_contain_text("2 turns")
    await expect(page.locator("#log .turn .timing")).to_have_count(2)


async def test_permission_request_approve_and_deny(
    page: Any, daemon: Daemon, workdir: Path
) -> None:
    await login(page, daemon)
    sid = await new_session(page, workdir, permission_mode="default")
    row = page.locator(f'#sessions li[data-id="{sid}"]')

    await send(page, "[[bash:echo approved > ok.txt]][[say:the file is written]]")
    card = page.locator("#log .perm").first
    await expect(card).to_contain_text("Bash")
    # Inside the card of its tool call, which shows the input.
    await expect(page.locator("#log .tool:has(.perm) > pre.input")).to_contain_text(
        "echo approved > ok.txt"
    )
    await expect(page.locator("#d-state")).to_have_text("needs permission")
    await expect(row.locator(".state")).to_have_text("needs permission")
    assert not (workdir / "ok.txt").exists()

    await card.get_by_role("button", name="Approve").click()
    await expect(card.locator(".outcome")).to_have_text("approved")
    await wait_until(lambda: (workdir / "ok.txt").exists(), timeout=30)
    assert (workdir / "ok.txt").read_text() == "approved\n"
    await expect(page.locator("#log .msg.assistant")).to_have_text("the file is written")
    await expect(page.locator("#log .turn .timing")).to_contain_text("1 tool call")
    await expect(row.locator(".state")).to_have_text("idle · hot")

    await send(page, "[[bash:echo no > denied.txt]][[say:carried on after the denial]]")
    card = page.locator("#log .perm").nth(1)
    await card.get_by_role("button", name="Deny").click()
    await expect(card.locator(".outcome")).to_have_text("denied")
    await expect(page.locator("#log .msg.assistant").nth(1)).to_have_text(
        "carried on after the denial"
    )
    assert not (workdir / "denied.txt").exists()


async def test_interrupt_a_turn(page: Any, daemon: Daemon, workdir: Path) -> None:
    await login(page, daemon)
    await new_session(page, workdir)
    await send(page, "[[hang]]")
    await expect(page.locator("#d-state")).to_have_text("working")
    await page.click("#interrupt")
    error = page.locator("#log .msg.error")
    await expect(error).to_contain_text("interrupted")
    await expect(error).to_have_attribute("data-code", "interrupted")
    await expect(page.locator("#d-state")).not_to_have_text("working")
    await expect(page.locator("#interrupt")).to_be_disabled()

    # The session takes the next prompt (keyboard only: "/" focuses the prompt box).
    await page.locator("#log").click()
    await page.keyboard.press("/")
    await page.keyboard.type("[[say:still here]]")
    await page.keyboard.press("Enter")
    await expect(page.locator("#log .msg.assistant")).to_have_text("still here")


async def test_quick_turn_and_pool_figures_change(page: Any, daemon: Daemon, workdir: Path) -> None:
    await login(page, daemon)
    await page.click('#nav a[data-view="pool"]')
    await expect(page.locator("#pool-view")).to_be_visible()
    spawned = page.locator("#p-spawned")
    await expect(spawned).to_have_text(re.compile(r"^\d+$"))
    before = int(str(await spawned.text_content()))

    # Keyboard: "q" opens the quick-turn form.
    await page.keyboard.press("q")
    await expect(page.locator("#ask-dialog")).to_be_visible()
    await page.fill("#ask-prompt", "[[say:a quick answer]]")
    await page.fill("#ask-form [name=cwd]", str(workdir))
    await page.click("#ask-form button[type=submit]")
    await expect(page.locator("#detail")).to_be_visible()
    await expect(page.locator("#log .msg.user")).to_have_text("[[say:a quick answer]]")
    await expect(page.locator("#log .msg.assistant")).to_have_text("a quick answer")

    await page.click('#nav a[data-view="pool"]')
    await expect(spawned).not_to_have_text(str(before))
    assert int(str(await spawned.text_content())) > before
    pool = httpx.get(f"{daemon.url}/v1/pool", headers=daemon.auth).json()
    if pool.get("enabled") is not False:
        # A pool: the row of this cwd's profile counts the session, and the memory chart.
        (profile,) = [p for p in pool["profiles"] if p["cwd"] == str(workdir)]
        row = page.locator(f'#profiles tr[data-profile="{profile["profile"]}"]')
        await expect(row.locator('[data-k="live"]')).to_have_text("1")
        await expect(row.locator('[data-k="hits"]')).to_contain_text(
            re.compile(r"1 hit · 0 miss|0 hit · 1 miss")
        )
        await expect(page.locator("#chart svg path.used")).to_have_count(1)
    else:
        await expect(page.locator("#pool-off")).to_be_visible()


async def test_quick_turn_without_a_cwd_says_what_to_fill_in(
    page: Any, daemon: Daemon, workdir: Path
) -> None:
    """The local tenant's first root is ``/``: an empty cwd is a 422 the form explains, offering
    the last session's directory; sending again runs the turn there."""
    from hotsession.options import PERMISSION_MODES

    auth = daemon.auth
    workdir = workdir.resolve()  # as the daemon reports a session's cwd
    made = httpx.post(f"{daemon.url}/v1/sessions", json={"cwd": str(workdir)}, headers=auth)
    assert made.status_code == 201, made.text
    await login(page, daemon)
    await expect(page.locator(f'#sessions li[data-id="{made.json()["id"]}"]')).to_have_count(1)
    await page.click("#ask-btn")
    await page.fill("#ask-prompt", "[[say:from the offered cwd]]")
    cwd = page.locator("#ask-form [name=cwd]")
    await expect(cwd).to_have_value("")
    await page.click("#ask-form button[type=submit]")
    err = page.locator("#ask-form .err")
    await expect(err).to_contain_text("Fill in the working directory")
    await expect(err).to_contain_text(str(workdir))
    await expect(cwd).to_have_value(str(workdir))
    await expect(cwd).to_have_attribute("aria-invalid", "true")
    await expect(cwd).to_be_focused()
    offered = await page.locator("#cwds option").evaluate_all("(os) => os.map((o) => o.value)")
    assert str(workdir) in offered  # the field's suggestions: the tenant's sessions' directories
    # Every permission mode the API takes is offered (one list: hotsession.options).
    modes = await page.locator("#ask-form [name=permission_mode] option").evaluate_all(
        "(os) => os.map((o) => o.value).filter(Boolean)"
    )
    assert sorted(modes) == sorted(PERMISSION_MODES)
    await page.click("#ask-form button[type=submit]")
    await expect(page.locator("#detail")).to_be_visible()
    await expect(page.locator("#log .msg.assistant")).to_have_text("from the offered cwd")
    await expect(page.locator("#ask-dialog")).to_be_hidden()


async def test_phone_width_list_then_detail(page: Any, daemon: Daemon, workdir: Path) -> None:
    await page.set_viewport_size({"width": 390, "height": 800})
    await login(page, daemon)
    sid = await new_session(page, workdir)
    # On a phone the open session takes the screen; the back link returns to the list.
    await expect(page.locator(".list-pane")).to_be_hidden()
    await page.click("#back")
    await expect(page.locator(".list-pane")).to_be_visible()
    await expect(page.locator("#detail")).to_be_hidden()
    await page.locator(f'#sessions li[data-id="{sid}"] a').click()
    await expect(page.locator("#detail")).to_be_visible()
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390


async def test_a_session_of_another_client_appears_live(
    page: Any, daemon: Daemon, workdir: Path
) -> None:
    urls: list[str] = []
    page.on("request", lambda req: urls.append(req.url))
    await login(page, daemon)
    async with httpx.AsyncClient(base_url=daemon.url, headers=daemon.auth, timeout=60) as client:
        res = await client.post(
            "/v1/sessions", json={"cwd": str(workdir), "permission_mode": "acceptEdits"}
        )
        assert res.status_code == 201, res.text
        sid = res.json()["id"]
        # No reload, no click: the tenant's stream brings it, then its state changes.
        row = page.locator(f'#sessions li[data-id="{sid}"]')
        await expect(row.locator(".state")).to_have_text("idle · hot")
        await expect(row.locator(".cwd")).to_have_attribute("title", str(workdir))
        await expect(row.locator(".mem")).to_have_text(re.compile(r"\d+ MB"))

        async def turn() -> str:
            async with client.stream(
                "POST", f"/v1/sessions/{sid}/turns", json={"prompt": "[[delay:2000]][[say:hi]]"}
            ) as r:
                return "".join([chunk async for chunk in r.aiter_text()])

        running = asyncio.create_task(turn())
        try:
            await expect(row.locator(".state")).to_have_text("working")
            await expect(row.locator(".state")).to_have_text("idle · hot")
            await expect(row).to_contain_text("1 turn")
            await expect(row.locator(".timing")).to_contain_text("TTFE")
        finally:
            assert "event: result" in await running

        assert (await client.delete(f"/v1/sessions/{sid}")).status_code == 200
        await expect(row).to_have_count(0)
    # All of it came from the tenant's stream: no per-session stream or fetch for the list.
    assert any("/v1/stream" in u for u in urls)
    assert not [u for u in urls if "/v1/sessions/" in u], urls


def test_the_startup_log_gives_the_dashboards_url(daemon: Daemon) -> None:
    assert f"dashboard {daemon.url}/ " in daemon.log_tail(100_000)
    assert httpx.get(daemon.url + "/").status_code == 200
