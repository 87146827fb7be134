"""The web dashboard: static assets shipped inside the package, served by the daemon.

No build step: ``static/index.html`` (served at ``/``), ES modules (``app.js``; ``timing.js``, the
timing story shared in meaning with ``hotsession.cli.render``; ``markdown.js`` over the vendored
marked and DOMPurify in ``static/vendor/``) and ``app.css``, served under ``/static/``. The page
talks to the public HTTP API with the bearer token the user types in (kept in ``sessionStorage``,
never in a URL) and reads live data from the SSE streams through ``fetch()`` (``EventSource``
cannot send an ``Authorization`` header).
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
"""Directory of the dashboard's assets (``index.html``, ``app.js``, ``app.css``)."""

INDEX_HTML = STATIC_DIR / "index.html"

__all__ = ["INDEX_HTML", "STATIC_DIR"]
