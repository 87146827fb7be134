"""Choosing the registry: ``database_url`` from a flag, ``HOTSESSION_DATABASE_URL`` or the file
selects Postgres; nothing selects SQLite in the state dir; a bad URL is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from hotsession.cli.main import main
from hotsession.config import Config
from hotsession.registry.backends import registry_for
from hotsession.registry.postgres import PostgresRegistry
from hotsession.registry.sqlite import SqliteRegistry
from hotsession.settings import SettingsError, load_settings

URL = "postgresql://hs@db.example:5432/hotsession"


def test_default_is_sqlite_in_the_state_dir(tmp_path: Path) -> None:
    reg = registry_for(Config(state_dir=tmp_path))
    assert isinstance(reg, SqliteRegistry) and reg.path == str(tmp_path / "hotsession.db")


def test_database_url_selects_postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("HOTSESSION_DATABASE_URL", "HOTSESSION_DATABASE_SCHEMA"):
        monkeypatch.delenv(key, raising=False)
    path = tmp_path / "hs.toml"
    path.write_text(f'database_url = "{URL}"\ndatabase_schema = "team_a"\n')
    from_file = load_settings(path, {}).config
    assert (from_file.database_url, from_file.database_schema) == (URL, "team_a")
    reg = registry_for(from_file)
    assert isinstance(reg, PostgresRegistry) and reg.schema == "team_a"

    monkeypatch.setenv("HOTSESSION_DATABASE_URL", URL + "_env")
    assert load_settings(path, {}).config.database_url == URL + "_env"
    flagged = load_settings(path, {"database_url": URL + "_flag"}).config
    assert flagged.database_url == URL + "_flag"


def test_a_bad_database_url_or_schema_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="postgresql://"):
        Config(state_dir=tmp_path, database_url="mysql://x/y")
    with pytest.raises(ValidationError, match="database_schema"):
        Config(state_dir=tmp_path, database_schema="Robert'); DROP TABLE")
    with pytest.raises(SettingsError, match="database_url"):
        load_settings(None, {"database_url": "sqlite:///x"})


def test_serve_has_the_flag() -> None:
    out = CliRunner().invoke(main, ["serve", "--help"]).output
    assert "--database-url" in out
