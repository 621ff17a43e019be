"""The risk manager: signals in, trade intents out. Pure (no I/O, no clock), deterministic.

Intents are orders for someone else to execute; tickflow places none. The manager therefore keeps
a *paper book* at reference prices: a position opens at its signal candle's close, a bracket exit
at its stop or take-profit price, a kill-switch or signal exit at the candle's close, each less
``fee_bps``. That book is what the limits are measured on, so live and backtest take the same
decisions whatever the executor's fills were.

One manager holds the book of every series of a strategy: the risk agent (:mod:`agents.risk_agent`)
feeds it the candles of all of them merged by event time, so total exposure, daily loss and
drawdown hold across symbols.

Per closed candle of a symbol, in this order (:meth:`RiskManager.on_candle`):

1. a new UTC day resets the daily-loss reference;
2. the symbol's bracket: a long whose candle low reached its stop is stopped out (the stop wins
   when stop and take-profit are both inside one candle: the book cannot know which came first),
   else closed at the take-profit when the high reached it; a stop starts the symbol's cooldown;
3. marking to the close; equity below ``peak * (1 - max_drawdown)`` halts the manager for good,
   below ``day start * (1 - max_daily_loss)`` halts it until the next UTC day; both close every
   open position;
4. the signal: the opposite direction closes the position (and opens the new one), ``flat``
   closes it when ``exit_on_flat``, a new position is sized by fixed-fraction risk:
   ``quantity = equity * risk_per_trade / (atr_stop * ATR)``, then cut to the per-symbol and total
   exposure caps. Every rejected or resized intent says why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.models import RiskBar, TradeIntent

DAY_MS = 86_400_000
_QTY_DIGITS = 8
SNAPSHOT_VERSION = 2


class RiskConfig(BaseModel):
    """Risk settings (the ``[risk]`` table of a strategy file). Fractions are of paper equity."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    equity: float = Field(10_000.0, gt=0, description="Starting paper equity, quote currency")
    risk_per_trade: float = Field(0.01, gt=0, le=0.5, description="Equity lost when a stop is hit")
    atr_stop: float = Field(2.0, gt=0, le=100, description="Stop distance in ATRs")
    take_profit_r: float | None = Field(2.0, gt=0, le=100, description="Take-profit distance in stop distances; none = no take-profit")
    max_symbol_exposure: float = Field(1.0, gt=0, le=100, description="Largest notional of one symbol, in equities")
    max_total_exposure: float = Field(1.0, gt=0, le=100, description="Largest notional of all positions, in equities")
    max_daily_loss: float = Field(0.05, gt=0, lt=1, description="Loss from the UTC day's start that halts the day")
    max_drawdown: float = Field(0.2, gt=0, lt=1, description="Loss from the equity peak that halts for good")
    cooldown_minutes: float = Field(60.0, ge=0, le=525_600, description="No new entry on a symbol this long after its stop")
    min_confidence: float = Field(0.0, ge=0, le=1, description="Signals below this confidence open nothing")
    min_quantity: float = Field(0.0, ge=0, description="Smaller positions are rejected")
    allow_short: bool = True
    exit_on_flat: bool = False
    fee_bps: float = Field(0.0, ge=0, le=1000, description="Costs the paper book charges per fill, basis points of notional")

    @model_validator(mode="after")
    def _possible(self) -> RiskConfig:
        if self.risk_per_trade >= self.max_drawdown:
            raise ValueError(f"risk_per_trade ({self.risk_per_trade}) must be below max_drawdown ({self.max_drawdown}): one stop would halt trading for good")
        if self.risk_per_trade >= self.max_daily_loss:
            raise ValueError(f"risk_per_trade ({self.risk_per_trade}) must be below max_daily_loss ({self.max_daily_loss}): one stop would halt the day")
        if self.max_symbol_exposure > self.max_total_exposure:
            raise ValueError(f"max_symbol_exposure ({self.max_symbol_exposure}) cannot exceed max_total_exposure ({self.max_total_exposure})")
        return self


@dataclass(slots=True)
class Position:
    side: Literal["long", "short"]
    quantity: float
    entry: float
    stop: float
    take_profit: float | None
    opened_at: int  # ms, decision time (the signal candle's close)
    interval: str


def _round_qty(q: float) -> float:
    return math.floor(q * 10**_QTY_DIGITS) / 10**_QTY_DIGITS


