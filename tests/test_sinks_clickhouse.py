"""ClickHouseSink and the ClickHouse migrations on embedded chdb, and equality with PostgreSQL.

chdb hosts one engine (one data path) per process, so the module shares one client on one tmp path
and closes it at the end; tests keep apart by using their own exchange names.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from schemas.models import Candle, Trade, TradeBatch
from sinks.base import DataRejected, SinkBatch, layout_of
from sinks.clickhouse import ClickHouseCandleHistory, ClickHouseSink, connect
from sinks.ddl import clickhouse_table, postgres_table, timescale_hypertable
from sinks.migrations import SchemaMismatch, check_clickhouse, check_postgres, discover, generated_layouts, migrate_clickhouse, migrate_postgres, split_statements
from sinks.postgres import PostgresCandleHistory, PostgresSink
from sinks.redis import RedisSink
from sinks.runner import open_sinks
from streams.settings import Settings
from tests import throwaway_record

T0 = 1_700_000_040_000  # ms, a minute boundary
ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TICKFLOW_DATA_DIR of this module: the engine lives in its ``clickhouse`` folder."""
    return tmp_path_factory.mktemp("tickflow-data").resolve()


@pytest.fixture(scope="module")
def client(data_dir: Path) -> Iterator:
    c = connect(Settings(tickflow_data_dir=data_dir).stores.clickhouse_dsn)
    migrate_clickhouse(c)
    yield c
    c.close()


@pytest.fixture
def exchange() -> str:
    return f"ex{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sink(client) -> ClickHouseSink:  # noqa: ANN001
    return ClickHouseSink(client)


def candle(exchange: str, open_time: int = T0, *, revision: int = 0, final: bool = True, close: float = 101.0, interval: str = "1m") -> Candle:
    return Candle(
        exchange, "BTC/USDT", interval, open_time, open_time + 59_999, 100.0, 102.0, 99.5, close, 3.0, 300.0, 7,
        vwap=100.5 if revision % 2 == 0 else None, taker_buy_volume=1.0, first_trade_id="10", last_trade_id=None,
        is_final=final, revision=revision,
    )


def trade(exchange: str, i: int, symbol: str = "BTC/USDT") -> TradeBatch:
    """A batch of one trade: the sinks receive trades as the batches they came in."""
    return TradeBatch(exchange, symbol, 0, [Trade(str(1000 + i), T0 * 1000 + i * 1_000_123, 100.0 + i / 8, 0.25 * (i + 1), "buy" if i % 2 else "sell")])


def ch_trades(client, exchange: str) -> list[tuple]:  # noqa: ANN001
    return client.query(
        "SELECT exchange, symbol, trade_id, toUnixTimestamp64Micro(ts), price, amount, side FROM trades FINAL "
        "WHERE exchange = {e:String} ORDER BY symbol, trade_id",
        parameters={"e": exchange},
    ).result_rows


def ch_candles(client, exchange: str) -> list[tuple]:  # noqa: ANN001
    return client.query(
        "SELECT exchange, symbol, `interval`, toUnixTimestamp64Milli(open_time), toUnixTimestamp64Milli(close_time), open, high, low, "
        "close, volume, quote_volume, trade_count, vwap, taker_buy_volume, first_trade_id, last_trade_id, is_final, revision "
        "FROM candles FINAL WHERE exchange = {e:String} ORDER BY symbol, `interval`, open_time",
        parameters={"e": exchange},
    ).result_rows


def test_migrations_are_idempotent(client) -> None:  # noqa: ANN001
    assert migrate_clickhouse(client) == []
    assert sorted(client.query("SELECT version, name FROM schema_migrations FINAL").result_rows) == [("0001", "init"), ("0002", "technical_metrics"), ("0005", "onchain_metrics"), ("0006", "sentiment"), ("0007", "signals"), ("0009", "onchain_block_metrics")]
    engines = dict(client.query("SELECT name, engine FROM system.tables WHERE database = currentDatabase()").result_rows)
    assert engines["trades"] == engines["candles"] == engines["technical_metrics"] == "ReplacingMergeTree"
    assert [m.version for m in discover("clickhouse")] == ["0001", "0002", "0005", "0006", "0007", "0009"]  # examples.sql is not a migration
    assert engines["sentiment_aggregates"] == engines["news_scored"] == engines["fear_greed"] == "ReplacingMergeTree"


def test_example_queries_run(client) -> None:  # noqa: ANN001
    examples = Path(__file__).resolve().parents[1] / "infra" / "sql" / "clickhouse" / "examples.sql"
    statements = split_statements(examples.read_text(), backslash_escapes=True)
    assert len(statements) == 3
    for stmt in statements:
        client.query(stmt)


