"""Settings of the daemon: a TOML file, ``HOTSESSION_*`` environment variables and CLI flags.

Precedence, highest first: CLI flags > environment > file > defaults. Every field of
:class:`hotsession.config.Config` can be set in all three places under the same name
(``pool_max`` in the file, ``HOTSESSION_POOL_MAX`` in the environment, ``--pool-max`` on the
command line for the flags ``serve`` has), plus the daemon's own ``host``, ``port``,
``log_level``, ``sse_keepalive_s`` and ``body_limit_bytes``.

Tenants exist only in the file::

    [[tenants]]
    name = "alice"
    token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    roots = ["/srv/alice"]
    claude_config_dir = "/srv/alice/.claude"   # optional

With no tenant configured the daemon serves one local tenant, ``local``: its token is created on
the first start and kept in ``<state_dir>/token`` (mode 0600), and its root is ``/``. A root
limits where sessions may *start*; it is no sandbox (an agent with Bash reaches whatever the
daemon's user can), so for the local user, who holds the same powers in their own shell, a
narrower default root would only get in the way. The local tenant uses the user's own Claude
config (their credentials keep working); a configured tenant with ``claude_config_dir`` gets
``CLAUDE_CONFIG_DIR`` in its agents' environment (its own credentials, transcripts and settings).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import secrets
import stat
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotsession.config import Config

log = logging.getLogger(__name__)

ENV_PREFIX = "HOTSESSION_"
LOCAL_TENANT = "local"
TOKEN_FILE = "token"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SettingsError(ValueError):
    """The settings are invalid; the message says which key and why."""


@dataclass(frozen=True)
class Tenant:
    """Who a token belongs to and where its sessions may start."""

    name: str
    token_sha256: str
    roots: tuple[str, ...]
    claude_config_dir: str | None = None

    def env(self) -> dict[str, str]:
        """Environment every agent process of this tenant gets on top of the daemon's."""
        return {"CLAUDE_CONFIG_DIR": self.claude_config_dir} if self.claude_config_dir else {}


@dataclass
class Settings:
    """Everything ``serve`` needs: the engine's Config plus the HTTP side and the tenants."""

    config: Config = field(default_factory=Config)
    host: str = "127.0.0.1"
    port: int = 8765
    log_level: str = "info"
    # A comment line on idle SSE streams, so proxies and clients see the connection is alive.
    sse_keepalive_s: float = 15.0
    # A response write that cannot go out for this long (a client that stopped reading, its
    # buffers full) drops the connection; the turn goes on and the client can replay it.
    sse_send_timeout_s: float = 30.0
    # Request bodies above this are refused before parsing (413). 0: derived from the prompt
    # limit (a JSON-escaped prompt can be up to 6x its UTF-8 size) plus room for the options.
    body_limit_bytes: int = 0
    tenants: list[Tenant] = field(default_factory=list)
    token_file: Path | None = None  # set when the local tenant's token lives in a file

    @property
    def max_body_bytes(self) -> int:
        """The effective request body cap."""
        if self.body_limit_bytes > 0:
            return self.body_limit_bytes
        return 6 * self.config.prompt_limit_bytes + 1024 * 1024


_DAEMON_KEYS: dict[str, Any] = {
    "host": str,
    "port": int,
    "log_level": str,
    "sse_keepalive_s": float,
    "sse_send_timeout_s": float,
    "body_limit_bytes": int,
}
_CONFIG_TYPES: dict[str, Any] = typing.get_type_hints(Config)
_CONFIG_KEYS = {f.name for f in dataclasses.fields(Config)}
_ALL_KEYS = set(_DAEMON_KEYS) | _CONFIG_KEYS


