"""Faust agent ``ticks`` -> ``candles``: a thin shell around :class:`agents.candles.CandleBook`.

Each ticks partition has its own book. Restart safety does not trust Faust's committed offsets
(after a crash Faust may resume before or past what the state saw, see faust-streaming issue 216):
the book is checkpointed together with the next ticks offset it expects (streams.checkpoint), input
below that offset is skipped and a resume past it seeks back. Candles emitted after the last
checkpoint are emitted again, identically, after a crash; sinks are idempotent, so the stores end
up as after an uninterrupted run. Outputs go through the idempotent confluent-kafka producer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust
import structlog
from prometheus_client import Counter, Gauge, Histogram

from agents.candles import BookOutput, CandleBook, CandleConfig
from schemas.codec import DecodeError, codec_for
from schemas.models import DeadLetter, TradeBatch
from schemas.wire import CandleWriter, LiveCandlesWriter
from sinks.redis import LiveFanout
from streams.checkpoint import CheckpointedAgent, CheckpointWriter, Position, admit, input_start, load_checkpoint, register_checkpointed_agent
from streams.producer import TickProducer
from streams.settings import Settings
from streams.sources.base import now_us

log = structlog.get_logger(__name__)

CANDLES_OUT = Counter("tickflow_candles_emitted_total", "Candles emitted", ["interval", "kind"])
LATE_TRADES = Counter("tickflow_late_trades_total", "Trades later than the grace period")
DUPLICATES = Counter("tickflow_duplicate_trades_total", "Trades skipped as already counted")
BATCHES_IN = Counter("tickflow_candle_batches_total", "TradeBatch records processed by the candle agent")
OPEN_WINDOWS = Gauge("tickflow_candle_open_windows", "Open (symbol, interval) windows", ["partition"])
WATERMARK = Gauge("tickflow_candle_watermark_ms", "Event-time watermark", ["partition"])
INPUT_DELAY = Histogram(
    "tickflow_candle_input_delay_seconds",
    "Wall-clock time from a batch's receipt by ingest to the candle agent reading it (broker hop plus queueing)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0),
)
GAUGES_EVERY_S = 1.0  # how often tick() refreshes the open-window and watermark gauges


def candle_config(settings: Settings) -> CandleConfig:
    return CandleConfig(
        intervals=tuple(settings.intervals),
        lateness_ms=settings.candle_lateness_ms,
        grace_ms=settings.candle_grace_ms,
        fill_gaps=settings.candle_fill_gaps,
    )


@dataclass
class PartitionState(Position):
    book: CandleBook
    last_input: float = field(default_factory=time.monotonic)
    dirty: set[tuple[str, str]] = field(default_factory=set)  # (exchange, symbol) with a held-back update
    flush_due: float | None = None  # when the scheduled trailing-edge flush runs (monotonic), if one is
    idle_closed: bool = True


class CandleWorker(CheckpointWriter):
    """What the agent does with each record and on each tick; no Faust in here, so it is testable."""

    def __init__(self, settings: Settings, producer: TickProducer, fanout: LiveFanout | None = None) -> None:
        self.settings = settings
        self.producer = producer
        self.fanout = fanout  # in-progress candles straight to Redis (CANDLE_UPDATES redis or both)
        self.updates_topic = settings.topic_candle_updates if settings.candle_updates != "redis" else None
        self.config = candle_config(settings)
        registry = settings.schema_registry_url
        self.ticks = codec_for("tickflow.TradeBatch", settings.topic_ticks, registry)
        self.candles = CandleWriter(codec_for("tickflow.Candle", settings.topic_candles, registry))
        self.updates = LiveCandlesWriter(codec_for("tickflow.LiveCandles", settings.topic_candle_updates, registry))
        self.late = codec_for("tickflow.LateTrade", settings.topic_late_trades, registry)
        self.parts: dict[int, PartitionState] = {}
        self.state_topic = settings.topic_candle_state
        self.last_emit: dict[tuple[str, str], float] = {}  # when each symbol's forming candles last went out
        # In-progress candles sent per interval since the last tick, added to CANDLES_OUT there:
        # a Prometheus increment per candle cost more than building the candle.
        self._in_progress_sent: dict[str, int] = {}
        self._gauges_due = 0.0
        self.agent: CheckpointedAgent | None = None  # set when registered with a Faust app
        self.update_s = settings.candle_update_ms / 1000
        # Set by the Faust shell (the event loop's call_later): a held-back update then goes out
        # when its candle_update_ms has passed, not at the next tick after that.
        self.call_later: Callable[[float, Callable[[], None]], Any] | None = None

    def load(self, partition: int) -> PartitionState:
        """A partition's book from its newest checkpoint, or empty from the start of its input
        (blocking; run in an executor, the caller publishes it in ``parts``)."""
        found = load_checkpoint(self.settings, self.settings.topic_candle_state, partition)
        if found is None:
            return PartitionState(CandleBook(self.config), next_offset=input_start(self.settings, self.settings.topic_ticks, partition))
        offset, state = found
        return PartitionState(CandleBook.restore(self.config, state), next_offset=offset)

    def handle(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> int | None:
        """Process one ticks record; return an offset to seek to when input skipped ahead."""
        ps = self.parts[partition]
        take, seek_to = admit(ps, partition, offset)
        if not take:
            return seek_to
        ps.last_input = time.monotonic()
        BATCHES_IN.inc()
        try:
            batch = TradeBatch.from_avro(self.ticks.decode(value))
        except (DecodeError, KeyError, TypeError) as exc:
            self.producer.dead_letter(
                DeadLetter("candles", str(exc), value or b"", now_us() // 1000, self.settings.topic_ticks, partition, offset, key)
            )
            return None
        INPUT_DELAY.observe(max(now_us() - batch.received_at, 0) / 1e6)
        out = ps.book.add(batch.exchange, batch.symbol, batch.trades)
        ps.idle_closed = False
        self._emit(out, ps)
        return None

    def _emit(self, out: BookOutput, ps: PartitionState) -> None:
        topic = self.settings.topic_candles
        for c in out.candles:
            self.producer.produce(topic, c.key, self.candles.encode(c))
            CANDLES_OUT.labels(c.interval, "revision" if c.revision else "final").inc()
        for late in out.late:
            self.producer.produce(self.settings.topic_late_trades, f"{late.exchange}:{late.symbol}", self.late.encode(late.to_avro()))
            LATE_TRADES.inc()
        if out.duplicates:
            DUPLICATES.inc(out.duplicates)
        if out.dirty:
            self._progress(ps, out.dirty, time.monotonic())

    def _progress(self, ps: PartitionState, symbols: set[tuple[str, str]], now: float) -> None:
        """Leading-edge throttle on the symbols one record changed: a symbol quiet for ``candle_update_ms``
        goes out at once (low latency); one sent more recently waits in ``ps.dirty`` for its flush.

        Only the record's own symbols are looked at, not every pending one: this runs per record.
        """
        last, wait = self.last_emit, self.update_s
        held: float | None = None
        for sym in symbols:
            sent = last.get(sym)
            if sent is None or now - sent >= wait:
                ps.dirty.discard(sym)
                self._send_progress(ps, sym, now)
            else:
                ps.dirty.add(sym)
                held = sent if held is None else min(held, sent)
        if held is not None:
            self._schedule_flush(ps, held + wait, now)

    def _schedule_flush(self, ps: PartitionState, due: float, now: float) -> None:
        """At most one pending flush per partition, at the earliest due time of its held symbols."""
        if self.call_later is None or (ps.flush_due is not None and ps.flush_due <= due):
            return
        ps.flush_due = due
        self.call_later(max(due - now, 0.0), lambda: self._scheduled_flush(ps, due))

    def _scheduled_flush(self, ps: PartitionState, due: float) -> None:
        if ps.flush_due != due or not any(p is ps for p in self.parts.values()):
            return  # superseded by an earlier flush, or the partition was revoked
        ps.flush_due = None
        self._flush_progress(ps, time.monotonic())

    def _flush_progress(self, ps: PartitionState, now: float) -> None:
        """Trailing edge: pending in-progress candles whose ``candle_update_ms`` has passed; the
        rest get a flush scheduled at their own due time."""
        last, wait = self.last_emit, self.update_s
        due = [sym for sym in ps.dirty if now - last.get(sym, now - wait) >= wait]
        ps.dirty.difference_update(due)
        for sym in due:
            self._send_progress(ps, sym, now)
        if ps.dirty:
            self._schedule_flush(ps, min(last.get(sym, now) for sym in ps.dirty) + wait, now)

    def _send_progress(self, ps: PartitionState, sym: tuple[str, str], now: float) -> None:
        """One ``LiveCandles`` record with the symbol's forming candle of every interval."""
        self.last_emit[sym] = now
        candles = ps.book.forming(*sym)
        if candles:
            if self.updates_topic is not None:
                self.producer.produce(self.updates_topic, f"{sym[0]}:{sym[1]}", self.updates.encode(candles))
            if self.fanout is not None:
                self.fanout.offer(candles)
            sent = self._in_progress_sent
            for candle in candles:
                sent[candle.interval] = sent.get(candle.interval, 0) + 1

    def tick(self, now: float | None = None) -> None:
        """Periodic work: throttled in-progress updates, closing windows of quiet partitions, metrics."""
        now = time.monotonic() if now is None else now
        for p, ps in list(self.parts.items()):
            if ps.dirty:
                self._flush_progress(ps, now)
            if not ps.idle_closed and now - ps.last_input >= self.settings.candle_idle_timeout_s:
                self.close_windows(p)
        if now >= self._gauges_due:  # counting open windows walks every symbol's state: once a second
            self._gauges_due = now + GAUGES_EVERY_S
            for p, ps in self.parts.items():
                OPEN_WINDOWS.labels(str(p)).set(ps.book.open_windows())
                if ps.book.watermark_ms is not None:
                    WATERMARK.labels(str(p)).set(ps.book.watermark_ms)
        for interval, n in self._in_progress_sent.items():
            if n:
                CANDLES_OUT.labels(interval, "in_progress").inc(n)
                self._in_progress_sent[interval] = 0
        self.producer.poll(0)

    def close_windows(self, partition: int) -> None:
        """Finalize the open windows of a partition (idle timeout, or end of a bounded replay)."""
        ps = self.parts[partition]
        out = ps.book.close_open_windows()
        ps.idle_closed = True
        ps.changed = True
        if out.candles:
            log.info("closed open windows", partition=partition, candles=len(out.candles))
        self._emit(out, ps)

    def state(self, ps: PartitionState) -> dict[str, Any]:
        return ps.book.snapshot()


def register_candle_agent(app: faust.App, settings: Settings, producer: TickProducer) -> CandleWorker:
    fanout = LiveFanout(settings.redis_url) if settings.redis_url and settings.candle_updates != "kafka" else None
    worker = CandleWorker(settings, producer, fanout)
    worker.agent = register_checkpointed_agent(app, worker, topic=settings.topic_ticks, name="candles", every_s=settings.candle_snapshot_s)

    @app.task
    async def exact_trailing_edges() -> None:
        worker.call_later = asyncio.get_running_loop().call_later

    @app.timer(interval=max(0.02, settings.candle_update_ms / 1000 / 2))
    async def candle_tick() -> None:
        worker.tick()

    return worker
