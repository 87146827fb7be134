"""A turn as the CLI client drives it: its SSE stream to the end, reconnecting if it breaks.

* A turn is an SSE stream that ends after ``result`` or ``error``. If the stream breaks mid-turn
  the client reconnects to ``GET /v1/sessions/{id}/events`` with ``Last-Event-ID`` and carries
  on: the turn never depended on the connection.
* A ``permission_request`` is answered by a :data:`PermissionAnswer` (asked on the terminal, or
  denied at once without one) and posted back.
* Ctrl-C: the caller catches ``KeyboardInterrupt`` and calls :meth:`TurnRun.interrupt`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from hotsession.cli.api import Api, ClientError, ConnectionProblem, SseEvent, StreamLost
from hotsession.cli.render import TurnPrinter, preview, summarize_tool, tool_input_lines

TERMINAL_EVENTS = frozenset({"result", "error"})
# Reconnects in a row that bring no new event before the client gives up on a turn's stream.
MAX_RECONNECTS = 3


PermissionAnswer = Callable[[Mapping[str, Any]], dict[str, Any]]
StreamOpener = Callable[[], contextlib.AbstractContextManager[Iterator[SseEvent]]]


@dataclass
class TurnRun:
    """What a streamed turn needs: where it goes, how it is shown, how permissions are answered."""

    api: Api
    printer: TurnPrinter | None  # None: --json
    answer_permission: PermissionAnswer | None
    session_id: str | None = None

    def drive(self, method: str, path: str, body: Mapping[str, Any]) -> SseEvent:
        """Stream the turn to its end and return its terminal event (``result`` or ``error``)."""
        last_id: str | None = None
        failures = 0

        opener: StreamOpener = functools.partial(self.api.stream, method, path, body)
        while True:
            progressed = False
            try:
                with opener() as events:
                    for event in events:
                        if event.event == "session":
                            self.session_id = str(event.data.get("id") or "") or self.session_id
                        elif event.id is not None:
                            last_id = event.id
                            progressed = True
                        self._show(event)
                        if event.event == "permission_request":
                            self._answer(event.data)
                        if event.event in TERMINAL_EVENTS:
                            return event
            except StreamLost:
                if self.session_id is None or last_id is None:
                    raise
            if self.session_id is None or last_id is None:
                raise ConnectionProblem("the daemon ended the stream before the turn finished")
            failures = 0 if progressed else failures + 1
            if failures >= MAX_RECONNECTS:
                raise ConnectionProblem("the turn's event stream keeps breaking; giving up")
            # Replay what the broken stream missed, then follow live: exactly once.
            opener = functools.partial(
                self.api.stream,
                "GET",
                f"/v1/sessions/{self.session_id}/events",
                headers={"Last-Event-ID": last_id},
            )

    def _show(self, event: SseEvent) -> None:
        if self.printer is None:
            click.echo(event.to_json())
        else:
            self.printer.handle(event.event, event.data)

    def _answer(self, request: Mapping[str, Any]) -> None:
        if self.answer_permission is None or self.session_id is None:
            return
        answer = self.answer_permission(request)  # the daemon counts the wait (timing's waiting_ms)
        path = f"/v1/sessions/{self.session_id}/permissions/{request.get('request_id')}"
        try:
            self.api.request("POST", path, answer)
        except StreamLost:
            raise
        except ClientError as exc:  # answered elsewhere, timed out: the stream will say
            if self.printer is not None:
                self.printer.note(f"hotsession: {exc.message}", style="yellow")

    def interrupt(self) -> None:
        """Ask the daemon to stop the session's running turn (best effort)."""
        if self.session_id is None:
            return
        with contextlib.suppress(ClientError):
            self.api.request("POST", f"/v1/sessions/{self.session_id}/interrupt")


class PermissionPrompt:
    """Asks the user about a tool call on the terminal, showing what the call would do.

    The input is shown below the question, cut to ``PREVIEW_LINES`` lines of at most
    ``PREVIEW_WIDTH`` characters (a ``Write`` of a large file, a long script); answering ``v``
    shows all of it and asks again.
    """

    def __init__(self, read: Callable[[str], str], err: Console) -> None:
        self.read = read
        self.err = err

    def __call__(self, request: Mapping[str, Any]) -> dict[str, Any]:
        name = str(request.get("tool_name", "tool"))
        tool_input = request.get("input")
        question = Text.assemble(
            ("?", "yellow"), " allow ", (summarize_tool(name, tool_input), "bold"), "?"
        )
        self.err.print(question, highlight=False, soft_wrap=True)
        lines = tool_input_lines(name, tool_input)
        shown, hidden = preview(lines)
        self._show(shown)
        choices = "  [y/N/v] " if hidden else "  [y/N] "
        if hidden:
            self.err.print(
                f"    … {hidden} more line(s): v shows all", style="dim", highlight=False
            )
        while True:
            try:
                reply = self.read(choices).strip().lower()
            except EOFError:
                reply = ""
            if reply in ("v", "view") and hidden:
                self._show(lines)
                choices, hidden = "  [y/N] ", 0
                continue
            break
        if reply in ("y", "yes"):
            return {"behavior": "allow"}
        return {"behavior": "deny", "message": "Denied by the user."}

    def _show(self, lines: list[str]) -> None:
        for line in lines:
            self.err.print(Text("    " + line), style="dim", highlight=False, soft_wrap=True)


def deny_noninteractive(request: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "behavior": "deny",
        "message": "hotsession ask has no terminal to ask on; use `hotsession chat` to approve.",
    }


def error_line(data: Mapping[str, Any]) -> str:
    return f"{data.get('code', 'error')}: {data.get('message', 'the turn failed')}"
