"""The bare relay: the least CPU a Python daemon could spend on a plain follow-up (``bench --cpu``).

Why it exists. ``hotsession bench --cpu`` holds the daemon's CPU per turn against the CLI's (issue
13: a plain follow-up ≤ 3 %). This process is the floor under that figure: what a Python server
on uvloop must spend to take a turn over HTTP and relay the CLI's answer, and nothing more. No
ASGI framework, no registry, no auth, no parsing of the CLI's lines, one process. The bench
measures it in the same run, against the same real CLI, as the ``bare relay (no daemon)`` row;
no daemon can spend less (docs/benchmarks.md).

What it does. Run as ``python -m hotsession.bench.relay [--durable PATH] -- ARGV… [-- ARGV…]``
(each ``--`` starts one CLI's command line; the relay's own cwd and environment are the CLIs'):
spawns the CLIs (stream-json both ways, the bench builds each argv as its bare-CLI mode does,
``--include-partial-messages`` included, each its own ``--session-id``), answers their
``initialize``, listens on 127.0.0.1 and prints ``ready PORT PID[,PID…]``. Each POST (body
``{"prompt": "…"}``, keep-alive; the path's last segment, a number, picks the CLI, else the
first) writes the prompt to that CLI's stdin as a stream-json user message and answers with a
chunked ``text/event-stream``: each stdout line, as soon as it is read, becomes a ``message``
frame (``stream_event`` lines dropped by their prefix, unparsed), all the lines of one read in
one write; the ``result`` line ends the body. Written by hand on ``httptools`` because a
framework's per-request work is exactly what this floor leaves out. SIGTERM (or a CLI's exit)
ends it; the CLIs go with it.

``--durable PATH``: the same relay plus the writes any daemon that keeps issue 13's reliability
rule ("speed never buys a lost event") must make, the ``bare relay + durable log`` row: a
prompt is recorded before its CLI gets it, and a turn's events are recorded by its end. They go
into a SQLite file made as hotsession's registry makes its own (``registry/sqlite.py``: its
schema, migrations and statements, WAL, ``synchronous = NORMAL``, the auto-checkpoint off and a
PASSIVE checkpoint every ``CHECKPOINT_CHANGES`` rows), and they are the rows hotsession writes
for a plain turn: the turn's row (``running``) in its own statement before the prompt is
written to the CLI; at the ``result`` line, after the last frame went out, one transaction with
the turn's events (each relayed line as its row, as hotsession stores the CLI's own line, and
a ``result`` event of the relay's), the turn's row (``done``) and the session's row. Raw
``sqlite3`` on the loop, none of the registry's Python (no thread, backlog or record objects):
a floor. A log that cannot be opened ends the relay at once with one line on stderr.

Run as a process it imports nothing of hotsession's engine but, with ``--durable``, the
registry's schema and statements (the package's names load lazily); the bench starts it with
:func:`start_relay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

_STREAM_EVENT = b'{"type":"stream_event"'
# The CLI writes a result's keys in no fixed order ("type" came 30th here, CLI 2.1.330); JSON
# escapes the quotes of any string, so this can only match a key and its value.
_RESULT = b'"type":"result"'
_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_END = b"0\r\n\r\n"
READY_TIMEOUT_S = 60.0
USAGE = "usage: python -m hotsession.bench.relay [--durable PATH] -- CLI ARGV… [-- CLI ARGV…]"


class DurableLog:
    """The ``--durable`` SQLite file: hotsession's registry schema, settings and rows, written
    with raw ``sqlite3`` (see the module docstring). One connection, used on the loop."""

    def __init__(self, path: str) -> None:
        # The registry's own schema and statements (private names read on purpose: the floor
        # must write what hotsession writes, and drift would make it a floor of something else).
        from hotsession.registry import sqlite as registry

        self._registry = registry
        self.conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
        try:
            conn = self.conn
            conn.execute("PRAGMA busy_timeout = 5000")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"WAL mode refused (journal_mode {mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute("PRAGMA foreign_keys = ON")
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version != registry.SCHEMA_VERSION:
                if version != 0:
                    raise sqlite3.DatabaseError(f"schema version {version} is not the registry's")
                conn.execute("BEGIN IMMEDIATE")
                for script in registry.MIGRATIONS:
                    for stmt in registry._split_statements(script):
                        conn.execute(stmt)
                conn.execute(f"PRAGMA user_version = {registry.SCHEMA_VERSION}")
                conn.execute("COMMIT")
        except BaseException:
            self.conn.close()
            raise
        self.checkpointed = self.conn.total_changes

    def session(self, cwd: str, pid: int) -> SessionLog:
        """A new session's row (as ``POST /v1/sessions`` writes it) and its per-turn writer."""
        return SessionLog(self, str(uuid.uuid4()), cwd, pid)

    def maybe_checkpoint(self) -> None:
        """A PASSIVE checkpoint every ``CHECKPOINT_CHANGES`` rows, as the registry's thread."""
        if self.conn.total_changes - self.checkpointed >= self._registry.CHECKPOINT_CHANGES:
            self.checkpointed = self.conn.total_changes
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def close(self) -> None:
        """Close the connection (committed rows are in the WAL or the file)."""
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()


