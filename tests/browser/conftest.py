"""The browser tier: the dashboard in headless Chromium against a real ``hotsession serve``.

One daemon (and one model server) for the module's tests; a fresh browser profile per test.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from dashboard_harness import CHROMIUM, CHROMIUM_ARGS, Daemon, start_daemon

from hotsession.cli_binary import bundled_cli_path
from hotsession.testing.model_server import ModelServer

try:
    from playwright.async_api import Page, async_playwright, expect

    # Opening a session spawns a CLI (a pool miss); on a loaded 2-core machine that can take
    # longer than Playwright's 5 s default for assertions.
    expect.set_options(timeout=30_000)
except ImportError:  # pragma: no cover - the dev extras bring it
    async_playwright = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser" not in str(item.fspath):
            continue
        item.add_marker(pytest.mark.browser)
        if async_playwright is None:
            item.add_marker(pytest.mark.skip(reason="playwright is not installed (dev extras)"))
        elif not os.access(CHROMIUM, os.X_OK):
            if os.environ.get("CI"):  # `make test` installs it: in CI a skip would hide a gap
                raise pytest.UsageError(f"no Chromium at {CHROMIUM}: run `make browser`")
            item.add_marker(pytest.mark.skip(reason=f"no Chromium at {CHROMIUM} (make browser)"))
        elif bundled_cli_path() is None:
            item.add_marker(pytest.mark.skip(reason="the bundled Claude Code CLI is missing"))


@pytest.fixture(scope="module")
def browser_model_server() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, browser_model_server: ModelServer
) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("daemon"), browser_model_server.url)
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
async def page(tmp_path: Path, daemon: Daemon) -> AsyncIterator[Any]:
    """A page in a fresh Chromium profile; fails the test on any uncaught script error."""
    errors: list[str] = []
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 800},
        )
        try:
            pg: Page = context.pages[0] if context.pages else await context.new_page()
            pg.set_default_timeout(30_000)
            pg.on("pageerror", lambda exc: errors.append(str(exc)))
            # Something the dashboard's Content-Security-Policy refused is a bug of the page
            # (the API viewers' policy refuses ReDoc's logo from another host on purpose).
            pg.on(
                "console",
                lambda msg: (
                    errors.append(msg.text)
                    if msg.type == "error"
                    and "Content Security Policy" in msg.text
                    and urlsplit(pg.url).path == "/"
                    else None
                ),
            )
            yield pg
        finally:
            await context.close()
    assert not errors, f"script errors in the dashboard: {errors}\n{daemon.log_tail()}"
