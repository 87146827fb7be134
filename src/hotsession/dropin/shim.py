"""``hotsession-claude``: the executable drop-in clients run in place of ``claude``.

Design
======
Thin bridge. The daemon does the work (it parses the argv, picks or resumes the process, speaks
the control protocol); the shim only carries bytes: it sends a hello (argv, cwd, the environment
variables that matter to the CLI, whether stdin is a terminal), then stdin as it comes, and
writes what the daemon sends to stdout and stderr until the daemon says which code to exit with.
It imports nothing of the engine (``hotsession/__init__`` is lazy), so it starts in tens of
milliseconds; its WebSocket client is in ``wire``.

Wire (one WebSocket at ``<url>/v1/dropin``, bearer token in the upgrade request):

* shim → daemon: the hello (argv, cwd, env, whether stdin is a terminal, and in ``stdin`` the
  base64 of what stdin held already) in the upgrade request's ``X-Hotsession-Hello`` field,
  which the daemon confirms with ``X-Hotsession-Hello: taken`` in its ``101`` (so the answer to
  an SDK's ``initialize`` can come with the ``101``, one round trip sooner); when the daemon did
  not take it (an older one, or a hello over ``HELLO_HEADER_MAX``), a text message
  ``{"hello": {..., "stdin_sent": N}}`` and those N stdin bytes as a binary message (a daemon
  that had taken the field skips them: a proxy may drop the confirmation); then binary messages with
  stdin bytes; a text message ``{"eof": true}`` at the end of stdin.
* daemon → shim: binary messages whose first byte is 1 (stdout) or 2 (stderr); text messages
  ``{"ready": {...}}`` (the daemon serves this run), ``{"exit": N}`` (the last one),
  ``{"exec": {"path", "reason"}}`` (run the real CLI instead, only ever before ``ready``) and
  ``{"error": {"code", "message"}}`` (the daemon refused the run).

The real CLI instead. Runs the daemon does not serve (help, sub-commands, interactive sessions,
argv the CLI would refuse, a resume of an unknown id) are run by the real CLI with the same argv:
its output and exit code are the answer. The shim replays the stdin bytes it had already sent,
so nothing is lost. When no daemon answers, the shim runs the real CLI too and says so in one
stderr line; ``HOTSESSION_FALLBACK=0`` makes that an error (exit 1).
"""

from __future__ import annotations

import _thread
import os
import sys

from hotsession.dropin import wire

TYPE_CHECKING = False  # not typing's: importing typing costs the shim ~4 ms (it loads ``re``)
if TYPE_CHECKING:
    from typing import Any

# The environment variables a Claude Code process's behaviour depends on; the daemon starts the
# CLI with them (they are part of the profile). Others stay here (PATH, HOME, secrets of other
# programs): the CLI runs in the daemon's environment plus these.
ENV_PREFIXES = (
    "ANTHROPIC_",
    "CLAUDE_",
    "DISABLE_",
    "ENABLE_",
    "MAX_",
    "MCP_",
    "BASH_",
    "OTEL_",
    "AWS_",
    "GOOGLE_",
    "VERTEX_",
    "CLOUD_ML_",
    "API_TIMEOUT_MS",
    "IS_SANDBOX",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "USE_BUILTIN_RIPGREP",
)
ENV_EXCLUDED = ("CLAUDECODE",)
HELLO_HEADER = "X-Hotsession-Hello"
"""The hello (JSON, ASCII) in the upgrade request; the daemon answers it with the same field
``taken``. A daemon without it ignores the field: the shim sends the hello as a message."""
HELLO_HEADER_MAX = 7000
"""Larger hellos go as a message (a proxy's header line limit is often 8 KiB)."""
FALLBACK_EXIT = 1
_STDOUT, _STDERR = 1, 2
NAME = "hotsession-claude"


def state_dir() -> str:
    """The local daemon's state directory (as ``hotsession serve`` picks it)."""
    explicit = os.environ.get("HOTSESSION_STATE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "hotsession")


def find_daemon() -> tuple[str | None, str | None, str]:
    """(url, token, where the url came from)."""
    token = os.environ.get("HOTSESSION_TOKEN") or None
    url = os.environ.get("HOTSESSION_URL") or None
    where = "HOTSESSION_URL"
    directory = state_dir()
    if url is None:
        where = os.path.join(directory, "daemon.json")
        try:
            with open(where, encoding="utf-8") as f:
                url = _url_of(f.read())
        except (OSError, ValueError):
            url = None
    if token is None:
        try:
            with open(os.path.join(directory, "token"), encoding="utf-8") as f:
                token = f.read().strip() or None
        except OSError:
            token = None
    return url, token, where


def _url_of(text: str) -> str | None:
    """The ``url`` of ``daemon.json`` (``{"pid": …, "url": "http://…", …}``), read without
    importing ``json`` (see ``encode``)."""
    import _json

    key = text.find('"url"')
    colon = text.find(":", key + 5) if key >= 0 else -1
    quote = text.find('"', colon) if colon >= 0 else -1
    if quote < 0:
        return None
    return str(_json.scanstring(text, quote + 1, True)[0])


def relevant_env() -> dict[str, str]:
    """The variables sent to the daemon (see ``ENV_PREFIXES``)."""
    return {
        k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES) and k not in ENV_EXCLUDED
    }


