"""The client commands: ``ask``, ``chat``, ``sessions``, ``pool``, ``warm``, ``close``.

They speak only the daemon's public HTTP API (``cli/api.py``); a turn is driven by
``cli/turns.py`` and shown by ``cli/render.py``. Design points:

* **Errors** are one line on stderr, ``hotsession: <code>: <message>``, exit 1; a daemon that
  cannot be reached (or a connection lost beyond repair) exits 2.
* **Ctrl-C** during a turn sends ``POST …/interrupt``: ``chat`` returns to its prompt, ``ask``
  exits 130. At the ``chat`` prompt, Ctrl-C or Ctrl-D leaves.
* **Permissions.** A ``permission_request`` is asked y/n on the terminal; ``ask`` without a
  terminal on stdin denies it at once rather than leave the turn waiting for the timeout.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hotsession.cli.api import DEFAULT_URL, Api, ClientError, ConnectionProblem, connect
from hotsession.cli.main import main
from hotsession.cli.render import TurnPrinter, format_duration
from hotsession.cli.turns import (
    PermissionAnswer,
    PermissionPrompt,
    TurnRun,
    deny_noninteractive,
    error_line,
)
from hotsession.options import PERMISSION_MODES

_F = TypeVar("_F", bound=Callable[..., Any])

# -- common options ----------------------------------------------------------------------------


def connection_options(f: _F) -> _F:
    """``--url``, ``--token``, ``--state-dir``."""
    f = click.option(
        "--state-dir",
        envvar="HOTSESSION_STATE_DIR",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="The daemon's state directory, where it keeps the local token.  "
        "[default: ~/.local/state/hotsession]",
    )(f)
    f = click.option(
        "--token",
        envvar="HOTSESSION_TOKEN",
        default=None,
        help="API token (env HOTSESSION_TOKEN).  [default: read <state-dir>/token]",
    )(f)
    f = click.option(
        "--url",
        envvar="HOTSESSION_URL",
        default=None,
        help="The daemon's address (env HOTSESSION_URL).  [default: the address in "
        f"<state-dir>/daemon.json, else {DEFAULT_URL}]",
    )(f)
    return f


def session_options(f: _F) -> _F:
    """``--cwd``, ``--model``, ``--permission-mode`` for a new session."""
    f = click.option(
        "--permission-mode",
        type=click.Choice(PERMISSION_MODES),
        default=None,
        help="Claude Code permission mode of a new session.  [default: Claude Code's]",
    )(f)
    f = click.option("--model", default=None, help="Model for a new session.")(f)
    f = click.option(
        "--cwd",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        default=None,
        help="Working directory of a new session.  [default: the current directory; the "
        "filesystem root only when given as --cwd /]",
    )(f)
    return f


def stream_option(f: _F) -> _F:
    """``--stream/--no-stream``: ask for the model's text as it is written."""
    return click.option(
        "--stream/--no-stream",
        default=None,
        help="Print the answer as the model writes it (partial messages).  "
        "[default: on when stdout is a terminal]",
    )(f)


def _new_session_body(
    cwd: Path | None, model: str | None, permission_mode: str | None
) -> dict[str, Any]:
    """A new session's options; its cwd is the caller's directory unless given. The filesystem
    root must be given explicitly (an agent in ``/`` by accident reaches everything)."""
    if cwd is None:
        here = Path.cwd().resolve()
        if here == Path("/"):
            raise click.UsageError(
                "the current directory is /: pass --cwd / to start the agent in the filesystem "
                "root, or --cwd DIR"
            )
        cwd = here
    body: dict[str, Any] = {"cwd": str(cwd.resolve())}
    if model:
        body["model"] = model
    if permission_mode:
        body["permission_mode"] = permission_mode
    return body


def _only_for_new(session_id: str | None, *given: object) -> None:
    if session_id and any(v is not None for v in given):
        raise click.UsageError("--cwd, --model and --permission-mode apply to new sessions only")


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _wants_stream(stream: bool | None) -> bool:
    """``--stream`` as given, else on for a terminal (a pipe gets whole messages)."""
    return _stdout_is_terminal() if stream is None else stream


