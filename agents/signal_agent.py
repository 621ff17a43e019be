"""Agent ``signals``: closed candles and their indicators in, signals and trade intents out.

A pure :class:`~agents.spec.AgentLogic`. Per series (exchange:symbol:interval) of the strategy's
interval and symbols, a candle's signal is decided once both its final candle (revision 0) and its
indicators record (``candle_revision`` 0) have arrived, whichever comes second: the indicator agent
writes a candle's record after the candle itself, and the runtime may hand the two topics over in
either order. The decision uses only what was known at that candle's close:

- the candle and its own indicators, as first published (revisions come after the close and
  never change a signal already given; a later open time than the last signal is required);
- the previous signalled candle's indicators (crosses), named in ``prev_indicators_time``;
- on-chain and sentiment values published at or before the close (:func:`agents.strategy.usable_context`).

Each signal then goes through the risk manager (:mod:`agents.risk`), whose intents follow it.
Records of other series, intervals or revisions are ignored (not errors); a record type this
agent does not read is rejected to the dead-letter topic.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import Counter

from agents.risk import Bar, RiskManager
from agents.spec import AgentContext, AgentSpec, Emit, Inbound, Output, Reject
from agents.strategy import ONCHAIN_FIELDS, SENTIMENT_FIELDS, ContextValue, Strategy, evaluate, load_strategy
from schemas.models import Candle, Indicators, Signal

SIGNALS_OUT = Counter("tickflow_signals_total", "Signals emitted", ["strategy", "direction"])
INTENTS_OUT = Counter("tickflow_trade_intents_total", "Trade intents emitted", ["strategy", "status"])
SNAPSHOT_VERSION = 1
CONTEXT_RECORDS = {"onchain_metric": ONCHAIN_FIELDS, "sentiment_aggregate": SENTIMENT_FIELDS}
_CONTEXT_KEEP = 4096  # values kept per context field (days of daily data, hours of minute windows)


@dataclass
class _Series:
    candles: dict[int, Candle] = field(default_factory=dict)  # open_time -> final candle waiting for its indicators
    indicators: dict[int, Indicators] = field(default_factory=dict)  # open_time -> record waiting for its candle
    prev: Indicators | None = None  # indicators of the last signalled candle
    last: int | None = None  # open_time of the last signalled candle


def _time_ms(value: Any) -> int:
    """A record time in ms (registry times are ms or µs as in the model)."""
    t = int(value)
    return t // 1000 if t > 10**14 else t


def context_values(record: str, value: Any) -> list[tuple[str, ContextValue]]:
    """The on-chain or sentiment values of one record, each under its field name and, when the
    record names an asset or symbol, also under ``field@asset``."""
    from schemas.registry import RECORDS  # the record types of other agents register there

    rt = RECORDS.get(record)
    column = rt.time_column if rt is not None and rt.time_column else "ts"
    when = getattr(value, column, None)
    if when is None:
        return []
    t = _time_ms(when)
    asset = getattr(value, "asset", None) or getattr(value, "symbol", None)
    out = []
    for name in CONTEXT_RECORDS[record]:
        v = getattr(value, name, None)
        if isinstance(v, int | float) and v == v:
            item = ContextValue(name, float(v), t)
            out.append((name, item))
            if asset:
                out.append((f"{name}@{asset}", item))
    return out


class SignalLogic:
    """One input partition's series, context values and risk book."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.interval_ms = strategy.interval_ms
        self.series: dict[str, _Series] = {}
        self.context: dict[str, list[ContextValue]] = {}
        self.risk = RiskManager(strategy.risk, strategy.name, strategy.version)

    def on_batch(self, records: Sequence[Inbound]) -> Iterable[Output]:
        out: list[Output] = []
        strategy = self.strategy
        for r in records:
            v = r.value
            if r.record == "candle":
                if not v.is_final or v.revision != 0 or not strategy.wants(v.exchange, v.symbol, v.interval):
                    continue
                s = self._series(v.key)
                if s.last is None or v.open_time > s.last:
                    s.candles.setdefault(v.open_time, v)
                    self._join(s, v.open_time, out)
            elif r.record == "indicators":
                if v.candle_revision != 0 or not strategy.wants(v.exchange, v.symbol, v.interval):
                    continue
                s = self._series(v.key)
                if s.last is None or v.open_time > s.last:
                    s.indicators.setdefault(v.open_time, v)
                    self._join(s, v.open_time, out)
            elif r.record in CONTEXT_RECORDS:
                for name, item in context_values(r.record, v):
                    history = self.context.setdefault(name, [])
                    times = [c.time for c in history]
                    i = bisect.bisect_right(times, item.time)
                    if i and history[i - 1].time == item.time:
                        history[i - 1] = item  # a re-published value replaces the older one
                    else:
                        history.insert(i, item)
                        del history[:-_CONTEXT_KEEP]
            else:
                out.append(Reject(r.offset, f"the signals agent does not read {r.record!r} records", r.record))
        return out

    def on_timer(self, now: float, quiet_s: float) -> Iterable[Output]:
        return ()

    def _series(self, key: str) -> _Series:
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = _Series()
        return s

    def _join(self, s: _Series, open_time: int, out: list[Output]) -> None:
        candle = s.candles.get(open_time)
        ind = s.indicators.get(open_time)
        if candle is None or ind is None:
            return
        for pending in (s.candles, s.indicators):
            for t in [t for t in pending if t <= open_time]:
                del pending[t]
        prev = s.prev if s.prev is not None and s.prev.open_time < open_time else None
        decision = evaluate(self.strategy, candle, ind, prev, self.context)
        signal = Signal(
            self.strategy.name, self.strategy.version, candle.exchange, candle.symbol, candle.interval,
            candle.open_time, candle.close_time, candle.close, decision.direction, decision.confidence,
            decision.score, "\n".join(decision.reasons), candle.revision, ind.open_time,
            prev.open_time if prev is not None else None, decision.onchain_time, decision.sentiment_time,
        )  # fmt: skip
        key = candle.key
        out.append(Emit("signal", key, signal))
        SIGNALS_OUT.labels(self.strategy.name, decision.direction).inc()
        bar = Bar(candle.exchange, candle.symbol, candle.interval, candle.open_time, candle.close_time,
                  candle.high, candle.low, candle.close, ind.atr, decision.direction, decision.confidence)
        for intent in self.risk.on_candle(bar):
            out.append(Emit("trade_intent", key, intent))
            INTENTS_OUT.labels(self.strategy.name, intent.status).inc()
        s.prev = ind
        s.last = open_time

    def snapshot(self) -> bytes:
        return orjson.dumps({
            "version": SNAPSHOT_VERSION,
            "strategy": [self.strategy.name, self.strategy.version],
            "series": {
                key: {
                    "candles": [c.to_avro() for c in s.candles.values()],
                    "indicators": [i.to_avro() for i in s.indicators.values()],
                    "prev": s.prev.to_avro() if s.prev is not None else None,
                    "last": s.last,
                }
                for key, s in self.series.items()
            },
            "context": {name: [[c.value, c.time] for c in items] for name, items in self.context.items()},
            "risk": self.risk.snapshot(),
        })  # fmt: skip

    def restore(self, data: bytes) -> None:
        d = orjson.loads(data)
        if d.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"signals snapshot version {d.get('version')!r}, expected {SNAPSHOT_VERSION}")
        if d["strategy"] != [self.strategy.name, self.strategy.version]:
            raise ValueError(f"signals snapshot of strategy {d['strategy']}, running {self.strategy.name} {self.strategy.version}")
        self.series = {}
        for key, sd in d["series"].items():
            s = self.series[key] = _Series()
            s.candles = {c["open_time"]: Candle.from_avro(c) for c in sd["candles"]}
            s.indicators = {i["open_time"]: Indicators.from_avro(i) for i in sd["indicators"]}
            s.prev = Indicators.from_avro(sd["prev"]) if sd["prev"] is not None else None
            s.last = sd["last"]
        self.context = {name: [ContextValue(name.partition("@")[0], v, t) for v, t in items] for name, items in d["context"].items()}
        self.risk = RiskManager(self.strategy.risk, self.strategy.name, self.strategy.version)
        self.risk.restore(d["risk"])


def signal_logic(ctx: AgentContext) -> SignalLogic:
    """A new partition state for the strategy file of ``STRATEGY_FILE`` (read once per process)."""
    path = ctx.settings.agents.strategy_file
    if path is None:
        raise ValueError("the signals agent needs STRATEGY_FILE (a TOML strategy, e.g. infra/strategies/trend_momentum.toml)")
    return SignalLogic(_strategy(str(path)))


@functools.lru_cache(maxsize=8)
def _strategy(path: str) -> Strategy:
    return load_strategy(path)


SIGNALS = AgentSpec(
    name="signals",
    inputs=("candle", "indicators"),
    outputs=("signal", "trade_intent"),
    logic=signal_logic,
    enabled=lambda settings: settings.agents.strategy_file is not None,
    description="Signals of the STRATEGY_FILE strategy at each closed candle, and the risk manager's trade intents",
)
