"""Session options: everything fixed when a Claude Code process is spawned (its *profile*).

Two sessions with equal options can use each other's warm spares; the profile key is a hash of
the options. ``build_argv`` turns options into the CLI's argv; ``build_env`` into its environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final, Literal, get_args

from hotsession.errors import InvalidRequest

PermissionMode = Literal["default", "acceptEdits", "plan", "bypassPermissions", "dontAsk", "auto"]
PERMISSION_MODES: tuple[str, ...] = get_args(PermissionMode)


@dataclass(frozen=True)
class SessionOptions:
    """Spawn-time options of a session. ``system_prompt=None`` keeps Claude Code's own prompt."""

    cwd: str
    tenant: str = "local"
    model: str | None = None
    permission_mode: PermissionMode | None = None
    allowed_tools: tuple[str, ...] = ()
    disallowed_tools: tuple[str, ...] = ()
    system_prompt: str | None = None
    append_system_prompt: str | None = None
    setting_sources: tuple[str, ...] | None = None
    mcp_config: str | None = None
    max_turns: int | None = None
    env: tuple[tuple[str, str], ...] = field(default=())
    # Drop-in clients (``hotsession-claude``): CLI flags passed verbatim after the typed ones; the
    # JSON object of ``initialize`` fields the process starts with (agents, system prompt, …:
    # they bind at the first ``initialize`` only); the permission prompt tool (None: as the CLI
    # does without one). At their defaults they leave the profile key unchanged.
    extra_args: tuple[str, ...] = ()
    initialize: str | None = None
    permission_prompt_tool: str | None = "stdio"

    def __post_init__(self) -> None:
        if self.permission_mode is not None and self.permission_mode not in PERMISSION_MODES:
            raise InvalidRequest(
                f"permission_mode must be one of {', '.join(PERMISSION_MODES)}",
                field="permission_mode",
            )
        if not self.cwd or not os.path.isabs(self.cwd):
            raise InvalidRequest("cwd must be an absolute path", field="cwd")
        if self.max_turns is not None and self.max_turns < 1:
            raise InvalidRequest("max_turns must be at least 1", field="max_turns")

    @classmethod
    def create(
        cls, cwd: str | os.PathLike[str], *, env: Mapping[str, str] | None = None, **kw: Any
    ) -> SessionOptions:
        """Build options from plain values (lists become tuples, env a sorted tuple)."""
        for name in ("allowed_tools", "disallowed_tools", "setting_sources", "extra_args"):
            if kw.get(name) is not None:
                kw[name] = tuple(kw[name])
        return cls(cwd=os.fspath(cwd), env=tuple(sorted((env or {}).items())), **kw)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionOptions:
        """Inverse of :meth:`to_dict`."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        env = kw.pop("env", None) or {}
        return cls.create(kw.pop("cwd"), env=dict(env), **kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (env as a dict)."""
        out = asdict(self)
        out["env"] = dict(self.env)
        for name in ("allowed_tools", "disallowed_tools", "setting_sources", "extra_args"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    def profile_key(self) -> str:
        """A short stable hash of every option: equal options, equal key."""
        data = self.to_dict()
        for name, default in _NEUTRAL.items():
            if data.get(name) == default:
                del data[name]
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def client(self) -> str | None:
        """``"hotsession-claude"`` when a drop-in client's flags or ``initialize`` fields are part
        of the profile, else None (a profile of the API, the CLI or the library)."""
        data = self.to_dict()
        if any(data[name] != default for name, default in _NEUTRAL.items()):
            return "hotsession-claude"
        return None

    def flags(self) -> list[str]:
        """What sets this profile apart besides its cwd, tenant, model and permission mode, in
        short words for a table row (pool views): a drop-in client's flags as it passed them, the
        *names* of its ``initialize`` fields, each other option not at its default, the names of
        environment variables last (values can be secrets or pages long: left out or cut)."""
        out: list[str] = []
        if self.extra_args:
            out.append(_cut(shlex.join(self.extra_args), 80))
        if self.initialize:
            try:
                keys = sorted(json.loads(self.initialize))
            except (ValueError, TypeError):
                keys = []
            out.append("initialize " + ",".join(keys))
        shown = ("cwd", "tenant", "model", "permission_mode", "extra_args", "initialize", "env")
        for f in fields(self):
            name = f.name
            value = getattr(self, name)
            if name in shown or value == f.default or (value == () and name != "setting_sources"):
                continue
            if value is None:
                out.append(f"no {name.replace('_', ' ')}")
            elif isinstance(value, tuple):
                out.append(f"{name} {_cut(','.join(value)) or '(none)'}")
            elif isinstance(value, str):
                out.append(f"{name} {_cut(value)}")
            else:
                out.append(f"{name} {value}")
        if self.env:
            out.append("env " + _cut(",".join(k for k, _ in self.env), 48))
        return out

    def replace(self, **changes: Any) -> SessionOptions:
        """A copy with some options changed."""
        data = self.to_dict()
        data.update(changes)
        return SessionOptions.from_dict(data)


# Options added after profile keys were first stored: at these values they are left out of the key.
_NEUTRAL: dict[str, Any] = {"extra_args": [], "initialize": None, "permission_prompt_tool": "stdio"}


def _cut(text: str, limit: int = 32) -> str:
    """``text`` on one line, at most ``limit`` characters (an ellipsis marks a cut)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_argv(
    cli_path: str,
    options: SessionOptions,
    *,
    session_id: str | None = None,
    resume: str | None = None,
    fork: bool = False,
    session_mirror: bool = False,
) -> list[str]:
    """The CLI's argv for a persistent stream-json process with these options.

    Long on purpose: one flat branch per option, in the CLI's flag order, so the whole mapping
    from options to flags reads in one place.

    ``session_id`` pins the CLI's session id of a new conversation (a pool spare's pre-generated
    id); ``resume`` continues an existing one; with ``fork`` the resumed conversation is copied to
    ``session_id`` (the CLI requires ``--fork-session`` to combine the two). ``session_mirror``
    makes the CLI also write its transcript to stdout as ``transcript_mirror`` frames (the Agent
    SDK's ``SessionStore`` feed; cluster mode stores them so another node can resume).
    """
    argv = [
        cli_path,
        "--output-format",
        "stream-json",
        "--verbose",
        "--input-format",
        "stream-json",
    ]
    # Permission prompts go over the control channel, so the daemon can forward them.
    if options.permission_prompt_tool:
        argv += ["--permission-prompt-tool", options.permission_prompt_tool]
    # Every process writes partial messages (token deltas), so any spare serves a session that
    # streams them; a session that did not ask drops them unread (``AgentProcess``). Measured
    # (docs/benchmarks.md): the CLI's CPU for a short reply is unchanged, +8 ms (~14 %) for a
    # 500-delta reply; a flag in the profile would split every pool in two.
    argv.append("--include-partial-messages")
    if options.system_prompt is not None:
        argv += ["--system-prompt", options.system_prompt]
    if options.append_system_prompt:
        argv += ["--append-system-prompt", options.append_system_prompt]
    if options.allowed_tools:
        argv += ["--allowedTools", ",".join(options.allowed_tools)]
    if options.disallowed_tools:
        argv += ["--disallowedTools", ",".join(options.disallowed_tools)]
    if options.max_turns is not None:
        argv += ["--max-turns", str(options.max_turns)]
    if options.model:
        argv += ["--model", options.model]
    if options.permission_mode:
        argv += ["--permission-mode", options.permission_mode]
    if options.setting_sources is not None:
        argv.append("--setting-sources=" + ",".join(options.setting_sources))
    if options.mcp_config:
        argv += ["--mcp-config", options.mcp_config]
    argv += options.extra_args
    if session_mirror:
        argv.append("--session-mirror")
    if resume:
        argv.append(f"--resume={resume}")
        if fork:
            argv.append("--fork-session")
            if session_id:
                argv.append(f"--session-id={session_id}")
    elif session_id:
        argv.append(f"--session-id={session_id}")
    return argv


RUNTIME_ENV: Final[Mapping[str, str]] = {"BUN_IDLE_GC_SECONDS": "0"}
"""What every agent's runtime (Bun, in the CLI binary) is started with, unless the daemon's or a
tenant's environment or the profile's ``env`` names it.

``BUN_IDLE_GC_SECONDS=0`` turns off Bun's idle ladder: once a process has been quiet for 10 s
(then again later, a few times) it runs a full garbage collection, so JSC drops code that has not
run since, and pages out the executable's embedded modules and code. For a kept-hot CLI that is
work against the product: ~60–100 ms of CPU each time a conversation pauses and ~100 ms in every
spare waiting for a claim. Measured (CLI 2.1.330, Bun 1.4.4; docs/benchmarks.md "Idle CLIs"): a
spare's first 20 s 187 → 89 ms of CPU, a turn with a 20 s pause 107 → 92 ms, anonymous memory
unchanged (110.3 / 110.0 MB). Whether the next follow-up is faster for it is not shown (one A/B
said so, ``bench --pause`` did not: "A follow-up after a pause").
Safe because JSC's own allocation-paced collections and Bun's 1 s / 30 s collection timer still
run (memory stays bounded by them), and the pages not
paged out are the binary's, file-backed and shared by every CLI (not in the pool's memory
figure, ``RssAnon``).
The CLI knows the variable (it reports it among its runtime tuning, ``process_start_tuning``).
Tools the agent runs inherit it; it only concerns Bun programs among them.
"""


def build_env(
    options: SessionOptions,
    *,
    base: Mapping[str, str] | None = None,
    allow_root_bypass: bool = False,
    as_root: bool | None = None,
) -> dict[str, str]:
    """The CLI's environment: ``base`` (default the daemon's own), then the profile's ``env``.

    On a root machine the CLI refuses ``bypassPermissions`` unless ``IS_SANDBOX=1``; hotsession
    sets it only when the operator allowed it (``allow_root_bypass``), never by accident.
    ``as_root`` says whether the agent runs as root (None: as the daemon does).
    """
    env = dict(os.environ if base is None else base)
    env.pop("CLAUDECODE", None)  # set inside a Claude Code session; would confuse the child
    env["CLAUDE_CODE_ENTRYPOINT"] = "sdk-py"
    for name, value in RUNTIME_ENV.items():
        env.setdefault(name, value)  # the operator's own value (daemon env, tenant env) wins
    env.update(dict(options.env))
    env["PWD"] = options.cwd
    if (
        options.permission_mode == "bypassPermissions"
        and (_is_root() if as_root is None else as_root)
        and env.get("IS_SANDBOX") != "1"
    ):
        if not allow_root_bypass:
            raise InvalidRequest(
                "permission_mode bypassPermissions is refused for a daemon running as root; "
                "start it with --allow-root-bypass (sets IS_SANDBOX=1 for the agent) if this "
                "machine is a sandbox",
                field="permission_mode",
            )
        env["IS_SANDBOX"] = "1"
    return env


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0
