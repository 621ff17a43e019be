"""Live trades from any ccxt exchange (``ccxt:EXCHANGE``): websocket when it has one, REST polling else.

Nothing missed, nothing doubled. Websockets drop, and ccxt.pro reconnects silently on the next
``watch_trades``, so trades that happen in between were never pushed. The source therefore
catches up through REST ``fetch_trades(since=last trade time)`` whenever its view may have a hole:
at the first delivery after any connection loss (only then is the new subscription surely live,
so REST plus socket cover everything), while the socket stays quiet after a loss, when a resume
cursor is given, and when a delivery fills ccxt's trade cache (older ones may have been evicted).
REST pages and socket deliveries overlap on purpose; trades are then dropped by id.

Exchanges misbehave: HTTP 429 and 5xx, REST bodies that are not JSON or are cut off, socket
messages ccxt cannot parse, connections dropped mid-message. REST calls are retried with backoff
(``streams.backfill.TRANSIENT_ERRORS``); a garbled socket message is dead-lettered and the socket
reconnected, and in every case the REST catch-up above fills the hole. Each is logged and counted.
"""

from __future__ import annotations

import asyncio
import difflib
import weakref
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import ccxt
import orjson
import structlog
from prometheus_client import Counter

from schemas.models import Trade, TradeBatch
from schemas.validation import Reason, reason, symbol_problem, trade_problem
from streams.backfill import TRANSIENT_ERRORS, backoff_delay, open_exchange, transient_retrying
from streams.sources.base import BadInput, Source, SourceItem, now_us

log = structlog.get_logger(__name__)

RECONNECTS = Counter(
    "tickflow_source_reconnects",
    "Live exchange sockets lost and REST calls retried after transient errors (timeouts, rate limits, HTTP 5xx, garbled answers)",
    ["exchange"],
)
BAD_ANSWERS = Counter(
    "tickflow_source_bad_answers",
    "Exchange REST answers and socket messages that were garbled (not JSON, cut off, unhandled): retried, or the socket reconnected",
    ["exchange"],
)

Mode = Literal["auto", "ws", "rest"]


@dataclass(frozen=True, slots=True)
class _Profile:
    """What an exchange needs so that socket and REST trades share one id space."""

    options: dict[str, Any] = field(default_factory=dict)
    # ccxt's fetch_trades(since) only looks this far ahead (Binance: startTime + 1 h), so an empty
    # or short page means "nothing in this window", not "caught up".
    rest_window_ms: int | None = None


# ccxt.pro's binance pushes individual trades while REST fetch_trades returns aggregated trades,
# whose ids differ; the aggTrade stream makes both sides aggregated trades. Prices and volumes are
# the same either way; a trade count built from them counts aggregated trades, not Binance's fills.
_BINANCE = _Profile({"watchTrades": {"name": "aggTrade"}}, 3_600_000)
_PROFILES = dict.fromkeys(("binance", "binanceus", "binanceusdm", "binancecoinm"), _BINANCE)


def parse_trade(raw: Mapping[str, Any], now: int) -> Trade | str:
    """A ccxt unified trade as a Trade, or the reason it is unusable (``now`` in µs)."""
    tid, ts = raw.get("id"), raw.get("timestamp")
    trade = Trade(
        "" if tid is None else str(tid),
        ts * 1000 if isinstance(ts, int) else ts,
        raw.get("price"),
        raw.get("amount"),
        raw.get("side") or "unknown",
    )
    problem = trade_problem(trade, now)
    if problem is not None:
        return problem
    return trade._replace(price=float(trade.price), amount=float(trade.amount))


def raw_payload(raw: Mapping[str, Any]) -> bytes:
    """The exchange's own trade object (ccxt keeps it in ``info``) as JSON, for the dead-letter topic."""
    return orjson.dumps(raw.get("info", raw), default=str)


