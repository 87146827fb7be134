"""``/docs`` and ``/redoc`` work offline: every script and style comes from the daemon itself."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from dashboard_harness import Daemon
from playwright.async_api import expect

pytestmark = pytest.mark.browser


@pytest.mark.parametrize(
    ("path", "rendered"),
    [
        ("/docs", ".swagger-ui .opblock-summary-path"),
        ("/redoc", "[role='menuitem'] >> text=Open a session"),
    ],
)
async def test_api_viewers_load_nothing_from_another_host(
    page: Any, daemon: Daemon, path: str, rendered: str
) -> None:
    origin = urlsplit(daemon.url).netloc
    local: list[str] = []
    foreign: list[str] = []

    async def seen(route: Any) -> None:  # every request that leaves the page comes here
        url = route.request.url
        if urlsplit(url).netloc == origin:
            local.append(url)
            await route.continue_()
        else:
            foreign.append(url)
            await route.abort()

    await page.route("**/*", seen)
    await page.goto(daemon.url + path)
    # The viewer ran (its script loaded) and drew the document's operations.
    await expect(page.locator(rendered).first).to_be_visible()
    await page.wait_for_timeout(500)  # late requests (images of the sidebar) too
    assert not foreign, foreign
    assert any("/docs-assets/" in u for u in local), local
