"""Settings of the daemon: a TOML file, ``HOTSESSION_*`` environment variables and CLI flags.

Precedence, highest first: CLI flags > environment > file > defaults. Every setting — each field
of :class:`hotsession.config.Config` (the engine's) and of :class:`DaemonSettings` (``host``,
``port``, ``log_level``, the SSE and body limits) — can be set in all three places under the same
name (``pool_max`` in the file, ``HOTSESSION_POOL_MAX`` in the environment, ``--pool-max`` on the
command line; ``cli/serve.py`` makes the flags from these models). No other ``HOTSESSION_*``
variable is read. Values are validated by the pydantic models (frozen once built); this module
only gathers them, turns ``none`` into "cleared" for optional settings and names the source of a
bad value in its :class:`SettingsError`.

Tenants exist only in the file::

    [[tenants]]
    name = "alice"
    token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    roots = ["/srv/alice"]
    user = "hs-alice"                          # the OS user her agents run as (daemon as root)
    env = { ANTHROPIC_API_KEY = "sk-..." }     # her own secrets, for her agents only
    claude_config_dir = "/srv/alice/.claude"   # optional

Several tenants need a ``user`` each, or ``shared_user = true`` (insecure, see
docs/security.md); hotsession.isolation checks this, the accounts and the roots at start.
``pass_env`` (top level, file only) names more daemon variables that agents of tenants with a
``user`` inherit.

With no tenant configured the daemon serves one local tenant, ``local``: its token is created on
the first start and kept in ``<state_dir>/token`` (mode 0600), and its root is ``/``. A root
limits where sessions may *start*; it is no sandbox (an agent with Bash reaches whatever the
daemon's user can), so for the local user, who holds the same powers in their own shell, a
narrower default root would only get in the way. The local tenant uses the user's own Claude
config (their credentials keep working); a configured tenant with ``claude_config_dir`` gets
``CLAUDE_CONFIG_DIR`` in its agents' environment (its own credentials, transcripts and settings).
"""

from __future__ import annotations

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
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hotsession.config import Config

log = logging.getLogger(__name__)

ENV_PREFIX = "HOTSESSION_"
LOCAL_TENANT = "local"
TOKEN_FILE = "token"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Words that clear an optional setting (``--memory-budget-mb none``).
CLEAR_WORDS = frozenset({"", "none", "null"})


class SettingsError(ValueError):
    """The settings are invalid; the message says which key and why."""


