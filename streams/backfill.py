"""History from an exchange's REST API through ccxt, and the one place ccxt exchanges are opened.

The live source and the ``tickflow backfill`` command share :func:`open_exchange` so both get the
same rate limiting and the same test hook (``url_overrides``) for pointing ccxt at a local fake.

``tickflow backfill`` writes closed candles (``is_final``, revision 0) to the candle stores and to
the candles topic, so the indicator agent and the Redis sink take them like live ones. Stores
upsert by (key, open_time) and keep a higher revision only, so a re-run leaves them as they are;
the topic is a log and gets the candles again, which its consumers treat as re-deliveries.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import ccxt
import ccxt.async_support
import ccxt.pro
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, stop_never

from schemas.codec import codec_for
from schemas.intervals import interval_ms
from schemas.models import Candle
from sinks.base import SinkBatch
from streams.producer import RecordProducer
from streams.settings import Settings

log = structlog.get_logger(__name__)

# Errors that pass with time, retried with backoff: ccxt's OperationFailed is the network, the
# exchange down or overloaded (HTTP 5xx, its own "internal error" codes), rate limits (HTTP 429)
# and answers that are not what the API promises (BadResponse, see open_exchange).
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (ccxt.OperationFailed,)


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
    _strict_answers(exchange)
    return exchange


def _strict_answers(exchange: Any) -> None:
    """Make a garbled REST answer an error that is retried. ccxt hands a 200 whose body is not
    JSON (malformed, empty, an HTML page) on as text, which its parsers turn into no trades (the
    source would skip that window) or one garbage trade per character; and a body cut off mid-way
    becomes a plain ExchangeError, which is permanent to ccxt. Both become BadResponse."""
    fetch = exchange.fetch

    async def strict(url: str, method: str = "GET", headers: Any = None, body: Any = None) -> Any:
        try:
            answer = await fetch(url, method, headers, body)
        except ccxt.ExchangeError as exc:
            if isinstance(exc.__cause__, aiohttp.ClientPayloadError):
                raise ccxt.BadResponse(f"{exc}: the answer was cut off ({exc.__cause__})") from exc
            raise
        if not isinstance(answer, dict | list):
            raise ccxt.BadResponse(f"{exchange.id} {method} {url}: the answer is not JSON: {str(answer)[:200]!r}")
        return answer

    exchange.fetch = strict


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
    on_page: Callable[[int], None] | None = None,
) -> list[Candle]:
    """Candles with ``since_ms <= open_time <= until_ms`` (to the latest when ``until_ms`` is None).

    Pages forward from the last candle received, so pages neither overlap nor leave holes; only an
    empty page ends the walk, because exchanges may return fewer rows than ``limit`` mid-history.
    ccxt's unified OHLCV has no quote volume or trade count, so those are 0 here. ``on_page`` gets
    the open time the next page starts from, for progress.
    """
    step_ms = interval_ms(timeframe)
    params = {} if until_ms is None else {"until": until_ms}
    rows: list[list[Any]] = []
    since = since_ms
    while until_ms is None or since <= until_ms:
        async for attempt in _retrying(exchange.id, symbol, retries, min_backoff, max_backoff):
            with attempt:
                page = await exchange.fetch_ohlcv(symbol, timeframe, since=since, limit=limit, params=dict(params))
        fresh = [r for r in page if r[0] >= since and (until_ms is None or r[0] <= until_ms)]
        if not fresh:
            break
        rows.extend(fresh)
        since = fresh[-1][0] + step_ms
        if on_page is not None:
            on_page(since)
    now_ms = exchange.milliseconds()
    return [candle_from_ohlcv(exchange.id, symbol, timeframe, step_ms, row, now_ms) for row in rows]


def candle_from_ohlcv(
    exchange_id: str, symbol: str, timeframe: str, step_ms: int, row: list[Any], now_ms: int
) -> Candle:
    """A ccxt ``[ts, o, h, l, c, v]`` row as a Candle; final once its window has fully passed.

    The row has nothing else, so what the schema allows to be unknown is null (vwap, taker buy
    volume, trade ids) and the required quote volume and trade count are 0: with volume above 0
    they mark a candle from exchange klines rather than from trades. An average of OHLC would look
    like a vwap without being one, so none is made up.
    """
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


def transient_retrying(
    min_backoff: float, max_backoff: float, on_retry: Callable[[int, float, BaseException | None], None], *, attempts: int | None = None
) -> AsyncRetrying:
    """Retry ``TRANSIENT_ERRORS`` with :func:`backoff_delay`, calling ``on_retry(attempt, delay,
    error)`` before each wait: without end when ``attempts`` is None, else raising the last error."""
    return AsyncRetrying(
        retry=retry_if_exception_type(TRANSIENT_ERRORS),
        stop=stop_never if attempts is None else stop_after_attempt(attempts),
        wait=lambda state: backoff_delay(state.attempt_number, min_backoff, max_backoff),
        before_sleep=lambda state: on_retry(state.attempt_number, state.upcoming_sleep, state.outcome.exception() if state.outcome else None),
        reraise=True,
    )


def _retrying(exchange_id: str, symbol: str, retries: int, min_backoff: float, max_backoff: float) -> AsyncRetrying:
    """Transient errors retried ``retries`` times with backoff, each logged; then the last one is raised."""

    def logged(attempt: int, delay: float, error: BaseException | None) -> None:
        log.warning("backfill_retry", exchange=exchange_id, symbol=symbol, attempt=attempt, delay_s=round(delay, 3), error=repr(error))

    return transient_retrying(min_backoff, max_backoff, logged, attempts=retries + 1)


class BackfillError(Exception):
    """A backfill cannot run at all (bad exchange, interval, unreachable store); the message says why."""


@dataclass(slots=True)
class SymbolResult:
    """What one symbol's backfill did: candles written and their open-time range, or why none."""

    symbol: str
    candles: int = 0
    first_open: int | None = None
    last_open: int | None = None
    error: str | None = None


