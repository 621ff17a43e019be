"""Agent ``signals``: closed candles and their indicators in, signals out; on-chain and sentiment as table inputs.

A pure :class:`~agents.spec.TableLogic`. Per series (exchange:symbol:interval) of the strategy's
interval and symbols, a candle's signal is decided once both its final candle (revision 0) and its
indicators record (``candle_revision`` 0) have arrived, whichever comes second: the indicator agent
writes a candle's record after the candle itself, and the runtime may hand the two topics over in
either order. The decision uses only what was known at that candle's close:

- the candle and its own indicators, as first published (revisions come after the close and
  never change a signal already given; a later open time than the last joined is required);
- the previous signalled candle's indicators (crosses), named in ``prev_indicators_time``;
- on-chain and sentiment values of the table inputs (``onchain_metric``, ``sentiment_aggregate``,
  every partition of them, keyed by asset) under the rule of :mod:`agents.asof`: first published
  wins, visible once its window ended plus the rule's ``known_after_hours``, and the signal waits
  until the table is complete through the close, at most ``SIGNAL_WAIT_S`` of wall clock
  (``tickflow_agent_waits_expired_total`` counts the signals decided on an incomplete table).

Each signal also goes out as a ``risk_bar`` keyed by the strategy, for the risk agent
(:mod:`agents.risk_agent`), which holds one book over every series. Records of other series,
intervals or revisions are ignored (not errors); a record type this agent does not read is
rejected to the dead-letter topic (the table records come through ``on_table``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from prometheus_client import Counter

from agents.asof import AsOfTable
from agents.spec import AgentContext, AgentSpec, Emit, Inbound, Output, Reject
from agents.strategy import ONCHAIN_FIELDS, SENTIMENT_FIELDS, Strategy, context_complete, context_rules, evaluate, load_strategy
from schemas.models import Candle, Indicators, RiskBar, Signal

log = structlog.get_logger(__name__)

SIGNALS_OUT = Counter("tickflow_signals_total", "Signals emitted", ["strategy", "direction"])
WAITS_EXPIRED = Counter(
    "tickflow_agent_waits_expired_total",
    "Decisions taken when a wait for an incomplete input ran out (SIGNAL_WAIT_S): they may differ from a replay",
    ["agent"],
)
SNAPSHOT_VERSION = 2
DAY_MS = 86_400_000
CONTEXT_RECORDS = {"onchain_metric": ONCHAIN_FIELDS, "sentiment_aggregate": SENTIMENT_FIELDS}
_SLACK_MS = DAY_MS  # table values kept beyond the oldest any rule can still read


@dataclass
class _Series:
    candles: dict[int, Candle] = field(default_factory=dict)  # open_time -> final candle waiting for its indicators
    indicators: dict[int, Indicators] = field(default_factory=dict)  # open_time -> record waiting for its candle
    waiting: list[tuple[Candle, Indicators]] = field(default_factory=list)  # joined, in open_time order, waiting for the table
    since: list[float | None] = field(default_factory=list)  # wall clock (monotonic) each waiting entry was first seen by a timer
    prev: Indicators | None = None  # indicators of the last signalled candle
    last: int | None = None  # open_time of the last joined candle


def context_window(record: str, value: Any) -> tuple[str, str | None, int, int] | None:
    """(series, asset, window start, window end) in ms of a table record, None when it carries no
    final window (a sentiment window still open)."""
    if record == "onchain_metric":
        return value.key, value.asset, value.day, value.day + DAY_MS
    if not value.is_final:
        return None
    return value.key, value.asset, value.window_start, value.window_end + 1


class SignalLogic:
    """One input partition's series and its copy of the context table."""

    def __init__(self, strategy: Strategy, wait_s: float = 30.0) -> None:
        self.strategy = strategy
        self.wait_s = wait_s
        self.interval_ms = strategy.interval_ms
        self.series: dict[str, _Series] = {}
        self.table = AsOfTable()
        # Values older than this before the oldest decided candle can no longer be read.
        self._horizon = max((int(r.max_age_hours * 3_600_000) for r in context_rules(strategy)), default=0) + _SLACK_MS

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
            else:
                out.append(Reject(r.offset, f"the signals agent does not read {r.record!r} records", r.record))
        return out

    def on_table(self, records: Sequence[Inbound]) -> Iterable[Output]:
        added = False
        for r in records:
            window = context_window(r.record, r.value) if r.record in CONTEXT_RECORDS else None
            if window is None:
                continue
            series, asset, start, end = window
            for name in CONTEXT_RECORDS[r.record]:
                v = getattr(r.value, name, None)
                value = float(v) if isinstance(v, int | float) and math.isfinite(v) else None
                added |= self.table.add(name, series, asset, start, end, value)
        out: list[Output] = []
        if added:
            for s in self.series.values():
                self._release(s, out)
        return out

    def on_timer(self, now: float, quiet_s: float) -> Iterable[Output]:
        out: list[Output] = []
        for s in self.series.values():
            if not s.waiting:
                continue
            s.since = [now if t is None else t for t in s.since]
            expired = sum(1 for t in s.since if quiet_s == math.inf or now - t >= self.wait_s)  # type: ignore[operator]
            self._release(s, out, force=expired)
        return out

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
        s.last = open_time
        s.waiting.append((candle, ind))
        s.since.append(None)
        self._release(s, out)

    def _release(self, s: _Series, out: list[Output], force: int = 0) -> None:
        """Decide the waiting candles of ``s`` in order while the table is complete through their
        close; the first ``force`` of them whatever it holds (their wait ran out)."""
        while s.waiting:
            candle, ind = s.waiting[0]
            if force <= 0 and not context_complete(self.strategy, self.table, candle.close_time + 1):
                return
            if force > 0:
                force -= 1
                if not context_complete(self.strategy, self.table, candle.close_time + 1):
                    WAITS_EXPIRED.labels("signals").inc()
                    log.warning("signal decided on an incomplete context table", series=candle.key, open_time=candle.open_time, wait_s=self.wait_s)
            del s.waiting[0], s.since[0]
            self._decide(s, candle, ind, out)

    def _decide(self, s: _Series, candle: Candle, ind: Indicators, out: list[Output]) -> None:
        prev = s.prev if s.prev is not None and s.prev.open_time < candle.open_time else None
        decision = evaluate(self.strategy, candle, ind, prev, self.table)
        st = self.strategy
        signal = Signal(
            st.name, st.version, candle.exchange, candle.symbol, candle.interval,
            candle.open_time, candle.close_time, candle.close, decision.direction, decision.confidence,
            decision.score, "\n".join(decision.reasons), candle.revision, ind.open_time,
            prev.open_time if prev is not None else None, decision.onchain_time, decision.sentiment_time,
        )  # fmt: skip
        out.append(Emit("signal", candle.key, signal))
        bar = RiskBar(st.name, st.version, candle.exchange, candle.symbol, candle.interval, candle.open_time, candle.close_time,
                      candle.high, candle.low, candle.close, ind.atr, decision.direction, decision.confidence)  # fmt: skip
        out.append(Emit("risk_bar", bar.key, bar))
        SIGNALS_OUT.labels(st.name, decision.direction).inc()
        s.prev = ind
        oldest = min(x.prev.open_time for x in self.series.values() if x.prev is not None)
        self.table.prune(oldest - self._horizon)

    def snapshot(self) -> bytes:
        return orjson.dumps({
            "version": SNAPSHOT_VERSION,
            "strategy": [self.strategy.name, self.strategy.version],
            "series": {
                key: {
                    "candles": [c.to_avro() for c in s.candles.values()],
                    "indicators": [i.to_avro() for i in s.indicators.values()],
                    "waiting": [[c.to_avro(), i.to_avro()] for c, i in s.waiting],
                    "prev": s.prev.to_avro() if s.prev is not None else None,
                    "last": s.last,
                }
                for key, s in self.series.items()
            },
            "table": self.table.snapshot(),
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
            s.waiting = [(Candle.from_avro(c), Indicators.from_avro(i)) for c, i in sd["waiting"]]
            s.since = [None] * len(s.waiting)
            s.prev = Indicators.from_avro(sd["prev"]) if sd["prev"] is not None else None
            s.last = sd["last"]
        self.table = AsOfTable.restore(d["table"])


def signal_logic(ctx: AgentContext) -> SignalLogic:
    """A new partition state for the strategy file of ``STRATEGY_FILE`` (read once per process)."""
    path = ctx.settings.agents.strategy_file
    if path is None:
        raise ValueError("the signals agent needs STRATEGY_FILE (a TOML strategy, e.g. infra/strategies/trend_momentum.toml)")
    return SignalLogic(cached_strategy(str(path)), float(ctx.settings.agents.signal_wait_s))


@functools.lru_cache(maxsize=8)
def cached_strategy(path: str) -> Strategy:
    return load_strategy(path)


SIGNALS = AgentSpec(
    name="signals",
    inputs=("candle", "indicators"),
    outputs=("signal", "risk_bar"),
    logic=signal_logic,
    tables=tuple(CONTEXT_RECORDS),
    timer_s=1.0,
    enabled=lambda settings: settings.agents.strategy_file is not None,
    description="Signals of the STRATEGY_FILE strategy at each closed candle, with on-chain and sentiment context",
)
