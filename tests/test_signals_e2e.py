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
