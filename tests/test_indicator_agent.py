"""IndicatorLogic without Kafka: warm start from the PostgreSQL candle store (or a ClickHouse
server), in-progress candles ignored, bad candles rejected, an unreachable store leaving a series cold."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from agents.indicator_agent import WARM_STARTS, IndicatorLogic, indicator_config
from agents.indicators import VALUE_FIELDS, IndicatorEngine
from agents.spec import AgentContext, Emit, Inbound, Reject
from schemas.models import Candle, Indicators
from sinks.base import SinkBatch
from sinks.migrations import migrate_postgres
from sinks.clickhouse import ClickHouseCandleHistory
from sinks.postgres import PostgresCandleHistory, PostgresSink
from streams.pipeline import open_history
from streams.settings import Settings
from tests.test_candles_e2e import drop_database, fresh_database
from tests.test_indicators import synthetic

talib = pytest.importorskip("talib")
np = pytest.importorskip("numpy")


def daily(candles: list[Candle]) -> list[Candle]:
    """The test series as 1d candles of BTC/USDT, as a backfill stores them."""
    day = 86_400_000
    return [dataclasses.replace(c, symbol="BTC/USDT", interval="1d", open_time=i * day, close_time=i * day + day - 1) for i, c in enumerate(candles)]


@pytest.fixture
def database() -> Any:
    name = fresh_database()
    conninfo = f"postgresql://127.0.0.1:5432/{name}"
    migrate_postgres(conninfo, timescale=False)
    yield conninfo
    drop_database(name)


def logic_with(history: Any, **settings: Any) -> IndicatorLogic:
    return IndicatorLogic(AgentContext(Settings(**settings), 0, history))


def feed(logic: IndicatorLogic, *candles: Candle, offset: int = 0) -> list[Emit | Reject]:
    return list(logic.on_batch([Inbound("candle", c.key, c, offset + i) for i, c in enumerate(candles)]))  # type: ignore[arg-type]


def emitted(out: list[Emit | Reject]) -> list[Indicators]:
    return [o.value for o in out if isinstance(o, Emit)]


def test_a_new_series_is_seeded_from_the_store_so_ma200_is_valid_at_once(database: str) -> None:
    series = daily(synthetic(301))
    sink = PostgresSink(database)
    sink.write(SinkBatch(candle=series[:300]))
    sink.close()
    history = PostgresCandleHistory(database)
    logic = logic_with(history)
    out = feed(logic, series[300])
    history.close()

    (record,) = emitted(out)
    closes = np.array([c.close for c in series])
    assert record.ma200 == pytest.approx(talib.SMA(closes, 200)[-1], rel=1e-9)
    assert record.rsi == pytest.approx(talib.RSI(closes, 14)[-1], rel=1e-9)
    reference = IndicatorEngine(logic.config)
    reference.seed(series[0].key, series[:300])
    (want,) = reference.process(series[300])
    assert all(getattr(record, f) == getattr(want, f) for f in VALUE_FIELDS)


def test_a_known_series_is_not_read_again() -> None:
    series = daily(synthetic(60))
    calls: list[int] = []

    class History:
        def before(self, exchange: str, symbol: str, interval: str, open_time: int, limit: int) -> list[Candle]:
            calls.append(open_time)
            return [c for c in series if c.open_time < open_time][-limit:]

    logic = logic_with(History())
    out = feed(logic, series[50], series[51])
    assert calls == [series[50].open_time]
    reference = IndicatorEngine(logic.config)
    reference.seed(series[0].key, series[:50])
    want = reference.process(series[50]) + reference.process(series[51])
    assert [[getattr(r, f) for f in VALUE_FIELDS] for r in emitted(out)] == [[getattr(r, f) for f in VALUE_FIELDS] for r in want]


def test_warm_start_reads_only_candles_before_the_first_one_seen(database: str) -> None:
    series = daily(synthetic(60))
    sink = PostgresSink(database)
    sink.write(SinkBatch(candle=series))  # a previous run stored the whole series
    sink.close()
    history = PostgresCandleHistory(database)
    past = history.before("binance", "BTC/USDT", "1d", series[40].open_time, 25)
    history.close()
    assert past == series[15:40]


def test_in_progress_candles_are_ignored_and_bad_candles_rejected() -> None:
    logic = logic_with(None)
    forming = dataclasses.replace(synthetic(1)[0], is_final=False)
    broken = dataclasses.replace(synthetic(1)[0], high=0.5, low=2.0)  # high below low
    out = feed(logic, forming, broken)
    assert [(type(o).__name__, o.offset) for o in out] == [("Reject", 1)]
    assert "high" in out[0].reason  # type: ignore[union-attr]


def test_snapshot_restores_and_changed_periods_refuse_the_checkpoint() -> None:
    series = daily(synthetic(80))
    a, b = logic_with(None), logic_with(None)
    feed(a, *series[:40])
    b.restore(a.snapshot())
    assert [[getattr(r, f) for f in VALUE_FIELDS] for r in emitted(feed(a, *series[40:]))] == [
        [getattr(r, f) for f in VALUE_FIELDS] for r in emitted(feed(b, *series[40:]))
    ]
    with pytest.raises(ValueError, match="periods changed"):
        logic_with(None, indicator_sma="10,30").restore(a.snapshot())


def test_warm_starts_read_postgres_else_a_clickhouse_server() -> None:
    server = "http://default:@127.0.0.1:1/default"
    assert isinstance(open_history(Settings(database_url="postgresql://127.0.0.1:1/none", clickhouse_url=server)), PostgresCandleHistory)
    assert isinstance(open_history(Settings(database_url="", clickhouse_url=server)), ClickHouseCandleHistory)
    assert open_history(Settings(database_url="", clickhouse_url=None)) is None  # embedded chdb: the sink's
    assert open_history(Settings(database_url="", clickhouse_url="chdb:///tmp/tickflow-chdb")) is None
    assert open_history(Settings(indicator_warm_start_bars=0)) is None


@pytest.mark.parametrize(
    "store",
    [
        lambda: PostgresCandleHistory("postgresql://127.0.0.1:1/none", connect_timeout=1),
        lambda: ClickHouseCandleHistory("http://default:@127.0.0.1:1/default"),
    ],
    ids=["postgres", "clickhouse"],
)
def test_an_unreachable_store_leaves_the_series_cold_and_processing_goes_on(store: Any) -> None:
    failed_before = WARM_STARTS.labels("failed")._value.get()
    logic = logic_with(store())
    first = daily(synthetic(1))[0]
    (record,) = emitted(feed(logic, first))
    assert record.open_time == first.open_time and record.ma50 is None
    assert WARM_STARTS.labels("failed")._value.get() == failed_before + 1


def test_periods_come_from_settings() -> None:
    config = indicator_config(Settings(indicator_sma="10,30", indicator_macd="5,35,5", indicator_bb_dev=1.5))
    assert (config.sma_periods, config.macd_fast, config.macd_slow, config.bb_dev_up, config.bb_dev_down) == ((10, 30), 5, 35, 1.5, 1.5)
    with pytest.raises(ValueError, match="INDICATOR_EMA needs 4"):
        Settings(indicator_ema="12,26")
