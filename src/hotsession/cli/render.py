"""Terminal rendering for the client commands: the timing line, tool calls, a turn's events.

Output goes to two places on purpose: the assistant's text to **stdout** (so
``hotsession ask "…" > answer.txt`` keeps only the answer) and everything around it — tool
calls, the session line, the timing line, warnings — to **stderr** through a rich console.
``TurnPrinter`` tracks whether stdout is mid-line so the two interleave cleanly on a terminal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import click
from rich.console import Console
from rich.text import Text

# Where the turn's process came from (``timing.source``) → how the line names it.
POOL_HIT_SOURCES = frozenset({"spare", "spare-switched", "hot", "warm"})
COLD_SOURCES = frozenset({"spawn", "resume"})

# Keys of the tool input that say most about a call, best first.
_TOOL_SUMMARY_KEYS = (
    "command",
    "file_path",
    "path",
    "pattern",
    "url",
    "query",
    "prompt",
    "description",
)


def _half_up(x: float) -> int:
    # Half-up, written out: Python's round() and format() round half to even, JavaScript's
    # Math.round half up; the dashboard's timing.js uses this same expression.
    return math.floor(x + 0.5)


def format_duration(ms: float) -> str:
    """``850ms``, ``1.2s``, ``2m05s``."""
    if ms < 1000:
        return f"{_half_up(ms)}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{_half_up(seconds * 10) / 10:.1f}s"
    minutes, rest = divmod(_half_up(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def _percent(share: float) -> str:
    if 0 < share < 0.5:
        return "<1%"
    return f"{_half_up(share)}%"


def _number(timing: Mapping[str, Any], key: str) -> float:
    value = timing.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value) if math.isfinite(value) and value > 0 else 0.0


def format_source(source: object) -> str:
    """``pool hit`` for a process that was already running, ``cold start`` for a spawn/resume."""
    if source in POOL_HIT_SOURCES:
        return "pool hit"
    if source in COLD_SOURCES:
        return "cold start"
    return str(source) if source else "unknown source"


# The timing story of a turn, one definition for every renderer: the CLI's line below and the
# dashboard's panel and bar (dashboard/static/timing.js implements the same steps;
# tests/browser/test_timing_story.py checks both tell the same story for the same records).
# Each segment is a share of ``total_ms``; the optional ones (queued behind other turns,
# starting a process: a claim, a spawn or a resume; waiting for someone to answer a permission
# question) are shown only from 1%.
TIMING_SEGMENTS: tuple[tuple[str, str, str, bool], ...] = (
    # (key, label, field of the timing record, optional)
    ("queued", "Queued", "queued_ms", True),
    ("start", "Start", "claim_ms", True),
    ("ttfe", "TTFE", "ttfe_ms", False),
    ("thinking", "Thinking", "thinking_ms", False),
    ("tools", "Tools", "tools_ms", False),
    ("waiting", "Waiting", "waiting_ms", True),  # for a human to answer a permission question
)


def timing_story(timing: Mapping[str, Any]) -> dict[str, Any]:
    """A turn's timing as the segments every renderer shows (JSON-able; see ``TIMING_SEGMENTS``).

    ``{"total_ms", "total", "segments": [{"key", "label", "ms", "percent"}], "source", "text"}``:
    ``segments`` are the shown ones in order, ``text`` is the line without the clock glyph.
    """
    total = _number(timing, "total_ms")
    segments: list[dict[str, Any]] = []
    if total > 0:
        for key, label, field, optional in TIMING_SEGMENTS:
            ms = _number(timing, field)
            share = 100 * ms / total
            if optional and share < 1:
                continue
            segments.append({"key": key, "label": label, "ms": ms, "percent": _percent(share)})
    source = format_source(timing.get("source"))
    parts = [format_duration(total)]
    parts += [f"{s['label']} {s['percent']}" for s in segments]
    parts.append(source)
    return {
        "total_ms": total,
        "total": format_duration(total),
        "segments": segments,
        "source": source,
        "text": " · ".join(parts),
    }


def format_timing(timing: Mapping[str, Any]) -> str:
    """The one-line summary of a turn's timing breakdown (the ``result`` event's ``timing``).

    ``⏱ 1.2s · TTFE 4% · Thinking 90% · Tools 6% · pool hit``: shares of ``total_ms`` (see
    ``timing_story``). Time spent queued behind other turns or starting a process shows up only
    when it is at least 1%.
    """
    return f"⏱ {timing_story(timing)['text']}"


def summarize_tool(name: str, tool_input: object, width: int = 100) -> str:
    """``Bash(ls -la)``: the tool and the most telling field of its input, on one line."""
    detail = ""
    if isinstance(tool_input, Mapping):
        for key in _TOOL_SUMMARY_KEYS:
            value = tool_input.get(key)
            if isinstance(value, str) and value:
                detail = value
                break
        else:
            if tool_input:
                detail = json.dumps(tool_input, ensure_ascii=False, separators=(",", ":"))
    detail = " ".join(detail.split())
    line = f"{name}({detail})"
    if len(line) > width:
        line = line[: width - 2] + "…)"
    return line


# How much of a tool call's input a permission question shows before "v shows all".
PREVIEW_LINES = 12
PREVIEW_WIDTH = 160


def tool_input_lines(name: str, tool_input: object) -> list[str]:
    """What a tool call would do, as lines for a human deciding on it: the command of ``Bash``,
    the path and content of ``Write``, the replaced and new text of ``Edit``, else the input as
    indented JSON."""
    if not isinstance(tool_input, Mapping):
        return [] if tool_input is None else [str(tool_input)]
    lines: list[str] = []
    if name == "Bash" and isinstance(tool_input.get("command"), str):
        lines = [
            f"$ {line}" if i == 0 else f"  {line}"
            for i, line in enumerate(tool_input["command"].splitlines() or [""])
        ]
        if isinstance(tool_input.get("description"), str):
            lines.append(f"# {tool_input['description']}")
    elif name == "Write" and isinstance(tool_input.get("content"), str):
        lines = [f"{tool_input.get('file_path')}:", *tool_input["content"].splitlines()]
    elif name in ("Edit", "MultiEdit"):
        edits = tool_input.get("edits")
        if not isinstance(edits, list):
            edits = [tool_input]
        lines = [f"{tool_input.get('file_path')}:"]
        for edit in edits:
            if isinstance(edit, Mapping):
                lines += [f"- {x}" for x in str(edit.get("old_string", "")).splitlines()]
                lines += [f"+ {x}" for x in str(edit.get("new_string", "")).splitlines()]
    if not lines:
        lines = json.dumps(tool_input, ensure_ascii=False, indent=2).splitlines()
    return lines


def preview(lines: list[str]) -> tuple[list[str], int]:
    """The first ``PREVIEW_LINES`` lines cut to ``PREVIEW_WIDTH``; and how many were left out
    (a cut line counts as one left out: the full view shows it whole)."""
    shown = [ln if len(ln) <= PREVIEW_WIDTH else ln[: PREVIEW_WIDTH - 1] + "…" for ln in lines]
    shown = shown[:PREVIEW_LINES]
    hidden = max(0, len(lines) - PREVIEW_LINES)
    hidden += sum(1 for ln in lines[:PREVIEW_LINES] if len(ln) > PREVIEW_WIDTH)
    return shown, hidden


def _tool_result_text(block: Mapping[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, list):
        texts = [c.get("text", "") for c in content if isinstance(c, Mapping)]
        content = " ".join(t for t in texts if isinstance(t, str))
    return " ".join(str(content or "").split())


class TurnPrinter:
    """Renders one turn's events as they arrive (see the module docstring for where they go)."""

    def __init__(self, err: Console) -> None:
        self.err = err
        self.midline = False  # stdout holds text not yet ended by a newline
        self.wrote_text = False  # the turn printed some assistant text
        self._streamed = False  # text arrived as partial deltas; skip it in the full message
        self.session_source: str | None = None  # how /v1/ask got its session (its first event)

    # -- output primitives -----------------------------------------------------------------

    def text(self, chunk: str) -> None:
        """Assistant text, to stdout, as it comes."""
        if not chunk:
            return
        click.echo(chunk, nl=False)
        self.midline = not chunk.endswith("\n")
        self.wrote_text = True

    def end_line(self) -> None:
        """Finish a partial stdout line before something else is printed."""
        if self.midline:
            click.echo("")
            self.midline = False

    def note(self, message: str | Text, style: str = "dim") -> None:
        """A side line on stderr."""
        self.end_line()
        if isinstance(message, str):
            message = Text(message)
        self.err.print(message, style=style, soft_wrap=True, highlight=False)

    # -- events --------------------------------------------------------------------------------

    def handle(self, kind: str, data: Mapping[str, Any]) -> None:
        """Render one event of the turn's stream."""
        if kind == "message":
            self.message(data)
        elif kind == "queued":
            ahead = data.get("ahead", data.get("position"))
            self.note(f"⧗ queued{f' behind {ahead} turn(s)' if ahead else ''}")
        elif kind == "permission_resolved":
            outcome, by = data.get("outcome"), data.get("by")
            if by not in (None, "client", "user"):
                self.note(f"  permission {data.get('request_id')}: {outcome} (by {by})")
        elif kind == "result":
            self.result(data)
        elif kind == "session":
            self.session_source = str(data.get("source") or "") or None
            self.note(f"session {data.get('id')}")

    def message(self, msg: Mapping[str, Any]) -> None:
        """A Claude Code stream-json message."""
        kind = msg.get("type")
        if kind == "stream_event":
            event = msg.get("event") or {}
            delta = event.get("delta") or {}
            if event.get("type") == "content_block_delta" and delta.get("type") == "text_delta":
                self._streamed = True
                self.text(str(delta.get("text", "")))
            return
        content = (msg.get("message") or {}).get("content")
        if not isinstance(content, list):
            return
        if kind == "assistant":
            for block in content:
                if not isinstance(block, Mapping):
                    continue
                if block.get("type") == "text" and not self._streamed:
                    if self.wrote_text and not self.midline:
                        click.echo("")  # a blank line between separate text blocks
                    self.text(str(block.get("text", "")).rstrip("\n") + "\n")
                elif block.get("type") == "tool_use":
                    name = str(block.get("name", "tool"))
                    self.note(f"  ⚙ {summarize_tool(name, block.get('input'))}", style="cyan")
            self._streamed = False
            self.end_line()
        elif kind == "user":
            for block in content:
                if (
                    isinstance(block, Mapping)
                    and block.get("type") == "tool_result"
                    and block.get("is_error")
                ):
                    self.note(f"  ✗ {_tool_result_text(block)[:200]}", style="red")

    def result(self, data: Mapping[str, Any]) -> None:
        """The end of the turn: the final text if none streamed, then the timing line."""
        final = data.get("result")
        if not self.wrote_text and isinstance(final, str) and final:
            self.text(final.rstrip("\n") + "\n")
        self.end_line()
        if data.get("is_error"):
            self.note(f"the turn ended with {data.get('subtype') or 'an error'}", style="red")
        timing = data.get("timing")
        if isinstance(timing, Mapping):
            if timing.get("source") == "hot" and self.session_source:
                # /v1/ask opens the session before the turn, so the turn finds its process "hot";
                # where that process came from (spare or spawn) is what the user waited on.
                timing = {**timing, "source": self.session_source}
            self.note(format_timing(timing))