def test_same_batch_twice_gives_the_same_rows(sink: ClickHouseSink, client, exchange: str) -> None:  # noqa: ANN001
    batch = SinkBatch(trade_batch=[trade(exchange, i) for i in range(20)], candle=[candle(exchange), candle(exchange, T0 + 60_000)])
    sink.write(batch)
    first = ch_trades(client, exchange), ch_candles(client, exchange)
    sink.write(batch)
    assert (ch_trades(client, exchange), ch_candles(client, exchange)) == first
    assert len(first[0]) == 20 and len(first[1]) == 2
    client.command("OPTIMIZE TABLE trades FINAL")
    assert client.query("SELECT count() FROM trades WHERE exchange = {e:String}", parameters={"e": exchange}).result_rows == [(20,)]


def test_revision_newer_wins_older_ignored(sink: ClickHouseSink, client, exchange: str) -> None:  # noqa: ANN001
    sink.write(SinkBatch(candle=[candle(exchange, revision=1, close=1.0)]))
    sink.write(SinkBatch(candle=[candle(exchange, revision=0, close=0.0)]))
    assert [(r[-1], r[8]) for r in ch_candles(client, exchange)] == [(1, 1.0)]
    sink.write(SinkBatch(candle=[candle(exchange, revision=3, close=3.0), candle(exchange, revision=2, close=2.0)]))
    assert [(r[-1], r[8]) for r in ch_candles(client, exchange)] == [(3, 3.0)]


def test_in_progress_candles_are_not_stored(sink: ClickHouseSink, client, exchange: str) -> None:  # noqa: ANN001
    sink.write(SinkBatch(candle=[candle(exchange, final=False), candle(exchange, T0 + 120_000)]))
    assert [(r[3], r[16]) for r in ch_candles(client, exchange)] == [(T0 + 120_000, True)]


def test_exact_times_and_nullable_columns(sink: ClickHouseSink, client, exchange: str) -> None:  # noqa: ANN001
    c = candle(exchange, revision=1)
    sink.write(SinkBatch(trade_batch=[trade(exchange, 7)], candle=[c]))
    (t,) = trade(exchange, 7).trades
    assert ch_trades(client, exchange) == [(exchange, "BTC/USDT", t.trade_id, t.ts, t.price, t.amount, t.side)]
    assert ch_candles(client, exchange) == [
        (exchange, "BTC/USDT", "1m", T0, T0 + 59_999, 100.0, 102.0, 99.5, 101.0, 3.0, 300.0, 7, None, 1.0, "10", None, True, 1)
    ]


def test_unstorable_values_are_rejected(sink: ClickHouseSink, client, exchange: str) -> None:  # noqa: ANN001
    with pytest.raises(DataRejected, match="outside the storable range"):
        sink.write(SinkBatch(trade_batch=[TradeBatch(exchange, "X", 0, [Trade("1", 10**19, 1.0, 1.0, "buy")])]))
    with pytest.raises(DataRejected, match="revision"):
        sink.write(SinkBatch(candle=[candle(exchange, revision=-1)]))
    assert ch_candles(client, exchange) == []


@pytest.fixture
def pg_url() -> Iterator[str]:
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {ADMIN_URL} unreachable: {exc}")
    name = f"tickflow_test_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = psycopg.conninfo.make_conninfo(ADMIN_URL, dbname=name)
    try:
        migrate_postgres(url)
        yield url
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_clickhouse_and_postgres_hold_the_same_rows(sink: ClickHouseSink, client, exchange: str, pg_url: str) -> None:  # noqa: ANN001
    batches = [
        SinkBatch(
            trade_batch=[trade(exchange, i) for i in range(30)] + [trade(exchange, 3), trade(exchange, 2, symbol="ETH/USDT")],
            candle=[candle(exchange, revision=0), candle(exchange, T0 + 60_000, final=False), candle(exchange, T0, interval="5m")],
        ),
        SinkBatch(
            trade_batch=[trade(exchange, i) for i in range(25, 40)],
            candle=[candle(exchange, revision=2, close=99.0), candle(exchange, revision=1, close=98.0), candle(exchange, T0 + 60_000)],
        ),
    ]
    pg = PostgresSink(pg_url)
    try:
        for batch in batches + batches[:1]:  # replaying the first batch must change nothing
            sink.write(batch)
            pg.write(batch)
    finally:
        pg.close()
    with psycopg.connect(pg_url) as conn:
        pg_trades = conn.execute(
            "SELECT exchange, symbol, trade_id, (extract(epoch FROM ts) * 1000000)::bigint, price, amount, side FROM trades ORDER BY symbol, trade_id"
        ).fetchall()
        pg_candles = conn.execute(
            'SELECT exchange, symbol, "interval", (extract(epoch FROM open_time) * 1000)::bigint, (extract(epoch FROM close_time) * 1000)::bigint, '
            "open, high, low, close, volume, quote_volume, trade_count, vwap, taker_buy_volume, first_trade_id, last_trade_id, is_final, revision "
            'FROM candles ORDER BY symbol, "interval", open_time'
        ).fetchall()
    assert ch_trades(client, exchange) == pg_trades
    assert ch_candles(client, exchange) == pg_candles
    assert len(pg_trades) == 41 and [(c[2], c[3], c[-1]) for c in pg_candles] == [("1m", T0, 2), ("1m", T0 + 60_000, 0), ("5m", T0, 0)]


