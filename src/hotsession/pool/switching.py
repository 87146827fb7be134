"""Switching a spare at claim time: a sibling profile's spare made to serve this profile.

With no ready spare of its own, a claim may take one of a *sibling* profile (equal in everything
but ``model`` and ``permission_mode``, so the same tenant, cwd, tools, prompts, settings, MCP and
env) and switch it with the control requests ``set_permission_mode`` and ``set_model`` (15-60 ms,
against a cold start of 0.3-0.5 s). Only the modes in ``SWITCHABLE_MODES`` take part:
``bypassPermissions`` never (the CLI grants it only at launch, and it is a safety boundary),
``plan`` and ``auto`` not (not verified); an unset mode or model is only ever a source, never a
target (its effective value comes from the settings).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from hotsession.options import SessionOptions
from hotsession.pool.warmup import BENIGN_IDLE

# Permission modes a spare may be switched between at claim time (verified with CLI 2.1.330:
# the next tool call follows the new mode). Never bypassPermissions; plan and auto not verified.
SWITCHABLE_MODES = frozenset({"default", "acceptEdits", "dontAsk"})
# What the CLI writes after a permission-mode switch (besides the idle spare's usual frames).
_SWITCH_OUTPUT = BENIGN_IDLE | {("system", "status")}


class Switchable(Protocol):
    """What a switch needs of a process: an ``AgentProcess``, or a session's ``BetweenTurns``
    view of its live one (the drop-in switches a hot conversation's process that way)."""

    async def request(self, subtype: str, *, timeout: float, **fields: Any) -> dict[str, Any]: ...

    def drain_idle(self) -> list[dict[str, Any]]: ...


def switch_plan(have: SessionOptions, want: SessionOptions) -> dict[str, str] | None:
    """The switches that make a spare of ``have`` serve ``want`` (None: it cannot).

    ``have`` and ``want`` must be equal but for ``model`` and ``permission_mode``. Both modes must
    be unset or in ``SWITCHABLE_MODES``; a mode switch needs both set, a model switch a model to
    switch to (an unset one means "whatever the settings say", which no request can name).
    """
    if have.replace(model=None, permission_mode=None) != want.replace(
        model=None, permission_mode=None
    ):
        return None
    modes = (have.permission_mode, want.permission_mode)
    if any(m is not None and m not in SWITCHABLE_MODES for m in modes):
        return None
    plan: dict[str, str] = {}
    if have.permission_mode != want.permission_mode:
        if have.permission_mode is None or want.permission_mode is None:
            return None
        plan["permission_mode"] = want.permission_mode
    if have.model != want.model:
        if want.model is None:
            return None
        plan["model"] = want.model
    return plan


async def switch(proc: Switchable, plan: dict[str, str], timeout: float) -> list[dict[str, Any]]:
    """Send the switch requests to a claimed spare (or an idle live process); returns what it
    wrote that a switch does not explain (empty: switched).

    Raises ``AgentError`` or ``TimeoutError`` when a request fails or the whole switch takes
    longer than ``timeout``."""
    output: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        mode = plan.get("permission_mode")
        if mode is not None:
            await proc.request("set_permission_mode", timeout=timeout, mode=mode)
        if "model" in plan:
            await proc.request("set_model", timeout=timeout, model=plan["model"])
        output += proc.drain_idle()
        if mode is not None and not any(_is_status(m) for m in output):
            # The CLI writes system/status right after answering set_permission_mode; the
            # answer to a later request comes after it, so the first turn's events do not
            # start with it.
            await proc.request("mcp_status", timeout=timeout)
            output += proc.drain_idle()
    return [m for m in output if (m.get("type"), m.get("subtype")) not in _SWITCH_OUTPUT]


def _is_status(msg: dict[str, Any]) -> bool:
    return msg.get("type") == "system" and msg.get("subtype") == "status"
