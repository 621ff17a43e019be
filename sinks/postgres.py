"""PostgreSQL / TimescaleDB sink: trades, final candles and indicators, upserted in one transaction per batch.

Rows are COPYed (binary) into session temp tables, then moved with one ``INSERT ... SELECT`` per
table, so a batch costs a handful of round trips whatever its size. Times travel as integers and
become ``timestamptz`` in SQL by exact integer arithmetic, avoiding float rounding on the way.

Only final candles are stored: in-progress ones change several times a second and matter only
until their window closes, so they go to Redis; storing them here would multiply write volume for
rows that are overwritten anyway. A later revision of a final candle (a late trade within the grace
period) replaces the stored row; an older or equal revision is ignored, so replays are harmless.
Trades are keyed by (exchange, symbol, trade_id, ts) and inserted with ``ON CONFLICT DO NOTHING``.

Indicators (``technical_metrics``) are keyed like candles but replaced by a newer *or equal*
``candle_revision``: a revision of one window makes the engine recompute the records of the later
windows, which keep their own (unchanged) candle revision, and those recomputed values must win.
Records of one window arrive in Kafka order, so the last one stored is the newest; a replay writes
the same sequence again and ends in the same state. An older candle revision is ignored.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from schemas.models import Candle
from schemas.registry import RecordType, record_type
from sinks.base import (
    CANDLE_COLUMNS,
    INDICATOR_COLUMNS,
    TABLE_RECORDS,
    TRADE_COLUMNS,
    DataRejected,
    Sink,
    SinkBatch,
    candle_columns,
    indicator_columns,
    model_columns,
    trade_columns,
)

_STAGE_TRADES = """
CREATE TEMP TABLE IF NOT EXISTS stage_trades (
    exchange text, symbol text, trade_id text, ts bigint, price float8, amount float8, side text
) ON COMMIT DELETE ROWS"""
_TRADE_TYPES = ["text", "text", "text", "int8", "float8", "float8", "text"]
_INSERT_TRADES = """
INSERT INTO trades (exchange, symbol, trade_id, ts, price, amount, side)
SELECT exchange, symbol, trade_id, TIMESTAMPTZ 'epoch' + ts * INTERVAL '1 microsecond', price, amount, side
FROM stage_trades
ON CONFLICT DO NOTHING"""

_STAGE_CANDLES = """
CREATE TEMP TABLE IF NOT EXISTS stage_candles (
    seq int8, exchange text, symbol text, "interval" text, open_time int8, close_time int8,
    open float8, high float8, low float8, close float8, volume float8, quote_volume float8,
    trade_count int8, vwap float8, taker_buy_volume float8, first_trade_id text, last_trade_id text,
    is_final bool, revision int4
) ON COMMIT DELETE ROWS"""
_CANDLE_TYPES = ["int8", "text", "text", "text", "int8", "int8"] + ["float8"] * 6 + ["int8", "float8", "float8", "text", "text", "bool", "int4"]
_KEY = 'exchange, symbol, "interval", open_time'
_KEY_COLUMNS = {"exchange", "symbol", "interval", "open_time"}
_TIMES = {"open_time", "close_time"}


def _quoted(column: str) -> str:
    return '"interval"' if column == "interval" else column


def _upsert(table: str, stage: str, columns: tuple[str, ...], version: str, replaces: str) -> str:
    """``INSERT ... SELECT`` from a staging table: within a batch the highest ``version`` of a key
    wins, then the last in Kafka order (``seq``); against the table a row is replaced when its
    ``version`` stands in relation ``replaces`` to the new one. Integer ms times become timestamptz."""
    select = ", ".join(f"TIMESTAMPTZ 'epoch' + {c} * INTERVAL '1 millisecond' AS {c}" if c in _TIMES else _quoted(c) for c in columns)
    update = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in _KEY_COLUMNS)
    return f"""