def test_client_side_type_errors_become_data_rejected(sink: ClickHouseSink, client, exchange: str) -> None:  # noqa: ANN001
    """Past the shared checks, a value the column type cannot hold is still a rejection, not a retry."""
    cols = layout_of("candle").to_columns([candle(exchange)])
    cols["revision"] = [2**40]  # UInt32 column
    with pytest.raises(DataRejected, match="revision"):
        sink._insert("candles", cols)
    sink.write(SinkBatch(candle=[candle(exchange)]))  # the cached insert context still works
    assert len(ch_candles(client, exchange)) == 1


def test_open_sinks_migrates_and_opens_every_configured_store(client, data_dir: Path, pg_url: str, exchange: str) -> None:  # noqa: ANN001
    settings = Settings(tickflow_data_dir=data_dir, database_url=pg_url, redis_url="redis://127.0.0.1:6379/0")
    sinks = open_sinks(settings)
    try:
        assert [type(s) for s in sinks] == [ClickHouseSink, PostgresSink, RedisSink]
        sinks[0].write(SinkBatch(candle=[candle(exchange)]))  # same engine as the module's client
        assert len(ch_candles(client, exchange)) == 1
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (9,)  # 0001-0009
    finally:
        for s in sinks:
            s.close()
    (only,) = open_sinks(Settings(tickflow_data_dir=data_dir, database_url="", redis_url=""), migrate=False)
    only.close()
    assert isinstance(only, ClickHouseSink)


def test_warm_start_history_reads_the_same_candles_as_postgres(client, exchange: str, pg_url: str) -> None:  # noqa: ANN001
    """What the indicator agent seeds a series with when PostgreSQL is off: the candles strictly
    before the first one it reads, newest revision, oldest first, equal to PostgreSQL's."""
    day = 86_400_000
    series = [
        candle(exchange, T0 - T0 % day + i * day, interval="1d", close=100.0 + i, revision=i % 3) for i in range(60)
    ]
    stale = [candle(exchange, c.open_time, interval="1d", close=1.0, revision=0) for c in series if c.revision]
    ClickHouseSink(client).write(SinkBatch(candle=stale))
    ClickHouseSink(client).write(SinkBatch(candle=series))
    PostgresSink(pg_url).write(SinkBatch(candle=stale + series))
    ch, pg = ClickHouseCandleHistory(client=client), PostgresCandleHistory(pg_url)
    want = series[15:40]
    assert ch.before(exchange, "BTC/USDT", "1d", series[40].open_time, 25) == want
    assert pg.before(exchange, "BTC/USDT", "1d", series[40].open_time, 25) == want
    assert ch.before(exchange, "BTC/USDT", "1d", series[0].open_time, 25) == []
    ch.close()
    pg.close()


# ------------------------------------------------------------------ any registry type, no sink code


def test_every_registry_table_is_in_both_stores_after_migrating(client, pg_url: str) -> None:  # noqa: ANN001
    """A record type with a table whose migration is missing (or wrong) fails here, naming it."""
    check_clickhouse(client)
    check_postgres(pg_url)


