"""The candle agent: ``ticks`` (trade batches) -> ``candles`` (final candles and revisions),
``late-trades``, and in-progress candles for the realtime path.

:class:`agents.candles.CandleBook` decides every number; this logic adds the two wall-clock rules,
with the time handed in by the runtime:

- In-progress updates are throttled per symbol: a symbol's forming candles (one ``LiveCandles``
  record, every interval) go out at once when it was quiet for ``CANDLE_UPDATE_MS``, else when that
  much has passed since its last update (the runtime calls ``on_timer`` after every batch and every
  ``timer_s``).
- Idle close: when the partition has had nothing unread for ``CANDLE_IDLE_TIMEOUT_S``, its open
  windows are finalized (a quiet symbol's last minute would otherwise wait for its next trade).
  The runtime counts quiet time only while the consumer has read everything, so a backlog never
  finalizes a window early, and a partition restored from a checkpoint closes its windows too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from prometheus_client import Counter, Gauge

from agents.candles import BookOutput, CandleBook, CandleConfig
from agents.spec import AgentContext, AgentSpec, Emit, Inbound, Output
from schemas.models import LiveCandles

CANDLES_OUT = Counter("tickflow_candles_emitted_total", "Candles emitted", ["interval", "kind"])
LATE_TRADES = Counter("tickflow_late_trades_total", "Trades later than the grace period")
DUPLICATES = Counter("tickflow_duplicate_trades_total", "Trades skipped as already counted")
OPEN_WINDOWS = Gauge("tickflow_candle_open_windows", "Open (symbol, interval) windows", ["partition"])
WATERMARK = Gauge("tickflow_candle_watermark_ms", "Event-time watermark", ["partition"])
GAUGES_EVERY_S = 1.0  # counting open windows walks every symbol's state: once a second


def candle_config(settings: Any) -> CandleConfig:
    return CandleConfig(
        intervals=tuple(settings.intervals),
        lateness_ms=settings.candle_lateness_ms,
        grace_ms=settings.candle_grace_ms,
        fill_gaps=settings.candle_fill_gaps,
    )


class CandleLogic:
    """One ticks partition's candle book, its update throttle and its idle close."""

    def __init__(self, ctx: AgentContext) -> None:
        settings = ctx.settings
        self.config = candle_config(settings)
        self.book = CandleBook(self.config)
        self.partition = str(ctx.partition)
        self.update_s = settings.candle_update_ms / 1000
        self.idle_timeout_s = settings.candle_idle_timeout_s
        self.dirty: set[tuple[str, str]] = set()  # symbols whose forming candles changed since last sent
        self.last_sent: dict[tuple[str, str], float] = {}
        self.idle_closed = True  # nothing open yet; a restore or a trade opens windows
        self._in_progress_sent: dict[str, int] = {}
        self._gauges_due = 0.0

    def on_batch(self, records: Sequence[Inbound]) -> Iterable[Output]:
        out: list[Output] = []
        book, dirty = self.book, self.dirty
        for rec in records:
            batch = rec.value
            result = book.add(batch.exchange, batch.symbol, batch.trades)
            if result.candles or result.late or result.duplicates:
                self._finals(result, out)
            if result.dirty:
                dirty |= result.dirty
        if records:
            self.idle_closed = False
        return out

    def on_timer(self, now: float, quiet_s: float) -> Iterable[Output]:
        out: list[Output] = []
        if not self.idle_closed and quiet_s >= self.idle_timeout_s:
            result = self.book.close_open_windows()
            self.idle_closed = True
            self._finals(result, out)
            self.dirty |= result.dirty
        if self.dirty:
            self._progress(now, out)
        if now >= self._gauges_due:
            self._gauges_due = now + GAUGES_EVERY_S
            OPEN_WINDOWS.labels(self.partition).set(self.book.open_windows())
            if self.book.watermark_ms is not None:
                WATERMARK.labels(self.partition).set(self.book.watermark_ms)
            for interval, n in self._in_progress_sent.items():
                if n:
                    CANDLES_OUT.labels(interval, "in_progress").inc(n)
                    self._in_progress_sent[interval] = 0
        return out

    def _finals(self, result: BookOutput, out: list[Output]) -> None:
        for c in result.candles:
            out.append(Emit("candle", c.key, c))
            CANDLES_OUT.labels(c.interval, "revision" if c.revision else "final").inc()
        for late in result.late:
            out.append(Emit("late_trade", f"{late.exchange}:{late.symbol}", late))
        if result.late:
            LATE_TRADES.inc(len(result.late))
        if result.duplicates:
            DUPLICATES.inc(result.duplicates)

    def _progress(self, now: float, out: list[Output]) -> None:
        """Send the changed symbols whose last update is at least ``update_s`` old; the others wait."""
        last, wait, sent = self.last_sent, self.update_s, self._in_progress_sent
        due = [sym for sym in self.dirty if now - last.get(sym, -wait) >= wait]
        for sym in due:
            self.dirty.discard(sym)
            last[sym] = now
            candles = self.book.forming(*sym)
            if candles:
                out.append(Emit("live_candles", f"{sym[0]}:{sym[1]}", LiveCandles(candles)))
                for c in candles:
                    sent[c.interval] = sent.get(c.interval, 0) + 1

    def snapshot(self) -> bytes:
        return orjson.dumps(self.book.snapshot())

    def restore(self, data: bytes) -> None:
        self.book = CandleBook.restore(self.config, orjson.loads(data))
        self.idle_closed = False  # restored open windows close like any others after the quiet timeout


CANDLES = AgentSpec(
    name="candles",
    inputs=("trade_batch",),
    outputs=("candle", "late_trade", "live_candles"),
    logic=CandleLogic,
    timer_s=0.01,
    description="Event-time OHLCV candles of every configured interval from trade batches",
)
