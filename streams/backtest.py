"""``tickflow backtest``: the live agents' logic run in-process over a replay, with simulated fills.

No second implementation: the trades go through the ingest checks (``split_batch``), the candle
book, the indicator engine, the signal logic and the risk agent's merge and book, partitioned as
the live topics partition them (Kafka's murmur2 of the record key, ``TICKS_PARTITIONS`` partitions:
the candle watermark is per partition) and in the order the live agents would get them. Only the
fills are simulated (:mod:`agents.execution`). Like a live run on empty stores, indicators start
cold; no on-chain or sentiment table is fed, so the signals' context tables stay empty (their
rules do not vote, and no signal waits for them).

:class:`AgentChain` is the one place that drives the agents: the AgentLogic classes of their
AgentSpecs (``agents.registry``), which ``tickflow run`` hosts on Kafka.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from agents.candle_agent import CANDLES
from agents.execution import ClosedTrade, Executor, metrics
from agents.indicator_agent import INDICATORS
from agents.risk_agent import RISK, RiskLogic
from agents.signal_agent import SIGNALS, SignalLogic
from agents.spec import AgentContext, AgentLogic, AgentSpec, Emit, Inbound, Reject
from agents.strategy import Strategy
from schemas.models import Candle, Signal, TradeBatch, TradeIntent
from streams.ingest import split_batch
from streams.settings import Settings
from streams.sources.base import BadInput, Source, now_us

log = structlog.get_logger(__name__)


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's, and librdkafka's ``murmur2_random`` for keyed records)."""
    m, length = 0x5BD1E995, len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest, tail = length % 4, length - length % 4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_of(key: str, partitions: int) -> int:
    """The partition the producer writes a record with ``key`` to."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


@dataclass
class AgentChain:
    """Candles -> indicators -> signals -> risk (intents): the registered agents' logic classes, one
    object per partition of each agent's input, fed as the runtime feeds them."""

    settings: Settings
    strategy: Strategy
    dead_letters: list[str] = field(default_factory=list)
    _logics: dict[tuple[str, int], AgentLogic] = field(default_factory=dict)
    _offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    _parts: dict[str, int] = field(default_factory=dict)

    def _partition(self, key: str) -> int:
        p = self._parts.get(key)
        if p is None:
            p = self._parts[key] = partition_of(key, self.settings.kafka.ticks_partitions)
        return p

    def _logic(self, spec: AgentSpec, p: int) -> AgentLogic:
        logic = self._logics.get((spec.name, p))
        if logic is None:
            if spec is SIGNALS:
                logic = SignalLogic(self.strategy, self.settings.agents.signal_wait_s)
            elif spec is RISK:
                logic = RiskLogic(self.strategy, self.settings.agents.signal_wait_s)
            else:  # cold, as a live run on empty stores: no warm-start history
                logic = spec.logic(AgentContext(self.settings, p, history=None))
            self._logics[(spec.name, p)] = logic
        return logic

    def _feed(self, spec: AgentSpec, p: int, records: list[tuple[str, Any]]) -> list[Emit]:
        offset = self._offsets.get((spec.name, p), 0)
        self._offsets[(spec.name, p)] = offset + len(records)
        inbound = [Inbound(name, getattr(v, "key", None), v, offset + i) for i, (name, v) in enumerate(records)]
        return self._keep(self._logic(spec, p).on_batch(inbound))

    def _keep(self, outputs: Iterable[Emit | Reject]) -> list[Emit]:
        out: list[Emit] = []
        for o in outputs:
            if isinstance(o, Reject):
                self.dead_letters.append(o.reason)
            elif o.record != "live_candles":  # the realtime path only
                out.append(o)
        return out

    def add(self, batch: TradeBatch) -> list[Emit]:
        """One ``ticks`` record: every record the agents emit for it, candles included."""
        emitted = self._feed(CANDLES, self._partition(batch.key), [("trade_batch", batch)])
        return self._downstream(emitted)

    def close(self) -> list[Emit]:
        """End of input: what ``--until-drained`` does, agent by agent in pipeline order, each
        agent's timers with an endless quiet."""
        out: list[Emit] = []
        for spec in (CANDLES, INDICATORS, SIGNALS, RISK):
            for (name, _), logic in sorted(self._logics.items()):
                if name == spec.name:
                    out += self._downstream(self._keep(logic.on_timer(time.monotonic(), math.inf)))
        return out

    def _downstream(self, emitted: list[Emit]) -> list[Emit]:
        out: list[Emit] = []
        for e in emitted:
            out.append(e)
            if e.record == "candle":
                q = self._partition(e.key)
                records = self._feed(INDICATORS, q, [("candle", e.value)])
                out += records
                out += self._downstream(self._feed(SIGNALS, q, [("candle", e.value), *((r.record, r.value) for r in records)]))
            elif e.record == "risk_bar":
                out += self._feed(RISK, self._partition(e.key), [("risk_bar", e.value)])
        return out


