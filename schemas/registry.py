"""Every record type tickflow writes, declared once.

A :class:`RecordType` ties together the Avro schema (``schemas/<schema>.avsc``), the Python model,
the topic and its partition key, the fixed local schema id, and where the sinks put it: its store
table and its Redis channel. Topics, codecs, the sinks, migrations checks, the CLI and the gateway
read this table; none of them names record types one by one.

Adding a record type: its ``.avsc`` and model and one entry here; its tables are generated from
them (``sinks/ddl.py``) unless a migration creates them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schemas.models import (
    Candle,
    DeadLetter,
    FearGreed,
    Indicators,
    LateTrade,
    LiveCandles,
    NewsScored,
    OnchainBlock,
    OnchainBlockMetric,
    OnchainDay,
    OnchainMetric,
    RiskBar,
    SentimentAggregate,
    Signal,
    TradeBatch,
    TradeIntent,
)
from schemas.validation import Checked, check_trade_batch


@dataclass(frozen=True)
class RecordType:
    name: str  # registry name, used by agent specs and sinks ("candle")
    schema: str  # Avro full name, file schemas/<schema>.avsc
    model: type  # has to_avro() and from_avro(dict)
    topic: str  # default topic name; the setting TOPIC_<NAME> (e.g. TOPIC_CANDLES) overrides it
    topic_setting: str  # Settings field holding the topic name
    local_id: int  # schema id without a Schema Registry: never reused, a changed schema gets a new one
    key: Callable[[Any], str] | None = None  # partition key of a record
    partitioned: bool = True  # False: one partition (the dead-letter topic)
    topic_config: dict[str, str] = field(default_factory=dict)
    table: str | None = None  # table in ClickHouse and PostgreSQL/TimescaleDB (same name in both)
    table_key: tuple[str, ...] = ()  # columns naming one row (ClickHouse ORDER BY, PostgreSQL primary key)
    version: str | None = None  # column that decides which row of a key wins (ReplacingMergeTree(version), upsert if higher)
    # An equal version replaces the stored row too (the last in Kafka order wins, as ClickHouse keeps
    # it): for records recomputed without a version of their own, as indicators after a revision.
    equal_version_replaces: bool = False
    time_column: str | None = None  # event-time column (ms or µs as in the model): partitioning, hypertables, query ranges
    channel: str | None = None  # Redis pub/sub channel, formatted with the record's fields
    realtime: bool = False  # superseded by the next one, never stored: the worker may publish it to Redis itself
    # (model, Kafka key, now µs) -> what of a decoded record its consumers may use: any producer can
    # write a topic, so agents and sinks check what they read, not only ingest what it writes.
    check: Callable[[Any, str | None, int], Checked] | None = None
    description: str = ""


def _key(record: Any) -> str:
    return record.key


RECORDS: dict[str, RecordType] = {
    rt.name: rt
    for rt in (
        RecordType(
            "trade_batch", "tickflow.TradeBatch", TradeBatch, "ticks", "topic_ticks", 1, _key,
            table="trades", table_key=("exchange", "symbol", "trade_id"), time_column="ts", check=check_trade_batch, description="One delivery of one symbol's trades: the raw input log, source of truth",
        ),
        RecordType(
            "candle", "tickflow.Candle", Candle, "candles", "topic_candles", 2, _key,
            table="candles", table_key=("exchange", "symbol", "interval", "open_time"), version="revision", time_column="open_time",
            channel="candles:{exchange}:{symbol}:{interval}",
            description="Final OHLCV candles and their revisions",
        ),
        RecordType("dead_letter", "tickflow.DeadLetter", DeadLetter, "dlq", "topic_dlq", 3, partitioned=False,
                   # A letter carries a rejected record of any topic: the largest any topic takes.
                   topic_config={"max.message.bytes": str(16_000_000)},
                   description="Input that could not be processed, with the reason and the original bytes"),
        RecordType("late_trade", "tickflow.LateTrade", LateTrade, "late-trades", "topic_late_trades", 4,
                   lambda r: f"{r.exchange}:{r.symbol}", description="Trades later than the grace period"),
        RecordType(
            "indicators", "tickflow.Indicators", Indicators, "indicators", "topic_indicators", 5, _key,
            table="technical_metrics", table_key=("exchange", "symbol", "interval", "open_time"), version="candle_revision", equal_version_replaces=True,
            time_column="open_time", channel="indicators:{exchange}:{symbol}:{interval}",
            description="Technical indicators of each final candle",
        ),
        RecordType(
            "live_candles", "tickflow.LiveCandles", LiveCandles, "candles-live", "topic_candle_updates", 6,
            lambda r: f"{r.candles[0].exchange}:{r.candles[0].symbol}",
            # In-progress candles matter until their window closes: an hour of them is plenty.
            topic_config={"retention.ms": str(3_600_000)}, realtime=True,
            description="A symbol's forming candle of every interval (CANDLE_UPDATES=kafka|both)",
        ),
        RecordType(
            "onchain_day", "tickflow.OnchainDay", OnchainDay, "onchain-days", "topic_onchain_days", 7, _key,
            description="A provider's daily on-chain figures of one asset (coinmetrics: source)",
        ),
        RecordType(
            "onchain_block", "tickflow.OnchainBlock", OnchainBlock, "onchain-blocks", "topic_onchain_blocks", 8, _key,
            # A block of a busy chain is a few MB of Avro.
            topic_config={"max.message.bytes": str(16_000_000)},
            description="Blocks of a UTXO chain with resolved inputs (bitcoind: and replay --format bitcoind-json sources)",
        ),
        RecordType(
            "onchain_metric", "tickflow.OnchainMetric", OnchainMetric, "onchain_metrics", "topic_onchain_metrics", 9, _key,
            table="onchain_metrics", table_key=("asset", "day", "source"), version="revision", time_column="day",
            channel="onchain:{asset}", description="On-chain metrics per asset, UTC day and source, revised as data arrives",
        ),
        RecordType(
            "onchain_block_metric", "tickflow.OnchainBlockMetric", OnchainBlockMetric, "onchain_block_metrics", "topic_onchain_block_metrics", 16, _key,
            table="onchain_block_metrics", table_key=("asset", "height", "hash"), version="revision", time_column="block_time",
            channel="onchain_blocks:{asset}", description="On-chain figures per block (asset, height, hash), retracted by a reorg",
        ),
        RecordType(
            "news_scored", "tickflow.NewsScored", NewsScored, "news", "topic_news", 10, _key,
            table="news_scored", table_key=("source", "item_id"), time_column="ts",
            description="Headlines, RSS entries and posts with their sentiment, scored at ingest",
        ),
        RecordType(
            "sentiment_aggregate", "tickflow.SentimentAggregate", SentimentAggregate, "sentiment", "topic_sentiment", 11, _key,
            table="sentiment_aggregates", table_key=("asset", "interval", "window_start"), version="revision",
            time_column="window_start", channel="sentiment:{asset}",
            description="Sentiment per asset (and MARKET) per 1h and 1d window, with the day's Fear & Greed",
        ),
        RecordType(
            "fear_greed", "tickflow.FearGreed", FearGreed, "fear-greed", "topic_fear_greed", 12, _key,
            table="fear_greed", table_key=("day",), time_column="day",
            description="The Crypto Fear & Greed index of each UTC day",
        ),
        RecordType(
            "signal", "tickflow.Signal", Signal, "signals", "topic_signals", 13, _key,
            table="signals", table_key=("strategy", "exchange", "symbol", "interval", "open_time"), time_column="open_time",
            channel="signals:{symbol}", description="A strategy's decision at each closed candle, with reasons and input times",
        ),
        RecordType(
            "trade_intent", "tickflow.TradeIntent", TradeIntent, "trade_intents", "topic_trade_intents", 14, _key,
            table="trade_intents", table_key=("strategy", "exchange", "symbol", "interval", "open_time", "seq"), time_column="open_time",
            description="Risk-sized orders for someone else to execute; rejected and resized ones say why",
        ),
        RecordType(
            "risk_bar", "tickflow.RiskBar", RiskBar, "risk-bars", "topic_risk_bars", 15, _key,
            description="Each signalled candle of a strategy's series, keyed by the strategy: the risk agent's one merged input",
        ),
    )
}

LOCAL_IDS: dict[str, int] = {rt.schema: rt.local_id for rt in RECORDS.values()}


def record_type(name: str) -> RecordType:
    try:
        return RECORDS[name]
    except KeyError:
        raise KeyError(f"unknown record type {name!r}; known: {', '.join(RECORDS)}") from None


def topic_of(settings: Any, name: str) -> str:
    """The physical topic of record type ``name`` under ``settings``."""
    rt = record_type(name)
    return getattr(settings.kafka, rt.topic_setting, None) or f"{rt.topic}{settings.kafka.topic_suffix}"
