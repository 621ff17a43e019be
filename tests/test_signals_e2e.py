"""Backtest equals live: the signals and intents ``tickflow run`` writes for a replay are the backtest's."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from agents.strategy import load_strategy
from schemas.codec import AvroCodec
from schemas.models import Signal, TradeIntent
from streams.backtest import run_backtest_source
from streams.cli import open_source
from streams.settings import Settings
from tests.conftest import data_path
from tests.kafka_util import read_topic
from tests.test_candles_e2e import drop_database, env_for, fresh_database, tickflow

pytestmark = pytest.mark.integration

TARDIS = ("tardis_binance_futures_btcusdt", "tardis_trades_binance-futures_BTCUSDT_2020-02-22.csv")
# Trades often on two hours of 1m candles, so the comparison has intents of every kind.
BUSY = """
name = "busy"
version = "1"
interval = "1m"
entry_threshold = 0.3
[[rules]]
kind = "rsi"
below = 45
above = 55
[[rules]]
kind = "macd_cross"
weight = 2
[[rules]]
kind = "ma_cross"
fast = "ema12"
slow = "ema26"
trend = true
[risk]
risk_per_trade = 0.01
atr_stop = 1.0
take_profit_r = 1.5
cooldown_minutes = 3
max_symbol_exposure = 2.0
max_total_exposure = 3.0
"""


def test_tickflow_run_writes_the_backtests_signals_and_intents(topics: Settings, tmp_path: Path) -> None:
    path = data_path(*TARDIS)
    strategy_file = tmp_path / "busy.toml"
    strategy_file.write_text(BUSY)
    db = fresh_database()
    try:
        env = env_for(topics, data_dir=tmp_path / "data", database=db) | {"STRATEGY_FILE": str(strategy_file)}
        run = tickflow("run", "--source", f"replay:{path}", "--until-drained", "--quiet", env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        with psycopg.connect(f"postgresql://127.0.0.1:5432/{db}") as conn:
            pg_signals = conn.execute("SELECT direction, confidence, reasons, onchain_time FROM signals ORDER BY open_time").fetchall()
            pg_intents = conn.execute("SELECT intent_id, status, quantity, reason FROM trade_intents ORDER BY intent_id").fetchall()
        ch = tickflow("sql", "SELECT count() AS n FROM signals FINAL", "--format", "json", env=env)
        assert ch.returncode == 0, ch.stderr[-3000:]
        ch_signals = int(json.loads(ch.stdout.splitlines()[0])["n"])
    finally:
        drop_database(db)

    def records(topic: str, schema: str, model: type) -> list:
        codec = AvroCodec(schema)
        return [model.from_avro(codec.decode(m.value())) for m in read_topic(topics, topic)]

    live_intents = records(topics.kafka.topic_trade_intents, "tickflow.TradeIntent", TradeIntent)
    live_signals = records(topics.kafka.topic_signals, "tickflow.Signal", Signal)

    settings = topics.updated(strategy_file=strategy_file)
    src = open_source(f"replay:{path}", settings, symbols=[], fmt=None, speed="max", rate=None, limit=None, exchange=None)
    bt = run_backtest_source(src, load_strategy(strategy_file), settings)

    assert len(live_signals) == len(bt.signals) >= 100
    assert sorted(live_signals, key=lambda s: s.open_time) == sorted(bt.signals, key=lambda s: s.open_time)
    assert {i.action for i in bt.intents} == {"open", "close"} and len(bt.intents) >= 5
    assert sorted(live_intents, key=lambda i: i.intent_id) == sorted(bt.intents, key=lambda i: i.intent_id)
    # and the analysis history holds them, in both stores
    by_time = sorted(bt.signals, key=lambda s: s.open_time)
    assert pg_signals == [(s.direction, s.confidence, s.reasons, None) for s in by_time]
    assert ch_signals == len(bt.signals)
    assert sorted(pg_intents) == sorted((i.intent_id, i.status, i.quantity, i.reason) for i in bt.intents)  # the database's collation may order ids otherwise


class Capturing:
    """The runtime's producer, keeping what it writes to the signals topic."""

    def __init__(self, settings: Settings, topic: str) -> None:
        from streams.producer import RecordProducer

        self.inner, self.topic, self.values = RecordProducer(settings), topic, []

    def produce(self, topic: str, key, value: bytes, **kw) -> None:  # noqa: ANN001, ANN003
        if topic == self.topic:
            self.values.append(value)
        self.inner.produce(topic, key, value, **kw)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.inner, name)


def test_the_signals_agent_waits_for_onchain_values_and_they_vote_live(topics: Settings, tmp_path: Path) -> None:
    """The agent on the broker: candles and indicators in their topics, on-chain metrics in theirs
    (keyed by asset, partitioned otherwise). Yesterday's MVRV is published after the candles: the
    signals wait for it, then it votes, and they equal the logic's fed in another order."""
    import threading
    import time

    from confluent_kafka import Producer

    from agents.signal_agent import SIGNALS, SignalLogic
    from agents.spec import Inbound
    from schemas.models import OnchainMetric
    from schemas.registry import RECORDS
    from schemas.wire import encoder_for
    from streams.runtime import AgentRunner
    from tests.test_signals import DAY, TODAY, _candles

    strategy_file = tmp_path / "mvrv.toml"
    strategy_file.write_text('name = "mvrv"\nversion = "1"\n[[rules]]\nkind = "onchain_zone"\nmetric = "mvrv"\nbelow = 1.0\nasset = "BTC"\n')
    settings = topics.updated(strategy_file=strategy_file, signal_wait_s=60.0)
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap, "partitioner": "murmur2_random"})

    def send(records: list[Inbound]) -> None:
        for r in records:
            rt = RECORDS[r.record]
            producer.produce(getattr(settings.kafka, rt.topic_setting), encoder_for(AvroCodec(rt.schema))(r.value), r.value.key)
        assert producer.flush(30) == 0

    older = Inbound("onchain_metric", "BTC", OnchainMetric("BTC", TODAY - 2 * DAY, "test", mvrv=5.0), 0)
    yesterday = Inbound("onchain_metric", "BTC", OnchainMetric("BTC", TODAY - DAY, "test", mvrv=0.5), 1)
    candles = _candles(3)
    send([older, *candles])
    out = Capturing(settings, settings.kafka.topic_signals)
    runner = AgentRunner(SIGNALS, settings, out)
    stop = threading.Event()
    runner.start(stop)
    try:
        deadline = time.monotonic() + 30
        while sum(o for (t, _), o in runner.positions().items() if t in (settings.kafka.topic_candles, settings.kafka.topic_indicators)) < len(candles):
            assert time.monotonic() < deadline and runner.error is None
            time.sleep(0.1)
        time.sleep(0.5)
        assert out.values == []  # read, and waiting for yesterday's value
        send([yesterday])
        while len(out.values) < 3:
            assert time.monotonic() < deadline and runner.error is None
            time.sleep(0.1)
    finally:
        stop.set()
        runner.join(30)
        out.close()
    codec = AvroCodec("tickflow.Signal")
    live = [Signal.from_avro(codec.decode(v)) for v in out.values]
    logic = SignalLogic(load_strategy(strategy_file))
    expected = [o.value for o in [*logic.on_table([older, yesterday]), *logic.on_batch(candles)] if o.record == "signal"]
    assert live == expected
    assert all(s.onchain_time == TODAY - DAY and s.direction == "long" for s in live)