class Tenant(BaseModel):
    """Who a token belongs to and where its sessions may start (a ``[[tenants]]`` table).

    The file may give the ``token`` itself; it is hashed at once and only ``token_sha256`` is
    kept. A new tenant setting is one field here.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_TENANT_NAME.pattern)
    token_sha256: str
    roots: tuple[str, ...] = Field(min_length=1)
    claude_config_dir: str | None = None
    # Isolation (hotsession.isolation, docs/security.md).
    user: str | None = Field(None, min_length=1)  # the OS account its agents run as
    home: str | None = None  # its HOME (default: the account's home directory)
    env: dict[str, str] = Field(default_factory=dict)  # its own variables (secrets)
    sandbox: bool | Literal["auto"] = "auto"  # Claude Code's Bash sandbox, "auto": where it works
    sandbox_settings: dict[str, Any] = Field(default_factory=dict)  # merged into ``sandbox``
    memory_max_mb: float | None = Field(None, ge=64)  # all its agents together
    processes_max: int | None = Field(None, ge=8)  # tasks of its user (RLIMIT_NPROC)

    @model_validator(mode="before")
    @classmethod
    def _hash_token(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if ("token" in data) == ("token_sha256" in data):
            raise ValueError("give exactly one of 'token' and 'token_sha256'")
        if "token" in data:
            data = dict(data)
            token = data.pop("token")
            if not isinstance(token, str) or len(token) < 16:
                raise ValueError("'token' must be a string of 16+ characters")
            data["token_sha256"] = hash_token(token)
        return data

    @field_validator("token_sha256")
    @classmethod
    def _digest(cls, value: str) -> str:
        if not _HEX64.match(value.lower()):
            raise ValueError("'token_sha256' must be 64 hex digits")
        return value.lower()

    @field_validator("roots")
    @classmethod
    def _roots(cls, roots: tuple[str, ...]) -> tuple[str, ...]:
        if not all(os.path.isabs(os.path.expanduser(r)) for r in roots):
            raise ValueError("'roots' must be a non-empty list of absolute paths")
        return tuple(os.path.realpath(os.path.expanduser(r)) for r in roots)

    @field_validator("claude_config_dir")
    @classmethod
    def _config_dir(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isabs(os.path.expanduser(value)):
            raise ValueError("'claude_config_dir' must be an absolute path")
        return None if value is None else os.path.expanduser(value)

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and value.isdigit():
            raise ValueError("'user' must be the name of an OS account")
        return value

    @field_validator("home")
    @classmethod
    def _home(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isabs(value):
            raise ValueError("'home' must be an absolute path")
        return None if value is None else os.path.normpath(value)

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not _ENV_NAME.match(k)]
        if bad:
            raise ValueError(f"'env': {bad[0]!r} is not a variable name")
        return value


class DaemonSettings(BaseModel):
    """The HTTP side's own settings (the engine's are :class:`Config`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8765, ge=0, le=65535, description="Port to bind; 0 picks one.")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="Log verbosity (debug also logs every request)."
    )
    # A comment line on idle SSE streams, so proxies and clients see the connection is alive.
    sse_keepalive_s: float = Field(15.0, gt=0, description="Keep-alive comment interval.")
    # A response write that cannot go out for this long (a client that stopped reading, its
    # buffers full) drops the connection; the turn goes on and the client can replay it.
    sse_send_timeout_s: float = Field(
        30.0, gt=0, description="A blocked response write drops the connection after this."
    )
    # Request bodies above this are refused before parsing (413). 0: derived from the prompt
    # limit (a JSON-escaped prompt can be up to 6x its UTF-8 size) plus room for the options.
    body_limit_bytes: int = Field(0, ge=0, description="Request body cap (0: derived).")
    shared_user: bool = Field(
        False,
        description="Let several tenants run as the daemon's user (insecure: docs/security.md).",
    )
    # Cluster mode (docs/cluster.md): join a Ray cluster; the state is in Postgres (database_url).
    cluster: str | None = Field(
        None, description="Ray cluster to join: auto or ray://host:port (needs database_url)."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class Settings(DaemonSettings):
    """Everything ``serve`` needs: the engine's Config plus the HTTP side and the tenants."""

    config: Config = Field(default_factory=Config)
    tenants: tuple[Tenant, ...] = ()
    token_file: Path | None = None  # set when the local tenant's token lives in a file
    config_file: Path | None = None  # the TOML file the settings came from
    # More daemon variables for agents of tenants with a user (file only; hotsession.isolation).
    pass_env: tuple[str, ...] = ()

    @field_validator("pass_env")
    @classmethod
    def _pass_env(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        bad = [n for n in names if not _ENV_NAME.match(n.removesuffix("*"))]
        if bad:
            raise ValueError(f"pass_env: {bad[0]!r} is not a variable name (or PREFIX_*)")
        return names

    @property
    def max_body_bytes(self) -> int:
        """The effective request body cap."""
        if self.body_limit_bytes > 0:
            return self.body_limit_bytes
        return 6 * self.config.prompt_limit_bytes + 1024 * 1024


def setting_fields() -> dict[str, Any]:
    """Every setting by name (the engine's and the daemon's): its pydantic ``FieldInfo``."""
    return {**Config.model_fields, **DaemonSettings.model_fields}


def is_optional(name: str) -> bool:
    """True for settings that ``none`` clears."""
    hint = setting_fields()[name].annotation
    return isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)


def value_type(name: str) -> Any:
    """The setting's type without ``None`` (``int`` for ``int | None``)."""
    hint = setting_fields()[name].annotation
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if isinstance(hint, types.UnionType) else hint


def hash_token(token: str) -> str:
    """The SHA-256 hex digest the tenant table keeps instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults, the TOML file, ``HOTSESSION_*`` variables and ``overrides`` (the flags).

    Only ``HOTSESSION_<SETTING>`` for the settings of :func:`setting_fields` (and
    ``HOTSESSION_CONFIG``) are read. ``overrides`` values that are None count as not given; the
    string ``none`` (any case, or empty) clears an optional setting in every place. Raises
    :class:`SettingsError` naming where the bad value came from.
    """
    environ = os.environ if environ is None else environ
    if config_file is None and environ.get(ENV_PREFIX + "CONFIG"):
        config_file = environ[ENV_PREFIX + "CONFIG"]
    fields = setting_fields()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def put(name: str, raw: Any, source: str) -> None:
        if name not in fields:
            raise SettingsError(f"{source}: unknown setting")
        if isinstance(raw, str) and is_optional(name) and raw.strip().lower() in CLEAR_WORDS:
            raw = None
        elif isinstance(raw, bool) and value_type(name) is not bool:
            raise SettingsError(f"{source}: expected {value_type(name).__name__}, got {raw!r}")
        elif isinstance(raw, str):
            raw = raw.strip()
        values[name], sources[name] = raw, source

    tenants: tuple[Tenant, ...] = ()
    extra: dict[str, Any] = {}
    if config_file is not None:
        data = _read_toml(Path(config_file))
        tenant_tables = data.pop("tenants", [])
        if "pass_env" in data:
            extra["pass_env"], sources["pass_env"] = (
                data.pop("pass_env"),
                f"{config_file}: pass_env",
            )
        extra["config_file"] = Path(config_file)
        for key, raw in data.items():
            put(key.replace("-", "_"), raw, f"{config_file}: {key}")
        tenants = _parse_tenants(tenant_tables, source=str(config_file))
    for name in sorted(fields):
        env_key = ENV_PREFIX + name.upper()
        if env_key in environ:
            put(name, environ[env_key], env_key)
    for key, raw in (overrides or {}).items():
        if raw is not None:
            name = key.replace("-", "_")
            put(name, raw, f"--{name.replace('_', '-')}")
    engine = {k: v for k, v in values.items() if k in Config.model_fields}
    daemon = {k: v for k, v in values.items() if k in DaemonSettings.model_fields}
    try:
        config = Config.model_validate(engine)
        return Settings.model_validate({**daemon, **extra, "config": config, "tenants": tenants})
    except ValidationError as exc:
        raise SettingsError(_explain(exc, sources)) from None


def _explain(exc: ValidationError, sources: Mapping[str, str]) -> str:
    """One line for the first error: where the value came from, and what is wrong with it."""
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"] if part != "config"]
    name = loc[0] if loc else ""
    where = sources.get(name, name or "settings")
    msg = str(err["msg"]).removeprefix("Value error, ")
    msg = msg[:1].lower() + msg[1:]
    if "input" in err and err["type"] != "value_error" and name:
        return f"{where}: {msg} (got {err['input']!r})"
    return f"{where}: {msg}"


def ensure_local_tenant(settings: Settings) -> tuple[Settings, str | None]:
    """With no tenant configured, create (first start) or read the local token.

    Returns the settings with the local tenant, and the token when it was created now (so the
    caller can say where it went), else None.
    """
    if settings.tenants:
        return settings, None
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
    local = Tenant(name=LOCAL_TENANT, token_sha256=hash_token(token), roots=("/",))
    return settings.model_copy(update={"tenants": (local,), "token_file": path}), created


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


def _parse_tenants(tables: Any, *, source: str) -> tuple[Tenant, ...]:
    if not isinstance(tables, list):
        raise SettingsError(f"{source}: 'tenants' must be an array of tables ([[tenants]])")
    out: list[Tenant] = []
    for i, table in enumerate(tables):
        name = table.get("name") if isinstance(table, dict) else None
        where = f"{source}: tenant {name!r}" if isinstance(name, str) else f"{source}: tenants[{i}]"
        if not isinstance(table, dict):
            raise SettingsError(f"{where}: must be a table")
        try:
            tenant = Tenant.model_validate(table)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            raise SettingsError(f"{where}: {field + ': ' if field else ''}{msg}") from None
        for root in tenant.roots:
            if not os.path.isdir(root):
                log.warning("tenant %s: root %s does not exist (yet)", tenant.name, root)
        out.append(tenant)
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise SettingsError(f"{source}: tenant names must be unique")
    digests = [t.token_sha256 for t in out]
    if len(set(digests)) != len(digests):
        raise SettingsError(f"{source}: two tenants share a token")
    return tuple(out)
