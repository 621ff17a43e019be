"""The ingest loop: a source's batches, validated, Avro-encoded and produced to ``ticks``.

Bad input is split off here, once for every source: unparsable lines come from the source as
``BadInput``; trades that parse but make no sense (``schemas.validation``: NaN or non-positive
price or amount, absurd timestamps, malformed trade ids, exchanges or symbols) are rejected one by
one. Both go to the dead-letter topic with the reason; the good trades of the same batch still flow.

A broker that restarted without its log (the producer discards what it had not delivered and says
so) makes ingest send a replayable source again from its start (:meth:`Source.again`): the new log
then holds the whole file, in file order, as a clean run's does. A live source simply goes on.

Sources of other record types yield ``Record``s (validated by the source), produced to the topic of
their registry type with its codec. The trade path pays one ``isinstance`` per batch for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from schemas.codec import AvroCodec, codec_for
from schemas.models import DeadLetter, TradeBatch
from schemas.registry import record_type, topic_of
from schemas.validation import check_trade_batch, trade_record
from schemas.wire import TradeBatchWriter
from streams.observability import BATCHES_OUT, RECORDS_IN, SYMBOL_LAST_RECEIPT, TRADES_IN
from streams.producer import LogLost, RecordProducer
from streams.settings import Settings
from streams.sources.base import BadInput, Record, Source, now_us

log = structlog.get_logger(__name__)


@dataclass
class IngestStats:
    trades: int = 0
    batches: int = 0
    rejected: int = 0
    records: int = 0  # Records of other types (on-chain rows, blocks)
    started: float = field(default_factory=time.monotonic)

    @property
    def rate(self) -> float:
        return self.trades / max(time.monotonic() - self.started, 1e-9)


def split_batch(batch: TradeBatch, now: int) -> tuple[TradeBatch | None, list[tuple[str, dict]]]:
    """The batch's good trades (None when none is), and each bad trade with its reason (pure)."""
    checked = check_trade_batch(batch, None, now)
    if checked.problem is not None:
        return None, [(checked.problem, trade_record(batch, t)) for t in batch.trades]
    return checked.value, list(checked.rejected)


async def run_ingest(
    source: Source,
    producer: RecordProducer,
    settings: Settings,
    *,
    codec: AvroCodec | None = None,
    source_name: str = "source",
    on_progress: Callable[[IngestStats], None] | None = None,
) -> IngestStats:
    writer = TradeBatchWriter(codec or codec_for("tickflow.TradeBatch", settings.kafka.topic_ticks, settings.kafka.schema_registry_url))
    stats = IngestStats()
    topic = settings.kafka.topic_ticks
    encoders: dict[str, tuple[str, AvroCodec]] = {}
    receipt_gauges: dict[str, Any] = {}  # SYMBOL_LAST_RECEIPT children by key: labels() per batch is costly
    loop = asyncio.get_running_loop()
    generation = producer.generation
    try:
        await loop.run_in_executor(None, producer.connect, topic)
        while True:
            try:
                await _send(source, producer, settings, writer, stats, encoders, receipt_gauges, source_name, on_progress, generation)
                await loop.run_in_executor(None, lambda: producer.flush(expect=generation))
                break
            except LogLost as lost:
                generation = producer.generation
                again = source.again()
                if again is None:  # a live source goes on in _send: this was the last flush
                    log.error("broker restarted without its log: the records not yet delivered are lost", error=str(lost))
                    break
                log.error("broker restarted without its log: sending the source again from its start", error=str(lost), trades_sent_before=stats.trades)
                await source.aclose()
                source = again
                stats = IngestStats()
    finally:
        await source.aclose()
        try:
            await loop.run_in_executor(None, producer.flush)
        except LogLost as lost:  # stopped meanwhile: what was queued for the lost log is gone
            log.error("broker restarted without its log while stopping: records not yet delivered are lost", error=str(lost))
    if on_progress:
        on_progress(stats)
    log.info("ingest finished", trades=stats.trades, batches=stats.batches, records=stats.records, rejected=stats.rejected)
    return stats


async def _send(
    source: Source,
    producer: RecordProducer,
    settings: Settings,
    writer: TradeBatchWriter,
    stats: IngestStats,
    encoders: dict[str, tuple[str, AvroCodec]],
    receipt_gauges: dict[str, Any],
    source_name: str,
    on_progress: Callable[[IngestStats], None] | None,
    expect: int,
) -> None:
    """Produce the source's items; for a replayable source, :class:`LogLost` as soon as the producer's
    generation is not ``expect``."""
    topic = settings.kafka.topic_ticks
    last_report = time.monotonic()
    replayable = source.again() is not None
    async for item in source.stream():
        if producer.generation != expect:
            if replayable:
                raise LogLost(f"producer generation {expect} -> {producer.generation}")
            expect = producer.generation  # a live source goes on; the producer logged what it discarded
        if isinstance(item, BadInput):
            stats.rejected += 1
            producer.dead_letter(DeadLetter("ingest", item.reason, item.payload, now_us() // 1000))
            continue
        if isinstance(item, Record):
            await _produce_record(item, producer, settings, encoders)
            stats.records += 1
            RECORDS_IN.labels(source_name, item.record).inc()
            if on_progress and time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                on_progress(stats)
            continue
        batch, bad = split_batch(item, now_us())
        for reason, raw in bad:
            stats.rejected += 1
            producer.dead_letter(DeadLetter("ingest", reason, orjson.dumps(raw, default=repr, option=orjson.OPT_SERIALIZE_NUMPY), now_us() // 1000, key=item.key.encode()))
        if batch is not None:
            producer.produce(topic, batch.key, writer.encode(batch), expect=expect if replayable else None)
            stats.trades += len(batch.trades)
            stats.batches += 1
            TRADES_IN.labels(source_name).inc(len(batch.trades))
            BATCHES_OUT.labels(topic).inc()
            gauge = receipt_gauges.get(batch.key)
            if gauge is None:
                gauge = receipt_gauges[batch.key] = SYMBOL_LAST_RECEIPT.labels(batch.exchange, batch.symbol)
            gauge.set(batch.received_at / 1e6)
        if stats.batches % 64 == 0:
            await asyncio.sleep(0)
        if on_progress and time.monotonic() - last_report >= 1.0:
            last_report = time.monotonic()
            on_progress(stats)


async def _produce_record(item: Record, producer: RecordProducer, settings: Settings, encoders: dict[str, tuple[str, AvroCodec]]) -> None:
    """Produce a non-trade record to its type's topic; with ``on_delivered``, wait for the broker first."""
    enc = encoders.get(item.record)
    if enc is None:
        rt = record_type(item.record)
        topic = topic_of(settings, item.record)
        enc = encoders[item.record] = (topic, codec_for(rt.schema, topic, settings.kafka.schema_registry_url))
    topic, codec = enc
    producer.produce(topic, item.key, codec.encode(item.value.to_avro()))
    BATCHES_OUT.labels(topic).inc()
    if item.on_delivered is not None:
        await asyncio.get_running_loop().run_in_executor(None, producer.flush)
        item.on_delivered()
    else:
        await asyncio.sleep(0)