def test_a_missing_or_wrong_table_fails_the_check_loudly(client, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    rt = throwaway_record.register(monkeypatch)
    with pytest.raises(SchemaMismatch, match=f"{rt.table} \\(record type test_gauge\\): no such table"):
        check_clickhouse(client)
    with pytest.raises(SchemaMismatch, match=f"{rt.table} \\(record type test_gauge\\): no such table"):
        check_postgres(pg_url)
    # a table that lost a field, keeps the optional one NOT NULL and stores its ms time at µs precision
    layout = layout_of(rt.name)
    client.command(clickhouse_table(layout).replace("`ts` DateTime64(3, 'UTC')", "`ts` DateTime64(6, 'UTC')").replace(",\n    `flag` Bool", ""))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(postgres_table(layout).replace('"label" text', '"label" text NOT NULL').replace("PRIMARY KEY", "UNIQUE"))
        conn.execute(f"ALTER TABLE {rt.table} DROP CONSTRAINT {rt.table}_exchange_symbol_interval_ts_key")
    try:
        with pytest.raises(SchemaMismatch) as ch:
            check_clickhouse(client)
        assert "no column flag" in str(ch.value) and "column ts is DateTime64(6, 'UTC'), needs DateTime64(3, ...)" in str(ch.value)
        with pytest.raises(SchemaMismatch) as pg:
            check_postgres(pg_url)
        assert "column label must allow NULL" in str(pg.value) and "no primary key or unique index on (exchange, symbol, interval, ts)" in str(pg.value)
    finally:
        client.command(f"DROP TABLE {rt.table}")


def test_a_new_record_type_is_stored_in_both_stores_without_sink_code(
    sink: ClickHouseSink, client, exchange: str, pg_url: str, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    """Only the registry entry: the migrations generate its tables, both stores take it, keep the
    highest version, agree."""
    rt = throwaway_record.register(monkeypatch)
    migrate_clickhouse(client)
    migrate_postgres(pg_url)
    check_clickhouse(client)
    check_postgres(pg_url)
    G = throwaway_record.Gauge  # noqa: N806
    batches = [
        [G(exchange, "A", "1m", T0, 1.0, version=1), G(exchange, "A", "1m", T0, 0.5, version=0), G(exchange, "B", "1m", T0, 7.0, T0 * 1000 + 123, "x", True)],
        [G(exchange, "A", "1m", T0, 2.0, T0 * 1000 + 1, "newer", True, version=2), G(exchange, "A", "1m", T0 + 60_000, 3.0, version=5)],
        [G(exchange, "A", "1m", T0, 0.0, version=1)],  # older than the stored version: ignored
    ]
    pg = PostgresSink(pg_url)
    try:
        for records in batches + batches[:1]:  # a replay changes nothing
            sink.write(SinkBatch(test_gauge=records))
            pg.write(SinkBatch(test_gauge=records))
        with psycopg.connect(pg_url) as conn:
            pg_rows = conn.execute(throwaway_record.POSTGRES_ROWS.format(table=rt.table)).fetchall()
        ch_rows = client.query(throwaway_record.CLICKHOUSE_ROWS.format(table=rt.table)).result_rows
        assert pg_rows == [
            (exchange, "A", "1m", T0, 2.0, T0 * 1000 + 1, "newer", True, 2),
            (exchange, "A", "1m", T0 + 60_000, 3.0, None, None, False, 5),
            (exchange, "B", "1m", T0, 7.0, T0 * 1000 + 123, "x", True, 0),
        ]
        assert ch_rows == pg_rows
        for bad, why in (
            (G(exchange, "A", "1m", 10**16, 1.0), "test_gauge ts \\(ms\\) 10000000000000000 is outside the storable range"),
            (G(exchange, "A", "1m", T0, 1.0, seen_at=-(10**19)), "seen_at \\(µs\\)"),
            (G(exchange, "A", "1m", T0, 1.0, label="a\x00b"), "test_gauge label contains a NUL"),
            (G(exchange, "A", "1m", T0, 1.0, version=-1), "test_gauge version outside 0..2147483647"),
        ):
            for store in (sink, pg):
                with pytest.raises(DataRejected, match=why):
                    store.write(SinkBatch(test_gauge=[G(exchange, "C", "1m", T0, 1.0), bad]))
        assert client.query(throwaway_record.CLICKHOUSE_ROWS.format(table=rt.table)).result_rows == pg_rows  # nothing half-written
    finally:
        pg.close()
        client.command(f"DROP TABLE {rt.table}")


def test_only_record_types_without_a_migration_get_generated_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped tables all have hand-written migrations; a new type's tables are generated, as a
    hypertable on its time column in TimescaleDB mode."""
    assert generated_layouts("clickhouse") == [] and generated_layouts("postgres") == []
    rt = throwaway_record.register(monkeypatch)
    (layout,) = generated_layouts("postgres")
    assert layout.table == rt.table and [lay.table for lay in generated_layouts("clickhouse")] == [rt.table]
    assert timescale_hypertable(layout, "30 days") == (
        f"SELECT create_hypertable('\"{rt.table}\"', by_range('ts', INTERVAL '30 days'), if_not_exists => TRUE, migrate_data => TRUE)"
    )
