"""Replay a recorded trade file as a live source, as fast as possible or paced on its event time."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import structlog

from streams.sources.base import BadInput, MicroBatcher, Source, SourceItem
from streams.sources.formats import FORMATS, detect_format, iter_trades

log = structlog.get_logger(__name__)

# This many bad records before the first trade: the file is likely not in the format it is read as.
NOT_THIS_FORMAT = 1000
# Shorter waits are not worth a trip through the event loop's timer heap; the debt is paid later.
_MIN_SLEEP_S = 0.001


def parse_source_speed(text: str) -> float | None:
    """``"max"`` -> None (no pacing); ``"10x"`` or ``"10"`` -> 10.0 (event time 10x faster than real time)."""
    t = text.strip().lower()
    if t == "max":
        return None
    try:
        speed = float(t.removesuffix("x"))
    except ValueError:
        raise ValueError(f"replay speed {text!r} is not 'max', 'N' or 'Nx'") from None
    if not math.isfinite(speed) or speed <= 0:
        raise ValueError(f"replay speed {text!r} must be a positive finite number or 'max'")
    return speed


class ReplaySource(Source):
    """Trades of a file in file order, micro-batched per symbol on event time.

    Batches close at ``max_trades`` trades or ``max_ms`` of event time, so the batches are the
    same at any ``speed``; ``speed`` only decides when they are released.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        fmt: str | None = None,
        speed: float | None = None,
        exchange: str | None = None,
        symbol: str | None = None,
        max_trades: int = 500,
        max_ms: int = 50,
    ) -> None:
        self.path = Path(path)
        if fmt is not None and fmt not in FORMATS:
            raise ValueError(f"unknown trade file format {fmt!r}; known formats: {', '.join(FORMATS)}")
        self.fmt = fmt or detect_format(self.path)
        if speed is not None and (not math.isfinite(speed) or speed <= 0):
            raise ValueError(f"replay speed must be positive and finite, got {speed!r}")
        self.speed = speed
        self.exchange, self.symbol = exchange, symbol
        self.max_trades = max_trades
        self.max_ms = max_ms
        self._stopped = False
        # Opened now, so that a bad exchange or symbol argument is a ValueError here, not mid-run.
        self._items = iter_trades(self.path, self.fmt, exchange=exchange, symbol=symbol)

    def again(self) -> ReplaySource:
        return ReplaySource(self.path, fmt=self.fmt, speed=self.speed, exchange=self.exchange, symbol=self.symbol, max_trades=self.max_trades, max_ms=self.max_ms)

    async def stream(self) -> AsyncIterator[SourceItem]:
        loop = asyncio.get_running_loop()
        batchers: dict[str, MicroBatcher] = {}
        first_ts: int | None = None
        start = 0.0
        trades = bad = batches = 0
        log.info("replay started", path=str(self.path), fmt=self.fmt, speed=self.speed)
        with closing(self._items) as items:
            for item in items:
                if self._stopped:
                    break
                if isinstance(item, BadInput):
                    bad += 1
                    if bad == NOT_THIS_FORMAT and not trades:
                        log.error("replay file does not parse as its format: is --format right?", path=str(self.path), fmt=self.fmt, bad=bad, last_reason=item.reason)
                    yield item
                    await asyncio.sleep(0)
                    continue
                exchange, symbol, trade = item
                trades += 1
                if self.speed is not None:
                    if first_ts is None:
                        first_ts, start = trade.ts, loop.time()
                    delay = start + (trade.ts - first_ts) / 1e6 / self.speed - loop.time()
                    if delay > _MIN_SLEEP_S:
                        await asyncio.sleep(delay)
                batcher = batchers.get(exchange)
                if batcher is None:
                    batcher = batchers[exchange] = MicroBatcher(exchange, self.max_trades, self.max_ms)
                for batch in batcher.add(symbol, trade):
                    batches += 1
                    yield batch
                    await asyncio.sleep(0)
        for batcher in batchers.values():
            for batch in batcher.flush():
                batches += 1
                yield batch
        log.info("replay finished", path=str(self.path), trades=trades, bad=bad, batches=batches, stopped=self._stopped)

    async def aclose(self) -> None:
        """Make a running ``stream()`` stop reading, flush its open batches and end."""
        self._stopped = True
