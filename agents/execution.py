"""Simulated execution of trade intents on a trade stream, and the backtest's metrics. Pure.

Fill rules (what a market taker would have got):

- an ``open`` or a ``close`` intent fills at the first trade of its symbol at or after its
  decision time (the signal candle's close), at that trade's price moved against us by
  ``slippage_bps``; a close for a position whose entry has not filled yet cancels the entry;
- an open position's bracket is watched trade by trade from its fill on: a trade at or through
  the stop fills the exit at that trade's price less slippage (a stop-market order, gaps included),
  a trade at or through the take-profit fills it at the take-profit price (a resting limit order);
  the risk manager's own ``stop``/``take_profit`` intents are then already done, and only a
  position the executor still holds is closed by them (at the next trade);
- every fill pays ``fee_bps`` of its notional; a trade's ``pnl`` is after both fees;
- at the end of the data an open position is closed at the last trade (reason ``end of data``).

Equity is cash plus open positions marked at a price, sampled at each signal (the candle's
close); the final sample comes after the end-of-data exits, so it equals the starting equity plus
the sum of the trades' pnl.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from schemas.models import Trade, TradeIntent

YEAR_MS = 365 * 86_400_000


@dataclass(slots=True)
class ClosedTrade:
    symbol: str  # exchange:symbol
    side: str  # long | short
    entry_time: int  # µs, of the filling trade
    entry_price: float
    exit_time: int
    exit_price: float
    quantity: float
    fee: float
    pnl: float
    reason: str


@dataclass(slots=True)
class _Order:
    intent: TradeIntent
    due_us: int


@dataclass(slots=True)
class _Open:
    side: str
    quantity: float
    entry_time: int
    entry_price: float
    entry_fee: float
    stop: float | None
    take_profit: float | None


@dataclass
class Executor:
    """Fills intents on the trades of a replay (see the module docstring)."""

    equity0: float
    fee_bps: float = 0.0
    slippage_bps: float = 0.0
    keep_us: int = 120_000_000  # trades kept for intents decided after later trades were read (the risk merge waits for the slowest series)
    cash: float = field(init=False)
    trades: list[ClosedTrade] = field(default_factory=list)
    equity: list[tuple[int, float]] = field(default_factory=list)  # (ms, equity)
    unfilled: list[TradeIntent] = field(default_factory=list)
    fills: int = 0
    _open: dict[str, _Open] = field(default_factory=dict)
    _orders: dict[str, list[_Order]] = field(default_factory=dict)
    _recent: dict[str, deque[Trade]] = field(default_factory=dict)
    _last: dict[str, Trade] = field(default_factory=dict)
    _marks: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cash = self.equity0

    # -- inputs -------------------------------------------------------------------------------

    def on_trades(self, sym: str, trades: Sequence[Trade]) -> None:
        """Trades of one symbol in arrival order (the same trades the candle agent gets)."""
        if not trades:
            return
        recent = self._recent.get(sym)
        if recent is None:
            recent = self._recent[sym] = deque()
        if self._orders.get(sym) or sym in self._open:
            for t in trades:
                self._trade(sym, t)
        recent.extend(trades)
        horizon = trades[-1].ts - self.keep_us
        while recent and recent[0].ts < horizon and len(recent) > 1:
            recent.popleft()
        self._last[sym] = trades[-1]

    def on_intents(self, intents: Iterable[TradeIntent]) -> None:
        """Intents as the risk manager emitted them; each fills on the first trade at or after its
        decision time, looked up among the trades already read, else on the ones to come."""
        for intent in intents:
            if intent.status == "rejected" or intent.quantity <= 0:
                continue
            sym = f"{intent.exchange}:{intent.symbol}"
            if intent.action == "close" and intent.trigger in ("stop", "take_profit") and sym not in self._open:
                continue  # the bracket filled it already on the trades
            self._orders.setdefault(sym, []).append(_Order(intent, intent.ts * 1000))
            recent = self._recent.get(sym, ())
            for i, t in enumerate(recent):
                if t.ts >= intent.ts * 1000:
                    # Replay the kept trades from the first one at/after the decision: the order
                    # fills on it and the position's bracket sees the rest.
                    for later in list(recent)[i:]:
                        if not self._orders.get(sym) and sym not in self._open:
                            break
                        self._trade(sym, later)
                    break

    def mark(self, time_ms: int, sym: str, price: float) -> None:
        """Record equity at ``time_ms`` with ``sym`` marked at ``price`` (a signal's close)."""
        self._marks[sym] = price
        self.equity.append((time_ms, round(self.cash + self._unrealized(), 10)))

    def finish(self) -> None:
        """Close what is open at the last trade of its symbol; unfilled orders are reported."""
        for sym, orders in self._orders.items():
            self.unfilled.extend(o.intent for o in orders)
        self._orders.clear()
        for sym in sorted(self._open):
            last = self._last[sym]
            self._exit(sym, last, self._slipped(last.price, self._open[sym].side == "short"), "end of data")
        times = [self.equity[-1][0]] if self.equity else []
        times += [tr.exit_time // 1000 for tr in self.trades[-1:]]
        final = (max(times), round(self.cash, 10)) if times else None
        if final is not None and (not self.equity or self.equity[-1] != final):
            self.equity.append(final)

    # -- internals ----------------------------------------------------------------------------

    def _unrealized(self) -> float:
        total = 0.0
        for sym, pos in self._open.items():
            price = self._marks.get(sym, pos.entry_price)
            total += (price - pos.entry_price) * pos.quantity * (1 if pos.side == "long" else -1)
        return total

    def _slipped(self, price: float, buy: bool) -> float:
        return price * (1 + self.slippage_bps / 10_000) if buy else price * (1 - self.slippage_bps / 10_000)

    def _fee(self, price: float, qty: float) -> float:
        return price * qty * self.fee_bps / 10_000

    def _trade(self, sym: str, t: Trade) -> None:
        """One trade: the open position's bracket first, then the orders due by its time. Seeing a
        trade twice (a replay of the kept trades for a new intent) changes nothing the first
        look did not: an unhit bracket stays unhit and due orders were filled already."""
        pos = self._open.get(sym)
        if pos is not None and t.ts > pos.entry_time:
            self._bracket(sym, pos, t)
        orders = self._orders.get(sym)
        while orders and orders[0].due_us <= t.ts:
            order = orders.pop(0)
            intent = order.intent
            pos = self._open.get(sym)
            if intent.action == "open":
                if pos is not None:
                    continue  # already in a position there (its exit was never asked for)
                buy = intent.side == "buy"
                price = self._slipped(t.price, buy)
                fee = self._fee(price, intent.quantity)
                self.cash -= fee
                self.fills += 1
                self._open[sym] = _Open(intent.position, intent.quantity, t.ts, price, fee, intent.stop_price, intent.take_profit_price)
            elif pos is not None:
                why = {"signal": "signal", "daily_loss": "daily loss limit", "drawdown": "max drawdown"}.get(intent.trigger, intent.trigger)
                self._exit(sym, t, self._slipped(t.price, pos.side == "short"), why)
            else:
                # Closing an entry that has not filled: cancel it instead.
                orders[:] = [o for o in orders if o.intent.action != "open"]

    def _bracket(self, sym: str, pos: _Open, t: Trade) -> None:
        long = pos.side == "long"
        if pos.stop is not None and (t.price <= pos.stop if long else t.price >= pos.stop):
            self._exit(sym, t, self._slipped(t.price, not long), "stop")
        elif pos.take_profit is not None and (t.price >= pos.take_profit if long else t.price <= pos.take_profit):
            self._exit(sym, t, pos.take_profit, "take_profit")

    def _exit(self, sym: str, t: Trade, price: float, reason: str) -> None:
        pos = self._open.pop(sym)
        sign = 1 if pos.side == "long" else -1
        exit_fee = self._fee(price, pos.quantity)
        gross = (price - pos.entry_price) * pos.quantity * sign
        self.cash += gross - exit_fee
        self.fills += 1
        self._marks[sym] = price
        self.trades.append(ClosedTrade(sym, pos.side, pos.entry_time, pos.entry_price, t.ts, price, pos.quantity,
                                       pos.entry_fee + exit_fee, gross - pos.entry_fee - exit_fee, reason))


def metrics(
    equity0: float, trades: Sequence[ClosedTrade], equity: Sequence[tuple[int, float]], first_ms: int, last_ms: int, period_ms: int
) -> dict[str, float | int | None]:
    """Performance figures (freqtrade's names where they exist). Ratios are annualised from the
    returns between consecutive equity samples, one sample per signal candle (``period_ms``);
    ``exposure`` is the share of the data's time with at least one position open."""
    final = equity[-1][1] if equity else equity0
    span = max(last_ms - first_ms, 1)
    total_return = final / equity0 - 1
    cagr = (final / equity0) ** (YEAR_MS / span) - 1 if final > 0 and span >= 86_400_000 else None
    values = [equity0] + [e for _, e in equity]
    rets = [b / a - 1 for a, b in zip(values, values[1:], strict=False) if a > 0]
    per_year = YEAR_MS / period_ms
    sharpe = sortino = None
    if len(rets) > 1:
        mean = sum(rets) / len(rets)
        var = sum((r - mean) ** 2 for r in rets) / (len(rets) - 1)
        if var > 0:
            sharpe = mean / math.sqrt(var) * math.sqrt(per_year)
        down = sum(min(r, 0.0) ** 2 for r in rets) / len(rets)
        if down > 0:
            sortino = mean / math.sqrt(down) * math.sqrt(per_year)
    peak, mdd = equity0, 0.0
    for v in values:
        peak = max(peak, v)
        if peak > 0:
            mdd = max(mdd, 1 - v / peak)
    wins = [t.pnl for t in trades if t.pnl > 0]
    losses = [-t.pnl for t in trades if t.pnl < 0]
    held, until = 0, None  # time (ms) with at least one position open: the union of the trades' spans
    for start, end in sorted((t.entry_time // 1000, t.exit_time // 1000) for t in trades):
        if until is None or start > until:
            held += end - start
            until = end
        elif end > until:
            held += end - until
            until = end
    return {
        "total_return": total_return,
        "cagr": cagr,
        "sharpe": sharpe,
        "sortino": sortino,
        "max_drawdown": mdd,
        "win_rate": len(wins) / len(trades) if trades else None,
        "profit_factor": sum(wins) / sum(losses) if losses else None,
        "trades": len(trades),
        "exposure": min(held / span, 1.0),
        "start_equity": equity0,
        "final_equity": final,
        "net_pnl": sum(t.pnl for t in trades),
        "fees": sum(t.fee for t in trades),
    }


def drawdowns(equity0: float, equity: Sequence[tuple[int, float]]) -> list[float]:
    """Drawdown from the running peak (starting equity included) at each equity sample."""
    peak, out = equity0, []
    for _, v in equity:
        peak = max(peak, v)
        out.append(1 - v / peak if peak > 0 else 0.0)
    return out