def _read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    """The prompt from the argument, from stdin (``-``) or from ``--file`` (``-``: stdin)."""
    if prompt is not None and prompt_file is not None:
        raise click.UsageError("give the prompt as an argument or with --file, not both")
    if prompt_file is not None:
        source = "-" if str(prompt_file) == "-" else prompt_file
    elif prompt == "-":
        source = "-"
    elif prompt is not None:
        return prompt
    else:
        raise click.UsageError("no prompt: give PROMPT, - (stdin) or --file PATH")
    if source == "-":
        if sys.stdin.isatty():
            raise click.UsageError("the prompt comes from stdin, but stdin is a terminal")
        text = sys.stdin.read()
    else:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.UsageError(f"cannot read {source}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise click.UsageError(f"cannot read {source}: not UTF-8 text") from None
    if not text.strip():
        raise click.UsageError("the prompt is empty")
    return text


def _stdout() -> Console:
    return Console(highlight=False)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


# -- commands ----------------------------------------------------------------------------------


@main.command()
@click.argument("prompt", required=False)
@click.option(
    "--file",
    "prompt_file",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default=None,
    help="Read the prompt from this file (- for stdin).",
)
@session_options
@click.option("--session", "session_id", default=None, help="Send to this existing session.")
@stream_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw events as NDJSON.")
@connection_options
def ask(
    prompt: str | None,
    prompt_file: Path | None,
    cwd: Path | None,
    model: str | None,
    permission_mode: str | None,
    session_id: str | None,
    stream: bool | None,
    as_json: bool,
    url: str | None,
    token: str | None,
    state_dir: Path | None,
) -> None:
    """One quick turn: streams the answer, then a timing line.

    PROMPT is the text, or - to read it from stdin (or use --file). A new session comes from
    the warm pool, in the current directory unless --cwd says otherwise, and stays open for
    follow-ups (`hotsession chat SESSION`).
    """
    _only_for_new(session_id, cwd, model, permission_mode)
    text = _read_prompt(prompt, prompt_file)
    body: dict[str, Any] = {"prompt": text}
    if not session_id:
        body.update(_new_session_body(cwd, model, permission_mode))
        if _wants_stream(stream):
            body["include_partial_messages"] = True
    err = _stderr()
    with connect(url, token, state_dir) as api:
        if as_json:
            answer: PermissionAnswer | None = None
        elif sys.stdin.isatty():
            answer = PermissionPrompt(input, err)
        else:
            answer = deny_noninteractive
        run = TurnRun(api, None if as_json else TurnPrinter(err), answer, session_id)
        method_path = f"/v1/sessions/{session_id}/turns" if session_id else "/v1/ask"
        try:
            end = run.drive("POST", method_path, body)
        except KeyboardInterrupt:
            run.interrupt()
            if run.printer is not None:
                run.printer.note("⏹ interrupted", style="yellow")
            sys.exit(130)
    if end.event == "error":
        raise ClientError(error_line(end.data))
    if end.data.get("is_error"):
        sys.exit(1)


# Commands ``chat`` answers itself; they never reach the model. Other lines starting with ``/``
# go to Claude Code, which has slash commands of its own.
CHAT_COMMANDS = {
    "/help": "list these commands",
    "/session": "show the session (id, state, cwd, turns)",
    "/exit": "leave (the session stays open on the daemon); also /quit, Ctrl-D",
}


def _chat_command(line: str, api: Api, session_id: str, err: Console) -> bool | None:
    """Run a local command: True to leave, False to go on, None when ``line`` is no command."""
    word = line.strip().split(maxsplit=1)[0] if line.strip() else ""
    if word in ("/exit", "/quit"):
        return True
    if word == "/help":
        for name, what in CHAT_COMMANDS.items():
            err.print(f"  {name:<9} {what}", style="dim", highlight=False, soft_wrap=True)
        err.print(
            "  other lines, /commands of Claude Code included, go to the session",
            style="dim",
            highlight=False,
            soft_wrap=True,
        )
        return False
    if word == "/session":
        info = api.request("GET", f"/v1/sessions/{session_id}")
        err.print(
            f"  {info.get('id')} · {info.get('state')} · {info.get('cwd')} · "
            f"{info.get('turns')} turn(s) · Claude Code session {info.get('cli_session_id')}",
            style="dim",
            highlight=False,
            soft_wrap=True,
        )
        return False
    return None


@main.command()
@click.argument("session_id", metavar="[SESSION]", required=False)
@session_options
@stream_option
@connection_options
def chat(
    session_id: str | None,
    cwd: Path | None,
    model: str | None,
    permission_mode: str | None,
    stream: bool | None,
    url: str | None,
    token: str | None,
    state_dir: Path | None,
) -> None:
    """An interactive conversation on one session (a new one unless SESSION is given).

    Ctrl-C interrupts the running turn; Ctrl-C or Ctrl-D at the prompt leaves (the session
    stays open on the daemon). /help lists the commands chat answers itself.
    """
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    _only_for_new(session_id, cwd, model, permission_mode)
    options: dict[str, Any] = {}
    if not session_id:
        options = _new_session_body(cwd, model, permission_mode)
        if _wants_stream(stream):
            options["include_partial_messages"] = True
    err = _stderr()
    with connect(url, token, state_dir) as api:
        opened: str | None = None  # how a new session got its process, for its first turn
        if session_id:
            info = api.request("GET", f"/v1/sessions/{session_id}")
        else:
            info = api.request("POST", "/v1/sessions", options)
            opened = str(info.get("source") or "") or None
        session_id = str(info.get("id") or session_id)
        cwd_note = f" · {info['cwd']}" if info.get("cwd") else ""
        err.print(
            f"session {session_id}{cwd_note} — Ctrl-C interrupts a turn, Ctrl-D leaves, "
            "/help lists commands",
            style="dim",
            highlight=False,
            soft_wrap=True,
        )
        answer = PermissionPrompt(input, err)
        while True:
            try:
                prompt = input("› ")
            except (EOFError, KeyboardInterrupt):
                click.echo("")
                break
            if not prompt.strip():
                continue
            try:
                local = _chat_command(prompt, api, session_id, err)
            except ConnectionProblem:
                raise
            except ClientError as exc:
                err.print(f"hotsession: {exc.message}", style="red", highlight=False)
                continue
            if local is not None:
                if local:
                    break
                continue
            printer = TurnPrinter(err)
            printer.session_source, opened = opened, None
            run = TurnRun(api, printer, answer, session_id)
            try:
                end = run.drive("POST", f"/v1/sessions/{session_id}/turns", {"prompt": prompt})
            except KeyboardInterrupt:
                run.interrupt()
                printer.note("⏹ interrupted", style="yellow")
                continue
            except ConnectionProblem:
                raise
            except ClientError as exc:
                printer.note(f"hotsession: {exc.message}", style="red")
                continue
            if end.event == "error":
                code = end.data.get("code")
                style = "yellow" if code == "interrupted" else "red"
                printer.note(f"hotsession: {error_line(end.data)}", style=style)
    err.print(
        f"session {session_id} stays open — `hotsession close {session_id}` ends it",
        style="dim",
        highlight=False,
        soft_wrap=True,
    )


def _age(ts: object) -> str:
    if not isinstance(ts, (int, float)):
        return "—"
    seconds = int(max(0.0, time.time() - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _dash(value: object) -> str:
    """The value for a rich cell (markup escaped), or a dash."""
    return "—" if value is None or value == "" else escape(str(value))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@connection_options
def sessions(as_json: bool, url: str | None, token: str | None, state_dir: Path | None) -> None:
    """The sessions the daemon holds for you.

    A table on a terminal; piped, one tab-separated line per session (after a header line),
    never wrapped. --json prints the raw list.
    """
    with connect(url, token, state_dir) as api:
        body = api.request("GET", "/v1/sessions")
    rows = body.get("sessions", []) if isinstance(body, dict) else body
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        _stderr().print("no sessions", style="dim")
        return
    header = ("ID", "State", "Turns", "Model", "Cwd", "PID", "Last turn", "Active")
    cells = [_session_cells(row) for row in rows]
    if not _stdout_is_terminal():
        for line in (header, *cells):
            click.echo("\t".join(line))
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in header:
        table.add_column(
            name,
            justify="right" if name in ("Turns", "PID") else "left",
            no_wrap=name == "ID",
            overflow="fold" if name == "Cwd" else "ellipsis",
        )
    for line in cells:
        table.add_row(*(escape(c) for c in line))
    _stdout().print(table)


def _session_cells(row: dict[str, Any]) -> tuple[str, ...]:
    """One session as plain cells (a dash for what is missing)."""
    timing = row.get("last_timing") or {}
    last = "—"
    if timing:
        took = format_duration(float(timing.get("total_ms", 0)))
        last = f"{took} {_plain(timing.get('source'))}"
    return (
        _plain(row.get("id")),
        _plain(row.get("state")),
        _plain(row.get("turns")),
        _plain(row.get("model")) if row.get("model") else "default",
        _plain(row.get("cwd")),
        _plain(row.get("pid")),
        last,
        _age(row.get("last_active_at") or row.get("updated_at")),
    )


def _plain(value: object) -> str:
    """The value as text, or a dash (tabs and newlines flattened for one-line output)."""
    if value is None or value == "":
        return "—"
    return " ".join(str(value).split())


def _fmt(value: object, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "—"


def _counts(value: object) -> str:
    """``{reason: n}`` as ``3 (keep_alive 2, memory 1)``; a plain number as itself."""
    if isinstance(value, dict):
        counts = {str(k): v for k, v in value.items() if isinstance(v, int) and v}
        total = sum(counts.values())
        if not counts:
            return "0"
        detail = ", ".join(f"{escape(k)} {v}" for k, v in sorted(counts.items()))
        return f"{total} ({detail})"
    return _dash(value)


def _mb(value: object) -> str:
    return f"{value:,.0f} MB" if isinstance(value, (int, float)) else "—"


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@connection_options
def pool(as_json: bool, url: str | None, token: str | None, state_dir: Path | None) -> None:
    """The warm pool: spares per profile, hit rates, memory."""
    with connect(url, token, state_dir) as api:
        stats = api.request("GET", "/v1/pool")
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    out = _stdout()
    if not isinstance(stats, dict) or stats.get("enabled") is False:
        out.print("the pool is disabled")
        return
    # Eight narrow columns so the table fits 80 columns; the profile cell takes two lines.
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("Profile", overflow="fold")
    for name in ("Ready", "Target", "Live", "Hit rate", "λ/s", "τ s", "Mem MB"):
        table.add_column(name, justify="right", no_wrap=True)
    for p in stats.get("profiles", []):
        profile = (
            f"{_dash(p.get('cwd'))}\n[dim]{_dash(p.get('tenant'))} · "
            f"{_dash(p.get('model') or 'default')} · "
            f"{_dash(p.get('permission_mode') or 'default')}[/]"
        )
        if p.get("client") or p.get("flags"):
            # Drop-in clients' profiles differ by their flags and initialize fields: say whose
            # and which, one a line (the short key tells apart what words cannot, e.g. two
            # values of one initialize field).
            key = str(p.get("profile"))[:8]
            lines = [f"{p['client']} · {key}" if p.get("client") else f"profile {key}"]
            lines += [str(f) for f in p.get("flags") or []]
            profile += "".join(f"\n[dim]{escape(line)}[/]" for line in lines)
        ready = _dash(p.get("ready"))
        if p.get("spawning"):
            ready += f" +{p['spawning']}"
        if p.get("failing"):
            ready = f"[red]failing[/] {ready}"
        hit_rate = p.get("hit_rate")
        hits = f"{_dash(p.get('hits'))}/{_dash(p.get('misses'))}"
        table.add_row(
            profile,
            ready,
            f"{_dash(p.get('target'))} [{_dash(p.get('min'))}–{_dash(p.get('max'))}]",
            _dash(p.get("live_sessions")),
            f"{hit_rate:.0%} {hits}" if isinstance(hit_rate, (int, float)) else hits,
            _fmt(p.get("lambda_per_s"), ".2f"),
            _fmt(p.get("tau_s"), ".0f"),
            _fmt(p.get("memory_mb"), ",.0f"),
        )
    if stats.get("profiles"):
        out.print(table)
    else:
        out.print("no profiles yet", style="dim")
    memory = stats.get("memory") or {}
    budget = memory.get("budget_mb")
    out.print(
        f"memory {_mb(memory.get('used_mb'))} of "
        f"{_mb(budget) + ' budget' if budget else 'no budget'} · "
        f"spares {_mb(memory.get('spares_mb'))} · sessions {_mb(memory.get('sessions_mb'))} · "
        f"evictions {_counts(stats.get('evictions'))} · "
        f"recycles {_counts(stats.get('recycles'))} · "
        f"spawned {_dash(stats.get('spawned_total'))}",
        soft_wrap=True,
    )


@main.command()
@click.argument("session_id", metavar="SESSION")
@connection_options
def warm(session_id: str, url: str | None, token: str | None, state_dir: Path | None) -> None:
    """Resume SESSION's process ahead of its next turn."""
    with connect(url, token, state_dir) as api:
        body = api.request("POST", f"/v1/sessions/{session_id}/warm")
        if isinstance(body, dict) and body.get("warming"):
            click.echo(f"warming {session_id}")
            return
        info = api.request("GET", f"/v1/sessions/{session_id}")
    state = info.get("state") if isinstance(info, dict) else None
    why = "its process is running" if info.get("pid") else "a turn or a warm-up is under way"
    click.echo(f"{session_id} needs no warming: {why} ({state or 'unknown state'})")


@main.command()
@click.argument("session_id", metavar="SESSION")
@connection_options
def close(session_id: str, url: str | None, token: str | None, state_dir: Path | None) -> None:
    """Close SESSION and end its process."""
    with connect(url, token, state_dir) as api:
        api.request("DELETE", f"/v1/sessions/{session_id}")
    click.echo(f"closed {session_id}")