@dataclass
class RiskManager:
    config: RiskConfig
    strategy: str
    strategy_version: str
    cash: float = 0.0  # realized paper equity
    positions: dict[str, Position] = field(default_factory=dict)  # by "exchange:symbol"
    marks: dict[str, float] = field(default_factory=dict)
    day: int | None = None
    day_start: float = 0.0
    peak: float = 0.0
    halted: str | None = None  # drawdown kill-switch reason, for good
    day_halted: str | None = None  # daily-loss reason, until the next UTC day
    cooldown_until: dict[str, int] = field(default_factory=dict)
    seq_time: int | None = None  # decision time the intent sequence numbers below count in
    seq: dict[str, int] = field(default_factory=dict)  # "exchange:symbol" -> next seq at seq_time

    def __post_init__(self) -> None:
        if not self.cash:
            self.cash = self.peak = self.day_start = self.config.equity

    # -- book ---------------------------------------------------------------------------------

    def equity(self) -> float:
        """Paper equity: realized plus open positions at their last marks."""
        eq = self.cash
        for sym, pos in self.positions.items():
            mark = self.marks.get(sym, pos.entry)
            eq += (mark - pos.entry) * pos.quantity * (1 if pos.side == "long" else -1)
        return eq

    def exposure(self, skip: str | None = None) -> float:
        return sum(p.quantity * self.marks.get(s, p.entry) for s, p in self.positions.items() if s != skip)

    def _fee(self, notional: float) -> float:
        return notional * self.config.fee_bps / 10_000

    def _close(self, sym: str, price: float) -> Position:
        pos = self.positions.pop(sym)
        sign = 1 if pos.side == "long" else -1
        self.cash += (price - pos.entry) * pos.quantity * sign - self._fee(price * pos.quantity)
        self.marks[sym] = price
        return pos

    # -- decisions ----------------------------------------------------------------------------

    def on_candle(self, bar: RiskBar) -> list[TradeIntent]:
        """Intents decided at ``bar``'s close: a closed candle and its signal (see the module docstring for the order)."""
        out: list[TradeIntent] = []
        sym = f"{bar.exchange}:{bar.symbol}"
        now = bar.close_time + 1
        if self.seq_time != now:
            self.seq_time, self.seq = now, {}

        def intent(action: str, position: str, trigger: str, status: str, qty: float, requested: float,
                   price: float, reason: str, stop: float | None = None, tp: float | None = None, of: str = sym) -> None:
            """An intent on symbol ``of`` ("exchange:symbol"; a kill-switch closes other symbols too),
            numbered per symbol and decision time, so ids stay unique across the series of one book."""
            side = "buy" if (action == "open") == (position == "long") else "sell"
            n = self.seq.get(of, 0)
            self.seq[of] = n + 1
            exchange, _, symbol = of.partition(":")
            out.append(TradeIntent(
                f"{self.strategy}:{exchange}:{symbol}:{bar.interval}:{bar.open_time}:{n}",
                self.strategy, self.strategy_version, exchange, symbol, bar.interval, bar.open_time, now, n,
                action, side, position, trigger, status, qty, requested, price, stop, tp,
                round(self.equity(), 8), bar.confidence, reason,
            ))  # fmt: skip

        day = now // DAY_MS
        if self.day != day:
            self.day = day
            self.day_start = self.equity()
            self.day_halted = None

        pos = self.positions.get(sym)
        if pos is not None and pos.opened_at <= bar.open_time:
            long = pos.side == "long"
            stopped = bar.low <= pos.stop if long else bar.high >= pos.stop
            target = pos.take_profit is not None and (bar.high >= pos.take_profit if long else bar.low <= pos.take_profit)
            if stopped:
                self._close(sym, pos.stop)
                until = now + int(self.config.cooldown_minutes * 60_000)
                self.cooldown_until[sym] = until
                seen = f"low {bar.low:g}" if long else f"high {bar.high:g}"
                intent("close", pos.side, "stop", "accepted", pos.quantity, pos.quantity, pos.stop,
                       f"stop {pos.stop:g} hit ({seen}); no entry on {bar.symbol} for {self.config.cooldown_minutes:g} min")
            elif target:
                assert pos.take_profit is not None
                self._close(sym, pos.take_profit)
                seen = f"high {bar.high:g}" if long else f"low {bar.low:g}"
                intent("close", pos.side, "take_profit", "accepted", pos.quantity, pos.quantity, pos.take_profit,
                       f"take-profit {pos.take_profit:g} reached ({seen})")

        self.marks[sym] = bar.close
        equity = self.equity()
        self.peak = max(self.peak, equity)
        if self.halted is None and equity <= self.peak * (1 - self.config.max_drawdown):
            self.halted = (f"max drawdown: equity {equity:,.2f} is {100 * (1 - equity / self.peak):.2f}% below the peak "
                           f"{self.peak:,.2f} (limit {100 * self.config.max_drawdown:g}%); trading halted")
            self._flatten(bar, "drawdown", self.halted, intent)
        elif self.halted is None and self.day_halted is None and equity <= self.day_start * (1 - self.config.max_daily_loss):
            self.day_halted = (f"max daily loss: equity {equity:,.2f} is {100 * (1 - equity / self.day_start):.2f}% below the day's "
                               f"start {self.day_start:,.2f} (limit {100 * self.config.max_daily_loss:g}%); halted until the next UTC day")
            self._flatten(bar, "daily_loss", self.day_halted, intent)

        pos = self.positions.get(sym)
        want = bar.direction
        if pos is not None and (want not in (pos.side, "flat") or (want == "flat" and self.config.exit_on_flat)):
            self._close(sym, bar.close)
            intent("close", pos.side, "signal", "accepted", pos.quantity, pos.quantity, bar.close,
                   f"signal {want} (confidence {bar.confidence:.2f}) against the open {pos.side}")
            pos = None
        if want == "flat" or pos is not None:
            return out
        problem = self._refusal(bar, sym, now)
        requested = 0.0
        if problem is None and bar.atr is not None and bar.atr > 0:
            stop_distance = self.config.atr_stop * bar.atr
            equity = self.equity()
            requested = _round_qty(equity * self.config.risk_per_trade / stop_distance)
            qty, cuts = requested, []
            cap = self.config.max_symbol_exposure * equity / bar.close
            if qty > cap:
                qty = _round_qty(cap)
                cuts.append(f"notional {requested * bar.close:,.2f} above the per-symbol cap {self.config.max_symbol_exposure:g} x equity")
            room = max(0.0, self.config.max_total_exposure * equity - self.exposure(skip=sym)) / bar.close
            if qty > room:
                qty = _round_qty(room)
                cuts.append(f"total exposure cap {self.config.max_total_exposure:g} x equity leaves {room * bar.close:,.2f}")
            if qty <= 0 or qty < self.config.min_quantity:
                problem = "; ".join(cuts) + f"; quantity {qty:g} below the minimum {self.config.min_quantity:g}" if cuts else f"quantity {qty:g} below the minimum {self.config.min_quantity:g}"
            else:
                sign = 1 if want == "long" else -1
                stop = bar.close - sign * stop_distance
                tp = bar.close + sign * stop_distance * self.config.take_profit_r if self.config.take_profit_r else None
                if stop <= 0 and want == "long":
                    problem = f"stop {stop:g} would be at or below zero (ATR {bar.atr:g} x {self.config.atr_stop:g} >= close {bar.close:g})"
                else:
                    self.positions[sym] = Position(want, qty, bar.close, stop, tp, now, bar.interval)
                    self.cash -= self._fee(qty * bar.close)
                    why = (f"signal {want} (confidence {bar.confidence:.2f}): risk {100 * self.config.risk_per_trade:g}% of equity "
                           f"{equity:,.2f} over a stop {self.config.atr_stop:g} x ATR {bar.atr:g} away")
                    if cuts:
                        why += "; resized: " + "; ".join(cuts)
                    intent("open", want, "signal", "resized" if cuts else "accepted", qty, requested, bar.close, why, stop, tp)
                    return out
        elif problem is None:
            problem = "no ATR yet: the stop distance is unknown"
        intent("open", want, "signal", "rejected", 0.0, requested, bar.close, problem)
        return out

    def _refusal(self, bar: RiskBar, sym: str, now: int) -> str | None:
        if self.halted:
            return self.halted
        if self.day_halted:
            return self.day_halted
        if bar.direction == "short" and not self.config.allow_short:
            return "short signal but allow_short is false"
        if bar.confidence < self.config.min_confidence:
            return f"confidence {bar.confidence:.2f} below min_confidence {self.config.min_confidence:g}"
        until = self.cooldown_until.get(sym)
        if until is not None and now < until:
            return f"cooldown after a stop: {(until - now) / 60_000:g} min left"
        return None

    def _flatten(self, bar: RiskBar, trigger: str, reason: str, intent) -> None:  # noqa: ANN001 - the closure above
        """Close every open position at its last mark (the kill-switches)."""
        for sym in sorted(self.positions):
            mark = self.marks.get(sym, self.positions[sym].entry)
            pos = self._close(sym, mark)
            exchange, _, symbol = sym.partition(":")
            note = "" if symbol == bar.symbol else f" ({exchange} {symbol} at its last close, on {bar.exchange} {bar.symbol}'s candle)"
            intent("close", pos.side, trigger, "accepted", pos.quantity, pos.quantity, mark, reason + note, of=sym)

    # -- checkpoint ---------------------------------------------------------------------------

    def snapshot(self) -> dict:
        return {
            "version": SNAPSHOT_VERSION,
            "cash": self.cash,
            "positions": {s: asdict(p) for s, p in self.positions.items()},
            "marks": self.marks,
            "day": self.day,
            "day_start": self.day_start,
            "peak": self.peak,
            "halted": self.halted,
            "day_halted": self.day_halted,
            "cooldown_until": self.cooldown_until,
            "seq": [self.seq_time, self.seq],
        }

    def restore(self, d: dict) -> None:
        if d.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"risk snapshot version {d.get('version')!r}, expected {SNAPSHOT_VERSION}")
        self.cash = d["cash"]
        self.positions = {s: Position(**p) for s, p in d["positions"].items()}
        self.marks = dict(d["marks"])
        self.day = d["day"]
        self.day_start = d["day_start"]
        self.peak = d["peak"]
        self.halted = d["halted"]
        self.day_halted = d["day_halted"]
        self.cooldown_until = dict(d["cooldown_until"])
        self.seq_time, self.seq = d["seq"][0], dict(d["seq"][1])