def local_cli(suggested: str | None = None) -> str | None:
    """The Claude Code CLI to run here: the daemon's (if it exists on this machine),
    ``HOTSESSION_CLI_PATH``, the one bundled with the Agent SDK, or ``claude`` on PATH."""
    for candidate in (suggested, os.environ.get("HOTSESSION_CLI_PATH")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    import importlib.util

    spec = importlib.util.find_spec("claude_agent_sdk")
    if spec is not None and spec.origin:
        bundled = os.path.join(os.path.dirname(spec.origin), "_bundled", "claude")
        if os.access(bundled, os.X_OK):
            return bundled
    import shutil

    me = os.path.realpath(sys.argv[0])
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("claude", path=directory)
        if found and os.path.realpath(found) != me:
            return found
    return None


def _say(message: str) -> None:
    os.write(2, f"{NAME}: {message}\n".encode())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def exec_cli(argv: list[str], suggested: str | None = None) -> None:
    """Replace this process with the real CLI (stdin untouched)."""
    cli = local_cli(suggested)
    if cli is None:
        _say("the Claude Code CLI is not installed here")
        os._exit(FALLBACK_EXIT)
    sys.stdout.flush()
    os.execv(cli, [cli, *argv])


def fallback(argv: list[str], reason: str) -> None:
    """No daemon: run the real CLI, or fail when ``HOTSESSION_FALLBACK=0``."""
    if os.environ.get("HOTSESSION_FALLBACK", "1").strip().lower() in ("0", "false", "no", "off"):
        _say(f"{reason}; HOTSESSION_FALLBACK=0, so not running the Claude Code CLI directly")
        os._exit(FALLBACK_EXIT)
    _say(f"{reason}; running the Claude Code CLI directly")
    exec_cli(argv)


class _Stdin:
    """Copies stdin to the daemon (and keeps a copy until the daemon took the run over), on a
    thread of its own (``_thread``: ``threading`` costs the shim ~2 ms more to import)."""

    def __init__(self, ws: wire.WebSocket, early: bytes = b"") -> None:
        self.ws = ws
        self.record: bytearray | None = bytearray(early)  # ``early``: sent with the hello
        self.sink: object = None  # a file to copy to instead (the real CLI's stdin)
        self.eof = False
        self.lock = _thread.allocate_lock()

    def start(self) -> None:
        """Run ``run`` on its own thread (the process exits without waiting for it)."""
        _thread.start_new_thread(self.run, ())

    def run(self) -> None:
        while True:
            try:
                data = os.read(0, 1 << 16)
            except OSError:
                data = b""
            with self.lock:
                sink = self.sink
                self.eof = not data
                if sink is None:
                    if self.record is not None:
                        self.record += data  # replayed if the real CLI takes over
                    try:
                        if data:
                            self.ws.send_binary(data)
                        else:
                            self.ws.send_text('{"eof":true}')
                    except (OSError, wire.Closed):
                        pass  # the daemon went away or handed the run to the real CLI
            if sink is not None:
                try:
                    if data:
                        sink.write(data)  # type: ignore[attr-defined]
                        sink.flush()  # type: ignore[attr-defined]
                    else:
                        sink.close()  # type: ignore[attr-defined]
                except OSError:
                    return
            if not data:
                return


def _run_cli_with_replay(argv: list[str], path: str | None, reader: _Stdin | None) -> int:
    """Run the real CLI as a child, feeding it the stdin bytes the daemon had seen first."""
    import subprocess

    cli = local_cli(path)
    if cli is None:
        _say("the Claude Code CLI is not installed here")
        return FALLBACK_EXIT
    if reader is None:
        sys.stdout.flush()
        os.execv(cli, [cli, *argv])
    child = subprocess.Popen([cli, *argv], stdin=subprocess.PIPE)
    assert child.stdin is not None
    with reader.lock:
        seen = bytes(reader.record or b"")
        reader.sink = child.stdin
        eof = reader.eof
    try:
        if seen:
            child.stdin.write(seen)
            child.stdin.flush()
        if eof:
            child.stdin.close()
    except OSError:
        pass
    return child.wait()


def main() -> None:
    """Entry point of ``hotsession-claude``."""
    argv = sys.argv[1:]
    url, token, where = find_daemon()
    if url is None:
        fallback(argv, f"no hotsession daemon found ({where} is missing; set HOTSESSION_URL)")
        return
    tty = os.isatty(0)
    hello = {
        "argv": argv,
        "cwd": os.getcwd(),
        "env": relevant_env(),
        "stdin_tty": tty,
        "pid": os.getpid(),
    }
    early = b"" if tty else _early_stdin()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    carried = encode({**hello, "stdin": wire.b64(early).decode()} if early else hello)
    if len(carried) <= HELLO_HEADER_MAX:
        headers[HELLO_HEADER] = carried
    try:
        ws = wire.WebSocket.connect(
            url.rstrip("/") + "/v1/dropin",
            headers=headers,
            timeout=10.0,
            cafile=os.environ.get("HOTSESSION_CA_FILE") or None,
        )
    except wire.HandshakeError as exc:
        if exc.status in (401, 403):
            _say(f"the hotsession daemon at {url} refused the token ({_reason(exc.body)})")
            os._exit(1)
        fallback(argv, f"the hotsession daemon at {url} did not accept the connection ({exc})")
        return
    except (OSError, wire.Closed, ValueError) as exc:
        ssl = sys.modules.get("ssl")  # loaded by ``wire`` for wss only
        if ssl is not None and isinstance(exc, ssl.SSLCertVerificationError):
            # Like a refused token: a daemon is there but not the one to trust; no fallback.
            _say(
                f"the hotsession daemon at {url} failed TLS verification ({exc}); "
                "HOTSESSION_CA_FILE names a CA bundle to trust"
            )
            os._exit(1)
        fallback(argv, f"no hotsession daemon answers at {url} ({exc})")
        return
    if ws.headers.get(HELLO_HEADER.lower()) != "taken":  # a daemon that wants it as a message
        try:
            # ``stdin_sent``: a daemon that did take the header (a proxy dropped its answer's
            # field) skips those bytes, which it had.
            ws.send_text(encode({"hello": {**hello, "stdin_sent": len(early)}}))
            if early:
                ws.send_binary(early)
        except (OSError, wire.Closed) as exc:
            fallback(argv, f"the hotsession daemon at {url} dropped the connection ({exc})")
            return
    reader: _Stdin | None = None
    if not tty:
        reader = _Stdin(ws, early)
        reader.start()
    code = _pump(ws, argv, reader, url)
    sys.stdout.flush()
    os._exit(code)


def _early_stdin() -> bytes:
    """What stdin holds already, without waiting (the SDKs write their ``initialize`` as soon as
    they start the executable): it travels in the upgrade request, so the daemon can answer with
    its ``101`` (one round trip less; the daemon would otherwise wait for the WebSocket)."""
    import select  # not a blocking-mode switch: stdin's open file may be shared with others

    try:
        if not select.select([0], [], [], 0)[0]:
            return b""
        return os.read(0, 1 << 16)  # b"" at EOF: the stdin thread reads that EOF again
    except (OSError, ValueError):
        return b""


def encode(value: Any) -> str:
    """JSON of the hello's plain values (str, bool, int, None, lists and dicts of them), without
    importing ``json``: its decoder pulls in ``re`` (~5 ms of the shim's start; see ``decode``)."""
    import _json

    if isinstance(value, str):
        return str(_json.encode_basestring_ascii(value))
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{encode(str(k))}:{encode(v)}" for k, v in value.items()) + "}"
    return "[" + ",".join(encode(v) for v in value) + "]"