@dataclass
class SessionLog:
    """One CLI's session in the durable log: its session row, turns and event sequence."""

    log: DurableLog
    id: str
    cwd: str
    pid: int
    turn: int = 0
    seq: int = 0
    created_at: float = 0.0
    queued_at: float = 0.0
    prompt: str = ""
    lines: list[bytes] = field(default_factory=list)
    _session_sql: str = ""
    _turn_sql: str = ""
    _event_sql: str = ""
    _static: tuple[str, str, str] = ("", "", "")

    def __post_init__(self) -> None:
        registry = self.log._registry
        self._session_sql = registry._SESSION_UPSERT
        self._turn_sql = registry._TURN_UPSERT
        self._event_sql = (
            f"INSERT OR REPLACE INTO events ({registry._EVENT_COLS}) VALUES (?, ?, ?, ?, ?, ?)"
        )
        # What never changes in the session's row: encoded once (a floor re-encodes nothing).
        options = json.dumps({"cwd": self.cwd}, separators=(",", ":"))
        self._static = (str(uuid.uuid4()), options, "{}")
        self.created_at = now = time.time()
        self.log.conn.execute(self._session_sql, self._session_row("idle", now, None))

    def _session_row(self, state: str, now: float, timing: str | None) -> tuple[Any, ...]:
        cli_session_id, options, metadata = self._static
        created = self.created_at
        return (
            self.id, "local", cli_session_id, self.cwd, options, "relay", state, created, now,
            now, self.turn, metadata, self.pid, timing, None, None,
        )  # fmt: skip

    def accept(self, prompt: str) -> None:
        """The prompt's record, before its CLI gets it (one statement, committed)."""
        self.turn += 1
        self.prompt = prompt
        self.queued_at = now = time.time()
        self.lines = []
        row = (self.id, self.turn, prompt, "running", now, now, None, None, None, None)
        self.log.conn.execute(self._turn_sql, row)

    def end(self) -> None:
        """The turn's end: its events, its row and the session's, in one transaction."""
        conn = self.log.conn
        now = time.time()
        ms = round((now - self.queued_at) * 1000, 3)
        timing = f'{{"total_ms":{ms}}}'
        rows = []
        seq = self.seq
        for line in self.lines:
            seq += 1
            rows.append((self.id, seq, self.turn, "message", line.decode(), now))
        seq += 1
        result = f'{{"turn":{self.turn},"subtype":"success","is_error":false,"timing":{timing}}}'
        rows.append((self.id, seq, self.turn, "result", result, now))
        self.seq = seq
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(self._event_sql, rows)
            turn = (self.id, self.turn, self.prompt, "done", self.queued_at, self.queued_at,
                    now, timing, None, None)  # fmt: skip
            conn.execute(self._turn_sql, turn)
            conn.execute(self._session_sql, self._session_row("idle", now, timing))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.lines = []
        self.log.maybe_checkpoint()


class _Cli(asyncio.SubprocessProtocol):
    """One CLI's pipes: complete stdout lines go to ``sink`` (the turn's connection)."""

    def __init__(self, exited: asyncio.Future[None]) -> None:
        self.exited = exited
        self.initialized: asyncio.Future[None] = exited.get_loop().create_future()
        self.sink: Callable[[list[bytes]], None] | None = None
        self.stdin: asyncio.WriteTransport | None = None
        self.buf = b""
        self.log: SessionLog | None = None  # ``--durable``: its session in the log

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's: cast, not isinstance.
        stdin = cast(asyncio.SubprocessTransport, transport).get_pipe_transport(0)
        self.stdin = cast(asyncio.WriteTransport, stdin)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd != 1:
            return
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        if not self.initialized.done():
            if any(b'"control_response"' in line for line in lines):
                self.initialized.set_result(None)
            return
        if self.sink is not None:
            self.sink(lines)
        # Lines between turns (none for a plain turn) have nobody to go to: dropped.

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


