"""Where the query API reads: one small contract, a PostgreSQL and a ClickHouse implementation.

``GATEWAY_STORE=auto`` reads PostgreSQL when ``DATABASE_URL`` is set (a pool of async
connections; the postgres sink keeps it current), else ClickHouse. Embedded chdb is owned by the
ClickHouse sink's process, so the ClickHouse store calls a ``query(sql, params) -> (columns, rows)``
function rather than opening the store itself: here a clickhouse-connect client, one query at a
time on its own thread (chdb runs one query at a time per process anyway).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import psycopg
from psycopg_pool import AsyncConnectionPool

from streams.settings import Settings

Rows = tuple[list[str], list[Sequence[Any]]]
QueryFn = Callable[[str, dict[str, Any]], Rows]

CLICKHOUSE_UNKNOWN_TABLE = 60


class MissingTable(LookupError):
    """The table is declared but not created in this store (its migration has not run)."""


class Store(Protocol):
    dialect: str  # "postgres" or "clickhouse": the SQL flavour query.build_sql writes

    async def fetch(self, sql: str, params: dict[str, Any]) -> Rows: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


class PostgresStore:
    dialect = "postgres"

    def __init__(self, conninfo: str, max_size: int = 8) -> None:
        self._pool = AsyncConnectionPool(conninfo, min_size=1, max_size=max_size, open=False, kwargs={"autocommit": True})

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def fetch(self, sql: str, params: dict[str, Any]) -> Rows:
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(sql, params)
                return [d.name for d in cur.description or ()], await cur.fetchall()
        except psycopg.errors.UndefinedTable as exc:
            raise MissingTable(str(exc).splitlines()[0]) from None

    async def ping(self) -> None:
        async with self._pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")

    async def close(self) -> None:
        await self._pool.close()


class ClickHouseStore:
    dialect = "clickhouse"

    def __init__(self, query: QueryFn) -> None:
        self._query = query
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="gateway-clickhouse")

    async def fetch(self, sql: str, params: dict[str, Any]) -> Rows:
        from sinks.query import QueryError

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._query, sql, params)
        except QueryError as exc:
            if f"Code: {CLICKHOUSE_UNKNOWN_TABLE}." in str(exc) or "UNKNOWN_TABLE" in str(exc):
                raise MissingTable(str(exc).strip().splitlines()[0]) from None
            raise

    async def ping(self) -> None:
        await self.fetch("SELECT 1", {})

    async def close(self) -> None:
        self._pool.shutdown(wait=False)


def store_query(settings: Settings) -> QueryFn:
    """A ``query`` function on the ClickHouse store through :mod:`sinks.query`: a server directly, or
    embedded chdb through the process that owns it."""
    from sinks.query import query

    def run(sql: str, params: dict[str, Any]) -> Rows:
        result = query(settings, sql, params)
        return list(result.column_names), list(result.rows)

    return run


async def open_store(settings: Settings) -> Store:
    kind = settings.gateway.gateway_store
    if kind == "auto":
        kind = "postgres" if settings.stores.database_url else "clickhouse"
    if kind == "postgres":
        if not settings.stores.database_url:
            raise ValueError("GATEWAY_STORE=postgres needs DATABASE_URL")
        store = PostgresStore(settings.stores.database_url)
        await store.open()
        return store
    return ClickHouseStore(store_query(settings))
