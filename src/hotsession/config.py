"""Settings of a hotsession instance (library or daemon). Cheap to build; nothing happens here.

:class:`Config` is a frozen pydantic model: every value is checked when it is built (a library
user's ``Config(pool_max=-1)`` fails as surely as ``--pool-max -1``), and nothing changes it
afterwards (``config.model_copy(update={...})`` makes a changed copy). The daemon's loader
(``hotsession.settings``) fills it from the TOML file, ``HOTSESSION_*`` variables and flags; a new
engine setting is one field here, with its bounds and its one-line description, and appears in all
three places by itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/hotsession`` (``~/.local/state/hotsession``)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "hotsession"


class Config(BaseModel):
    """Every knob of the engine; the CLI, env vars and the TOML file all map onto these fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="Registry, token, daemon.json and the lock (one hotsession per state dir).",
    )
    cli_path: str | None = Field(None, description="Another Claude Code binary.")
    # Where the registry lives: SQLite in state_dir, or Postgres (needs the `postgres` extra).
    database_url: str | None = Field(
        None,
        description="A postgresql:// URL: keep the registry in Postgres (docs/cluster.md).",
    )
    database_schema: str = Field(
        "hotsession",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="The Postgres schema of the registry's tables.",
    )
    database_retry_s: float = Field(
        5.0, ge=0, description="Retry a lost Postgres connection this long before a 503."
    )
    # A line of CLI output may hold a whole image or a large file: the SDK's 1 MiB default
    # silently kills sessions (cli-and-sdk notes §0.4). 64 MiB covers what we have seen.
    max_line_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Longest CLI output line.")
    spawn_timeout_s: float = Field(60.0, gt=0, description="Time a CLI has to start.")
    # No output from the CLI for this long ends the turn and kills the process. Long silent tool
    # runs (a build, a test suite) are normal, so the default is generous.
    watchdog_s: float = Field(900.0, gt=0, description="A turn silent this long fails.")
    interrupt_grace_s: float = Field(10.0, gt=0, description="Time an interrupt has to land.")
    queue_max: int = Field(16, ge=1, description="Prompts waiting per session.")
    prompt_limit_bytes: int = Field(1024 * 1024, ge=1, description="Largest prompt accepted.")
    permission_timeout_s: float = Field(
        300.0, gt=0, description="Unanswered permission requests are denied after this."
    )
    allow_root_bypass: bool = Field(
        False,
        description="Allow bypassPermissions when running as root (sets IS_SANDBOX=1 for agents).",
    )
    # Pool and memory (the warm pool uses these).
    pool_enabled: bool = Field(True, description="Keep a warm pool of spare processes.")
    pool_min: int = Field(0, ge=0, description="Fewest spares per profile.")
    pool_max: int = Field(2, ge=0, description="Most spares per profile.")
    pool_target_miss: float = Field(0.01, gt=0, lt=1, description="Miss rate the sizing aims at.")
    keep_alive_s: float = Field(600.0, gt=0, description="Idle time before eviction.")
    memory_budget_mb: float | None = Field(None, gt=0, description="Memory for all agents.")
    agent_memory_cap_mb: float | None = Field(None, gt=0, description="Recycle an agent above.")
    agent_max_turns: int | None = Field(None, ge=1, description="Recycle an agent after N turns.")
    agent_max_age_s: float | None = Field(None, gt=0, description="Recycle an agent this old.")
    max_concurrent_spawns: int = Field(2, ge=0, description="Spare spawns at once.")
    # Pool tuning (hotsession.pool, its sizing module; docs/pool.md).
    pool_refill_per_s: float = Field(2.0, gt=0, description="Token bucket of spare spawns.")
    pool_tick_s: float = Field(0.5, gt=0, description="The pool's control loop period.")
    pool_default_tau_s: float = Field(
        1.0, gt=0, description="Cold start assumed until one is measured."
    )
    pool_rate_window_s: float = Field(
        60.0, gt=0, description="Arrival rate's window (the panic window is 10 % of it)."
    )
    pool_failing_after: int = Field(
        3, ge=1, description="Consecutive spawn failures that mark a profile failing."
    )
    pool_failing_retry_s: float = Field(
        60.0, gt=0, description="A failing profile is tried again after this."
    )
    pool_spare_max_age_s: float = Field(
        1800.0, gt=0, description="An idle spare older than this is replaced."
    )
    pool_deep_warmup: bool = Field(True, description="Warm each spare up before it is ready.")
    # A miss may take a spare of a profile that differs only in model / permission mode and switch
    # it with control requests (docs/pool.md, "Switching model and permission mode at claim time").
    pool_switch_at_claim: bool = Field(
        True, description="A miss may switch a spare's model / permission mode."
    )
    memory_budget_fraction: float = Field(
        0.5, gt=0, le=1, description="Budget = this x available memory at start (if unset)."
    )
    agent_recycle_jitter: float = Field(
        0.1, ge=0, le=1, description="Max turns / age limits get up to this much more per agent."
    )

    @field_validator("state_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("database_url must be a postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _pool_bounds(self) -> Self:
        if self.pool_min > self.pool_max:
            raise ValueError("pool_min must not exceed pool_max")
        return self

    @property
    def db_path(self) -> Path:
        """The SQLite registry's file."""
        return Path(self.state_dir) / "hotsession.db"
