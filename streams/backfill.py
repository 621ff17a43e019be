"""History from an exchange's REST API through ccxt, and the one place ccxt exchanges are opened.

The live source and the ``tickflow backfill`` command share :func:`open_exchange` so both get the
same rate limiting and the same test hook (``url_overrides``) for pointing ccxt at a local fake.
"""

from __future__ import annotations

import asyncio
import difflib
import random
from typing import Any

import ccxt
import ccxt.async_support
import ccxt.pro
import structlog

from schemas.models import Candle

log = structlog.get_logger(__name__)

# Errors that pass with time (network, exchange down, rate limits): retried with backoff.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (ccxt.NetworkError,)


def open_exchange(
    exchange_id: str,
    url_overrides: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> Any:
    """A ccxt exchange with rate limiting on, the websocket (ccxt.pro) class when ccxt has one.

    ``options`` become ccxt's exchange ``options``; ``url_overrides`` is deep-merged into
    ``exchange.urls`` (tests point ``api`` entries at 127.0.0.1).
    """
    if exchange_id in ccxt.pro.exchanges:
        cls = getattr(ccxt.pro, exchange_id)
    elif exchange_id in ccxt.async_support.exchanges:
        cls = getattr(ccxt.async_support, exchange_id)
    else:
        close = difflib.get_close_matches(exchange_id, ccxt.exchanges, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"ccxt has no exchange {exchange_id!r}{hint}")
    exchange = cls({"enableRateLimit": True, "options": dict(options or {})})
    if url_overrides:
        exchange.urls = exchange.deep_extend(exchange.urls, url_overrides)
    return exchange


def backoff_delay(attempt: int, min_backoff: float, max_backoff: float) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): doubling, capped, with jitter so that
    many clients cut off together do not come back in lockstep."""
    return min(max_backoff, min_backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


async def fetch_ohlcv_history(
    exchange: Any,
    symbol: str,
    timeframe: str,
    since_ms: int,
    until_ms: int | None = None,
    limit: int = 1000,
    *,
    retries: int = 5,
    min_backoff: float = 1.0,
    max_backoff: float = 30.0,
) -> list[Candle]:
    """Candles with ``since_ms <= open_time <= until_ms`` (to the latest when ``until_ms`` is None).

    Pages forward from the last candle received, so pages neither overlap nor leave holes; only an
    empty page ends the walk, because exchanges may return fewer rows than ``limit`` mid-history.
    ccxt's unified OHLCV has no quote volume or trade count, so those are 0 here.
    """
    step_ms = int(exchange.parse_timeframe(timeframe) * 1000)
    params = {} if until_ms is None else {"until": until_ms}
    rows: list[list[Any]] = []
    since = since_ms
    while until_ms is None or since <= until_ms:
        page = await _with_retries(
            lambda s=since: exchange.fetch_ohlcv(symbol, timeframe, since=s, limit=limit, params=dict(params)),
            exchange.id, symbol, retries, min_backoff, max_backoff,
        )
        fresh = [r for r in page if r[0] >= since and (until_ms is None or r[0] <= until_ms)]
        if not fresh:
            break
        rows.extend(fresh)
        since = fresh[-1][0] + step_ms
    now_ms = exchange.milliseconds()
    return [candle_from_ohlcv(exchange.id, symbol, timeframe, step_ms, row, now_ms) for row in rows]


def candle_from_ohlcv(
    exchange_id: str, symbol: str, timeframe: str, step_ms: int, row: list[Any], now_ms: int
) -> Candle:
    """A ccxt ``[ts, o, h, l, c, v]`` row as a Candle; final once its window has fully passed."""
    open_time, o, h, low, c, v = row[:6]
    close_time = open_time + step_ms - 1
    return Candle(
        exchange=exchange_id,
        symbol=symbol,
        interval=timeframe,
        open_time=open_time,
        close_time=close_time,
        open=float(o),
        high=float(h),
        low=float(low),
        close=float(c),
        volume=float(v or 0.0),
        quote_volume=0.0,
        trade_count=0,
        is_final=close_time < now_ms,
        revision=0,
    )


async def _with_retries(
    call: Any, exchange_id: str, symbol: str, retries: int, min_backoff: float, max_backoff: float
) -> Any:
    attempt = 0
    while True:
        try:
            return await call()
        except TRANSIENT_ERRORS as e:
            attempt += 1
            if attempt > retries:
                raise
            delay = backoff_delay(attempt, min_backoff, max_backoff)
            log.warning(
                "backfill_retry", exchange=exchange_id, symbol=symbol, attempt=attempt,
                delay_s=round(delay, 3), error=repr(e),
            )
            await asyncio.sleep(delay)
