"""Claude Code's own Bash sandbox, switched on per tenant where it works.

The CLI wraps every Bash command in bubblewrap when its ``sandbox`` settings say so (Linux; it
also needs ``socat`` for its network proxy). Measured with CLI 2.1.330 as an unprivileged user:
a sandboxed command sees the file system read-only except its working directory, the paths in
``filesystem.allowWrite`` and its own temp directory; it runs in its own PID namespace (it sees
and can signal no other process) and in its own network namespace (loopback is unreachable;
outside traffic goes through the CLI's proxy, which allows only the configured domains).

It does not cover the CLI's own file tools (Read, Write, Edit: they follow permission rules,
which ``bypassPermissions`` skips) nor the CLI process itself; the OS user is the wall, the
sandbox is a second one for Bash (docs/security.md).

Whether it works is probed at start as the tenant's user (``bwrap`` needs unprivileged user
namespaces, which some kernels and containers refuse): ``sandbox = true`` refuses to start
without it, the default (``auto``) logs that it is off and why.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from typing import Any

from hotsession.isolation.accounts import Account, run_as

# A command that needs every namespace the CLI's sandbox asks bwrap for.
_PROBE_ARGS = (
    "--ro-bind",
    "/",
    "/",
    "--dev",
    "/dev",
    "--proc",
    "/proc",
    "--unshare-all",
    "--die-with-parent",
    "true",
)


def unavailable(account: Account | None) -> str | None:
    """Why the sandbox cannot run for ``account`` here, or None when it can."""
    missing = [tool for tool in ("bwrap", "socat") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install bubblewrap socat)"
    bwrap = shutil.which("bwrap")
    assert bwrap is not None
    if account is None:
        import subprocess

        proc = subprocess.run(
            [bwrap, *_PROBE_ARGS], capture_output=True, text=True, timeout=20, check=False
        )
    else:
        proc = run_as(account, [bwrap, *_PROBE_ARGS])
    if proc.returncode != 0:
        reason = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return f"bubblewrap cannot create its namespaces here ({reason[0][:200]})"
    return None


def settings(roots: Iterable[str], extra: Mapping[str, Any] | None = None) -> str:
    """The CLI's ``--settings`` JSON: the sandbox on, required, writes limited to ``roots``."""
    sandbox: dict[str, Any] = {
        "enabled": True,
        # No fallback to an unsandboxed run, neither when bwrap fails nor on the model's
        # request (dangerouslyDisableSandbox).
        "failIfUnavailable": True,
        "allowUnsandboxedCommands": False,
        "filesystem": {"allowWrite": sorted(roots)},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(sandbox.get(key), dict):
            sandbox[key] = {**sandbox[key], **value}
        else:
            sandbox[key] = value
    return json.dumps({"sandbox": sandbox}, separators=(",", ":"), sort_keys=True)