def parse_time(text: str) -> int:
    """Epoch ms of an ISO date or date-time (``2024-01-01``, ``2024-01-01T12:00``); no offset = UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a date or time like 2024-01-01 or 2024-01-01T12:00 (UTC)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def timeframe_problem(exchange: Any, timeframe: str) -> str | None:
    """Why ``timeframe`` cannot be backfilled from ``exchange``, or None.

    Months (and years) are refused: their windows differ in length, and paging and ``close_time``
    assume one fixed step.
    """
    known = list(getattr(exchange, "timeframes", None) or {})
    if known and timeframe not in known:
        return f"{exchange.id} has no {timeframe!r} candles; it has {', '.join(known)}"
    if timeframe[-1:] in ("M", "y"):
        return f"{timeframe!r}: calendar months and years have no fixed length; use 1w or shorter"
    try:
        interval_ms(timeframe)
    except ValueError:
        return f"{timeframe!r} is not an interval like 1m, 1h or 1d"
    return None


def symbol_problem(exchange: Any, symbol: str) -> str | None:
    """Why the exchange (markets loaded) has no candles of ``symbol``, or None."""
    if symbol in exchange.markets:
        return None
    close = difflib.get_close_matches(symbol, list(exchange.markets), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"{exchange.id} has no market {symbol!r}{hint}"


async def backfill(
    exchange: Any,
    symbols: list[str],
    timeframe: str,
    since_ms: int,
    until_ms: int | None,
    write: Callable[[list[Candle]], None],
    on_progress: Callable[[str, int, int], None] = lambda symbol, done, total: None,
) -> list[SymbolResult]:
    """Fetch each symbol's closed candles with ``since_ms <= open_time < until_ms`` and ``write`` them.

    A symbol the exchange does not know, or whose requests fail, is reported in its result and the
    others still run; ``write`` failing (a store down) stops everything, since it would fail for
    every symbol. The still-open current window is never written: it would be stored as final.
    ``on_progress(symbol, windows done, windows in range)`` follows the paging.
    """
    step_ms = interval_ms(timeframe)
    results = []
    for symbol in symbols:
        problem = symbol_problem(exchange, symbol)
        if problem is not None:
            results.append(SymbolResult(symbol, error=problem))
            continue
        end = exchange.milliseconds() if until_ms is None else min(until_ms, exchange.milliseconds())
        total = max(0, -(-(end - since_ms) // step_ms))
        on_progress(symbol, 0, total)
        try:
            candles = await fetch_ohlcv_history(
                exchange, symbol, timeframe, since_ms, None if until_ms is None else until_ms - 1,
                on_page=lambda next_open, s=symbol, t=total: on_progress(s, min(t, (next_open - since_ms) // step_ms), t),
            )
        except ccxt.BaseError as e:
            results.append(SymbolResult(symbol, error=f"{type(e).__name__}: {e}"))
            continue
        closed = [c for c in candles if c.is_final]
        write(closed)
        on_progress(symbol, total, total)
        log.info("backfilled", exchange=exchange.id, symbol=symbol, interval=timeframe, candles=len(closed))
        results.append(
            SymbolResult(symbol, len(closed), closed[0].open_time if closed else None, closed[-1].open_time if closed else None)
        )
    return results


class CandleOutput:
    """Writes candles to ClickHouse, PostgreSQL (when ``DATABASE_URL`` is set) and the candles topic.

    Stores are migrated first, as by ``tickflow migrate``. Each chunk is written to the stores, then
    produced and flushed, so a symbol reported done is durable everywhere. Redis is not written:
    its sink takes the candles from the topic, like live ones.
    """

    def __init__(self, settings: Settings) -> None:
        from sinks.runner import open_sinks

        try:
            self._sinks = open_sinks(settings.updated(redis_url=None))
        except Exception as exc:  # noqa: BLE001 - any store failing to open or migrate ends the backfill
            hint = " (DATABASE_URL= turns PostgreSQL off)" if settings.stores.database_url else ""
            raise BackfillError(f"cannot open the candle stores{hint}: {type(exc).__name__}: {exc}") from exc
        self._settings = settings
        self._producer: RecordProducer | None = RecordProducer(settings)
        self._codec = codec_for("tickflow.Candle", settings.kafka.topic_candles, settings.kafka.schema_registry_url)

    def write(self, candles: list[Candle]) -> None:
        assert self._producer is not None, "CandleOutput is closed"
        size = self._settings.stores.sink_batch_size
        for i in range(0, len(candles), size):
            chunk = candles[i : i + size]
            for sink in self._sinks:
                try:
                    sink.write(SinkBatch(candle=chunk))
                except Exception as exc:  # noqa: BLE001 - down or refusing, the store cannot take the backfill
                    raise BackfillError(f"{sink.name} write failed: {type(exc).__name__}: {exc}") from exc
            for c in chunk:
                self._producer.produce(self._settings.kafka.topic_candles, c.key, self._codec.encode(c.to_avro()))
            self._producer.flush()

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()
        self._sinks = []
        # Dropping the client disconnects it now: an embedded broker waits for connected clients
        # before it stops.
        self._producer = None

    def __enter__(self) -> CandleOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def run_backfill(
    settings: Settings,
    exchange_id: str,
    symbols: list[str],
    timeframe: str,
    since_ms: int,
    until_ms: int | None,
    on_progress: Callable[[str, int, int], None] = lambda symbol, done, total: None,
) -> list[SymbolResult]:
    """``tickflow backfill``: the exchange is checked before a broker or store is started, so bad
    input fails fast; then the broker (embedded when ``KAFKA_BOOTSTRAP`` is unset) and the stores."""
    from streams.pipeline import kafka  # loads the stores and agents: not for the live source, which imports this module

    try:
        exchange = open_exchange(exchange_id, settings.sources.ccxt_url_overrides, settings.sources.ccxt_options)
    except ValueError as exc:
        raise BackfillError(str(exc)) from None
    try:
        if not exchange.has.get("fetchOHLCV"):
            raise BackfillError(f"{exchange.id} offers no candles through ccxt (fetchOHLCV)")
        problem = timeframe_problem(exchange, timeframe)
        if problem is not None:
            raise BackfillError(problem)
        try:
            async for attempt in _retrying(exchange.id, "*", 5, 1.0, 30.0):
                with attempt:
                    await exchange.load_markets()
        except ccxt.BaseError as exc:
            raise BackfillError(f"cannot load {exchange.id} markets: {type(exc).__name__}: {exc}") from exc
        with kafka(settings) as connected, CandleOutput(connected) as output:
            return await backfill(exchange, symbols, timeframe, since_ms, until_ms, output.write, on_progress)
    finally:
        await exchange.close()
