"""The bench's timing client: POST a JSON body, read the SSE answer, over kept-alive sockets.

Why hand-written, not httpx. The speed target is the *daemon's* overhead over the bare CLI
(issue 4: within 2 ms, median), and a client library's own per-request work (request building,
the connection pool's locks, the line decoder) is paid in the bench's process and was counted
against the daemon. Measured on the 2-core box, idle, 150 interleaved rounds (2026-11-24): the
same daemon, paired with the floor in the same round, the result arrived +1.4 ms after the
floor's through ``httpx.AsyncClient.stream`` + ``aiter_lines`` and +0.6 ms through this client
(time outside the CLI 1.9 vs 1.4 ms); on a loaded machine the gap was larger. So the bench
times with this client, the way a lean client in any language sees the daemon;
``hs follow-up (httpx)`` keeps showing what httpx adds (docs/benchmarks.md). Everything else in
the bench (JSON calls, setup) stays on httpx.

It speaks exactly what the daemon answers a streaming POST with: HTTP/1.1, a status line and
headers, then a ``Transfer-Encoding: chunked`` body of SSE frames (or, for an error, a body with
``Content-Length``). One socket per concurrent stream, reused when a stream ended cleanly; a
socket the server closed, or one left mid-stream by a cancelled read, is dropped. ``call`` is a
plain JSON request on the same sockets (the claim, ``POST /v1/sessions``, is timed with it).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

from hotsession.bench.environment import BenchError

_MAX_HEAD = 64 * 1024


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class WireClient:
    """SSE POSTs to one ``host:port`` with a bearer token (see the module docstring)."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host = host
        self.port = port
        self.token = token
        self._idle: list[_Conn] = []

    async def _connect(self) -> _Conn:
        if self._idle:
            return self._idle.pop()
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=2**24)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Conn(reader, writer)

    def request_bytes(self, path: str, body: dict[str, Any]) -> bytes:
        """The whole request, ready to write."""
        data = json.dumps(body, separators=(",", ":")).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode()
        return head + data

    async def events(self, request: bytes) -> AsyncIterator[tuple[str, bytes]]:
        """Send a prepared request; yield ``(event type, data bytes)`` per SSE event.

        Raises ``BenchError`` for an HTTP error status (with the body) or a broken stream.
        """
        conn = await self._connect()
        reusable = False
        try:
            conn.writer.write(request)
            status, headers = await _read_head(conn.reader)
            if status >= 400 or headers.get("transfer-encoding") != "chunked":
                length = int(headers.get("content-length", "0"))
                body = await conn.reader.readexactly(length) if length else b""
                raise BenchError(f"HTTP {status}: {body[:300].decode(errors='replace')}")
            buf = b""
            while True:
                size_line = await conn.reader.readline()
                if not size_line:
                    raise BenchError("the server closed the stream")
                size = int(size_line.split(b";", 1)[0], 16)
                chunk = await conn.reader.readexactly(size + 2)
                if size == 0:
                    reusable = headers.get("connection") != "close"
                    return
                buf += chunk[:-2]
                while True:
                    end = buf.find(b"\n\n")
                    if end < 0:
                        break
                    frame, buf = buf[:end], buf[end + 2 :]
                    event = _parse_frame(frame)
                    if event is not None:
                        yield event
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise BenchError(f"SSE stream failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if reusable:
                self._idle.append(conn)
            else:
                conn.close()

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One JSON request on a kept-alive socket; the parsed JSON answer (None when empty).

        Raises ``BenchError`` for an HTTP error status (with the body) or a broken socket.
        """
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        request = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode() + data
        conn = await self._connect()
        reusable = False
        try:
            conn.writer.write(request)
            status, headers = await _read_head(conn.reader)
            if "content-length" not in headers:
                raise BenchError(f"{method} {path}: HTTP {status} without a Content-Length")
            length = int(headers["content-length"])
            answer = await conn.reader.readexactly(length) if length else b""
            reusable = headers.get("connection") != "close"
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise BenchError(f"{method} {path} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if reusable:
                self._idle.append(conn)
            else:
                conn.close()
        if status >= 400:
            raise BenchError(f"{method} {path}: {status} {answer[:300].decode(errors='replace')}")
        return json.loads(answer) if answer else None

    async def aclose(self) -> None:
        """Close the idle sockets."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise BenchError("the server closed the connection")
    parts = status_line.split(b" ", 2)
    status = int(parts[1])
    headers: dict[str, str] = {}
    total = len(status_line)
    while True:
        line = await reader.readline()
        total += len(line)
        if total > _MAX_HEAD:
            raise BenchError("response head too large")
        if line in (b"\r\n", b"\n", b""):
            return status, headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip().lower()


def _parse_frame(frame: bytes) -> tuple[str, bytes] | None:
    """One SSE frame (``id:``/``event:``/``data:`` lines); None for a comment-only frame."""
    kind = "message"
    data: list[bytes] = []
    for line in frame.split(b"\n"):
        if not line or line[:1] == b":":
            continue
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"event":
            kind = value.decode()
        elif name == b"data":
            data.append(value)
    if not data:
        return None
    return kind, b"\n".join(data)
