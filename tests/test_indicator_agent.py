"""The indicator agent's worker without Faust: warm start from the PostgreSQL candle store (or a
ClickHouse server), in-progress candles ignored, bad records dead-lettered, an unreachable store
leaving a series cold."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

import pytest

from agents.indicator_agent import WARM_STARTS, IndicatorWorker, PartitionState, indicator_config, open_history
from agents.indicators import VALUE_FIELDS, IndicatorEngine
from schemas.codec import AvroCodec
from schemas.models import Candle, DeadLetter, Indicators
from sinks.base import SinkBatch
from sinks.migrations import migrate_postgres
from sinks.clickhouse import ClickHouseCandleHistory
from sinks.postgres import PostgresCandleHistory, PostgresSink
from streams.settings import Settings
from tests.test_candles_e2e import drop_database, fresh_database
from tests.test_indicators import synthetic

talib = pytest.importorskip("talib")
np = pytest.importorskip("numpy")


class CapturingProducer:
    """The slice of TickProducer the worker uses, keeping what it was given."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, bytes]] = []
        self.letters: list[DeadLetter] = []

    def produce(self, topic: str, key: str, value: bytes, partition: int | None = None) -> None:
        self.records.append((topic, key, value))

    def dead_letter(self, letter: DeadLetter) -> None:
        self.letters.append(letter)

    def flush(self) -> None: ...


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


def worker_with(history: Any, producer: CapturingProducer, **settings: Any) -> IndicatorWorker:
    worker = IndicatorWorker(Settings(**settings), producer, history)  # type: ignore[arg-type]
    worker.parts[0] = PartitionState(IndicatorEngine(worker.config), next_offset=0)
    return worker


def emitted(producer: CapturingProducer) -> list[Indicators]:
    codec = AvroCodec("tickflow.Indicators")
    return [Indicators.from_avro(codec.decode(v)) for _, _, v in producer.records]


def test_a_new_series_is_seeded_from_the_store_so_ma200_is_valid_at_once(database: str) -> None:
    series = daily(synthetic(301))
    sink = PostgresSink(database)
    sink.write(SinkBatch(candle=series[:300]))
    sink.close()
    producer = CapturingProducer()
    history = PostgresCandleHistory(database)
    worker = worker_with(history, producer)
    codec = AvroCodec("tickflow.Candle")

    assert worker.handle(0, 0, series[300].key.encode(), codec.encode(series[300].to_avro())) is None
    history.close()

    (record,) = emitted(producer)
    closes = np.array([c.close for c in series])
    assert record.ma200 == pytest.approx(talib.SMA(closes, 200)[-1], rel=1e-9)
    assert record.rsi == pytest.approx(talib.RSI(closes, 14)[-1], rel=1e-9)
    reference = IndicatorEngine(worker.config)
    reference.seed(series[0].key, series[:300])
    (want,) = reference.process(series[300])
    assert all(getattr(record, f) == getattr(want, f) for f in VALUE_FIELDS)


def test_the_faust_shell_reads_a_new_series_history_in_a_thread_before_handle() -> None:
    """``prepare`` (awaited by the agent before ``handle``) reads the store off the event loop;
    ``handle`` then seeds from what it read, without a query of its own. A record ``handle`` will
    skip (below the checkpointed offset) is not read for, nor one keyed by a series already known."""
    series = daily(synthetic(60))
    calls: list[tuple[str, int]] = []

    class History:
        def before(self, exchange: str, symbol: str, interval: str, open_time: int, limit: int) -> list[Candle]:
            calls.append((threading.current_thread().name, open_time))
            return [c for c in series if c.open_time < open_time][-limit:]

    producer = CapturingProducer()
    worker = worker_with(History(), producer)
    codec = AvroCodec("tickflow.Candle")
    value = codec.encode(series[50].to_avro())
    worker.parts[0].next_offset = 5

    async def agent_steps() -> None:
        await worker.prepare(0, 4, b"k", value)  # a redelivery: handle skips it
        assert calls == []
        await worker.prepare(0, 5, b"k", value)
        assert len(calls) == 1 and calls[0][0] != threading.current_thread().name
        assert worker.handle(0, 5, b"k", value) is None
        await worker.prepare(0, 6, series[51].key.encode(), b"not even decoded: a known series")
        assert len(calls) == 1

    asyncio.run(agent_steps())
    assert calls == [(calls[0][0], series[50].open_time)]  # handle did not query again
    (record,) = emitted(producer)
    reference = IndicatorEngine(worker.config)
    reference.seed(series[0].key, series[:50])
    (want,) = reference.process(series[50])
    assert all(getattr(record, f) == getattr(want, f) for f in VALUE_FIELDS)


def test_warm_start_reads_only_candles_before_the_first_one_seen(database: str) -> None:
    series = daily(synthetic(60))
    sink = PostgresSink(database)
    sink.write(SinkBatch(candle=series))  # a previous run stored the whole series
    sink.close()
    history = PostgresCandleHistory(database)
    past = history.before("binance", "BTC/USDT", "1d", series[40].open_time, 25)
    history.close()
    assert past == series[15:40]


def test_in_progress_candles_are_ignored_and_bad_records_dead_lettered() -> None:
    producer = CapturingProducer()
    worker = worker_with(None, producer)
    codec = AvroCodec("tickflow.Candle")
    forming = dataclasses.replace(synthetic(1)[0], is_final=False)
    assert worker.handle(0, 0, b"k", codec.encode(forming.to_avro())) is None
    assert worker.handle(0, 1, b"k", b"\x00 not avro") is None
    broken = dataclasses.replace(synthetic(1)[0], high=0.5, low=2.0)  # high below low
    assert worker.handle(0, 2, b"k", codec.encode(broken.to_avro())) is None
    assert producer.records == []
    assert [(letter.component, letter.source_offset) for letter in producer.letters] == [("indicators", 1), ("indicators", 2)]
    assert worker.parts[0].next_offset == 3


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
    producer = CapturingProducer()
    failed_before = WARM_STARTS.labels("failed")._value.get()
    worker = worker_with(store(), producer)
    codec = AvroCodec("tickflow.Candle")
    first = daily(synthetic(1))[0]
    assert worker.handle(0, 0, b"k", codec.encode(first.to_avro())) is None
    (record,) = emitted(producer)
    assert record.open_time == first.open_time and record.ma50 is None
    assert WARM_STARTS.labels("failed")._value.get() == failed_before + 1


def test_periods_come_from_settings() -> None:
    config = indicator_config(Settings(indicator_sma="10,30", indicator_macd="5,35,5", indicator_bb_dev=1.5))
    assert (config.sma_periods, config.macd_fast, config.macd_slow, config.bb_dev_up, config.bb_dev_down) == ((10, 30), 5, 35, 1.5, 1.5)
    with pytest.raises(ValueError, match="INDICATOR_EMA needs 4"):
        Settings(indicator_ema="12,26")
