"""PostgresSink and the PostgreSQL migrations against a real server, in a throwaway database."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from schemas.models import Candle, Trade, TradeBatch
from sinks.base import DataRejected, SinkBatch
from sinks.migrations import migrate_postgres, split_statements
from sinks.postgres import PostgresSink

ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
T0 = 1_700_000_040_000  # ms, a minute boundary


def _admin() -> psycopg.Connection:
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {ADMIN_URL} unreachable: {exc}")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh empty database, dropped afterwards."""
    name = f"tickflow_test_{uuid.uuid4().hex[:10]}"
    with _admin() as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield psycopg.conninfo.make_conninfo(ADMIN_URL, dbname=name)
    finally:
        with _admin() as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def sink(pg_url: str) -> Iterator[PostgresSink]:
    migrate_postgres(pg_url)
    s = PostgresSink(pg_url)
    yield s
    s.close()


def candle(open_time: int = T0, *, revision: int = 0, final: bool = True, close: float = 101.0, symbol: str = "BTC/USDT") -> Candle:
    return Candle(
        "binance", symbol, "1m", open_time, open_time + 59_999, 100.0, 102.0, 99.5, close, 3.0, 300.0, 7,
        vwap=100.5, taker_buy_volume=1.0, first_trade_id="10", last_trade_id="16", is_final=final, revision=revision,
    )


def trade(i: int, symbol: str = "BTC/USDT") -> TradeBatch:
    """A batch of one trade: the sinks receive trades as the batches they came in."""
    return TradeBatch("binance", symbol, 0, [Trade(str(1000 + i), T0 * 1000 + i * 1_000_123, 100.0 + i / 8, 0.25 * (i + 1), "buy" if i % 2 else "sell")])


def rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_migrations_are_idempotent_and_record_the_plain_choice(pg_url: str) -> None:
    assert migrate_postgres(pg_url) == ["0001", "0003", "0004", "0005", "0006", "0007", "0008", "0009"]
    assert migrate_postgres(pg_url) == []
    recorded = rows(pg_url, "SELECT version, name, variant FROM schema_migrations ORDER BY version")
    assert recorded == [("0001", "init", "postgres"), ("0002", "hypertables", "skipped"), ("0003", "candles_1h_from_1m", "postgres"), ("0004", "technical_metrics", "postgres"), ("0005", "onchain_metrics", "postgres"), ("0006", "sentiment", "postgres"), ("0007", "signals", "postgres"), ("0008", "api_keys", "postgres"), ("0009", "onchain_block_metrics", "postgres")]
    tables = {r[0] for r in rows(pg_url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    assert {"trades", "candles", "candles_1h_from_1m", "technical_metrics", "news_scored", "fear_greed", "sentiment_aggregates", "signals", "trade_intents", "schema_migrations"} <= tables


def test_split_statements_respects_quotes_comments_and_dollar_bodies() -> None:
    sql = "-- a; comment\nSELECT 'x;y', \"a;b\";\n/* ; */ DO $$ BEGIN PERFORM 1; END $$;\n;  -- trailing\n"
    assert split_statements(sql) == ["-- a; comment\nSELECT 'x;y', \"a;b\"", "/* ; */ DO $$ BEGIN PERFORM 1; END $$"]
    assert split_statements(r"SELECT 'it\'s; fine'; SELECT 2", backslash_escapes=True) == [r"SELECT 'it\'s; fine'", "SELECT 2"]


def test_same_batch_twice_gives_the_same_rows(sink: PostgresSink, pg_url: str) -> None:
    batch = SinkBatch(trade_batch=[trade(i) for i in range(20)], candle=[candle(), candle(T0 + 60_000)])
    sink.write(batch)
    first = rows(pg_url, "SELECT * FROM trades ORDER BY trade_id"), rows(pg_url, "SELECT * FROM candles ORDER BY open_time")
    sink.write(batch)
    assert (rows(pg_url, "SELECT * FROM trades ORDER BY trade_id"), rows(pg_url, "SELECT * FROM candles ORDER BY open_time")) == first
    assert len(first[0]) == 20 and len(first[1]) == 2


def test_trades_are_deduplicated_within_and_across_batches(sink: PostgresSink, pg_url: str) -> None:
    sink.write(SinkBatch(trade_batch=[trade(1), trade(1), trade(2)]))
    sink.write(SinkBatch(trade_batch=[trade(2), trade(3), trade(1, symbol="ETH/USDT")]))
    got = rows(pg_url, "SELECT symbol, trade_id FROM trades ORDER BY symbol, trade_id")
    assert got == [("BTC/USDT", "1001"), ("BTC/USDT", "1002"), ("BTC/USDT", "1003"), ("ETH/USDT", "1001")]


def test_times_and_values_are_exact(sink: PostgresSink, pg_url: str) -> None:
    sink.write(SinkBatch(trade_batch=[trade(3)], candle=[candle()]))
    (ts, price, amount, side), = rows(pg_url, "SELECT ts, price, amount, side FROM trades")
    (t,) = trade(3).trades
    assert ts == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=t.ts)
    assert (price, amount, side) == (t.price, t.amount, t.side)
    (open_ms, close_ms), = rows(pg_url, "SELECT (extract(epoch FROM open_time) * 1000)::bigint, (extract(epoch FROM close_time) * 1000)::bigint FROM candles")
    assert (open_ms, close_ms) == (T0, T0 + 59_999)


def test_revision_upsert_newer_wins_older_and_equal_ignored(sink: PostgresSink, pg_url: str) -> None:
    sink.write(SinkBatch(candle=[candle(revision=1, close=1.0)]))
    sink.write(SinkBatch(candle=[candle(revision=0, close=0.0)]))  # older: ignored
    assert rows(pg_url, "SELECT revision, close FROM candles") == [(1, 1.0)]
    sink.write(SinkBatch(candle=[candle(revision=1, close=9.0)]))  # equal: ignored
    assert rows(pg_url, "SELECT revision, close FROM candles") == [(1, 1.0)]
    sink.write(SinkBatch(candle=[candle(revision=3, close=3.0), candle(revision=2, close=2.0)]))  # newest in batch wins
    assert rows(pg_url, "SELECT revision, close FROM candles") == [(3, 3.0)]


def test_in_progress_candles_are_not_stored(sink: PostgresSink, pg_url: str) -> None:
    sink.write(SinkBatch(candle=[candle(final=False), candle(T0 + 60_000, final=False), candle(T0 + 120_000)]))
    assert rows(pg_url, "SELECT (extract(epoch FROM open_time) * 1000)::bigint, is_final FROM candles") == [(T0 + 120_000, True)]


def test_hourly_rollup_view(sink: PostgresSink, pg_url: str) -> None:
    hour = 1_699_999_200_000  # 2023-11-14T22:00Z
    sink.write(SinkBatch(candle=[candle(hour + i * 60_000, close=100.0 + i) for i in (2, 0, 1)] + [candle(hour + 3_600_000)]))
    got = rows(pg_url, "SELECT (extract(epoch FROM bucket) * 1000)::bigint, open, high, low, close, volume, trade_count FROM candles_1h_from_1m ORDER BY bucket")
    assert got == [(hour, 100.0, 102.0, 99.5, 102.0, 9.0, 21), (hour + 3_600_000, 100.0, 102.0, 99.5, 101.0, 3.0, 7)]


def test_unstorable_values_are_rejected_not_retried(sink: PostgresSink, pg_url: str) -> None:
    with pytest.raises(DataRejected, match="outside the storable range"):
        sink.write(SinkBatch(candle=[candle(10**16)]))
    with pytest.raises(DataRejected, match="NUL"):
        sink.write(SinkBatch(trade_batch=[TradeBatch("binance", "BTC/USDT", 0, [Trade("1\x00", T0 * 1000, 1.0, 1.0, "buy")])]))
    assert rows(pg_url, "SELECT count(*) FROM trades") == [(0,)]


def test_a_constraint_violation_in_the_database_is_data_rejected(sink: PostgresSink, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE candles ADD CONSTRAINT sane_range CHECK (high >= low)")
    bad = candle()
    bad.low = 1e9
    with pytest.raises(DataRejected, match="CheckViolation"):
        sink.write(SinkBatch(trade_batch=[trade(1)], candle=[bad]))
    assert rows(pg_url, "SELECT count(*) FROM trades") == [(0,)]  # one transaction: nothing half-written
    sink.write(SinkBatch(trade_batch=[trade(1)], candle=[candle()]))  # the connection is usable afterwards
    assert rows(pg_url, "SELECT count(*) FROM trades") == [(1,)]


def test_store_down_is_an_ordinary_error(pg_url: str) -> None:
    migrate_postgres(pg_url)
    down = PostgresSink(psycopg.conninfo.make_conninfo(pg_url, port=1), connect_timeout=0.5)
    try:
        with pytest.raises(Exception) as info:
            down.write(SinkBatch(trade_batch=[trade(1)]))
        assert not isinstance(info.value, DataRejected)
    finally:
        down.close()
