"""Faust agent ``candles`` -> ``indicators``: a thin shell around :class:`agents.indicators.IndicatorEngine`.

Each candles partition has its own engine (a candle's key fixes its partition, so a series never
spans two). Restart safety is the candle agent's design (streams.checkpoint): the engine is
checkpointed with the next candles offset it expects, input below it is skipped, a resume past it
seeks back. In-progress candles are ignored; final candles and their revisions go to the engine,
whose records (a revision also re-emits the later records it changed) are produced keyed
``exchange:symbol:interval``. A candle the engine refuses is dead-lettered, never fatal.

Warm start: the first final candle of a series the engine does not know yet seeds the series
with the stored candles before it (``INDICATOR_WARM_START_BARS`` of them, from PostgreSQL, or from
a ClickHouse server when PostgreSQL is off), so
MA200 on 1d is valid at once after a ``tickflow backfill``. Only candles strictly before the
first one read are used, so a replay into the same stores gives the same records again. The read
runs in a thread before the record is handled (``prepare``), off the event loop the candle agent
shares.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import faust
import psycopg
import structlog
from clickhouse_connect.driver import exceptions as ch_errors
from prometheus_client import Counter

from agents.indicators import IndicatorConfig, IndicatorEngine, IndicatorError
from schemas.codec import DecodeError, codec_for
from schemas.models import Candle, DeadLetter
from sinks.clickhouse import ClickHouseCandleHistory
from sinks.postgres import PostgresCandleHistory
from streams.checkpoint import CheckpointedAgent, CheckpointWriter, Position, admit, input_start, load_checkpoint, register_checkpointed_agent
from streams.producer import TickProducer
from streams.settings import Settings
from streams.sources.base import now_us

log = structlog.get_logger(__name__)

INDICATORS_OUT = Counter("tickflow_indicator_updates_total", "Indicators records emitted", ["interval"])
CANDLES_IN = Counter("tickflow_indicator_candles_total", "Candles read by the indicator agent", ["kind"])
REJECTED = Counter("tickflow_indicator_rejected_total", "Candles dead-lettered by the indicator agent")
STALE = Counter("tickflow_indicator_stale_redeliveries_total", "Candles applied before and re-delivered after leaving the kept history (a backfill run again): ignored")
WARM_STARTS = Counter("tickflow_indicator_warm_starts_total", "Series seeded from the candle store", ["outcome"])


class CandleHistory(Protocol):
    def before(self, exchange: str, symbol: str, interval: str, open_time: int, limit: int) -> list[Candle]: ...


def indicator_config(settings: Settings) -> IndicatorConfig:
    """The engine's periods from settings (invalid combinations fail at start, with the reason)."""
    fast, slow, signal = Settings.periods(settings.indicator_macd)
    fastk, slowk, slowd = Settings.periods(settings.indicator_stoch)
    return IndicatorConfig(
        sma_periods=Settings.periods(settings.indicator_sma),  # type: ignore[arg-type]
        ema_periods=Settings.periods(settings.indicator_ema),  # type: ignore[arg-type]
        rsi_period=settings.indicator_rsi_period,
        macd_fast=fast,
        macd_slow=slow,
        macd_signal=signal,
        bb_period=settings.indicator_bb_period,
        bb_dev_up=settings.indicator_bb_dev,
        bb_dev_down=settings.indicator_bb_dev,
        atr_period=settings.indicator_atr_period,
        stoch_fastk=fastk,
        stoch_slowk=slowk,
        stoch_slowd=slowd,
        history=settings.indicator_history,
    )


@dataclass
class PartitionState(Position):
    engine: IndicatorEngine


