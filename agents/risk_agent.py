"""Agent ``risk``: every series' signalled candles (``risk_bar``) in, trade intents out, from one book.

The signals agent writes each decision as a ``risk_bar`` keyed by the strategy's name, so all of a
strategy's series land in one partition and one logic object holds the strategy's whole book
(:class:`agents.risk.RiskManager`): exposure in total, daily loss and drawdown are over every symbol.

The bars of different series reach that partition in wall-clock order (one producer per signals
partition), so the logic merges them by event time before the book sees them, which makes the
intents a function of the bars alone:

- bars are taken in ``(close_time, series)`` order, a bar once every series seen so far has a bar
  closing at or after it (per series the bars come in order: one producer, one partition);
- a bar re-delivered (the signals agent's restart re-emits what followed its checkpoint) is
  dropped: a series' bars must be later than its last one read;
- a series behind the others holds the merge back; after ``SIGNAL_WAIT_S`` of wall clock (or at
  the end of a bounded run) the held bars go to the book anyway, counted in
  ``tickflow_agent_waits_expired_total``, and that series' bars then arrive late;
- a series' first bar that arrives after the merge went past its time is late too: it goes to
  the book at once (``tickflow_risk_late_bars_total``). A strategy that names its ``exchange``
  and ``symbols`` has its series known from the start: the merge waits for each one's first bar.

Late bars are where a live run and a replay can differ: a series that starts, or stalls, while
others run on. A strategy of one series, or that names its series and whose series keep up
within the wait, gives the same intents live and on replay.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson
import structlog
from prometheus_client import Counter

from agents.risk import RiskManager
from agents.signal_agent import WAITS_EXPIRED, cached_strategy
from agents.spec import AgentContext, AgentSpec, Emit, Inbound, Output, Reject
from agents.strategy import Strategy
from schemas.models import RiskBar

log = structlog.get_logger(__name__)

INTENTS_OUT = Counter("tickflow_trade_intents_total", "Trade intents emitted", ["strategy", "status"])
LATE_BARS = Counter("tickflow_risk_late_bars_total", "Bars the risk agent's merge had already passed when they arrived", ["strategy"])
SNAPSHOT_VERSION = 1


@dataclass
class EventTimeMerge:
    """Bars of several series, released in ``(close_time, series)`` order once every series seen
    has reached them. Pure."""

    held: list[tuple[int, str, RiskBar]] = field(default_factory=list)  # sorted
    last: dict[str, int] = field(default_factory=dict)  # series -> open_time of its newest bar read
    reached: dict[str, int] = field(default_factory=dict)  # series -> close_time of its newest bar read
    released: int | None = None  # close_time of the newest bar released

    def add(self, bar: RiskBar) -> bool:
        """Hold ``bar``; False when it is not later than its series' last bar (a re-delivery)."""
        series = bar.series
        last = self.last.get(series)
        if last is not None and bar.open_time <= last:
            return False
        self.last[series] = bar.open_time
        self.reached[series] = bar.close_time
        bisect.insort(self.held, (bar.close_time, series, bar), key=lambda h: (h[0], h[1]))
        return True

    def late(self, bar: RiskBar) -> bool:
        return self.released is not None and bar.close_time < self.released

    def release(self, force: bool = False) -> list[RiskBar]:
        """The bars every series has reached (all held ones when ``force``), in order."""
        frontier = math.inf if force else min(self.reached.values(), default=-1)
        n = bisect.bisect_right(self.held, frontier, key=lambda h: h[0])
        out = [h[2] for h in self.held[:n]]
        del self.held[:n]
        if out:
            self.released = max(self.released or out[-1].close_time, out[-1].close_time)
        if force and self.released is not None:
            # Series left behind no longer hold the merge; their next bar brings them back (late).
            self.reached = {s: t for s, t in self.reached.items() if t >= self.released}
        return out

    def snapshot(self) -> dict:
        return {"held": [h[2].to_avro() for h in self.held], "last": self.last, "reached": self.reached, "released": self.released}

    @classmethod
    def restore(cls, d: dict) -> EventTimeMerge:
        bars = [RiskBar.from_avro(b) for b in d["held"]]
        return cls([(b.close_time, b.series, b) for b in bars], dict(d["last"]), dict(d["reached"]), d["released"])


