"""A local Binance spot that plays recorded exchange payloads, so ccxt can be tested without internet.

It serves what ccxt's ``binance`` needs for markets, trades and candles (``exchangeInfo``,
``aggTrades``, ``klines``, ``time``, ``ping``) and the raw websocket endpoint where ccxt.pro
subscribes to ``<symbol>@aggTrade``. Trades "happen" when a test calls :meth:`FakeBinance.publish`:
from then on REST returns them, and subscribed sockets get them pushed, unless the fake was told
to drop its sockets, in which case they exist only in REST, as on a real exchange during a
disconnect. It can also misbehave as exchanges do: error statuses, malformed JSON, a body or a
websocket frame cut off mid-message. The payloads come from ../shared/data (real Binance REST aggTrades and websocket
trade events), only re-timed so that they look recent.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
XRPETH_TRADES = DATA / "freqtrade_binance_xrpeth" / "XRP_ETH-trades-ccxt-full.json"
XRPETH_1M = DATA / "freqtrade_binance_xrpeth" / "XRP_ETH-1m.json"
BTCUSDT_STREAM = DATA / "binance_raw_streams" / "spot_btcusdt_20240808.jsonl.gz"

HOUR_MS = 3_600_000
MINUTE_MS = 60_000


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} absent (real Binance data from ../shared/data)")
    return path


def xrpeth_agg_trades() -> list[dict[str, Any]]:
    """Binance's raw REST aggTrades objects for XRPETH, as ccxt kept them in ``info``."""
    return [t["info"] for t in json.loads(require(XRPETH_TRADES).read_text())]


def btcusdt_agg_trades(limit: int) -> list[dict[str, Any]]:
    """The first recorded BTCUSDT websocket trades, aggregated the way Binance builds aggTrades.

    Binance merges consecutive fills of one taker order at one price; consecutive trades with the
    same time, price and maker side are exactly those fills.
    """
    out: list[dict[str, Any]] = []
    with gzip.open(require(BTCUSDT_STREAM), "rt") as f:
        messages = (json.loads(line.split(" ", 1)[1]) for line in f)
        trades = (m["data"] for m in messages if m.get("data", {}).get("e") == "trade")
        for _, group in itertools.groupby(trades, key=lambda e: (e["T"], e["p"], e["m"])):
            fills = list(group)
            qty = sum((Decimal(e["q"]) for e in fills), Decimal(0))
            first = fills[0]
            out.append(
                {
                    "a": first["t"],
                    "p": first["p"],
                    "q": f"{qty:.8f}",
                    "f": first["t"],
                    "l": fills[-1]["t"],
                    "T": first["T"],
                    "m": first["m"],
                    "M": True,
                }
            )
            if len(out) == limit:
                break
    return out


def retime(trades: list[dict[str, Any]], last_at_ms: int | None = None) -> list[dict[str, Any]]:
    """Shift trade times so the last one is at ``last_at_ms`` (now by default), keeping the gaps."""
    shift = (last_at_ms or int(time.time() * 1000)) - trades[-1]["T"]
    return [{**t, "T": t["T"] + shift} for t in trades]


