"""Deep warm-up: what a spare does after ``initialize`` so that "ready" means ready.

Design and findings (measured; docs/pool.md has the numbers)
============================================================
A spare that answered ``initialize`` still spends ~90-150 ms of its first turn before the
request reaches the model, against ~30-50 ms for a follow-up on the same process. The CLI's
debug log (``--debug-file``) shows where: the first prompt pays for code that has never run in
that process (prompt intake, attachment collection, the turn engine, the system prompt, tool
schemas, the API client), each phase 2-5x slower than on the second turn. Work that the CLI does
at start-up in the background (settings, plugins, skills, CLAUDE.md lookup, MCP configs) is
already done by the time a spare has idled for a second.

What we can trigger without a model request and without a trace in the conversation:

* ``mcp_status`` — readiness: the spare is not ready while an MCP server is ``pending`` (the
  first turn would wait for it). Cheap (~4 ms), no request, no transcript.
* ``get_context_usage`` with ``detail: "summary"`` — builds the system prompt, the tool schemas
  and the memory-file list locally (the default ``"full"`` calls ``count_tokens`` once per
  category — 27 requests at the model server — so it must never be used here). No request, no
  transcript. It runs some of the first-turn code, but measurements do not show a significant gain
  on the first turn's time-to-model; it is kept because it is free of side effects and proves
  the prompt/tool machinery works before a spare is handed out.
* ``get_settings``, ``set_model`` (same model), ``apply_flag_settings`` ({}),
  ``set_permission_mode`` (same mode): no request, no trace, no measurable gain.

What does not qualify: anything that runs a turn (a prompt, a slash command that queries, a
``side_question``) leaves a model request or a transcript entry. The remaining first-turn cost is
the first run of the turn path itself; it cannot be paid ahead without running a turn.

Each step is bounded by a timeout; a failing step is reported, not fatal (an older CLI may not
know a request). A spare whose warm-up finds MCP servers still pending after the timeout is still
handed out — the first turn then waits as it would without a pool.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from hotsession.agent import AgentProcess
from hotsession.errors import AgentError

# Messages an idle spare may emit without being "stray" (the CLI's own UI bookkeeping).
BENIGN_IDLE = frozenset({("system", "ui_invalidate"), ("keep_alive", None)})

# The control requests of a deep warm-up, in order (see the module docstring for why these).
DEFAULT_STEPS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("get_context_usage", {"detail": "summary"}),
)


@dataclass
class WarmupReport:
    """What a warm-up did: per-step milliseconds, errors, MCP state."""

    steps_ms: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    mcp_pending: list[str] = field(default_factory=list)
    stray: list[dict[str, Any]] = field(default_factory=list)
    total_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "steps_ms": self.steps_ms,
            "errors": self.errors,
            "mcp_pending": self.mcp_pending,
            "stray": len(self.stray),
            "total_ms": self.total_ms,
        }


def _pending_servers(status: dict[str, Any]) -> list[str]:
    servers = status.get("mcpServers") or []
    return [
        str(s.get("name"))
        for s in servers
        if isinstance(s, dict) and str(s.get("status", "")).lower() == "pending"
    ]


async def wait_mcp_ready(
    proc: AgentProcess, *, timeout: float = 30.0, interval: float = 0.1
) -> list[str]:
    """Poll ``mcp_status`` until no MCP server is pending; returns those still pending."""
    deadline = time.monotonic() + timeout
    pending: list[str] = []
    while True:
        status = await proc.request("mcp_status", timeout=max(1.0, timeout))
        pending = _pending_servers(status)
        if not pending or time.monotonic() >= deadline:
            return pending
        await asyncio.sleep(interval)


async def deep_warm(
    proc: AgentProcess,
    *,
    steps: tuple[tuple[str, dict[str, Any]], ...] = DEFAULT_STEPS,
    timeout: float = 30.0,
) -> WarmupReport:
    """Make a freshly initialized process ready for its first turn (no model request)."""
    report = WarmupReport()
    began = time.monotonic()
    t = time.monotonic()
    try:
        report.mcp_pending = await wait_mcp_ready(proc, timeout=timeout)
    except AgentError as exc:
        report.errors["mcp_status"] = exc.message
    report.steps_ms["mcp_status"] = round((time.monotonic() - t) * 1000, 1)
    for subtype, fields in steps:
        t = time.monotonic()
        try:
            await proc.request(subtype, timeout=timeout, **fields)
        except AgentError as exc:
            if not proc.alive:
                raise
            report.errors[subtype] = exc.message
        report.steps_ms[subtype] = round((time.monotonic() - t) * 1000, 1)
    report.stray = drain_benign(proc)
    report.total_ms = round((time.monotonic() - began) * 1000, 1)
    return report


def drain_benign(proc: AgentProcess) -> list[dict[str, Any]]:
    """Take what an idle process wrote; returns the messages that were not benign."""
    return [
        msg for msg in proc.drain_idle() if (msg.get("type"), msg.get("subtype")) not in BENIGN_IDLE
    ]