class _JsonContext:
    """What ``_json.make_scanner`` reads of ``json.JSONDecoder`` (the C scanner without the
    ``json`` package, whose decoder imports ``re``: ~5 ms of CPU in every run, on the path from
    the hello to the first prompt)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity
    memo: dict[str, str] = {}


_scan: Any = None


def decode(data: bytes | str) -> Any:
    """``json.loads`` of one document (what the daemon sends: a JSON object per text message)."""
    global _scan
    if _scan is None:
        import _json

        _scan = _json.make_scanner(_JsonContext())  # type: ignore[arg-type]  # duck-typed
    text = (data.decode("utf-8") if isinstance(data, bytes) else data).strip()
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        raise ValueError(f"not JSON: {text[:80]!r}") from None
    if end != len(text):
        raise ValueError(f"extra data after JSON: {text[end : end + 80]!r}")
    return value


def _reason(body: str) -> str:
    try:
        return str(decode(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.strip()[:200] or "unauthorized"


def _pump(ws: wire.WebSocket, argv: list[str], reader: _Stdin | None, url: str) -> int:
    ready = False
    while True:
        try:
            kind, payload = ws.recv()
        except (OSError, wire.Closed) as exc:
            if not ready:
                fallback(argv, f"the hotsession daemon at {url} dropped the connection ({exc})")
            _say(f"lost the connection to the hotsession daemon at {url} ({exc})")
            return 1
        if kind == wire.BINARY:
            try:
                _write_all(_STDOUT if payload[:1] == b"\x01" else _STDERR, payload[1:])
            except BrokenPipeError:
                return 1
            continue
        msg = decode(payload)
        if "exit" in msg:
            ws.close()
            return int(msg["exit"])
        if "ready" in msg:
            ready = True
            if reader is not None:
                with reader.lock:
                    reader.record = None
        elif "exec" in msg:
            if reader is None:
                ws.close()
            code = _run_cli_with_replay(argv, msg["exec"].get("path"), reader)
            ws.close()
            return code
        elif "error" in msg:
            err = msg["error"]
            if err.get("code") in ("unauthorized", "forbidden"):  # as a refused handshake says
                why = f"{err['code']}: {err.get('message')}"
                _say(f"the hotsession daemon at {url} refused the token ({why})")
            else:
                _say(str(err.get("message")))
            ws.close()
            return int(err.get("exit", 1))


if __name__ == "__main__":
    main()
