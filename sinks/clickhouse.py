"""ClickHouse sink: every record type with a table (``schemas.registry``), inserted as column batches.

Tables are ReplacingMergeTree(version), ordered by the type's ``table_key``, so idempotency comes
from the engine: a replayed batch adds duplicate rows that merges collapse, and queries that must be
exact before merges use FINAL or argMax (examples in infra/sql/clickhouse/examples.sql). The highest
version of a key wins, and among equal versions the last inserted: a later revision of a candle
wins, and so does the indicators record a revision of an earlier window recomputed. Rows are the
record's fields (``sinks.base.layout_of``); times travel as integers in the column's precision.

Only final records of types with an ``is_final`` field are stored: in-progress candles are realtime
state that is superseded within a second, which Redis serves; writing them here would add rows that
exist only to be merged away.

The same code serves a ClickHouse server (``CLICKHOUSE_URL``) and embedded chdb (``chdb:///path``).
chdb hosts one engine per process, so clients on one path must be shared; :func:`connect` is the
one place clients are made. The process that has embedded chdb open answers other processes' read
queries (``query_server``, :mod:`sinks.query`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import clickhouse_connect
from clickhouse_connect.driver import exceptions as ch_errors
from clickhouse_connect.driver.client import Client
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from schemas.models import Candle
from sinks.base import DataRejected, Sink, SinkBatch, columns_of, layout_of, stored_types
from streams.settings import Settings

if TYPE_CHECKING:
    from sinks.query import QueryServer

# Server error codes that mean "this data can never be inserted", as opposed to an unavailable
# server: TYPE_MISMATCH, CANNOT_PARSE_*, TOO_LARGE_STRING_SIZE, INCORRECT_DATA,
# VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE, CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN, ARGUMENT_OUT_OF_BOUND.
DATA_ERROR_CODES = frozenset({6, 27, 38, 41, 53, 69, 72, 117, 131, 321, 349})


def connect(dsn: str, **options: Any) -> Client:
    """A client for ``http(s)://user:pw@host:port/db`` or embedded ``chdb:///abs/path``."""
    return clickhouse_connect.get_client(dsn=dsn, **options)


def open_store(dsn: str, *, wait_s: float = 15.0) -> Client:
    """The sink's client. Embedded chdb may be open for a moment in another process (``tickflow
    sql`` opens it for one query when no sink runs): wait for it rather than fail."""
    if not dsn.startswith("chdb://"):
        return connect(dsn)
    retrying = Retrying(retry=retry_if_exception_type(ch_errors.ClickHouseError), stop=stop_after_delay(wait_s), wait=wait_fixed(0.5), reraise=True)
    return retrying(connect, dsn)


class ClickHouseSink(Sink):
    name = "clickhouse"

    def __init__(self, client: Client, *, owns_client: bool = False, query_server: QueryServer | None = None) -> None:
        """``query_server`` answers other processes' queries on the embedded store for as long as
        the sink has it open (nobody else can open it meanwhile); the sink stops it on close."""
        self._client = client
        self._owns_client = owns_client
        self._query_server = query_server
        self._contexts: dict[str, Any] = {}

    @classmethod
    def record_types(cls, settings: Settings) -> tuple[str, ...]:
        return stored_types()

    def write(self, batch: SinkBatch) -> None:
        inserts = []
        for name, records in batch.records.items():  # every table validated before anything is inserted
            layout = layout_of(name) if records else None
            if layout is not None:
                cols = layout.to_columns(records)
                if cols[layout.names[0]]:
                    inserts.append((layout.table, cols))
        for table, cols in inserts:
            self._insert(table, cols)

    def _insert(self, table: str, columns: dict[str, list[Any]]) -> None:
        # Insert contexts cache the table's column types, saving a DESCRIBE per insert.
        ctx = self._contexts.get(table)
        try:
            if ctx is None:
                ctx = self._contexts[table] = self._client.create_insert_context(table, list(columns), column_oriented=True)
            ctx.data = list(columns.values())
            self._client.insert(context=ctx)
        except ch_errors.DataError as exc:
            raise DataRejected(f"{table}: {exc}") from exc
        except ch_errors.DatabaseError as exc:
            self._contexts.pop(table, None)  # the table may have changed; describe it again
            if exc.code in DATA_ERROR_CODES:
                raise DataRejected(f"{table}: {exc}") from exc
            raise

    def close(self) -> None:
        if self._query_server is not None:
            self._query_server.close()
            self._query_server = None
        if self._owns_client:
            self._client.close()


_RECENT_CANDLES = f"""
SELECT {", ".join(f"toUnixTimestamp64Milli({c})" if c in ("open_time", "close_time") else f"`{c}`" for c in columns_of("candle"))}
FROM candles FINAL
WHERE exchange = {{exchange:String}} AND symbol = {{symbol:String}} AND `interval` = {{interval:String}}
  AND open_time < fromUnixTimestamp64Milli({{before:Int64}}, 'UTC')
ORDER BY open_time DESC
LIMIT {{limit:UInt32}}"""


class ClickHouseCandleHistory:
    """Stored final candles of one series before a time: the indicator agent's warm start when
    PostgreSQL is off. Needs a ClickHouse server: an embedded chdb path belongs to the sink's process."""

    def __init__(self, dsn: str | None = None, *, client: Client | None = None) -> None:
        if dsn is None and client is None:
            raise ValueError("ClickHouseCandleHistory needs a DSN or a client")
        self._dsn = dsn
        self._client = client
        self._owns_client = client is None

    def before(self, exchange: str, symbol: str, interval: str, open_time: int, limit: int) -> list[Candle]:
        """Up to ``limit`` candles of the series opening before ``open_time`` (ms), oldest first."""
        if self._client is None:
            assert self._dsn is not None
            # The indicator agent's stream waits for a warm start: a hung server must not hold it for minutes.
            self._client = connect(self._dsn, connect_timeout=10, send_receive_timeout=30)
        params = {"exchange": exchange, "symbol": symbol, "interval": interval, "before": open_time, "limit": limit}
        rows = self._client.query(_RECENT_CANDLES, parameters=params).result_rows
        return [Candle(*row) for row in reversed(rows)]

    def close(self) -> None:
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None