def hash_token(token: str) -> str:
    """The SHA-256 hex digest the tenant table keeps instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults, the TOML file, ``HOTSESSION_*`` variables and ``overrides`` (the flags).

    ``overrides`` values that are None count as not given. Raises :class:`SettingsError`.
    """
    environ = os.environ if environ is None else environ
    if config_file is None and environ.get(ENV_PREFIX + "CONFIG"):
        config_file = environ[ENV_PREFIX + "CONFIG"]
    values: dict[str, Any] = {}
    tenants: list[Tenant] = []
    if config_file is not None:
        data = _read_toml(Path(config_file))
        tenant_tables = data.pop("tenants", [])
        for key, raw in data.items():
            name = key.replace("-", "_")
            if name not in _ALL_KEYS:
                raise SettingsError(f"{config_file}: unknown setting {key!r}")
            values[name] = _coerce(name, raw, source=f"{config_file}: {key}")
        tenants = _parse_tenants(tenant_tables, source=str(config_file))
    for name in sorted(_ALL_KEYS):
        env_key = ENV_PREFIX + name.upper()
        if env_key in environ:
            values[name] = _coerce(name, environ[env_key], source=env_key)
    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        name = key.replace("-", "_")
        if name not in _ALL_KEYS:
            raise SettingsError(f"unknown setting {key!r}")
        values[name] = _coerce(name, raw, source=f"--{name.replace('_', '-')}")
    config = Config(**{k: v for k, v in values.items() if k in _CONFIG_KEYS})
    config.state_dir = Path(config.state_dir).expanduser()
    settings = Settings(config=config, tenants=tenants)
    for name in _DAEMON_KEYS:
        if name in values:
            setattr(settings, name, values[name])
    _validate(settings)
    return settings


def ensure_local_tenant(settings: Settings) -> str | None:
    """With no tenant configured, create (first start) or read the local token.

    Returns the token when it was created now (so the caller can say where it went), else None.
    """
    if settings.tenants:
        return None
    state_dir = Path(settings.config.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / TOKEN_FILE
    created: str | None = None
    try:
        token = path.read_text(encoding="utf-8").strip()
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, 0o600)
            log.warning("%s was readable by others (mode %o); now 0600", path, mode)
    except FileNotFoundError:
        token = ""
    if not token:
        token = "hs_" + secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
        os.chmod(path, 0o600)
        created = token
    settings.tenants = [Tenant(LOCAL_TENANT, hash_token(token), ("/",))]
    settings.token_file = path
    return created


# -- parsing ------------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError(f"config file not found: {path}") from None
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: invalid TOML: {exc}") from None