class _Http(asyncio.Protocol):
    """One client connection: a turn per POST, its answer relayed as it is read."""

    def __init__(self, clis: Sequence[_Cli]) -> None:
        import httptools

        self.clis = clis
        self.cli: _Cli | None = None  # the CLI of the turn this connection runs
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.cli is not None and self.cli.sink == self.lines:
            self.cli.sink = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        import httptools

        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._error(400, "bad_request", "not an HTTP/1.1 request")

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.parser.get_method() != b"POST":
            self._error(405, "method_not_allowed", 'POST a turn: {"prompt": "..."}')
            return
        last = self.url.rsplit(b"/", 1)[-1]
        index = int(last) if last.isdigit() else 0
        if index >= len(self.clis):
            self._error(404, "not_found", f"no CLI {index}: the relay runs {len(self.clis)}")
            return
        cli = self.clis[index]
        try:
            prompt = json.loads(b"".join(self.body))["prompt"]
            if not isinstance(prompt, str):
                raise TypeError(prompt)
        except (ValueError, KeyError, TypeError):
            self._error(400, "bad_request", 'the body must be {"prompt": "..."}')
            return
        if cli.sink is not None or cli.stdin is None:
            self._error(409, "busy", "a turn is running")
            return
        if cli.log is not None:
            try:
                cli.log.accept(prompt)  # recorded before the CLI gets it
            except sqlite3.Error as exc:
                self._error(503, "registry_unavailable", f"cannot record the prompt: {exc}")
                return
        assert self.transport is not None
        self.transport.write(_HEAD)
        self.cli = cli
        cli.sink = self.lines
        message = {
            "type": "user",
            "message": {"role": "user", "content": prompt},
            "parent_tool_use_id": None,
        }
        cli.stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def lines(self, lines: list[bytes]) -> None:
        """One read's complete lines: a frame each (partial messages dropped), one write."""
        cli = self.cli
        assert cli is not None
        log = cli.log
        out = []
        end = False
        for line in lines:
            if line.startswith(_STREAM_EVENT) or not line:
                continue
            if log is not None:
                log.lines.append(line)
            frame = b"event: message\ndata: " + line + b"\n\n"
            out.append(b"%x\r\n%s\r\n" % (len(frame), frame))
            if _RESULT in line:
                end = True
                break
        if end:
            out.append(_END)
            cli.sink = None
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
        if end and log is not None:
            # After the last frame went out, as hotsession records a turn's end; a log that
            # fails here ends the relay (a floor has no retry to offer).
            log.end()

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        reason = {
            400: "Bad Request",
            404: "Not Found",
            405: "Method Not Allowed",
            409: "Conflict",
            503: "Service Unavailable",
        }[status]
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        if self.transport is not None:
            self.transport.write(head + body)
            self.transport.close()


