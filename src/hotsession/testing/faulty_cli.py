"""A wrapper around the real Claude Code CLI that injects output faults (a test instrument).

The real CLI cannot be made to write garbage, a 50 MiB line or exit 0 in the middle of a turn, so
this wrapper sits between hotsession and the CLI: it relays stdin and stdout byte for byte and,
when a user prompt holds ``[[fault:KIND]]`` (the model server ignores unknown directives), it
waits for the CLI's first output line of that turn and then injects the fault once:

=====================  ==========================================================================
``noise``              a non-JSON line with NUL and invalid UTF-8 bytes; the turn goes on
``corrupt``            a line that starts like JSON but does not parse
``bignoise:BYTES``     a non-JSON line of BYTES bytes; the turn goes on
``bigjson:BYTES``      a valid JSON line (a ``system`` message) of BYTES bytes
``exit0``              SIGKILL the real CLI and exit with status 0, mid-turn
=====================  ==========================================================================

Use :func:`write_faulty_cli` to get an executable to pass as ``Config.cli_path``. The wrapper
runs in the process group the supervisor gives it, with the real CLI as its child, so ending the
group ends both; if the wrapper dies, the CLI sees EOF on stdin and exits.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import BinaryIO

REAL_CLI_ENV = "HOTSESSION_REAL_CLI"
_FAULT = re.compile(rb"\[\[fault:([a-z0-9]+)(?::(\d+))?\]\]")


def write_faulty_cli(directory: str | os.PathLike[str], real_cli: str | os.PathLike[str]) -> Path:
    """Write an executable shim that runs this wrapper around ``real_cli``; returns its path."""
    path = Path(directory) / "faulty-claude"
    path.write_text(
        "#!/bin/sh\n"
        f"export {REAL_CLI_ENV}={shlex.quote(os.fspath(real_cli))}\n"
        f'exec {shlex.quote(sys.executable)} -m hotsession.testing.faulty_cli "$@"\n'
    )
    path.chmod(0o755)
    return path


def _fault_line(kind: str, size: int) -> bytes | None:
    if kind == "noise":
        return b"garbage \x00\xff\xfe not json \x1b[31m\n"
    if kind == "corrupt":
        return b'{"type": "assistant", "message": {broken\n'
    if kind == "bignoise":
        return b"x" * max(size - 1, 0) + b"\n"
    if kind == "bigjson":
        head = b'{"type":"system","subtype":"injected_padding","pad":"'
        tail = b'"}\n'
        return head + b"p" * max(size - len(head) - len(tail), 0) + tail
    return None


class _Relay:
    def __init__(self, cli: subprocess.Popen[bytes]) -> None:
        self.cli = cli
        self.pending: tuple[str, int] | None = None
        self.lock = threading.Lock()

    def pump_stdin(self, src: BinaryIO) -> None:
        dst = self.cli.stdin
        assert dst is not None
        try:
            for line in src:
                match = _FAULT.search(line)
                if match is not None and _is_user_message(line):
                    with self.lock:
                        self.pending = (match.group(1).decode(), int(match.group(2) or 0))
                dst.write(line)
                dst.flush()
        except (BrokenPipeError, OSError):
            pass
        finally:
            try:
                dst.close()
            except OSError:
                pass

    def pump_stdout(self, out: BinaryIO) -> None:
        src = self.cli.stdout
        assert src is not None
        for line in src:
            out.write(line)
            with self.lock:
                fault, self.pending = self.pending, None
            if fault is not None:
                kind, size = fault
                if kind == "exit0":
                    out.flush()
                    self.cli.send_signal(signal.SIGKILL)
                    os._exit(0)
                extra = _fault_line(kind, size)
                if extra is not None:
                    out.write(extra)
            out.flush()


def _is_user_message(line: bytes) -> bool:
    try:
        msg = json.loads(line)
    except ValueError:
        return False
    return isinstance(msg, dict) and msg.get("type") == "user"


def main() -> int:
    """Run the real CLI with our argv and relay its I/O, injecting scripted faults."""
    real = os.environ.get(REAL_CLI_ENV)
    if not real:
        print(f"{REAL_CLI_ENV} is not set", file=sys.stderr)
        return 2
    cli = subprocess.Popen(
        [real, *sys.argv[1:]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
    )
    relay = _Relay(cli)
    threading.Thread(target=relay.pump_stdin, args=(sys.stdin.buffer,), daemon=True).start()
    relay.pump_stdout(sys.stdout.buffer)
    return cli.wait()


if __name__ == "__main__":
    sys.exit(main())