def _expected_type(name: str) -> Any:
    if name in _DAEMON_KEYS:
        return _DAEMON_KEYS[name]
    hint = _CONFIG_TYPES[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return (args[0], True)  # optional
    return hint


def _coerce(name: str, raw: Any, *, source: str) -> Any:
    """Turn a file, env or flag value into the field's type (``none``/"" clear an optional)."""
    expected = _expected_type(name)
    optional = False
    if isinstance(expected, tuple):
        expected, optional = expected
    if isinstance(raw, str):
        text = raw.strip()
        if optional and text.lower() in ("", "none", "null"):
            return None
        try:
            if expected is bool:
                low = text.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if expected is int:
                return int(text)
            if expected is float:
                return float(text)
        except ValueError:
            raise SettingsError(f"{source}: expected {expected.__name__}, got {raw!r}") from None
        if expected is Path:
            return Path(text)
        return text
    if raw is None and optional:
        return None
    ok = (
        (expected is bool and isinstance(raw, bool))
        or (expected is int and isinstance(raw, int) and not isinstance(raw, bool))
        or (expected is float and isinstance(raw, int | float) and not isinstance(raw, bool))
        or (expected is Path and isinstance(raw, os.PathLike))
    )
    if not ok:
        raise SettingsError(f"{source}: expected {expected.__name__}, got {raw!r}")
    return float(raw) if expected is float else raw


def _parse_tenants(tables: Any, *, source: str) -> list[Tenant]:
    if not isinstance(tables, list):
        raise SettingsError(f"{source}: 'tenants' must be an array of tables ([[tenants]])")
    out: list[Tenant] = []
    for i, table in enumerate(tables):
        where = f"{source}: tenants[{i}]"
        if not isinstance(table, dict):
            raise SettingsError(f"{where}: must be a table")
        unknown = set(table) - {"name", "token", "token_sha256", "roots", "claude_config_dir"}
        if unknown:
            raise SettingsError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        name = table.get("name")
        if not isinstance(name, str) or not _TENANT_NAME.match(name):
            raise SettingsError(f"{where}: 'name' must be 1-64 letters, digits, '_', '.', '-'")
        where = f"{source}: tenant {name!r}"
        token, digest = table.get("token"), table.get("token_sha256")
        if (token is None) == (digest is None):
            raise SettingsError(f"{where}: give exactly one of 'token' and 'token_sha256'")
        if token is not None:
            if not isinstance(token, str) or len(token) < 16:
                raise SettingsError(f"{where}: 'token' must be a string of 16+ characters")
            digest = hash_token(token)
        elif not isinstance(digest, str) or not _HEX64.match(digest.lower()):
            raise SettingsError(f"{where}: 'token_sha256' must be 64 hex digits")
        roots = table.get("roots")
        if (
            not isinstance(roots, list)
            or not roots
            or not all(isinstance(r, str) and os.path.isabs(os.path.expanduser(r)) for r in roots)
        ):
            raise SettingsError(f"{where}: 'roots' must be a non-empty list of absolute paths")
        resolved = tuple(os.path.realpath(os.path.expanduser(r)) for r in roots)
        for root in resolved:
            if not os.path.isdir(root):
                log.warning("tenant %s: root %s does not exist (yet)", name, root)
        config_dir = table.get("claude_config_dir")
        if config_dir is not None:
            if not isinstance(config_dir, str) or not os.path.isabs(os.path.expanduser(config_dir)):
                raise SettingsError(f"{where}: 'claude_config_dir' must be an absolute path")
            config_dir = os.path.expanduser(config_dir)
        out.append(Tenant(name, digest.lower(), resolved, config_dir))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise SettingsError(f"{source}: tenant names must be unique")
    digests = [t.token_sha256 for t in out]
    if len(set(digests)) != len(digests):
        raise SettingsError(f"{source}: two tenants share a token")
    return out


def _validate(settings: Settings) -> None:
    c = settings.config
    if not 0 <= settings.port <= 65535:
        raise SettingsError(f"port must be 0-65535, got {settings.port}")
    if settings.log_level.lower() not in ("critical", "error", "warning", "info", "debug"):
        raise SettingsError("log_level must be debug, info, warning, error or critical")
    settings.log_level = settings.log_level.lower()
    if settings.sse_keepalive_s <= 0:
        raise SettingsError("sse_keepalive_s must be positive")
    if settings.sse_send_timeout_s <= 0:
        raise SettingsError("sse_send_timeout_s must be positive")
    for name in ("prompt_limit_bytes", "queue_max", "max_line_bytes"):
        if getattr(c, name) < 1:
            raise SettingsError(f"{name} must be at least 1")
    for name in ("pool_min", "pool_max", "max_concurrent_spawns"):
        if getattr(c, name) < 0:
            raise SettingsError(f"{name} must not be negative")
    if c.pool_min > c.pool_max:
        raise SettingsError("pool_min must not exceed pool_max")
    for name in (
        "spawn_timeout_s",
        "watchdog_s",
        "interrupt_grace_s",
        "permission_timeout_s",
        "keep_alive_s",
    ):
        if getattr(c, name) <= 0:
            raise SettingsError(f"{name} must be positive")
    for name in ("memory_budget_mb", "agent_memory_cap_mb", "agent_max_age_s"):
        value = getattr(c, name)
        if value is not None and value <= 0:
            raise SettingsError(f"{name} must be positive")
    if c.agent_max_turns is not None and c.agent_max_turns < 1:
        raise SettingsError("agent_max_turns must be at least 1")
