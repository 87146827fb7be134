"""Screenshots of the dashboard's main views for docs/screenshots (desktop + phone, light + dark).

    .venv/bin/python tests/browser/make_screenshots.py [OUT_DIR]

Runs the real daemon against the scripted model server (like the browser tests), fills it with a
few sessions (a finished turn with a tool call, a waiting permission request, a quick turn), and
saves palette PNGs (small files) of the login, sessions, session and pool views.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from dashboard_harness import CHROMIUM, CHROMIUM_ARGS, start_daemon
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from hotsession.testing.model_server import ModelServer

ROOT = Path(__file__).resolve().parents[2]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def shrink(path: Path) -> None:
    """Palette PNG: a fraction of the size, no visible loss for flat UI colours."""
    with Image.open(path) as im:
        im.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(
            path, optimize=True
        )


def send(page: Page, prompt: str) -> None:
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")


def new_session(page: Page, cwd: Path, mode: str) -> None:
    page.click("#new-btn")
    page.fill("#new-form [name=cwd]", str(cwd))
    page.select_option("#new-form [name=permission_mode]", mode)
    page.click("#new-form button[type=submit]")
    expect(page.locator("#new-dialog")).to_be_hidden()
    expect(page.locator("#d-facts")).to_contain_text(cwd.name)


def populate(page: Page, base: Path) -> str:
    """Three sessions; returns the hash of the one to show (waiting for a permission answer)."""
    repo = base / "projects" / "webshop"
    docs = base / "projects" / "docs-site"
    for d in (repo, docs):
        d.mkdir(parents=True)
    new_session(page, docs, "acceptEdits")
    send(
        page,
        "[[think:The user wants a summary.]][[say:The site builds with **two warnings**:\n\n"
        "- `img/logo.svg` is missing\n- a broken link in `faq.md`]]",
    )
    expect(page.locator("#log .timing")).to_have_count(1)

    page.click("#ask-btn")
    page.fill("#ask-prompt", "[[say:Tests pass: 214 passed, 3 skipped.]]")
    page.fill("#ask-form [name=cwd]", str(repo))
    page.click("#ask-form button[type=submit]")
    expect(page.locator("#log .timing")).to_have_count(1)

    new_session(page, repo, "default")
    send(
        page,
        "[[bash:git init -q && echo '# webshop' > README.md]][[say:Initialised the repository "
        "and wrote a README. Shall I run the test suite?]]",
    )
    page.locator("#log .perm button.ok").click()
    expect(page.locator("#log .timing")).to_have_count(1)
    send(page, "[[bash:python -m pytest -q]][[say:done]]")
    expect(page.locator("#log .perm button.ok")).to_be_visible()
    return page.evaluate("location.hash")


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, ModelServer() as server:
        base = Path(tmp)
        daemon = start_daemon(base, server.url)
        try:
            with sync_playwright() as pw:
                context = pw.chromium.launch_persistent_context(
                    str(base / "profile"),
                    executable_path=CHROMIUM,
                    args=CHROMIUM_ARGS,
                    headless=True,
                    viewport=DESKTOP,
                    device_scale_factor=1,
                )
                page = context.pages[0]
                page.goto(daemon.url + "/")
                for scheme in ("light", "dark"):
                    page.emulate_media(color_scheme=scheme)
                    page.screenshot(path=out / f"login-{scheme}.png")
                page.fill("#token", daemon.token)
                page.press("#token", "Enter")
                expect(page.locator("#sessions-view")).to_be_visible()
                session_hash = populate(page, base)
                shots = [
                    ("sessions", session_hash, DESKTOP),
                    ("pool", "#/pool", DESKTOP),
                    ("phone-list", "#/", PHONE),
                    ("phone-session", session_hash, PHONE),
                    ("phone-pool", "#/pool", PHONE),
                ]
                for name, where, size in shots:
                    page.set_viewport_size(size)
                    page.evaluate(f"location.hash = {where!r}")
                    page.wait_for_timeout(300)  # let the view settle before the picture
                    page.evaluate("document.getElementById('log').scrollTop = 1e9")
                    for scheme in ("light", "dark"):
                        page.emulate_media(color_scheme=scheme)
                        page.screenshot(path=out / f"{name}-{scheme}.png")
                context.close()
        finally:
            daemon.stop()
    for png in sorted(out.glob("*.png")):
        shrink(png)
        print(f"{png} {png.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