async def serve(argvs: Sequence[Sequence[str]], durable: DurableLog | None = None) -> int:
    """Spawn the CLIs, answer their ``initialize``, relay turns until SIGTERM or a CLI's exit."""
    loop = asyncio.get_running_loop()
    spawned: list[tuple[asyncio.SubprocessTransport, _Cli]] = []
    stop: asyncio.Future[None] = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        for argv in argvs:
            exited: asyncio.Future[None] = loop.create_future()
            transport, cli = await loop.subprocess_exec(
                functools.partial(_Cli, exited),
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
            spawned.append((transport, cli))
            assert cli.stdin is not None
            request = {
                "type": "control_request",
                "request_id": "req_init",
                "request": {"subtype": "initialize", "hooks": None},
            }
            cli.stdin.write(json.dumps(request, separators=(",", ":")).encode() + b"\n")
        clis = [cli for _, cli in spawned]
        any_exit: list[asyncio.Future[Any]] = [cli.exited for cli in clis]
        ready: asyncio.Future[Any] = asyncio.gather(*(cli.initialized for cli in clis))
        await asyncio.wait(
            [ready, *any_exit], timeout=READY_TIMEOUT_S, return_when="FIRST_COMPLETED"
        )
        if not ready.done():
            ready.cancel()
            print("relay: a CLI did not answer initialize", file=sys.stderr)
            return 1
        if durable is not None:
            for transport, cli in spawned:
                cli.log = durable.session(os.getcwd(), transport.get_pid())
        server = await loop.create_server(lambda: _Http(clis), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pids = ",".join(str(transport.get_pid()) for transport, _ in spawned)
        print(f"ready {port} {pids}", flush=True)
        await asyncio.wait([stop, *any_exit], return_when="FIRST_COMPLETED")
        server.close()
        return 0 if stop.done() else 1
    finally:
        for _, cli in spawned:
            if cli.stdin is not None:
                cli.stdin.close()
        for transport, cli in spawned:
            try:
                await asyncio.wait_for(asyncio.shield(cli.exited), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(transport.get_pid(), signal.SIGKILL)
            transport.close()
        if durable is not None:
            durable.close()


def parse_args(args: Sequence[str]) -> tuple[str | None, list[list[str]]]:
    """``[--durable PATH] -- ARGV… [-- ARGV…]`` → (the log's path, the CLIs' argvs).

    Raises ``ValueError`` with the one line to print."""
    durable: str | None = None
    rest = list(args)
    while rest and rest[0] != "--":
        opt = rest.pop(0)
        if opt == "--durable":
            if not rest or rest[0] == "--" or not rest[0]:
                raise ValueError("--durable needs a PATH (the SQLite file of the durable log)")
            durable = rest.pop(0)
        elif opt.startswith("--durable="):
            durable = opt.partition("=")[2]
            if not durable:
                raise ValueError("--durable needs a PATH (the SQLite file of the durable log)")
        else:
            raise ValueError(f"unknown option {opt!r}; {USAGE}")
    argvs: list[list[str]] = []
    for word in rest:
        if word == "--":
            argvs.append([])
        else:
            argvs[-1].append(word)
    if not argvs or not all(argvs):
        raise ValueError(f"no CLI command line; {USAGE}")
    return durable, argvs


def main(args: Sequence[str]) -> int:
    """``python -m hotsession.bench.relay [--durable PATH] -- ARGV… [-- ARGV…]``."""
    import uvloop

    try:
        path, argvs = parse_args(args)
    except ValueError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    durable = None
    if path is not None:
        try:
            durable = DurableLog(path)
        except sqlite3.Error as exc:
            print(f"relay: cannot open the durable log {path}: {exc}", file=sys.stderr)
            return 2
    return uvloop.run(serve(argvs, durable))


# -- the bench's side ---------------------------------------------------------------------------


@dataclass
class Relay:
    """A running relay process (see :func:`start_relay`)."""

    proc: asyncio.subprocess.Process
    port: int
    cli_pids: list[int]
    _stderr: asyncio.Task[bytes] | None = None

    @property
    def pid(self) -> int:
        """The relay's own process id."""
        return self.proc.pid

    @property
    def cli_pid(self) -> int:
        """The first CLI's process id."""
        return self.cli_pids[0]

    async def stop(self) -> None:
        """SIGTERM (the relay ends its CLIs), then kill if it lingers."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        if self._stderr is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stderr, 5)


async def start_relay(
    *argvs: Sequence[str], env: dict[str, str], cwd: Any, durable: Path | None = None
) -> Relay:
    """Start ``python -m hotsession.bench.relay [--durable PATH] -- ARGV… [-- ARGV…]`` (one
    CLI per argv) with the CLIs' env and cwd; returns once it listens. Raises ``BenchError``
    (with the relay's own line when it gave one) when it did not start."""
    from hotsession.bench.environment import BenchError

    args: list[str] = [] if durable is None else ["--durable", str(durable)]
    for argv in argvs:
        args += ["--", *argv]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hotsession.bench.relay",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    stderr = asyncio.create_task(proc.stderr.read())  # drained for as long as it runs
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT_S + 10)
    except TimeoutError:
        line = b""
    words = line.split()
    if len(words) != 3 or words[0] != b"ready":
        relay = Relay(proc, 0, [], stderr)
        await relay.stop()
        said = stderr.result().decode(errors="replace").strip() if stderr.done() else ""
        raise BenchError(f"the bare relay did not start: {said or repr(line)}")
    return Relay(proc, int(words[1]), [int(p) for p in words[2].split(b",")], stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