class RiskLogic:
    """The strategy's book and the merge in front of it (one partition holds every bar of the strategy)."""

    def __init__(self, strategy: Strategy, wait_s: float = 30.0) -> None:
        self.strategy = strategy
        self.wait_s = wait_s
        self.merge = EventTimeMerge()
        if strategy.exchange and strategy.symbols:  # the series are known before their first bar: wait for each from the start
            self.merge.reached = {f"{strategy.exchange}:{sym}:{strategy.interval}": -1 for sym in sorted(strategy.symbols)}
        self.risk = RiskManager(strategy.risk, strategy.name, strategy.version)
        self.since: float | None = None  # wall clock (monotonic) since when held bars wait

    def on_batch(self, records: Sequence[Inbound]) -> Iterable[Output]:
        out: list[Output] = []
        st = self.strategy
        for r in records:
            if r.record != "risk_bar":
                out.append(Reject(r.offset, f"the risk agent does not read {r.record!r} records", r.record))
                continue
            bar = r.value
            if (bar.strategy, bar.strategy_version) != (st.name, st.version):
                continue  # another strategy's (or an older version's) bars
            late = self.merge.late(bar)
            if not self.merge.add(bar):
                continue
            if late:
                LATE_BARS.labels(st.name).inc()
                log.warning("bar later than the merge: applied now", series=bar.series, close_time=bar.close_time, released=self.merge.released)
        self._book(self.merge.release(), out)
        return out

    def on_timer(self, now: float, quiet_s: float) -> Iterable[Output]:
        out: list[Output] = []
        if not self.merge.held:
            self.since = None
            return out
        if self.since is None:
            self.since = now
        if quiet_s == math.inf or now - self.since >= self.wait_s:
            held = len(self.merge.held)
            self._book(self.merge.release(force=True), out)
            self.since = None
            if quiet_s != math.inf:
                WAITS_EXPIRED.labels("risk").inc(held)
                log.warning("risk merge waited too long for a series: bars released", bars=held, wait_s=self.wait_s)
        return out

    def _book(self, bars: list[RiskBar], out: list[Output]) -> None:
        for bar in bars:
            for intent in self.risk.on_candle(bar):
                out.append(Emit("trade_intent", intent.key, intent))
                INTENTS_OUT.labels(self.strategy.name, intent.status).inc()
        if bars:
            self.since = None

    def snapshot(self) -> bytes:
        return orjson.dumps({
            "version": SNAPSHOT_VERSION,
            "strategy": [self.strategy.name, self.strategy.version],
            "merge": self.merge.snapshot(),
            "risk": self.risk.snapshot(),
        })  # fmt: skip

    def restore(self, data: bytes) -> None:
        d = orjson.loads(data)
        if d.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"risk snapshot version {d.get('version')!r}, expected {SNAPSHOT_VERSION}")
        if d["strategy"] != [self.strategy.name, self.strategy.version]:
            raise ValueError(f"risk snapshot of strategy {d['strategy']}, running {self.strategy.name} {self.strategy.version}")
        self.merge = EventTimeMerge.restore(d["merge"])
        self.risk = RiskManager(self.strategy.risk, self.strategy.name, self.strategy.version)
        self.risk.restore(d["risk"])


def risk_logic(ctx: AgentContext) -> RiskLogic:
    path = ctx.settings.agents.strategy_file
    if path is None:
        raise ValueError("the risk agent needs STRATEGY_FILE (a TOML strategy, e.g. infra/strategies/trend_momentum.toml)")
    return RiskLogic(cached_strategy(str(path)), float(ctx.settings.agents.signal_wait_s))


RISK = AgentSpec(
    name="risk",
    inputs=("risk_bar",),
    outputs=("trade_intent",),
    logic=risk_logic,
    timer_s=1.0,
    enabled=lambda settings: settings.agents.strategy_file is not None,
    description="Trade intents of the STRATEGY_FILE strategy from one risk book over all its series",
)