class IndicatorWorker(CheckpointWriter):
    """What the agent does with each candle record; no Faust in here, so it is testable."""

    def __init__(self, settings: Settings, producer: TickProducer, history: CandleHistory | None = None) -> None:
        self.settings = settings
        self.producer = producer
        self.config = indicator_config(settings)
        self.history = history if settings.indicator_warm_start_bars > 0 else None  # None: no warm starts
        self.candles = codec_for("tickflow.Candle", settings.topic_candles, settings.schema_registry_url)
        self.indicators = codec_for("tickflow.Indicators", settings.topic_indicators, settings.schema_registry_url)
        self.parts: dict[int, PartitionState] = {}
        self.state_topic = settings.topic_indicator_state
        self.agent: CheckpointedAgent | None = None  # set when registered with a Faust app
        self._prefetched: dict[str, tuple[int, list[Candle] | None]] = {}  # series key -> (open_time, stored candles before it)

    def load(self, partition: int) -> PartitionState:
        """A partition's engine from its newest checkpoint, or empty from the start of its input
        (blocking; run in an executor, the caller publishes it in ``parts``)."""
        found = load_checkpoint(self.settings, self.settings.topic_indicator_state, partition)
        if found is not None and found[1].get("input") != self.settings.topic_candles:
            # A state topic shared with a run over another candles topic: its offsets mean nothing here.
            log.warning("checkpoint of another candles topic ignored", partition=partition, input=found[1].get("input"))
            found = None
        if found is not None:
            offset, state = found
            engine = IndicatorEngine.restore(state["engine"])
            if engine.config == self.config:
                return PartitionState(engine, next_offset=offset)
            log.warning("indicator periods changed since the checkpoint: rebuilding from the candles topic", partition=partition)
        return PartitionState(IndicatorEngine(self.config), next_offset=input_start(self.settings, self.settings.topic_candles, partition))

    def handle(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> int | None:
        """Process one candles record; return an offset to seek to when input skipped ahead."""
        ps = self.parts[partition]
        take, seek_to = admit(ps, partition, offset)
        if not take:
            return seek_to
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
            if candle.key not in ps.engine.series:
                self._warm_start(ps.engine, candle)
            records = ps.engine.process(candle)
        except IndicatorError as exc:
            self._reject(exc.reason, partition, offset, key, value)
            return None
        if not records:
            STALE.inc()
            return None
        topic = self.settings.topic_indicators
        for ind in records:
            self.producer.produce(topic, ind.key, self.indicators.encode(ind.to_avro()))
        INDICATORS_OUT.labels(candle.interval).inc(len(records))
        return None

    async def prepare(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        """Before ``handle``: read the stored candles of a series about to start, in a thread.

        Every series of a partition starts at the same window boundary (after a start or a
        rebalance: a hundred symbols' 1m series at once), and a query of up to
        ``INDICATOR_WARM_START_BARS`` rows each, on the event loop, held the candle agent's
        in-progress updates for the lot. Only this agent's stream waits for the read now.
        """
        if self.history is None:
            return
        ps = self.parts[partition]
        if ps.next_offset is not None and offset != ps.next_offset:
            return  # ``handle`` skips it or seeks
        if key is not None and key.decode(errors="replace") in ps.engine.series:
            return  # a known series (the candle agent keys records by series): no decode here
        try:
            candle = Candle.from_avro(self.candles.decode(value))
        except (DecodeError, KeyError, TypeError):
            return  # ``handle`` dead-letters it
        if candle.is_final and candle.key not in ps.engine.series:
            past = await asyncio.get_running_loop().run_in_executor(None, self._stored_before, candle)
            self._prefetched[candle.key] = (candle.open_time, past)

    def _stored_before(self, candle: Candle) -> list[Candle] | None:
        """The stored candles of ``candle``'s series before it; None (logged and counted) when the
        store cannot be read: the series then starts cold rather than stopping the stream."""
        assert self.history is not None
        try:
            return self.history.before(candle.exchange, candle.symbol, candle.interval, candle.open_time, self.settings.indicator_warm_start_bars)
        except (psycopg.Error, ch_errors.Error, OSError) as exc:
            WARM_STARTS.labels("failed").inc()
            log.warning("warm start failed; series starts cold", key=candle.key, error=str(exc))
            return None

    def _warm_start(self, engine: IndicatorEngine, candle: Candle) -> None:
        """Seed a series the engine has not seen with the stored candles before ``candle``: read by
        ``prepare`` (the Faust shell calls it first), or here when nothing did."""
        if self.history is None:
            return
        found = self._prefetched.pop(candle.key, None)
        past = found[1] if found is not None and found[0] == candle.open_time else self._stored_before(candle)
        if past:
            engine.seed(candle.key, past)
            WARM_STARTS.labels("seeded").inc()
            log.info("series warm-started from the candle store", key=candle.key, candles=len(past))

    def _reject(self, reason: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        REJECTED.inc()
        log.warning("candle dead-lettered", reason=reason)
        self.producer.dead_letter(
            DeadLetter("indicators", reason, value or b"", now_us() // 1000, self.settings.topic_candles, partition, offset, key)
        )

    def state(self, ps: PartitionState) -> dict[str, Any]:
        return {"input": self.settings.topic_candles, "engine": ps.engine.snapshot()}


def open_history(settings: Settings) -> CandleHistory | None:
    """The candle store warm starts read: PostgreSQL/TimescaleDB when configured, else a ClickHouse
    server (embedded chdb is open in the ClickHouse sink's process, so it cannot serve them)."""
    if settings.indicator_warm_start_bars <= 0:
        return None
    if settings.database_url:
        return PostgresCandleHistory(settings.database_url)
    if settings.clickhouse_url and not settings.clickhouse_url.startswith("chdb:"):
        return ClickHouseCandleHistory(settings.clickhouse_url)
    log.info("no candle store for warm starts (PostgreSQL off, ClickHouse embedded): new series start cold")
    return None


def register_indicator_agent(app: faust.App, settings: Settings, producer: TickProducer) -> IndicatorWorker:
    worker = IndicatorWorker(settings, producer, open_history(settings))
    worker.agent = register_checkpointed_agent(app, worker, topic=settings.topic_candles, name="indicators", every_s=settings.candle_snapshot_s)
    return worker
