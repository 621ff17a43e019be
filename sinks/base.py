"""The sink contract: a store that durably and idempotently writes one decoded batch at a time.

Like Quix Streams' ``add``/``flush`` pair, reduced to one call: the runner accumulates records and
hands the store a whole :class:`SinkBatch`; ``write`` returns only once the rows are durable and
raises otherwise, so the runner commits Kafka offsets only after a successful write. Writes must be
idempotent (keyed upserts or replacing engines) because at-least-once delivery replays records after
a crash or rebalance.

Two kinds of failure are told apart: :class:`DataRejected` (this data can never be stored: the
runner bisects the batch, dead-letters the culprit records and writes the rest) and anything else
(the store is down or unhappy: the runner retries the same batch until it succeeds).

Adding a record type (as ``Indicators`` into a ``technical_metrics`` table keyed like candles) is:
a field on :class:`SinkBatch`, an entry in :data:`TOPICS`, a migration per store and a column mapping
in each sink that wants it, plus the logical topic in that sink's ``topics``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from itertools import repeat
from operator import attrgetter
from typing import Any, ClassVar

from schemas.models import Candle, Indicators, LiveCandles, TradeBatch
from schemas.registry import record_type
from streams.settings import Settings

# ClickHouse DateTime64 covers 1900-01-01 .. 2299-12-31 and silently wraps values outside it (a
# wrapped value then breaks every reader of the table), so both analytic stores reject such rows.
MIN_TIME_MS = -2_208_988_800_000
MAX_TIME_MS = 10_413_791_999_999
MAX_INT64 = 2**63 - 1
MAX_REVISION = 2**31 - 1  # Avro int; fits PostgreSQL integer and the ClickHouse UInt32 version column


class DataRejected(Exception):
    """The store can never accept this data (a value out of range, an invalid string, ...)."""


@dataclass(slots=True)
class SinkBatch:
    """What one write carries, already decoded, in Kafka order within each partition."""

    trade_batches: list[TradeBatch] = field(default_factory=list)  # as received: one symbol's trades each
    candles: list[Candle] = field(default_factory=list)  # final and in-progress
    indicators: list[Indicators] = field(default_factory=list)  # of final candles, revisions included

    def __len__(self) -> int:
        return sum(len(b.trades) for b in self.trade_batches) + len(self.candles) + len(self.indicators)

    def extend(self, other: SinkBatch) -> None:
        self.trade_batches.extend(other.trade_batches)
        self.candles.extend(other.candles)
        self.indicators.extend(other.indicators)

    @classmethod
    def merge(cls, parts: Iterable[SinkBatch]) -> SinkBatch:
        batch = cls()
        for part in parts:
            batch.extend(part)
        return batch

    def final_candles(self) -> list[Candle]:
        """Candles the analytic stores keep: closed windows, including later revisions."""
        return [c for c in self.candles if c.is_final]


class Sink(abc.ABC):
    """One store. ``topics`` names the logical topics (keys of :data:`TOPICS`) it consumes."""

    name: ClassVar[str]
    topics: ClassVar[tuple[str, ...]]
    batch_ms_setting: ClassVar[str] = "sink_batch_ms"  # Settings field: longest the runner holds a partial batch

    @classmethod
    def topics_for(cls, settings: Settings) -> tuple[str, ...]:
        """The logical topics this sink consumes under ``settings``."""
        return cls.topics

    @abc.abstractmethod
    def write(self, batch: SinkBatch) -> None:
        """Store the batch idempotently; return only when durable; raise on failure."""

    @abc.abstractmethod
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SinkInput:
    """A topic a sink reads: its record type (schemas.registry) and the :class:`SinkBatch` part a
    decoded record becomes."""

    record: str  # registry name of the record type
    to_batch: Callable[[dict[str, Any]], SinkBatch]

    @property
    def settings_attr(self) -> str:
        """Settings field holding the physical topic name."""
        return record_type(self.record).topic_setting

    @property
    def schema(self) -> str:
        """Avro record name for AvroCodec."""
        return record_type(self.record).schema


def _trade_batch_part(record: dict[str, Any]) -> SinkBatch:
    return SinkBatch(trade_batches=[TradeBatch.from_avro(record)])


def _candle_part(record: dict[str, Any]) -> SinkBatch:
    return SinkBatch(candles=[Candle.from_avro(record)])


def _live_candles_part(record: dict[str, Any]) -> SinkBatch:
    return SinkBatch(candles=LiveCandles.from_avro(record).candles)


def _indicators_part(record: dict[str, Any]) -> SinkBatch:
    return SinkBatch(indicators=[Indicators.from_avro(record)])


TOPICS: dict[str, SinkInput] = {
    "ticks": SinkInput("trade_batch", _trade_batch_part),
    "candles": SinkInput("candle", _candle_part),
    "candle_updates": SinkInput("live_candles", _live_candles_part),
    "indicators": SinkInput("indicators", _indicators_part),
}


TRADE_COLUMNS = ("exchange", "symbol", "trade_id", "ts", "price", "amount", "side")
CANDLE_COLUMNS = tuple(f.name for f in fields(Candle))
_candle_values = attrgetter(*CANDLE_COLUMNS)
INDICATOR_COLUMNS = tuple(f.name for f in fields(Indicators))
_indicator_values = attrgetter(*INDICATOR_COLUMNS)


def _check_times(what: str, values: list[int], per_ms: int) -> None:
    if values:
        for bound in (min(values), max(values)):
            if not MIN_TIME_MS <= bound // per_ms <= MAX_TIME_MS:
                raise DataRejected(f"{what} {bound} is outside the storable range 1900-01-01..2299-12-31")


def _check_text(what: str, values: list[str | None]) -> None:
    if "\x00" in "".join(v for v in values if v is not None):
        raise DataRejected(f"{what} contains a NUL character")


def trade_columns(batches: list[TradeBatch]) -> dict[str, list[Any]]:
    """The trades as columns named like the tables' (ts in µs), or DataRejected if unstorable.

    Both analytic sinks write these same columns, which is what keeps their contents equal. Built a
    batch at a time (``zip`` over its trades): per trade, this was most of a store sink's CPU.
    """
    cols: dict[str, list[Any]] = {name: [] for name in TRADE_COLUMNS}
    exchange, symbol, trade_id, ts, price, amount, side = cols.values()
    for batch in batches:
        n = len(batch.trades)
        if n:
            exchange.extend(repeat(batch.exchange, n))
            symbol.extend(repeat(batch.symbol, n))
            ids, times, prices, amounts, sides = zip(*batch.trades, strict=True)
            trade_id.extend(ids)
            ts.extend(times)
            price.extend(prices)
            amount.extend(amounts)
            side.extend(sides)
    _check_times("trade ts (µs)", ts, 1000)
    for name in ("exchange", "symbol", "trade_id", "side"):
        _check_text(f"trade {name}", cols[name])
    return cols


def candle_columns(candles: list[Candle]) -> dict[str, list[Any]]:
    """The candles as columns named like the tables' (times in ms), or DataRejected if unstorable."""
    if not candles:
        return {name: [] for name in CANDLE_COLUMNS}
    cols = dict(zip(CANDLE_COLUMNS, map(list, zip(*map(_candle_values, candles))), strict=True))
    _check_times("candle open_time (ms)", cols["open_time"], 1)
    _check_times("candle close_time (ms)", cols["close_time"], 1)
    if min(cols["revision"]) < 0 or max(cols["revision"]) > MAX_REVISION:
        raise DataRejected(f"candle revision outside 0..{MAX_REVISION}")
    if min(cols["trade_count"]) < 0 or max(cols["trade_count"]) > MAX_INT64:
        raise DataRejected("candle trade_count outside 0..2**63-1")
    for name in ("exchange", "symbol", "interval", "first_trade_id", "last_trade_id"):
        _check_text(f"candle {name}", cols[name])
    return cols


def indicator_columns(records: list[Indicators]) -> dict[str, list[Any]]:
    """The indicator records as columns named like ``technical_metrics`` (open_time in ms), or DataRejected."""
    if not records:
        return {name: [] for name in INDICATOR_COLUMNS}
    cols = dict(zip(INDICATOR_COLUMNS, map(list, zip(*map(_indicator_values, records))), strict=True))
    _check_times("indicators open_time (ms)", cols["open_time"], 1)
    if min(cols["candle_revision"]) < 0 or max(cols["candle_revision"]) > MAX_REVISION:
        raise DataRejected(f"indicators candle_revision outside 0..{MAX_REVISION}")
    for name in ("exchange", "symbol", "interval"):
        _check_text(f"indicators {name}", cols[name])
    return cols
