"""The bare relay: the least CPU a Python daemon could spend on a plain follow-up (``bench --cpu``).

Why it exists. ``hotsession bench --cpu`` holds the daemon's CPU per turn against the CLI's (issue
13: a plain follow-up ≤ 3 %). This process is the floor under that figure: what a Python server
on uvloop must spend to take a turn over HTTP and relay the CLI's answer, and nothing more. No
ASGI framework, no registry, no auth, no parsing of the CLI's lines, one process, one
connection at a time. The bench measures it in the same run, against the same real CLI, as the
``bare relay (no daemon)`` row; no daemon can spend less (docs/benchmarks.md).

What it does. Run as ``python -m hotsession.bench.relay -- ARGV…`` (the CLI's command line; the
relay's own cwd and environment are the CLI's): spawns the one CLI (stream-json both ways, the
bench builds the argv as its bare-CLI mode does, ``--include-partial-messages`` included),
answers its ``initialize``, listens on 127.0.0.1 and prints ``ready PORT CLI_PID``. Each POST
(any path, body ``{"prompt": "…"}``, keep-alive) writes the prompt to the CLI's stdin as a
stream-json user message and answers with a chunked ``text/event-stream``: each stdout line, as
soon as it is read, becomes a ``message`` frame (``stream_event`` lines dropped by their
prefix, unparsed), all the lines of one read in one write; the ``result`` line ends the body.
Written by hand on ``httptools`` because a framework's per-request work is exactly what this
floor leaves out. SIGTERM (or the CLI's exit) ends it; the CLI goes with it.

Run as a process it imports nothing of hotsession's engine (the package's names load lazily);
the bench starts it with :func:`start_relay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


class _Cli(asyncio.SubprocessProtocol):
    """The CLI's pipes: complete stdout lines go to ``sink`` (the turn's connection)."""

    def __init__(self, exited: asyncio.Future[None]) -> None:
        self.exited = exited
        self.initialized: asyncio.Future[None] = exited.get_loop().create_future()
        self.sink: Callable[[list[bytes]], None] | None = None
        self.stdin: asyncio.WriteTransport | None = None
        self.buf = b""

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

    def __init__(self, cli: _Cli) -> None:
        import httptools

        self.cli = cli
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.cli.sink == self.lines:
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
        self.body = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.parser.get_method() != b"POST":
            self._error(405, "method_not_allowed", 'POST a turn: {"prompt": "..."}')
            return
        try:
            prompt = json.loads(b"".join(self.body))["prompt"]
            if not isinstance(prompt, str):
                raise TypeError(prompt)
        except (ValueError, KeyError, TypeError):
            self._error(400, "bad_request", 'the body must be {"prompt": "..."}')
            return
        if self.cli.sink is not None or self.cli.stdin is None:
            self._error(409, "busy", "a turn is running")
            return
        assert self.transport is not None
        self.transport.write(_HEAD)
        self.cli.sink = self.lines
        message = {
            "type": "user",
            "message": {"role": "user", "content": prompt},
            "parent_tool_use_id": None,
        }
        self.cli.stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def lines(self, lines: list[bytes]) -> None:
        """One read's complete lines: a frame each (partial messages dropped), one write."""
        out = []
        end = False
        for line in lines:
            if line.startswith(_STREAM_EVENT) or not line:
                continue
            frame = b"event: message\ndata: " + line + b"\n\n"
            out.append(b"%x\r\n%s\r\n" % (len(frame), frame))
            if _RESULT in line:
                end = True
                break
        if end:
            out.append(_END)
            self.cli.sink = None
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        reason = {400: "Bad Request", 405: "Method Not Allowed", 409: "Conflict"}[status]
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        if self.transport is not None:
            self.transport.write(head + body)
            self.transport.close()


async def serve(argv: Sequence[str]) -> int:
    """Spawn the CLI, answer its ``initialize``, relay turns until SIGTERM or the CLI's exit."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()
    transport, cli = await loop.subprocess_exec(
        lambda: _Cli(exited),
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    stop: asyncio.Future[None] = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        assert cli.stdin is not None
        request = {
            "type": "control_request",
            "request_id": "req_init",
            "request": {"subtype": "initialize", "hooks": None},
        }
        cli.stdin.write(json.dumps(request, separators=(",", ":")).encode() + b"\n")
        await asyncio.wait(
            [cli.initialized, exited], timeout=READY_TIMEOUT_S, return_when="FIRST_COMPLETED"
        )
        if not cli.initialized.done():
            print("relay: the CLI did not answer initialize", file=sys.stderr)
            return 1
        server = await loop.create_server(lambda: _Http(cli), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        print(f"ready {port} {transport.get_pid()}", flush=True)
        await asyncio.wait([stop, exited], return_when="FIRST_COMPLETED")
        server.close()
        return 0 if stop.done() else 1
    finally:
        if cli.stdin is not None:
            cli.stdin.close()
        try:
            await asyncio.wait_for(asyncio.shield(exited), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(transport.get_pid(), signal.SIGKILL)
        transport.close()


def main(args: Sequence[str]) -> int:
    """``python -m hotsession.bench.relay -- ARGV…``."""
    import uvloop

    argv = list(args[1:] if args[:1] == ["--"] else args)
    if not argv:
        print("usage: python -m hotsession.bench.relay -- CLI ARGV…", file=sys.stderr)
        return 2
    return uvloop.run(serve(argv))


# -- the bench's side ---------------------------------------------------------------------------


@dataclass
class Relay:
    """A running relay process (see :func:`start_relay`)."""

    proc: asyncio.subprocess.Process
    port: int
    cli_pid: int

    @property
    def pid(self) -> int:
        """The relay's own process id."""
        return self.proc.pid

    async def stop(self) -> None:
        """SIGTERM (the relay ends its CLI), then kill if it lingers."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


async def start_relay(argv: Sequence[str], *, env: dict[str, str], cwd: Any) -> Relay:
    """Start ``python -m hotsession.bench.relay -- ARGV…`` with the CLI's env and cwd; returns
    once it listens. Raises ``BenchError`` when it did not start."""
    from hotsession.bench.environment import BenchError

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hotsession.bench.relay",
        "--",
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT_S + 10)
    except TimeoutError:
        line = b""
    words = line.split()
    if len(words) != 3 or words[0] != b"ready":
        relay = Relay(proc, 0, 0)
        await relay.stop()
        raise BenchError(f"the bare relay did not start: {line!r}")
    return Relay(proc, int(words[1]), int(words[2]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