INSERT INTO {table} ({", ".join(map(_quoted, columns))})
SELECT DISTINCT ON ({_KEY}) {select}
FROM {stage}
ORDER BY {_KEY}, {version} DESC, seq DESC
ON CONFLICT ({_KEY}) DO UPDATE SET {update}
WHERE {table}.{version} {replaces} EXCLUDED.{version}"""


# Against the table only a strictly higher revision replaces a stored candle.
_INSERT_CANDLES = _upsert("candles", "stage_candles", CANDLE_COLUMNS, "revision", "<")


_STAGE_INDICATORS = f"""
CREATE TEMP TABLE IF NOT EXISTS stage_indicators (
    seq int8, exchange text, symbol text, "interval" text, open_time int8, close float8, candle_revision int4,
    {", ".join(f"{c} float8" for c in INDICATOR_COLUMNS[6:])}
) ON COMMIT DELETE ROWS"""
_INDICATOR_TYPES = ["int8", "text", "text", "text", "int8", "float8", "int4"] + ["float8"] * (len(INDICATOR_COLUMNS) - 6)
# A newer or equal candle revision replaces the row (see the module docstring).
_INSERT_INDICATORS = _upsert("technical_metrics", "stage_indicators", INDICATOR_COLUMNS, "candle_revision", "<=")


def _row_upsert(rt: RecordType, columns: tuple[str, ...]) -> str:
    """Upsert of a registry record type's rows: a stored row is replaced by a strictly higher ``version``."""
    update = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in rt.table_key)
    return f"""
INSERT INTO {rt.table} ({", ".join(columns)}) VALUES ({", ".join(["%s"] * len(columns))})
ON CONFLICT ({", ".join(rt.table_key)}) DO UPDATE SET {update}
WHERE {rt.table}.{rt.version} < EXCLUDED.{rt.version}"""


def newest_rows(rt: RecordType, cols: dict[str, list[Any]]) -> list[tuple[Any, ...]]:
    """One row per table key: the highest version, then the last in Kafka order."""
    best: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    version = list(cols).index(rt.version) if rt.version else None
    key_idx = [list(cols).index(k) for k in rt.table_key]
    for row in zip(*cols.values(), strict=True):
        key = tuple(row[i] for i in key_idx)
        old = best.get(key)
        if old is None or version is None or row[version] >= old[version]:
            best[key] = row
    return list(best.values())


class PostgresSink(Sink):
    name = "postgres"
    topics = ("ticks", "candles", "indicators", *TABLE_RECORDS)

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

    def write(self, batch: SinkBatch) -> None:
        trades = trade_columns(batch.trade_batches)
        candles = candle_columns(batch.final_candles())
        indicators = indicator_columns(batch.indicators)
        tables = [(rt, model_columns(rt, models)) for rt, models in ((record_type(n), m) for n, m in batch.rows.items()) if models and rt.table]
        if not trades["ts"] and not candles["open_time"] and not indicators["open_time"] and not tables:
            return
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                if trades["ts"]:
                    _copy(cur, _STAGE_TRADES, "stage_trades", TRADE_COLUMNS, _TRADE_TYPES, zip(*trades.values(), strict=True))
                    cur.execute(_INSERT_TRADES)
                if candles["open_time"]:
                    rows = zip(range(len(candles["open_time"])), *candles.values(), strict=True)
                    _copy(cur, _STAGE_CANDLES, "stage_candles", ("seq", *CANDLE_COLUMNS), _CANDLE_TYPES, rows)
                    cur.execute(_INSERT_CANDLES)
                if indicators["open_time"]:
                    rows = zip(range(len(indicators["open_time"])), *indicators.values(), strict=True)
                    _copy(cur, _STAGE_INDICATORS, "stage_indicators", ("seq", *INDICATOR_COLUMNS), _INDICATOR_TYPES, rows)
                    cur.execute(_INSERT_INDICATORS)
                for rt, cols in tables:
                    cur.executemany(_row_upsert(rt, tuple(cols)), newest_rows(rt, cols))
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            raise DataRejected(f"{type(exc).__name__}: {str(exc).strip()}") from exc

    def close(self) -> None:
        self._pool.close()


def _copy(cur: psycopg.Cursor[Any], create: str, table: str, columns: tuple[str, ...], types: list[str], rows: Any) -> None:
    cur.execute(create)
    cols = ", ".join(f'"{c}"' for c in columns)
    with cur.copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


_RECENT_CANDLES = f"""
SELECT {", ".join(f"(extract(epoch FROM {c}) * 1000)::int8" if c in _TIMES else _quoted(c) for c in CANDLE_COLUMNS)}
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
