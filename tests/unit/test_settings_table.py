"""docs/api.md's settings table is true: each setting works as a flag, a variable and a file key.

The test reads the table from the document, so a row added there is checked too; it runs the
real ``hotsession serve`` command (click's runner) with the daemon replaced by a recorder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from hotsession import daemon
from hotsession.cli.main import main
from hotsession.config import Config
from hotsession.settings import (
    Settings,
    is_optional,
    load_settings,
    setting_fields,
    value_type,
)

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def table_rows() -> list[tuple[list[str], list[str]]]:
    """(setting names, default texts) of each row of the Configuration table."""
    text = API_DOC.read_text()
    section = text[text.index("## Configuration") :]
    section = section[: section.index("\n## ", 1)]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([a-z_]+)`", cells[0])
        defaults = [d.strip().strip("`") for d in re.sub(r"\(.*?\)", "", cells[1]).split(",")]
        rows.append((names, defaults))
    return rows


def documented() -> Iterator[tuple[str, str]]:
    for names, defaults in table_rows():
        assert len(names) == len(defaults), (names, defaults)
        yield from zip(names, defaults, strict=True)


DOCUMENTED = list(documented())


def current(settings: Settings, name: str) -> Any:
    return getattr(settings.config if name in Config.model_fields else settings, name)


def sample(name: str, tmp_path: Path) -> tuple[str, Any]:
    """A valid value other than the default: (as text, as the setting holds it)."""
    kind = value_type(name)
    default = setting_fields()[name].default
    if name == "state_dir":
        return str(tmp_path / "elsewhere"), tmp_path / "elsewhere"
    if name == "log_level":
        return "debug", "debug"
    if name == "database_url":
        return "postgresql://hs@db.example/hs", "postgresql://hs@db.example/hs"
    if name == "database_schema":
        return "team_a", "team_a"
    if name == "pool_min":  # must not exceed pool_max's default (2)
        return "1", 1
    if kind is bool:
        return str(not default).lower(), not default
    if kind is int:
        value = (default or 0) + 3
        return str(value), value
    if kind is float:
        return "7.5", 7.5
    return "/opt/x", "/opt/x"


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """``hotsession serve`` with ``daemon.run`` replaced by a recorder of its settings."""
    seen: list[Settings] = []

    def record(settings: Settings) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(daemon, "run", record)
    for key in [k for k in os.environ if k.startswith("HOTSESSION_")]:
        monkeypatch.delenv(key)
    return seen


def serve(recorded: list[Settings], *args: str, env: dict[str, str] | None = None) -> Settings:
    result = CliRunner().invoke(main, ["serve", *args], env=env)
    assert result.exit_code == 0, result.output
    return recorded.pop()


def test_the_table_lists_settings_with_their_defaults() -> None:
    fields = setting_fields()
    assert len(DOCUMENTED) >= 15
    for name, default in DOCUMENTED:
        assert name in fields, f"docs/api.md lists {name!r}, which is no setting"
        if name in ("state_dir",):
            continue
        value = fields[name].default
        if value is None:
            assert default.startswith("none"), (name, default)
        elif isinstance(value, bool):
            assert default == str(value).lower(), (name, default)
        else:
            assert default == str(value).removesuffix(".0"), (name, default, value)


@pytest.mark.parametrize(("name", "_default"), DOCUMENTED)
def test_each_setting_is_a_flag_a_variable_and_a_file_key(
    name: str, _default: str, tmp_path: Path, recorded: list[Settings]
) -> None:
    text, value = sample(name, tmp_path)
    env = f"HOTSESSION_{name.upper()}"
    assert current(load_settings(None, {}, environ={env: text}), name) == value
    toml = tmp_path / "hs.toml"
    literal = text if value_type(name) in (int, float, bool) else f'"{text}"'
    toml.write_text(f"{name} = {literal}\n")
    assert current(load_settings(toml, {}, environ={}), name) == value
    flag = "--" + name.replace("_", "-")
    switch = [flag if value else f"--no-{flag[2:]}"]
    args = switch if value_type(name) is bool else [flag, text]
    assert current(serve(recorded, *args), name) == value
    # and through the real command, the variable too
    assert current(serve(recorded, env={env: text}), name) == value


@pytest.mark.parametrize(
    "name", [n for n, _ in DOCUMENTED if is_optional(n) and value_type(n) in (int, float)]
)
def test_none_clears_an_optional_number_in_each_form(
    name: str, tmp_path: Path, recorded: list[Settings]
) -> None:
    toml = tmp_path / "hs.toml"
    toml.write_text(f"{name} = 5\n")
    env = f"HOTSESSION_{name.upper()}"
    assert current(load_settings(toml, {}, environ={}), name) == 5
    assert current(load_settings(toml, {}, environ={env: "none"}), name) is None
    flag = "--" + name.replace("_", "-")
    cleared = serve(recorded, "--config", str(toml), flag, "none", env={env: "6"})
    assert current(cleared, name) is None
    assert current(serve(recorded, "--config", str(toml), env={env: "NONE"}), name) is None


def test_click_prefixed_variables_are_not_read(recorded: list[Settings]) -> None:
    """click's automatic prefix made ``serve`` read ``HOTSESSION_SERVE_PORT`` too."""
    settings = serve(recorded, env={"HOTSESSION_SERVE_PORT": "9999", "HOTSESSION_SERVE_HOST": "x"})
    assert (settings.host, settings.port) == ("127.0.0.1", 8765)
    assert serve(recorded, env={"HOTSESSION_PORT": "9998"}).port == 9998


def test_a_bad_value_is_one_usage_line(recorded: list[Settings]) -> None:
    result = CliRunner().invoke(main, ["serve", "--memory-budget-mb", "lots"])
    assert result.exit_code == 2
    assert "--memory-budget-mb:" in result.output and not recorded
    result = CliRunner().invoke(main, ["serve"], env={"HOTSESSION_POOL_MAX": "-1"})
    assert result.exit_code == 2 and "HOTSESSION_POOL_MAX:" in result.output


def test_config_is_frozen_and_validated() -> None:
    config = Config(pool_max=3)
    with pytest.raises(ValidationError):
        config.pool_max = 4  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Config(pool_max=-1)
    with pytest.raises(ValidationError):
        Config(pool_min=5, pool_max=2)
    with pytest.raises(ValidationError):
        Config(pool_maxx=2)  # type: ignore[call-arg]
    assert config.model_copy(update={"pool_max": 4}).pool_max == 4


def test_serve_help_makes_no_promise_about_logs(recorded: list[Settings]) -> None:
    out = CliRunner().invoke(main, ["serve", "--help"]).output
    assert "logs" not in out.split("--state-dir", 1)[1].split("--", 1)[0]