class _Seen:
    """The last trade time of a symbol and the ids of recent trades: what makes redelivery harmless."""

    def __init__(self, capacity: int) -> None:
        self.last_ts: int | None = None  # ms
        self._order: deque[str] = deque()
        self._ids: set[str] = set()
        self._capacity = capacity
        self._floor: tuple[int, str] | None = None

    def resume_after(self, ts_ms: int, trade_id: str) -> None:
        """Everything up to this trade was delivered before (by an earlier run)."""
        self.last_ts = ts_ms
        self._floor = (ts_ms, trade_id)
        self._remember(trade_id)

    def has(self, trade_id: str) -> bool:
        return trade_id in self._ids

    def fresh(self, raws: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The trades not seen before, now remembered; the cursor moves to the newest."""
        out = []
        for raw in raws:
            tid, ts = raw.get("id"), raw.get("timestamp")
            if tid is not None:
                tid = str(tid)
                if tid in self._ids or self._before_floor(ts, tid):
                    continue
                self._remember(tid)
            if isinstance(ts, int) and (self.last_ts is None or ts > self.last_ts):
                self.last_ts = ts
            out.append(raw)
        return out

    def _before_floor(self, ts: Any, tid: str) -> bool:
        """Older than the resume point; at its millisecond, integer ids order the trades."""
        if self._floor is None or not isinstance(ts, int):
            return False
        floor_ts, floor_id = self._floor
        if ts != floor_ts:
            return ts < floor_ts
        return tid.isdigit() and floor_id.isdigit() and int(tid) <= int(floor_id)

    def _remember(self, tid: str) -> None:
        self._order.append(tid)
        self._ids.add(tid)
        if len(self._order) > self._capacity:
            self._ids.discard(self._order.popleft())


class CcxtSource(Source):
    """Trades of ``symbols`` (ccxt unified, e.g. ``BTC/USDT``) from ``exchange_id``, one task per symbol.

    ``resume_after`` maps a symbol to the (µs time, id) of the last trade an earlier run delivered;
    the source then starts by catching up from there through REST.
    """

    def __init__(
        self,
        exchange_id: str,
        symbols: list[str],
        *,
        mode: Mode = "auto",
        poll_interval: float = 1.0,
        exchange_options: dict[str, Any] | None = None,
        url_overrides: dict[str, Any] | None = None,
        max_backoff: float = 30.0,
        min_backoff: float = 0.5,
        page_limit: int = 1000,
        resume_after: Mapping[str, tuple[int, str]] | None = None,
        dedupe_window: int = 50_000,
        queue_size: int = 1000,
    ) -> None:
        if mode not in ("auto", "ws", "rest"):
            raise ValueError(f"mode must be auto, ws or rest, not {mode!r}")
        if not symbols:
            raise ValueError("no symbols to watch")
        bad = [problem for problem in map(symbol_problem, symbols) if problem is not None]
        if bad:
            raise ValueError("; ".join(bad))
        profile = _PROFILES.get(exchange_id, _Profile())
        self.exchange_id = exchange_id
        self.symbols = list(dict.fromkeys(symbols))
        self.mode = mode
        self.poll_interval = poll_interval
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.page_limit = page_limit
        self._window_ms = profile.rest_window_ms
        self.exchange = open_exchange(exchange_id, url_overrides, _merge(profile.options, exchange_options or {}))
        self._seen = {s: _Seen(dedupe_window) for s in self.symbols}
        for symbol, (ts_us, trade_id) in (resume_after or {}).items():
            if symbol in self._seen:
                self._seen[symbol].resume_after(ts_us // 1000, trade_id)
        self._queue: asyncio.Queue[SourceItem | BaseException] = asyncio.Queue(queue_size)
        self._tasks: list[asyncio.Task[None]] = []
        self._letters: set[asyncio.Task[None]] = set()
        self._epoch = 0
        self._closing = False
        self._lost: weakref.WeakSet[Any] = weakref.WeakSet()
        self._cache_limit = int(self.exchange.options.get("tradesLimit", 1000))
        self._track_disconnects()
        self._guard_messages()

    async def stream(self) -> AsyncIterator[SourceItem]:
        await self._start()
        while True:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    async def aclose(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.exchange.close()

    def _track_disconnects(self) -> None:
        """Count socket losses: ccxt reconnects quietly, and trades pushed meanwhile are gone."""
        for hook in ("on_close", "on_error"):
            original = getattr(self.exchange, hook, None)
            if original is None:
                continue

            def counted(client: Any, error: Any, _original: Any = original) -> Any:
                self._epoch += 1
                if not self._closing and client not in self._lost:  # ccxt may report one loss twice
                    self._lost.add(client)
                    RECONNECTS.labels(self.exchange_id).inc()
                    log.warning(
                        "exchange_socket_lost", exchange=self.exchange_id, url=getattr(client, "url", None), detail=str(error)
                    )
                return _original(client, error)

            setattr(self.exchange, hook, counted)

    def _guard_messages(self) -> None:
        """A socket message ccxt cannot handle (malformed JSON, a trade object it chokes on) raises
        inside ccxt's receive loop, which then stops reading for good while the socket stays open:
        the watch would wait forever. Instead the message is dead-lettered and the socket dropped,
        so the watch reconnects and REST fills in whatever the message held."""
        make_client = self.exchange.client

        def client(url: str) -> Any:
            c = make_client(url)
            if not getattr(c, "_tickflow_guarded", False):
                handle = c.handle_text_or_binary_message

                def guarded(data: Any, _handle: Any = handle, _client: Any = c) -> None:
                    try:
                        _handle(data)
                    except Exception as exc:  # noqa: BLE001 - any failure on one message
                        self._bad_message(_client, data, exc)

                c.handle_text_or_binary_message = guarded
                c._tickflow_guarded = True
            return c

        self.exchange.client = client

    def _bad_message(self, client: Any, data: Any, exc: Exception) -> None:
        BAD_ANSWERS.labels(self.exchange_id).inc()
        url = getattr(client, "url", None)
        log.warning("exchange_message_unusable", exchange=self.exchange_id, url=url, error=f"{type(exc).__name__}: {exc}")
        payload = data if isinstance(data, bytes) else str(data).encode()
        letter = BadInput(reason(Reason.UNPARSEABLE, f"{self.exchange_id} socket message from {url}: {type(exc).__name__}: {exc}"), payload)
        task = asyncio.get_running_loop().create_task(self._queue.put(letter))
        self._letters.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._letters.discard)
        client.on_error(ccxt.NetworkError(f"unusable message: {type(exc).__name__}: {exc}"))

    async def _start(self) -> None:
        """Load markets (retrying transient errors), reject unknown symbols, start one task per symbol."""
        if self._tasks:
            return
        await self._retrying(None, self.exchange.load_markets)
        unknown = [s for s in self.symbols if s not in self.exchange.markets]
        if unknown:
            hints = []
            for s in unknown:
                close = difflib.get_close_matches(s, list(self.exchange.markets), n=3)
                hints.append(f"{s!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
            raise ValueError(
                f"{self.exchange_id} has no market {', '.join(hints)}; symbols use ccxt's unified form, e.g. 'BTC/USDT'"
            )
        can_watch = bool(self.exchange.has.get("watchTrades"))
        if self.mode == "ws" and not can_watch:
            raise ValueError(f"{self.exchange_id} has no websocket trades in ccxt; use mode 'rest'")
        run = self._watch if self.mode == "ws" or (self.mode == "auto" and can_watch) else self._poll
        self._tasks = [
            asyncio.create_task(self._guard(run, s), name=f"ccxt:{self.exchange_id}:{s}") for s in self.symbols
        ]

    async def _guard(self, run: Any, symbol: str) -> None:
        """Hand a permanent error (bad symbol, authentication, a bug) to the consumer instead of dying unseen."""
        try:
            await run(symbol)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised in stream()
            log.error("source_failed", exchange=self.exchange_id, symbol=symbol, error=repr(e))
            await self._queue.put(e)

    async def _watch(self, symbol: str) -> None:
        resync = self._seen[symbol].last_ts is not None
        attempt = 0
        pending: asyncio.Future[list[dict[str, Any]]] | None = None
        started = self._epoch
        try:
            while True:
                try:
                    if pending is None:
                        # A socket lost since the previous watch began may have swallowed trades.
                        resync = resync or self._epoch != started
                        started = self._epoch
                        pending = asyncio.ensure_future(self.exchange.watch_trades(symbol))
                        await asyncio.sleep(0)  # the watch registers its future: later trades resolve it
                        await self._flush_cache(symbol)
                    done, _ = await asyncio.wait({pending}, timeout=self.poll_interval)
                    if not done:
                        await self._flush_cache(symbol)
                        if resync:
                            await self._recover(symbol)
                        continue
                    try:
                        delivery = pending.result()
                    except TRANSIENT_ERRORS as e:
                        pending, resync = None, True
                        attempt += 1
                        await self._pause(symbol, e, attempt, count=False)  # the socket hook counted it
                        continue
                    pending = None
                    if resync or len(delivery) >= self._cache_limit:
                        await self._recover(symbol)
                    resync = False
                    attempt = 0
                    await self._emit(symbol, delivery)
                except TRANSIENT_ERRORS as e:
                    resync = True
                    attempt += 1
                    await self._pause(symbol, e, attempt)
        finally:
            if pending is not None:
                pending.cancel()

    async def _flush_cache(self, symbol: str) -> None:
        """Emit trades ccxt received while no watch was waiting: it would hand them out only with
        the next message, which on a quiet market may be long. A cache full of unseen trades may
        have evicted some, so REST fills in first."""
        cache = getattr(self.exchange, "trades", {}).get(symbol) or []
        seen = self._seen[symbol]
        unseen: list[dict[str, Any]] = []
        for raw in reversed(cache):
            tid = raw.get("id")
            if tid is None:
                continue  # not recognisable as seen: left to the next delivery, which returns it once
            if seen.has(str(tid)):
                break
            unseen.append(raw)
        else:
            if len(cache) >= self._cache_limit:
                await self._recover(symbol)
        await self._emit(symbol, unseen[::-1])

    async def _recover(self, symbol: str) -> None:
        """Catch up through REST when there is a last trade to catch up from."""
        if self._seen[symbol].last_ts is not None:
            await self._catch_up(symbol)

    async def _poll(self, symbol: str) -> None:
        attempt = 0
        while True:
            try:
                await self._catch_up(symbol)
                attempt = 0
            except TRANSIENT_ERRORS as e:
                attempt += 1
                await self._pause(symbol, e, attempt)
                continue
            await asyncio.sleep(self.poll_interval)

    async def _catch_up(self, symbol: str) -> None:
        """REST pages from the last trade time until the exchange has nothing newer, each emitted."""
        seen = self._seen[symbol]
        if seen.last_ts is None:
            await self._emit(symbol, await self.exchange.fetch_trades(symbol, limit=self.page_limit))
            return
        since = seen.last_ts
        while True:
            page = await self.exchange.fetch_trades(symbol, since=since, limit=self.page_limit)
            await self._emit(symbol, page)
            top = max((t["timestamp"] for t in page if isinstance(t.get("timestamp"), int)), default=since)
            if len(page) >= self.page_limit:
                if top <= since:
                    log.warning("trades_page_within_one_ms", exchange=self.exchange_id, symbol=symbol, since=since)
                    top = since + 1
                since = top
                continue
            if self._window_ms is None or since + self._window_ms >= self.exchange.milliseconds():
                return
            since = max(since + self._window_ms, top)

    async def _emit(self, symbol: str, raws: list[dict[str, Any]]) -> None:
        trades = []
        now = now_us()
        for raw in self._seen[symbol].fresh(raws):
            parsed = parse_trade(raw, now)
            if isinstance(parsed, str):
                await self._queue.put(BadInput(f"{parsed} ({self.exchange_id} {symbol})", raw_payload(raw)))
            else:
                trades.append(parsed)
        if trades:
            await self._queue.put(TradeBatch(self.exchange_id, symbol, now_us(), trades))

    async def _retrying(self, symbol: str | None, call: Any) -> Any:
        """``await call()``, retrying transient errors without end: a live source outwaits any outage."""

        def retried(attempt: int, delay: float, error: BaseException | None) -> None:
            self._retried(symbol, error, attempt, delay)

        async for attempt in transient_retrying(self.min_backoff, self.max_backoff, retried):
            with attempt:
                return await call()

    async def _pause(self, symbol: str | None, error: Exception, attempt: int, *, count: bool = True) -> None:
        delay = backoff_delay(attempt, self.min_backoff, self.max_backoff)
        self._retried(symbol, error, attempt, delay, count=count)
        await asyncio.sleep(delay)

    def _retried(
        self, symbol: str | None, error: BaseException | None, attempt: int, delay: float, *, count: bool = True
    ) -> None:
        """Log a retry; ``count=False`` when the socket hook already counted the loss."""
        if count:
            RECONNECTS.labels(self.exchange_id).inc()
        if isinstance(error, ccxt.BadResponse):
            BAD_ANSWERS.labels(self.exchange_id).inc()
        log.warning(
            "source_retry", exchange=self.exchange_id, symbol=symbol, attempt=attempt,
            delay_s=round(delay, 3), error=f"{type(error).__name__}: {error}",
        )


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge, ``override`` winning (exchange options are nested per method)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
