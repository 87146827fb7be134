"""Which registry a :class:`~hotsession.config.Config` asks for: SQLite in the state dir by
default, Postgres when ``database_url`` is set (``Config`` checks it is a postgresql:// URL)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hotsession.errors import HotsessionError
from hotsession.registry.base import Registry

if TYPE_CHECKING:
    from hotsession.config import Config

__all__ = ["registry_for"]


def registry_for(config: Config) -> Registry:
    """A new, unopened registry for ``config``."""
    url = config.database_url
    if not url:
        from hotsession.registry.sqlite import SqliteRegistry

        return SqliteRegistry(config.db_path)
    try:
        from hotsession.registry.postgres import PostgresRegistry
    except ImportError as exc:
        raise HotsessionError(
            f"database_url needs the postgres extra (pip install 'hotsession[postgres]'): {exc}"
        ) from exc
    return PostgresRegistry(url, schema=config.database_schema, retry_for=config.database_retry_s)
