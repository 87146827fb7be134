"""A Postgres connection pool with bounded retries, shared by the registry and the transcript store.

Connections
    A :class:`psycopg_pool.AsyncConnectionPool` of autocommit connections whose ``search_path``
    is the store's schema (so several deployments, or tests, can share one database). A job is
    ``fn(conn)``: one statement runs as its own transaction; a job that needs more opens
    ``conn.transaction()`` itself.

Faults
    A server restart, a dropped connection (``pg_terminate_backend``, a network cut) or a server
    that is starting up surface as :class:`psycopg.OperationalError` (or ``InterfaceError`` on
    a connection already closed). :meth:`PgPool.run` then asks the pool to test its idle
    connections (replacing the dead ones) and runs the job again, with a backoff, for at most
    ``retry_for`` seconds. The pool's own reconnection backs off exponentially (its next try
    may come long after the server is back), so when the pool has no connection to give, a
    direct connection probes the server, and if it answers the pool is replaced by a fresh one.
    After ``retry_for`` it raises
    :class:`~hotsession.errors.RegistryUnavailable`. Every job must therefore be idempotent
    (upserts, conditional updates): a connection lost during COMMIT leaves it unknown whether
    the job was applied. Any other database error becomes a
    :class:`~hotsession.errors.RegistryError` at once.

Schema
    ``migrate`` applies numbered migrations in one transaction under a transaction-scoped
    advisory lock, so daemons starting together migrate once; a database whose version is
    newer than the code's is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from hotsession.errors import HotsessionError, RegistryError, RegistryUnavailable

__all__ = ["PgPool", "redact_url"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Conn = AsyncConnection[TupleRow]

_SCHEMA_NAME: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: First backoff after a connection failure; doubles up to ``_MAX_BACKOFF``.
_FIRST_BACKOFF: Final = 0.05
_MAX_BACKOFF: Final = 1.0


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the server cannot be reached (rather than refusing the job)."""
    if isinstance(exc, PoolTimeout | psycopg.InterfaceError):
        return True
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith(("08", "57P"))


class PgPool:
    """Connections to one Postgres schema; see the module doc."""

    def __init__(
        self,
        url: str,
        *,
        schema: str,
        min_size: int = 1,
        max_size: int = 8,
        retry_for: float = 5.0,
        connect_timeout: float = 5.0,
        name: str = "hotsession",
    ) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"invalid schema name {schema!r} (lowercase letters, digits, _)")
        if retry_for < 0:
            raise ValueError("retry_for must be >= 0")
        self.url = url
        self.schema = schema
        self.retry_for = retry_for
        self.connect_timeout = connect_timeout
        self._sizes = (min_size, max_size)
        self._name = name
        self._kwargs: dict[str, Any] = {
            "autocommit": True,
            "options": f"-c search_path={schema}",
            "application_name": name,
            "connect_timeout": max(1, round(connect_timeout)),
        }
        self._pool = self._make_pool()
        self._generation = 0
        self._revive_lock = asyncio.Lock()
        self._closed = False

    def _make_pool(self) -> AsyncConnectionPool[Conn]:
        return AsyncConnectionPool(
            self.url,
            min_size=self._sizes[0],
            max_size=self._sizes[1],
            open=False,
            name=self._name,
            timeout=self.connect_timeout,
            kwargs=self._kwargs,
        )

    async def open(self) -> None:
        """Connect (``min_size`` connections); ``RegistryUnavailable`` when the server is down."""
        try:
            await self._pool.open(wait=True, timeout=self.connect_timeout)
        except (psycopg.Error, PoolTimeout) as exc:
            with contextlib.suppress(Exception):
                await self._pool.close()
            raise RegistryUnavailable(
                f"cannot connect to Postgres at {redact_url(self.url)}: {exc}", cause=str(exc)
            ) from exc

    async def close(self) -> None:
        self._closed = True
        await self._pool.close()

    async def _revive(self, generation: int) -> bool:
        """Replace the pool when the server answers a direct connection (see module doc);
        whether the pool is a new one."""
        async with self._revive_lock:
            if self._closed:
                return False
            if generation != self._generation:
                return True  # replaced meanwhile
            try:
                probe = await AsyncConnection.connect(self.url, **self._kwargs)
            except psycopg.Error:
                return False  # still down: the caller backs off
            await probe.close()
            old, self._pool = self._pool, self._make_pool()
            self._generation += 1
            await self._pool.open(wait=False)
            log.info("registry: Postgres answers again; connection pool replaced")
        with contextlib.suppress(Exception):
            await old.close(timeout=1.0)
        return True

    async def run(self, fn: Callable[[Conn], Awaitable[T]], doing: str) -> T:
        """Run ``fn(conn)``, retrying on connection faults for at most ``retry_for`` seconds."""
        deadline = time.monotonic() + self.retry_for
        backoff = _FIRST_BACKOFF
        attempt = 0
        while True:
            attempt += 1
            generation = self._generation
            try:
                remaining = max(deadline - time.monotonic(), 0.05)
                wait = min(remaining, self.connect_timeout)
                async with self._pool.connection(timeout=wait) as conn:
                    return await fn(conn)
            except HotsessionError:
                raise
            except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
                # No connection at all (PoolTimeout, PoolClosed): is the server back?
                if isinstance(exc, PoolTimeout) and await self._revive(generation):
                    continue
                if time.monotonic() + backoff > deadline:
                    text = str(exc).strip() or type(exc).__name__
                    kind = RegistryUnavailable if _unreachable(exc) else RegistryError
                    raise kind(
                        f"registry cannot {doing}: {text} (after {attempt} attempts)",
                        cause=text,
                    ) from exc
                log.info("registry: cannot %s (%s), attempt %d; retrying", doing, exc, attempt)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                with contextlib.suppress(Exception):
                    await self._pool.check()  # replace the connections a restart broke
            except psycopg.Error as exc:
                text = str(exc).strip() or type(exc).__name__
                raise RegistryError(f"registry cannot {doing}: {text}", cause=text) from exc

    async def migrate(self, migrations: Sequence[str], *, what: str) -> None:
        """Bring the schema to ``len(migrations)``; see the module doc."""
        target = len(migrations)
        lock_key = f"hotsession-migrate:{self.schema}:{what}"
        version_table = f"{what}_schema_version"

        async def job(conn: Conn) -> None:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock_key,))
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {version_table} (version integer NOT NULL)"
                )
                cur = await conn.execute(f"SELECT version FROM {version_table}")
                row = await cur.fetchone()
                version = 0 if row is None else int(row[0])
                if version > target:
                    raise RegistryError(
                        f"{what} schema {self.schema!r} has version {version}, newer than the"
                        f" {target} this hotsession knows: upgrade hotsession or use another"
                        " schema",
                        schema_version=version,
                        supported_version=target,
                    )
                for n in range(version + 1, target + 1):
                    await conn.execute(migrations[n - 1])
                    log.info("%s: migrated schema %s to version %d", what, self.schema, n)
                if row is None:
                    await conn.execute(
                        f"INSERT INTO {version_table} (version) VALUES (%s)", (target,)
                    )
                elif version != target:
                    await conn.execute(f"UPDATE {version_table} SET version = %s", (target,))

        await self.run(job, "migrate the schema")
