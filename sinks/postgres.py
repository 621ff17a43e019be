"""PostgreSQL / TimescaleDB sink: every record type with a table, upserted in one transaction per batch.

Rows are COPYed (binary) into session temp tables, then moved with one ``INSERT ... SELECT`` per
table, so a batch costs a handful of round trips whatever its size. Times travel as integers and
become ``timestamptz`` in SQL by exact integer arithmetic, avoiding float rounding on the way.

The upsert follows the registry (``schemas.registry``) on the key of :attr:`TableLayout.unique_key`:

- with a ``version`` column, within a batch the highest version of a key wins, then the last in
  Kafka order; against the table a strictly higher version replaces the stored row, so replays and
  older versions are ignored (a later revision of a final candle replaces it). With
  ``equal_version_replaces`` an equal version replaces it too: indicators, where a revision of one
  window recomputes the records of the later windows, which keep their own candle revision and must
  win. Records of one key arrive in Kafka order, so a replay ends in the same state. That is what
  ClickHouse's ReplacingMergeTree(version) keeps; without the flag the two stores can differ only
  on two different records of one key and version, which a deterministic producer never makes.
- without one (trades), the first row of a key stays: ``ON CONFLICT DO NOTHING``.

Only final records of types with an ``is_final`` field are stored (see ``sinks.base``).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from schemas.models import Candle
from sinks.base import DataRejected, Sink, SinkBatch, TableLayout, columns_of, layout_of, stored_types
from streams.settings import Settings

_STAGE_TYPES = {"string": "text", "bytes": "bytea", "int": "int4", "long": "int8", "float": "float4", "double": "float8", "boolean": "bool"}
_UNITS = {1: "millisecond", 1000: "microsecond"}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _TableSQL:
    """The staging table and the upsert of one table layout."""

    def __init__(self, layout: TableLayout) -> None:
        rt = layout.record_type
        self.layout = layout
        self.seq = rt.version is not None  # versioned rows keep their Kafka order for ties
        self.stage = f"stage_{layout.table}"
        staged = [("seq", "int8")] if self.seq else []
        staged += [(c.name, "int8" if c.per_ms else _STAGE_TYPES[c.kind]) for c in layout.columns]
        self.stage_names = tuple(n for n, _ in staged)
        self.types = [t for _, t in staged]
        self.create = f"CREATE TEMP TABLE IF NOT EXISTS {_q(self.stage)} ({', '.join(f'{_q(n)} {t}' for n, t in staged)}) ON COMMIT DELETE ROWS"
        select = ", ".join(
            f"TIMESTAMPTZ 'epoch' + {_q(c.name)} * INTERVAL '1 {_UNITS[c.per_ms]}' AS {_q(c.name)}" if c.per_ms else _q(c.name) for c in layout.columns
        )
        table, cols = _q(layout.table), ", ".join(map(_q, layout.names))
        if rt.version is None:
            self.insert = f"INSERT INTO {table} ({cols}) SELECT {select} FROM {_q(self.stage)} ON CONFLICT DO NOTHING"
            return
        key = ", ".join(map(_q, layout.unique_key))
        version = _q(rt.version)
        update = ", ".join(f"{_q(n)} = EXCLUDED.{_q(n)}" for n in layout.names if n not in layout.unique_key)
        action = f"DO UPDATE SET {update} WHERE {table}.{version} {'<=' if rt.equal_version_replaces else '<'} EXCLUDED.{version}" if update else "DO NOTHING"
        self.insert = (
            f"INSERT INTO {table} ({cols}) SELECT DISTINCT ON ({key}) {select} FROM {_q(self.stage)} "
            f"ORDER BY {key}, {version} DESC, seq DESC ON CONFLICT ({key}) {action}"
        )


class PostgresSink(Sink):
    name = "postgres"

    def __init__(self, conninfo: str, *, connect_timeout: float = 10.0) -> None:
        # One connection is enough for one writer; the pool re-establishes it after a server restart.
        self._pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=1,
            timeout=connect_timeout,
            check=ConnectionPool.check_connection,
            name="tickflow-postgres-sink",
            open=True,
        )
        self._sql: dict[str, _TableSQL] = {}

    @classmethod
    def record_types(cls, settings: Settings) -> tuple[str, ...]:
        return stored_types()

    def _table(self, name: str) -> _TableSQL | None:
        layout = layout_of(name)
        if layout is None:
            return None
        sql = self._sql.get(name)
        if sql is None or sql.layout is not layout:
            sql = self._sql[name] = _TableSQL(layout)
        return sql

    def write(self, batch: SinkBatch) -> None:
        work = []
        for name, records in batch.records.items():  # every table validated before anything is sent
            sql = self._table(name) if records else None
            if sql is not None:
                cols = sql.layout.to_columns(records)
                n = len(cols[sql.layout.names[0]])
                if n:
                    work.append((sql, cols, n))
        if not work:
            return
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                for sql, cols, n in work:
                    rows = zip(range(n), *cols.values(), strict=True) if sql.seq else zip(*cols.values(), strict=True)
                    _copy(cur, sql.create, sql.stage, sql.stage_names, sql.types, rows)
                    cur.execute(sql.insert)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            raise DataRejected(f"{type(exc).__name__}: {str(exc).strip()}") from exc

    def close(self) -> None:
        self._pool.close()


def _copy(cur: psycopg.Cursor[Any], create: str, table: str, columns: tuple[str, ...], types: list[str], rows: Any) -> None:
    cur.execute(create)
    with cur.copy(f"COPY {_q(table)} ({', '.join(map(_q, columns))}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


_CANDLE_COLUMNS = columns_of("candle")
_TIMES = {"open_time", "close_time"}


def _quoted(column: str) -> str:
    return '"interval"' if column == "interval" else column


_RECENT_CANDLES = f"""
SELECT {", ".join(f"(extract(epoch FROM {c}) * 1000)::int8" if c in _TIMES else _quoted(c) for c in _CANDLE_COLUMNS)}
FROM candles
WHERE exchange = %s AND symbol = %s AND "interval" = %s AND open_time < TIMESTAMPTZ 'epoch' + %s * INTERVAL '1 millisecond'
ORDER BY open_time DESC
LIMIT %s"""


class PostgresCandleHistory:
    """Stored final candles of one series before a time: the indicator agent's warm start."""

    def __init__(self, conninfo: str, *, connect_timeout: float = 10.0) -> None:
        self._conninfo = conninfo
        self._timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None

    def before(self, exchange: str, symbol: str, interval: str, open_time: int, limit: int) -> list[Candle]:
        """Up to ``limit`` candles of the series opening before ``open_time`` (ms), oldest first."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._conninfo, connect_timeout=self._timeout, autocommit=True)
        rows = self._conn.execute(_RECENT_CANDLES, (exchange, symbol, interval, open_time, limit)).fetchall()
        return [Candle(*row) for row in reversed(rows)]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
