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
from dataclasses import dataclass, field

import faust
import structlog
from faust.types import TP
from prometheus_client import Counter, Gauge

from agents.candles import BookOutput, CandleBook, CandleConfig
from schemas.codec import AvroCodec, DecodeError
from schemas.models import DeadLetter, TradeBatch
from streams.checkpoint import encode_checkpoint, load_checkpoint
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


def candle_config(settings: Settings) -> CandleConfig:
    return CandleConfig(
        intervals=tuple(settings.intervals),
        lateness_ms=settings.candle_lateness_ms,
        grace_ms=settings.candle_grace_ms,
        fill_gaps=settings.candle_fill_gaps,
    )


@dataclass
class PartitionState:
    book: CandleBook
    next_offset: int | None = None  # next ticks offset the book expects; None = take what comes
    seeking: bool = False
    last_input: float = field(default_factory=time.monotonic)
    dirty: set[tuple[str, str, str]] = field(default_factory=set)
    changed: bool = False
    idle_closed: bool = True


class CandleWorker:
    """What the agent does with each record and on each tick; no Faust in here, so it is testable."""

    def __init__(self, settings: Settings, producer: TickProducer) -> None:
        self.settings = settings
        self.producer = producer
        self.config = candle_config(settings)
        self.ticks = AvroCodec("tickflow.TradeBatch")
        self.candles = AvroCodec("tickflow.Candle")
        self.late = AvroCodec("tickflow.LateTrade")
        self.parts: dict[int, PartitionState] = {}
        self.last_emit: dict[tuple[str, str, str], float] = {}
        self.processed_offsets: dict[int, int] = {}
        self.update_s = settings.candle_update_ms / 1000

    def load(self, partition: int) -> PartitionState:
        """Restore a partition's book from its newest checkpoint (blocking; run in an executor)."""
        found = load_checkpoint(self.settings, self.settings.topic_candle_state, partition)
        if found is None:
            ps = PartitionState(CandleBook(self.config))
        else:
            offset, state = found
            ps = PartitionState(CandleBook.restore(self.config, state), next_offset=offset)
        self.parts[partition] = ps
        return ps

    def handle(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> int | None:
        """Process one ticks record; return an offset to seek to when input skipped ahead."""
        ps = self.parts[partition]
        if ps.next_offset is not None:
            if offset < ps.next_offset:
                return None  # already in the checkpointed state: a redelivery
            if offset > ps.next_offset:
                if ps.seeking:
                    return None
                ps.seeking = True
                log.warning("input resumed past the checkpoint, seeking back", partition=partition, offset=offset, expected=ps.next_offset)
                return ps.next_offset
        ps.seeking = False
        ps.next_offset = offset + 1
        ps.changed = True
        ps.last_input = time.monotonic()
        self.processed_offsets[partition] = offset
        BATCHES_IN.inc()
        try:
            batch = TradeBatch.from_avro(self.ticks.decode(value))
        except (DecodeError, KeyError, TypeError) as exc:
            self.producer.dead_letter(
                DeadLetter("candles", str(exc), value or b"", now_us() // 1000, self.settings.topic_ticks, partition, offset, key)
            )
            return None
        out = ps.book.add(batch.exchange, batch.symbol, batch.trades)
        ps.idle_closed = False
        self._emit(out, ps)
        return None

    def _emit(self, out: BookOutput, ps: PartitionState) -> None:
        topic = self.settings.topic_candles
        for c in out.candles:
            self.producer.produce(topic, c.key, self.candles.encode(c.to_avro()))
            CANDLES_OUT.labels(c.interval, "revision" if c.revision else "final").inc()
        for late in out.late:
            self.producer.produce(self.settings.topic_late_trades, f"{late.exchange}:{late.symbol}", self.late.encode(late.to_avro()))
            LATE_TRADES.inc()
        if out.duplicates:
            DUPLICATES.inc(out.duplicates)
        if out.dirty:
            ps.dirty |= out.dirty
            self._flush_progress(ps, time.monotonic(), force=False)

    def _flush_progress(self, ps: PartitionState, now: float, force: bool) -> None:
        """In-progress candles, at most one per (symbol, interval) every ``candle_update_ms``."""
        topic = self.settings.topic_candles
        sent = []
        for key in ps.dirty:
            if not force and now - self.last_emit.get(key, 0.0) < self.update_s:
                continue
            candle = ps.book.in_progress(*key)
            sent.append(key)
            self.last_emit[key] = now
            if candle is not None:
                self.producer.produce(topic, candle.key, self.candles.encode(candle.to_avro()))
                CANDLES_OUT.labels(candle.interval, "in_progress").inc()
        ps.dirty.difference_update(sent)

    def tick(self, now: float | None = None) -> None:
        """Periodic work: throttled in-progress updates and closing windows of quiet partitions."""
        now = time.monotonic() if now is None else now
        for p, ps in list(self.parts.items()):
            if ps.dirty:
                self._flush_progress(ps, now, force=False)
            if not ps.idle_closed and now - ps.last_input >= self.settings.candle_idle_timeout_s:
                self.close_windows(p)
            OPEN_WINDOWS.labels(str(p)).set(ps.book.open_windows())
            if ps.book.watermark_ms is not None:
                WATERMARK.labels(str(p)).set(ps.book.watermark_ms)
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

    def checkpoints(self, partitions: list[int] | None = None) -> list[tuple[int, bytes]]:
        """Checkpoint records of the partitions whose state changed since their last checkpoint."""
        out = []
        for p in partitions if partitions is not None else list(self.parts):
            ps = self.parts.get(p)
            if ps is not None and ps.changed and ps.next_offset is not None:
                out.append((p, encode_checkpoint(ps.next_offset, ps.book.snapshot())))
                ps.changed = False
        return out

    def write_checkpoints(self, partitions: list[int] | None = None) -> int:
        """Write checkpoints and wait until they and every candle before them are durable (blocking)."""
        records = self.checkpoints(partitions)
        for p, data in records:
            self.producer.produce(self.settings.topic_candle_state, str(p), data, partition=p)
        self.producer.flush()
        return len(records)


def register_candle_agent(app: faust.App, settings: Settings, producer: TickProducer) -> CandleWorker:
    worker = CandleWorker(settings, producer)
    topic = app.topic(settings.topic_ticks, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    checkpoint_lock = asyncio.Lock()

    async def write_checkpoints(partitions: list[int] | None = None) -> None:
        async with checkpoint_lock:
            await asyncio.get_running_loop().run_in_executor(None, worker.write_checkpoints, partitions)

    @app.agent(topic, name="candles")
    async def candles(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        async for event in stream.events():
            msg = event.message
            if msg.partition not in worker.parts:
                await loop.run_in_executor(None, worker.load, msg.partition)
            with structlog.contextvars.bound_contextvars(partition=msg.partition, offset=msg.offset):
                target = worker.handle(msg.partition, msg.offset, event.key, event.value)
            if target is not None:
                await app.consumer.seek(TP(msg.topic, msg.partition), target)

    @app.timer(interval=max(0.02, settings.candle_update_ms / 1000 / 2))
    async def candle_tick() -> None:
        worker.tick()

    @app.timer(interval=settings.candle_snapshot_s)
    async def candle_checkpoint() -> None:
        await write_checkpoints()

    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: set[TP], **kwargs: object) -> None:
        mine = [tp.partition for tp in revoked if tp.topic == settings.topic_ticks and tp.partition in worker.parts]
        if mine:
            await write_checkpoints(mine)
            for p in mine:
                worker.parts.pop(p, None)

    worker.write_checkpoints_async = write_checkpoints  # type: ignore[attr-defined]
    return worker