@dataclass
class BacktestResult:
    strategy: Strategy
    source: str
    fee_bps: float
    slippage_bps: float
    trades_in: int = 0
    rejected: int = 0
    first_us: int | None = None
    last_us: int | None = None
    candles: list[Candle] = field(default_factory=list)  # final candles of the strategy's series
    signals: list[Signal] = field(default_factory=list)
    intents: list[TradeIntent] = field(default_factory=list)
    executor: Executor | None = None
    dead_letters: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def trades(self) -> list[ClosedTrade]:
        assert self.executor is not None
        return self.executor.trades

    def metrics(self) -> dict[str, Any]:
        ex = self.executor
        assert ex is not None
        first_ms = (self.first_us or 0) // 1000
        last_ms = (self.last_us or 0) // 1000
        m = metrics(ex.equity0, ex.trades, ex.equity, first_ms, last_ms, self.strategy.interval_ms)
        m.update({
            "strategy": {"name": self.strategy.name, "version": self.strategy.version, "interval": self.strategy.interval},
            "data": {"source": self.source, "first_trade": self.first_us, "last_trade": self.last_us, "trades": self.trades_in,
                     "rejected_input": self.rejected, "candles": len(self.candles)},
            "costs": {"fee_bps": self.fee_bps, "slippage_bps": self.slippage_bps},
            "signals": {d: sum(1 for s in self.signals if s.direction == d) for d in ("long", "short", "flat")},
            "intents": {st: sum(1 for i in self.intents if i.status == st) for st in ("accepted", "resized", "rejected")},
            "unfilled_intents": len(ex.unfilled),
            "fills": ex.fills,
        })  # fmt: skip
        return m


class Backtest:
    """Feed source items in source order (:meth:`feed`), then :meth:`finish`: the agents run over
    them and their intents fill on the same trades."""

    def __init__(self, strategy: Strategy, settings: Settings, *, fee_bps: float = 0.0, slippage_bps: float = 0.0, source: str = "") -> None:
        self.started = time.perf_counter()
        self.result = BacktestResult(strategy, source, fee_bps, slippage_bps)
        self.chain = AgentChain(settings, strategy)
        self.executor = self.result.executor = Executor(strategy.risk.equity, fee_bps, slippage_bps)
        self.now = now_us()  # the ingest checks refuse trades more than a day in the future

    def _take(self, emits: list[Emit]) -> None:
        result, ex, wants = self.result, self.executor, self.result.strategy.wants
        for e in emits:
            v = e.value
            if e.record == "candle":
                if wants(v.exchange, v.symbol, v.interval):
                    result.candles.append(v)
            elif e.record == "signal":
                result.signals.append(v)
                ex.mark(v.close_time + 1, f"{v.exchange}:{v.symbol}", v.close)
            elif e.record == "trade_intent":
                result.intents.append(v)
                ex.on_intents((v,))

    def feed(self, item: TradeBatch | BadInput) -> None:
        result = self.result
        if isinstance(item, BadInput):
            result.rejected += 1
            return
        batch, bad = split_batch(item, self.now)
        result.rejected += len(bad)
        trades = batch.trades
        if not trades:
            return
        result.trades_in += len(trades)
        lo, hi = min(t.ts for t in trades), max(t.ts for t in trades)
        result.first_us = lo if result.first_us is None else min(result.first_us, lo)
        result.last_us = hi if result.last_us is None else max(result.last_us, hi)
        self.executor.on_trades(batch.key, trades)
        self._take(self.chain.add(batch))

    def finish(self) -> BacktestResult:
        self._take(self.chain.close())
        self.executor.finish()
        result = self.result
        result.dead_letters = self.chain.dead_letters
        result.seconds = time.perf_counter() - self.started
        log.info("backtest finished", strategy=result.strategy.name, trades=result.trades_in, signals=len(result.signals),
                 intents=len(result.intents), fills=self.executor.fills, seconds=round(result.seconds, 3))
        return result


def run_backtest(items: Iterable[TradeBatch | BadInput], strategy: Strategy, settings: Settings, **options: Any) -> BacktestResult:
    """The backtest over items already at hand (tests, benchmarks)."""
    bt = Backtest(strategy, settings, **options)
    for item in items:
        bt.feed(item)
    return bt.finish()


def run_backtest_source(
    src: Source, strategy: Strategy, settings: Settings, *, on_progress: Callable[[BacktestResult], None] | None = None, **options: Any
) -> BacktestResult:
    """The backtest over a source (a replay at max speed, or a synthetic stream with a limit), streamed."""
    bt = Backtest(strategy, settings, **options)

    async def consume() -> None:
        last = time.monotonic()
        try:
            async for item in src.stream():
                bt.feed(item)
                if on_progress is not None and time.monotonic() - last >= 1.0:
                    last = time.monotonic()
                    on_progress(bt.result)
        finally:
            await src.aclose()

    asyncio.run(consume())
    return bt.finish()