def xrpeth_klines_1m() -> list[list[Any]]:
    """Binance ``/api/v3/klines`` rows for XRPETH 1m, the quote volume, trade count and taker
    volumes computed from the recorded aggTrades of the same minutes (their volumes agree)."""
    extra: dict[int, list[Decimal | int]] = defaultdict(lambda: [Decimal(0), 0, Decimal(0), Decimal(0)])
    for t in xrpeth_agg_trades():
        price, qty = Decimal(t["p"]), Decimal(t["q"])
        acc = extra[t["T"] // MINUTE_MS * MINUTE_MS]
        acc[0] += price * qty
        acc[1] += t["l"] - t["f"] + 1
        if not t["m"]:
            acc[2] += qty
            acc[3] += price * qty
    rows = []
    for ts, o, h, low, c, v in json.loads(require(XRPETH_1M).read_text()):
        quote, count, taker_base, taker_quote = extra[ts]
        rows.append(
            [ts, f"{o:.8f}", f"{h:.8f}", f"{low:.8f}", f"{c:.8f}", f"{v:.8f}", ts + MINUTE_MS - 1,
             f"{quote:.8f}", count, f"{taker_base:.8f}", f"{taker_quote:.8f}", "0"]
        )
    return rows


def _symbol_info(symbol: str, base: str, quote: str, tick: str, step: str) -> dict[str, Any]:
    """One ``exchangeInfo`` symbol in the shape Binance spot returns it."""
    return {
        "symbol": symbol,
        "status": "TRADING",
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": True,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000.00000000", "tickSize": tick},
            {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "9000.00000000", "stepSize": step},
            {"filterType": "ICEBERG_PARTS", "limit": 10},
            {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": "100.00000000",
             "stepSize": "0.00000000"},
            {"filterType": "TRAILING_DELTA", "minTrailingAboveDelta": 10, "maxTrailingAboveDelta": 2000,
             "minTrailingBelowDelta": 10, "maxTrailingBelowDelta": 2000},
            {"filterType": "PERCENT_PRICE_BY_SIDE", "bidMultiplierUp": "5", "bidMultiplierDown": "0.2",
             "askMultiplierUp": "5", "askMultiplierDown": "0.2", "avgPriceMins": 5},
            {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
             "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
        ],
        "permissions": [],
        "permissionSets": [["SPOT", "MARGIN"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


SYMBOLS = [
    _symbol_info("BTCUSDT", "BTC", "USDT", "0.01000000", "0.00001000"),
    _symbol_info("ETHUSDT", "ETH", "USDT", "0.01000000", "0.00010000"),
    _symbol_info("XRPETH", "XRP", "ETH", "0.00000001", "1.00000000"),
]


def _error(status: int, code: int, msg: str) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=status)


@dataclass
class FakeBinance:
    """Recorded trades per Binance symbol id wait in ``pending`` until published.

    ``klines`` maps (symbol id, interval) to Binance kline rows.
    """

    pending: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    klines: dict[tuple[str, str], list[list[Any]]] = field(default_factory=dict)
    published: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    ws_connections: int = 0
    pushed: int = 0
    _failures: dict[str, list[int | str]] = field(default_factory=lambda: defaultdict(list))
    _sockets: dict[web.WebSocketResponse, set[str]] = field(default_factory=dict)
    _drop_after: int | None = None
    _runner: web.AppRunner | None = None
    port: int = 0

    async def __aenter__(self) -> FakeBinance:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/api/v3/ping", self._ping)
        app.router.add_get("/api/v3/time", self._time)
        app.router.add_get("/api/v3/exchangeInfo", self._exchange_info)
        app.router.add_get("/api/v3/aggTrades", self._agg_trades)
        app.router.add_get("/api/v3/klines", self._klines)
        app.router.add_get("/stream/ws/{stream}", self._ws)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.drop_sockets()
        assert self._runner is not None
        await self._runner.cleanup()

    def url_overrides(self) -> dict[str, Any]:
        """``exchange.urls`` entries pointing ccxt at the fake.

        The socket path starts with ``/stream`` because ccxt.pro tells spot sockets from futures
        ones by that substring (the real host is ``stream.binance.com``).
        """
        return {
            "api": {
                "public": f"http://127.0.0.1:{self.port}/api/v3",
                "ws": {"spot": f"ws://127.0.0.1:{self.port}/stream/ws"},
            }
        }

    def fail_next(self, path: str, status: int = 429, times: int = 1) -> None:
        """Answer the next ``times`` requests to ``path`` with ``status``: 429 Binance's rate limit,
        500 its internal error (JSON), other statuses an HTML page as a load balancer sends."""
        self._failures[path].extend([status] * times)

    def garble_next(self, path: str, how: str, times: int = 1) -> None:
        """Answer the next ``times`` requests to ``path`` badly: ``"json"`` a 200 whose body is not
        JSON, ``"cut"`` a 200 that announces its whole body, sends half and closes the connection."""
        assert how in ("json", "cut")
        self._failures[path].extend([how] * times)

    async def push_raw(self, symbol: str, text: str) -> None:
        """Push ``text`` as it is (malformed JSON, say) to the sockets subscribed to ``symbol``."""
        stream = f"{symbol.lower()}@aggTrade"
        for ws, streams in list(self._sockets.items()):
            if stream in streams and not ws.closed:
                await ws.send_str(text)

    async def cut_sockets_mid_frame(self) -> None:
        """Start a 1,000-byte text frame on every socket, send 10 bytes of it and drop the TCP
        connection: a disconnect in the middle of a message."""
        sockets = list(self._sockets)
        self._sockets.clear()
        for ws in sockets:
            transport = ws._req.transport if ws._req is not None else None  # noqa: SLF001 - below the websocket API on purpose
            if transport is not None:
                transport.write(bytes([0x81, 126]) + (1000).to_bytes(2, "big") + b'{"e":"aggT')
                transport.abort()

    def drop_sockets_after(self, messages: int) -> None:
        """Close every socket once this many more trade messages have been pushed."""
        self._drop_after = messages

    async def drop_sockets(self) -> None:
        sockets = list(self._sockets)
        self._sockets.clear()
        for ws in sockets:
            await ws.close()

    async def publish(self, symbol: str, n: int = 1) -> list[dict[str, Any]]:
        """Make the next ``n`` recorded trades of ``symbol`` happen: visible in REST, pushed to subscribers."""
        batch, self.pending[symbol] = self.pending[symbol][:n], self.pending[symbol][n:]
        stream = f"{symbol.lower()}@aggTrade"
        for trade in batch:
            self.published[symbol].append(trade)
            message = json.dumps({"e": "aggTrade", "E": trade.get("T"), "s": symbol, **trade})
            for ws, streams in list(self._sockets.items()):
                if stream in streams and not ws.closed:
                    await ws.send_str(message)
                    self.pushed += 1
                    if self._drop_after is not None:
                        self._drop_after -= 1
                        if self._drop_after <= 0:
                            self._drop_after = None
                            await self.drop_sockets()
        return batch

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.query)))
        failures = self._failures.get(request.path)
        if failures:
            failure = failures.pop(0)
            if failure == "json":
                return web.Response(status=200, text='[{"a": 1, "p": "0.1", ', content_type="application/json")
            if failure == "cut":
                body = b'[{"a": 1, "p": "0.00012", "q": "5.0", "f": 1, "l": 1, "T": 1, "m": true, "M": true}]' * 20
                response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
                response.content_length = len(body)
                await response.prepare(request)
                await response.write(body[: len(body) // 2])
                assert request.transport is not None
                request.transport.abort()
                return response
            if failure == 429:
                return _error(429, -1003, "Too many requests; current limit of IP(127.0.0.1) is 6000 requests per "
                              "minute. Please use WebSocket Streams for live updates to avoid polling the API.")
            if failure == 500:
                return _error(500, -1001, "Internal error; unable to process your request. Please try again.")
            # What a load balancer in front of the exchange answers: no JSON at all.
            return web.Response(status=int(failure), text=f"<html><body><h1>{failure} Service Unavailable</h1></body></html>", content_type="text/html")
        try:
            return await handler(request)
        except web.HTTPNotFound:
            self.not_found.append(request.path_qs)
            raise

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": int(time.time() * 1000)})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "timezone": "UTC",
                "serverTime": int(time.time() * 1000),
                "rateLimits": [
                    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
                    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                    {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
                    {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
                ],
                "exchangeFilters": [],
                "symbols": SYMBOLS,
            }
        )

    async def _agg_trades(self, request: web.Request) -> web.Response:
        """Binance's rules: ``fromId`` wins; a time range spans at most an hour; otherwise the latest."""
        q = request.query
        symbol = q.get("symbol", "")
        if symbol not in {s["symbol"] for s in SYMBOLS}:
            return _error(400, -1121, "Invalid symbol.")
        limit = min(int(q.get("limit", 500)), 1000)
        trades = self.published[symbol]
        if "fromId" in q:
            rows = [t for t in trades if t["a"] >= int(q["fromId"])]
        elif "startTime" in q or "endTime" in q:
            start = int(q.get("startTime", int(q.get("endTime", 0)) - HOUR_MS))
            end = int(q.get("endTime", start + HOUR_MS))
            if end - start > HOUR_MS:
                return _error(400, -1127, "More than 1 hours between startTime and endTime.")
            rows = [t for t in trades if isinstance(t.get("T"), int) and start <= t["T"] <= end]
        else:
            rows = trades[-limit:]
        return web.json_response(rows[:limit])

    async def _klines(self, request: web.Request) -> web.Response:
        q = request.query
        rows = self.klines.get((q.get("symbol", ""), q.get("interval", "")))
        if rows is None:
            return _error(400, -1121, "Invalid symbol.")
        limit = min(int(q.get("limit", 500)), 1000)
        if "startTime" in q:
            start, end = int(q["startTime"]), int(q.get("endTime", 2**62))
            return web.json_response([r for r in rows if start <= r[0] <= end][:limit])
        end = int(q.get("endTime", 2**62))
        return web.json_response([r for r in rows if r[0] <= end][-limit:])

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws_connections += 1
        self._sockets[ws] = set()
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            command = json.loads(msg.data)
            streams = self._sockets.get(ws)
            if streams is None:
                break
            if command.get("method") == "SUBSCRIBE":
                streams.update(command.get("params", []))
            elif command.get("method") == "UNSUBSCRIBE":
                streams.difference_update(command.get("params", []))
            await ws.send_json({"result": None, "id": command.get("id")})
        self._sockets.pop(ws, None)
        return ws


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until true; tests use it to wait for the fake to see a subscriber."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)
