"""Faust agent ``candles`` -> ``indicators``: a thin shell around :class:`agents.indicators.IndicatorEngine`.

Each candles partition has its own engine (a candle's key fixes its partition, so a series never
spans two). Restart safety is the candle agent's design (streams.checkpoint): the engine is
checkpointed with the next candles offset it expects, input below it is skipped, a resume past it
seeks back. In-progress candles are ignored; final candles and their revisions go to the engine,
whose records (a revision also re-emits the later records it changed) are produced keyed
``exchange:symbol:interval``. A candle the engine refuses is dead-lettered, never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust
import structlog
from prometheus_client import Counter

from agents.indicators import IndicatorEngine, IndicatorError
from schemas.codec import AvroCodec, DecodeError
from schemas.models import Candle, DeadLetter
from streams.checkpoint import admit, encode_checkpoint, load_checkpoint, register_checkpointed_agent
from streams.producer import TickProducer
from streams.settings import Settings
from streams.sources.base import now_us

log = structlog.get_logger(__name__)

INDICATORS_OUT = Counter("tickflow_indicator_updates_total", "Indicators records emitted", ["interval"])
CANDLES_IN = Counter("tickflow_indicator_candles_total", "Candles read by the indicator agent", ["kind"])
REJECTED = Counter("tickflow_indicator_rejected_total", "Candles dead-lettered by the indicator agent")


@dataclass
class PartitionState:
    engine: IndicatorEngine
    next_offset: int | None = None  # next candles offset the engine expects; None = take what comes
    seeking: bool = False
    changed: bool = False


class IndicatorWorker:
    """What the agent does with each candle record; no Faust in here, so it is testable."""

    def __init__(self, settings: Settings, producer: TickProducer) -> None:
        self.settings = settings
        self.producer = producer
        self.candles = AvroCodec("tickflow.Candle")
        self.indicators = AvroCodec("tickflow.Indicators")
        self.parts: dict[int, PartitionState] = {}
        self.processed_offsets: dict[int, int] = {}

    def load(self, partition: int) -> PartitionState:
        """Restore a partition's engine from its newest checkpoint (blocking; run in an executor)."""
        found = load_checkpoint(self.settings, self.settings.topic_indicator_state, partition)
        if found is not None and found[1].get("input") != self.settings.topic_candles:
            # A state topic shared with a run over another candles topic: its offsets mean nothing here.
            log.warning("checkpoint of another candles topic ignored", partition=partition, input=found[1].get("input"))
            found = None
        if found is None:
            ps = PartitionState(IndicatorEngine())
        else:
            offset, state = found
            ps = PartitionState(IndicatorEngine.restore(state["engine"]), next_offset=offset)
        self.parts[partition] = ps
        return ps

    def handle(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> int | None:
        """Process one candles record; return an offset to seek to when input skipped ahead."""
        ps = self.parts[partition]
        take, seek_to = admit(ps, partition, offset)
        if not take:
            return seek_to
        ps.changed = True
        self.processed_offsets[partition] = offset
        try:
            candle = Candle.from_avro(self.candles.decode(value))
        except (DecodeError, KeyError, TypeError) as exc:
            self._reject(str(exc), partition, offset, key, value)
            return None
        if not candle.is_final:
            CANDLES_IN.labels("in_progress").inc()
            return None
        CANDLES_IN.labels("revision" if candle.revision else "final").inc()
        try:
            records = ps.engine.process(candle)
        except IndicatorError as exc:
            self._reject(exc.reason, partition, offset, key, value)
            return None
        topic = self.settings.topic_indicators
        for ind in records:
            self.producer.produce(topic, ind.key, self.indicators.encode(ind.to_avro()))
        INDICATORS_OUT.labels(candle.interval).inc(len(records))
        return None

    def _reject(self, reason: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        REJECTED.inc()
        log.warning("candle dead-lettered", reason=reason)
        self.producer.dead_letter(
            DeadLetter("indicators", reason, value or b"", now_us() // 1000, self.settings.topic_candles, partition, offset, key)
        )

    def checkpoints(self, partitions: list[int] | None = None) -> list[tuple[int, bytes]]:
        """Checkpoint records of the partitions whose state changed since their last checkpoint."""
        out = []
        for p in partitions if partitions is not None else list(self.parts):
            ps = self.parts.get(p)
            if ps is not None and ps.changed and ps.next_offset is not None:
                out.append((p, encode_checkpoint(ps.next_offset, {"input": self.settings.topic_candles, "engine": ps.engine.snapshot()})))
                ps.changed = False
        return out

    def write_checkpoints(self, partitions: list[int] | None = None) -> int:
        """Write checkpoints and wait until they and every record before them are durable (blocking)."""
        records = self.checkpoints(partitions)
        for p, data in records:
            self.producer.produce(self.settings.topic_indicator_state, str(p), data, partition=p)
        self.producer.flush()
        return len(records)


def register_indicator_agent(app: faust.App, settings: Settings, producer: TickProducer) -> IndicatorWorker:
    worker = IndicatorWorker(settings, producer)
    worker.write_checkpoints_async = register_checkpointed_agent(  # type: ignore[attr-defined]
        app, worker, topic=settings.topic_candles, name="indicators", every_s=settings.candle_snapshot_s
    )
    return worker
