"""A minimal blocking WebSocket client (RFC 6455) for the shim: text and binary messages, ping,
close; ``ws://`` and ``wss://``.

Written by hand on purpose: the shim's start-up is paid on every call of ``hotsession-claude``,
and importing a WebSocket library costs more than the rest of it (measured on the 2-core test
machine: ``wsproto`` ~27 ms, ``websockets.sync.client`` 70-120 ms; this module and its imports
~3 ms). For the same reason it uses ``_socket`` and ``_thread`` (``socket`` loads ``enum`` and
``selectors``, ``threading`` more). The daemon side uses uvicorn's own WebSocket support.
"""

from __future__ import annotations

import _socket
import _thread
import binascii
import os
import struct

TYPE_CHECKING = False  # not typing's (see the module docstring)
if TYPE_CHECKING:
    from typing import Any

TEXT, BINARY, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _literal(host: str) -> int | None:
    """The address family of an IP literal, or None for a name."""
    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return None


def _candidates(host: str, port: int) -> list[tuple[int, Any]]:
    """Where to connect: IP literals and ``localhost`` without ``getaddrinfo``, whose first call in
    a process costs 6-20 ms on the test machine even for ``127.0.0.1`` (measured with
    ``AI_NUMERICHOST`` too: the C library's resolver set-up), paid on every run of the shim."""
    family = _literal(host)
    if family is not None:
        return [(family, (host, port))]
    if host.lower() in ("localhost", "localhost."):  # RFC 6761: always the loopback
        return [(_socket.AF_INET, ("127.0.0.1", port)), (_socket.AF_INET6, ("::1", port))]
    return [
        (family, address)
        for family, _, _, _, address in _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM)
    ]


def _connect(host: str, port: int, timeout: float | None) -> Any:
    """``socket.create_connection`` with the C module alone."""
    last: OSError | None = None
    for family, address in _candidates(host, port):
        sock = _socket.socket(family, _socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError(f"cannot resolve {host}")


def b64(data: bytes) -> bytes:
    """Base64 with ``binascii`` (the ``base64`` module loads ``re``)."""
    return binascii.b2a_base64(data, newline=False)


def _sha1(data: bytes) -> bytes:
    try:  # the builtin module: hashlib would load OpenSSL (~2 ms of the shim's start)
        import _sha1 as builtin  # type: ignore[import-not-found]

        return builtin.sha1(data).digest()  # type: ignore[no-any-return]
    except ImportError:  # pragma: no cover - a Python built without it
        import hashlib

        return hashlib.sha1(data).digest()


class HandshakeError(Exception):
    """The server answered the upgrade with an HTTP status instead of 101."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


class Closed(Exception):
    """The connection is gone."""


class WebSocket:
    """One client connection; ``send_*`` may be called from any thread, ``recv`` from one."""

    def __init__(
        self, sock: Any, buffered: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        self.sock = sock  # a ``_socket.socket``, or an ``ssl.SSLSocket`` for wss
        self.headers = headers or {}
        """The server's upgrade answer's header fields (names in lower case)."""
        self._buf = bytearray(buffered)
        self._lock = _thread.allocate_lock()
        self.closed = False

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        headers: dict[str, str],
        timeout: float | None = 10.0,
        cafile: str | None = None,
    ) -> WebSocket:
        """Open ``url`` (``ws``/``http`` or ``wss``/``https``) and complete the upgrade.

        TLS verifies the server against the system's CAs (``SSL_CERT_FILE`` / ``SSL_CERT_DIR``
        replace them, as for any OpenSSL client) plus ``cafile`` when given; a failed
        verification raises ``ssl.SSLCertVerificationError``."""
        scheme, _, rest = url.partition("://")
        hostport, slash, path = rest.partition("/")
        path = "/" + path if slash else "/"
        tls = scheme in ("wss", "https")
        host, port = hostport, 443 if tls else 80
        if hostport.startswith("["):
            host, _, tail = hostport[1:].partition("]")
            if tail.startswith(":"):
                port = int(tail[1:])
        elif ":" in hostport:
            host, _, p = hostport.rpartition(":")
            port = int(p)
        sock: Any = _connect(host, port, timeout)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        if tls:
            import socket  # only for remote daemons: ssl wants a socket.socket, costs several ms
            import ssl

            plain = socket.socket(fileno=sock.detach())
            context = ssl.create_default_context()
            if cafile:
                context.load_verify_locations(cafile=cafile)
            try:
                sock = context.wrap_socket(plain, server_hostname=host)
            except BaseException:
                plain.close()
                raise
        key = b64(os.urandom(16))  # binascii, not base64: that one loads ``re``
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {hostport}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key.decode()}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise Closed("the server closed the connection during the upgrade")
            data += chunk
        head, _, rest_bytes = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        fields = {}
        for line in header_lines:
            k, _, v = line.partition(":")
            fields[k.strip().lower()] = v.strip()
        if status != 101:
            body = rest_bytes
            length = int(fields.get("content-length", "0") or 0)
            while len(body) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
            sock.close()
            raise HandshakeError(status, body.decode("utf-8", "replace"))
        accept = b64(_sha1(key + _GUID)).decode()
        if fields.get("sec-websocket-accept") != accept:
            sock.close()
            raise Closed("the server's upgrade answer is not a WebSocket handshake")
        sock.settimeout(None)
        return cls(sock, rest_bytes, fields)

    # -- sending -------------------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        """Send a text message."""
        self._send(TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes) -> None:
        """Send a binary message."""
        self._send(BINARY, data)

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake (best effort) and drop the socket."""
        if not self.closed:
            try:
                self._send(CLOSE, struct.pack("!H", code))
            except (OSError, Closed):
                pass
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def _send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        # XOR with the repeated mask as one big integer: fast in C for any size.
        repeated = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(
            n, "little"
        )
        with self._lock:
            if self.closed:
                raise Closed("the connection is closed")
            self.sock.sendall(header + mask + masked)

    # -- receiving -----------------------------------------------------------------------------

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise Closed("the server closed the connection")
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def recv(self) -> tuple[int, bytes]:
        """The next message as (TEXT or BINARY, payload); raises ``Closed`` at the end."""
        parts: list[bytes] = []
        kind = 0
        while True:
            b0, b1 = self._read(2)
            opcode, fin = b0 & 0x0F, b0 & 0x80
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            if b1 & 0x80:  # a server must not mask, but unmask if it does
                mask = self._read(4)
                raw = self._read(n)
                repeated = (mask * (n // 4 + 1))[:n]
                payload = (
                    int.from_bytes(raw, "little") ^ int.from_bytes(repeated, "little")
                ).to_bytes(n, "little")
            else:
                payload = self._read(n)
            if opcode == PING:
                self._send(PONG, payload)
                continue
            if opcode == PONG:
                continue
            if opcode == CLOSE:
                self.close()
                raise Closed("closed by the server")
            if opcode != CONT:
                kind = opcode
            parts.append(payload)
            if fin:
                return kind, b"".join(parts)
