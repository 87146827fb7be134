"""Settings of a hotsession instance (library or daemon). Cheap to build; nothing happens here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/hotsession`` (``~/.local/state/hotsession``)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "hotsession"


@dataclass
class Config:
    """Every knob of the engine; the CLI, env vars and the TOML file all map onto these fields."""

    state_dir: Path = field(default_factory=default_state_dir)
    cli_path: str | None = None
    # A line of CLI output may hold a whole image or a large file: the SDK's 1 MiB default
    # silently kills sessions (cli-and-sdk notes §0.4). 64 MiB covers what we have seen.
    max_line_bytes: int = 64 * 1024 * 1024
    spawn_timeout_s: float = 60.0
    # No output from the CLI for this long ends the turn and kills the process. Long silent tool
    # runs (a build, a test suite) are normal, so the default is generous.
    watchdog_s: float = 900.0
    interrupt_grace_s: float = 10.0
    queue_max: int = 16
    prompt_limit_bytes: int = 1024 * 1024
    permission_timeout_s: float = 300.0
    allow_root_bypass: bool = False
    # Pool and memory (the warm pool uses these).
    pool_enabled: bool = True
    pool_min: int = 0
    pool_max: int = 8
    pool_target_miss: float = 0.01
    keep_alive_s: float = 600.0
    memory_budget_mb: float | None = None
    agent_memory_cap_mb: float | None = None
    agent_max_turns: int | None = None
    agent_max_age_s: float | None = None
    max_concurrent_spawns: int = 2
    # Pool tuning (hotsession.pool / hotsession.sizing; docs/pool.md).
    pool_refill_per_s: float = 2.0  # token bucket of spare spawns
    pool_tick_s: float = 0.5  # the pool's control loop period
    pool_default_tau_s: float = 1.0  # cold start assumed until one is measured
    pool_rate_window_s: float = 60.0  # λ's stable window (the panic window is 10 % of it)
    pool_failing_after: int = 3  # consecutive spawn failures that mark a profile failing
    pool_failing_retry_s: float = 60.0  # a failing profile is tried again after this
    pool_spare_max_age_s: float = 1800.0  # an idle spare older than this is replaced
    pool_deep_warmup: bool = True  # run hotsession.warmup on each spare before it is ready
    # A miss may take a spare of a profile that differs only in model / permission mode and switch
    # it with control requests (docs/pool.md, "Switching model and permission mode at claim time").
    pool_switch_at_claim: bool = True
    memory_budget_fraction: float = 0.5  # budget = this x available memory at start (if unset)
    agent_recycle_jitter: float = 0.1  # max turns / age limits get up to +10 % per process

    @property
    def db_path(self) -> Path:
        """The SQLite registry's file."""
        return Path(self.state_dir) / "hotsession.db"
