"""The indicator agent: ``candles`` -> ``indicators``, around :class:`agents.indicators.IndicatorEngine`.

A candle's key fixes its partition, so a series never spans two partitions. In-progress candles are
ignored; final candles and their revisions go to the engine, whose records (a revision also
re-emits the later records it changed) are emitted keyed ``exchange:symbol:interval``. A candle the
engine refuses is rejected (dead-lettered with the reason), never fatal.

Warm start: the first final candle of a series the engine does not know seeds the series with the
stored candles before it (``INDICATOR_WARM_START_BARS`` of them, through the ``CandleHistory`` the
runtime passes in), so MA200 on 1d is valid at once after a ``tickflow backfill``. Only candles
strictly before the first one read are used, so a replay into the same stores gives the same
records. The read blocks this agent's thread only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import structlog
from prometheus_client import Counter

from agents.indicators import IndicatorConfig, IndicatorEngine, IndicatorError
from agents.spec import AgentContext, AgentSpec, Emit, Inbound, Output, Reject

log = structlog.get_logger(__name__)

INDICATORS_OUT = Counter("tickflow_indicator_updates_total", "Indicators records emitted", ["interval"])
CANDLES_IN = Counter("tickflow_indicator_candles_total", "Candles read by the indicator agent", ["kind"])
STALE = Counter("tickflow_indicator_stale_redeliveries_total", "Candles applied before and re-delivered after leaving the kept history (a backfill run again): ignored")
WARM_STARTS = Counter("tickflow_indicator_warm_starts_total", "Series seeded from the candle store", ["outcome"])


def _periods(value: str) -> tuple[int, ...]:
    return tuple(int(p) for p in value.split(","))


def indicator_config(settings: Any) -> IndicatorConfig:
    """The engine's periods from settings (invalid combinations fail at start, with the reason)."""
    fast, slow, signal = _periods(settings.agents.indicator_macd)
    fastk, slowk, slowd = _periods(settings.agents.indicator_stoch)
    return IndicatorConfig(
        sma_periods=_periods(settings.agents.indicator_sma),  # type: ignore[arg-type]
        ema_periods=_periods(settings.agents.indicator_ema),  # type: ignore[arg-type]
        rsi_period=settings.agents.indicator_rsi_period,
        macd_fast=fast,
        macd_slow=slow,
        macd_signal=signal,
        bb_period=settings.agents.indicator_bb_period,
        bb_dev_up=settings.agents.indicator_bb_dev,
        bb_dev_down=settings.agents.indicator_bb_dev,
        atr_period=settings.agents.indicator_atr_period,
        stoch_fastk=fastk,
        stoch_slowk=slowk,
        stoch_slowd=slowd,
        history=settings.agents.indicator_history,
    )


class IndicatorLogic:
    """One candles partition's indicator engine."""

    def __init__(self, ctx: AgentContext) -> None:
        self.config = indicator_config(ctx.settings)
        self.engine = IndicatorEngine(self.config)
        self.warm_bars = ctx.settings.agents.indicator_warm_start_bars
        self.history = ctx.history if self.warm_bars > 0 else None

    def on_batch(self, records: Sequence[Inbound]) -> Iterable[Output]:
        out: list[Output] = []
        engine = self.engine
        for rec in records:
            candle = rec.value
            if not candle.is_final:
                CANDLES_IN.labels("in_progress").inc()
                continue
            CANDLES_IN.labels("revision" if candle.revision else "final").inc()
            try:
                if self.history is not None and candle.key not in engine.series:
                    self._warm_start(candle)
                emitted = engine.process(candle)
            except IndicatorError as exc:
                out.append(Reject(rec.offset, exc.reason, rec.record))
                continue
            if not emitted:
                STALE.inc()
                continue
            for ind in emitted:
                out.append(Emit("indicators", ind.key, ind))
            INDICATORS_OUT.labels(candle.interval).inc(len(emitted))
        return out

    def _warm_start(self, candle: Any) -> None:
        """Seed a new series with the stored candles before ``candle``; a store that cannot be
        read leaves it cold (logged and counted) rather than stopping the agent."""
        assert self.history is not None
        try:
            past = self.history.before(candle.exchange, candle.symbol, candle.interval, candle.open_time, self.warm_bars)
        except Exception as exc:  # noqa: BLE001 - any store error: the series starts cold
            WARM_STARTS.labels("failed").inc()
            log.warning("warm start failed; series starts cold", key=candle.key, error=str(exc))
            return
        if past:
            self.engine.seed(candle.key, past)
            WARM_STARTS.labels("seeded").inc()
            log.info("series warm-started from the candle store", key=candle.key, candles=len(past))

    def on_timer(self, now: float, quiet_s: float) -> Iterable[Output]:
        return ()

    def snapshot(self) -> bytes:
        return orjson.dumps({"engine": self.engine.snapshot()})

    def restore(self, data: bytes) -> None:
        engine = IndicatorEngine.restore(orjson.loads(data)["engine"])
        if engine.config != self.config:
            # The runtime then rebuilds this partition from the start of the candles topic.
            raise ValueError("indicator periods changed since the checkpoint")
        self.engine = engine


INDICATORS = AgentSpec(
    name="indicators",
    inputs=("candle",),
    outputs=("indicators",),
    logic=IndicatorLogic,
    needs_history=True,
    description="Technical indicators (TA-Lib equal) of every final candle and revision",
)
