"""The gateway's ASGI application: query API, WebSocket rooms, dashboard, health and metrics.

FastAPI (on Starlette, served by uvicorn) rather than bare Starlette: the issue asks for OpenAPI
docs at ``/docs``, which FastAPI derives from the routes' declared parameters, and the request
path costs about the same. Everything here is wiring: parameters and SQL are
:mod:`streams.gateway.query`, rooms :mod:`streams.gateway.rooms`, keys :mod:`streams.gateway.auth`.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import inspect
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import orjson
import redis.asyncio as aioredis
import structlog
from cachetools import TTLCache
from fastapi import FastAPI, Query, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.registry import RECORDS
from streams.gateway import health
from streams.gateway.auth import KeyInfo, KeyStore, RateLimiter
from streams.gateway.cache import QueryCache
from streams.gateway.query import DATASETS, QueryError, Request as QueryRequest, Source, Unavailable, build_sql, parse_request, render, rows_oldest_first, source_of
from streams.gateway.rooms import channel_templates, template_fields
from streams.gateway.store import MissingTable, Store, open_store
from streams.gateway.ws import CLOSE_FLOOD, CLOSE_FORBIDDEN, CLOSE_UNAUTHORIZED, SERVER_SEND, Hub, cancel_all
from streams.settings import Settings

log = structlog.get_logger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
HTTP_SECONDS = Histogram(
    "tickflow_gateway_http_request_duration_seconds", "HTTP request latency, by route and status", ["route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
STORE_SECONDS = Histogram(
    "tickflow_gateway_store_query_seconds", "Store query latency on a cache miss, by dataset", ["dataset"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
_ROUTES = {"/", "/ws", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"}
_API_ROUTES = {*DATASETS, "latest", "series", "health"}


_DATASET_PATHS = {f"/api/v1/{name}": name for name in DATASETS}


class Parsed(NamedTuple):
    """A dataset request's cache key, media type and hot-request spec, by its raw query string."""

    key: str
    media: str
    spec: str


class ApiError(Exception):
    def __init__(self, status: int, message: str, parameter: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.parameter, self.headers = status, parameter, headers or {}


def _error(status: int, message: str, parameter: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    err: dict[str, Any] = {"status": status, "message": message}
    if parameter:
        err["parameter"] = parameter
    return JSONResponse({"error": err}, status_code=status, headers=headers)


def _route_label(path: str) -> str:
    if path in _ROUTES:
        return path
    if path.startswith("/static/"):
        return "/static"
    parts = path.split("/")
    if len(parts) > 3 and path.startswith("/api/v1/") and parts[3] in _API_ROUTES:
        return f"/api/v1/{parts[3]}"
    return "other"


class LatencyMiddleware:
    """Request latency per route as a histogram; plain ASGI, cheaper than BaseHTTPMiddleware."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._children: dict[tuple[str, int], Any] = {}  # labels() per request costs more than the observation

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            key = (_route_label(scope["path"]), status[0])
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = HTTP_SECONDS.labels(key[0], str(key[1]))
            child.observe(time.perf_counter() - t0)


class Gateway:
    """The process's shared state: stores, caches, hub, limits."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store
        self._own_store = store is None
        self.keys = KeyStore(settings.stores.database_url, cache_s=settings.gateway.gateway_key_cache_s) if settings.stores.database_url else None
        self.limiter = RateLimiter(settings.gateway.gateway_rate_limit)
        self.redis = aioredis.Redis.from_url(settings.stores.redis_url) if settings.stores.redis_url else None
        self.cache = QueryCache(self.redis, l1_size=settings.gateway.gateway_cache_size, ttl_s=settings.gateway.gateway_cache_ttl_s, l2_ttl_s=settings.gateway.gateway_l2_ttl_s, enabled=settings.gateway.gateway_cache)
        self.templates = channel_templates(RECORDS.values())
        self.hub = Hub(
            settings.stores.redis_url, self.templates, history=settings.gateway.gateway_ws_history, queue=settings.gateway.gateway_ws_queue,
            max_rooms_per_client=settings.gateway.gateway_ws_max_rooms, room_idle_s=settings.gateway.gateway_ws_room_idle_s, heartbeat_s=settings.gateway.gateway_heartbeat_s,
        )
        self.parsed: dict[tuple[str, bytes], Parsed] = {}  # (dataset, raw query string) -> its request, for cached_answer
        self.known: TTLCache[tuple[str, str], list[str]] = TTLCache(256, ttl=60)
        self.small: TTLCache[str, Any] = TTLCache(1024, ttl=1.0)  # latest snapshots, series, health
        self.http = httpx.AsyncClient(timeout=1.0)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per health scrape otherwise
        self.previous_scrape: health.Scrape | None = None
        self.hot_by_tag: dict[str, list[str]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.store_lag_s = 3.0  # a close reaches Redis before the store sinks commit it: re-invalidate after this
        self._after_pending: set[str] = set()

    async def start(self) -> None:
        if self.store is None:
            self.store = await open_store(self.settings)
        if self.keys is not None:
            await self.keys.open()
        await self.hub.start()
        if self.redis is not None:
            self._tasks.append(asyncio.create_task(self._invalidations(), name="gateway-invalidations"))
            self._tasks.append(asyncio.create_task(self._hot_loop(), name="gateway-hot"))

    async def close(self) -> None:
        await cancel_all(self._tasks)
        await self.hub.close()
        if self.keys is not None:
            await self.keys.close()
        if self.store is not None and self._own_store:
            await self.store.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.http.aclose()

    # auth

    async def authorize(self, token: str | None, scope: str) -> KeyInfo:
        if not token:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer KEY' (WebSocket: ?token=KEY); create one with `tickflow keys create`", headers={"WWW-Authenticate": "Bearer"})
        if self.keys is None:
            raise ApiError(503, "no key store: the gateway needs DATABASE_URL for API keys")
        info = await self.keys.verify(token)
        if info is None:
            raise ApiError(401, "wrong, malformed or revoked API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if scope not in info.scopes:
            raise ApiError(403, f"key {info.name!r} lacks the {scope!r} scope (it has {', '.join(info.scopes)})")
        wait = self.limiter.retry_after(info)
        if wait:
            raise ApiError(429, f"rate limit of key {info.name!r} exceeded; retry after {wait} s", headers={"Retry-After": str(wait)})
        return info

    # queries

    async def dataset(self, name: str, params: dict[str, str], query_string: bytes | None = None) -> tuple[bytes, str]:
        try:
            src = source_of(DATASETS[name], RECORDS.values())
        except Unavailable as exc:
            raise ApiError(503, str(exc)) from None
        try:
            req = parse_request(name, params, src.columns)
        except QueryError as exc:
            raise ApiError(exc.status, str(exc), exc.parameter) from None
        parsed = Parsed(f"{req.cache_key}&format={req.fmt}", "text/csv; charset=utf-8" if req.fmt == "csv" else "application/json", warm_spec(req))
        body = await self.cache.get(parsed.key, self.tag(req), lambda: self._load(src, req))
        self.cache.count_hot(parsed.spec)  # answered requests only: an unknown symbol is never warmed
        if query_string is not None:
            if len(self.parsed) >= 10_000:
                self.parsed.clear()
            self.parsed[(name, query_string)] = parsed
        return body, parsed.media

    def cached_answer(self, scope: dict[str, Any]) -> tuple[bytes, str] | None:
        """A dataset request answered from L1 without FastAPI: the same key check, scope and rate limit,
        on memory only. None (the full path answers) for anything else: a key not checked yet or
        refused, a query string not seen yet, an entry not in L1, a request over its limit."""
        name = _DATASET_PATHS.get(scope["path"])
        if name is None or scope["method"] != "GET" or self.keys is None:
            return None
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if auth is None or auth[:7].lower() != b"bearer ":
            return None
        parsed = self.parsed.get((name, scope["query_string"]))
        if parsed is None:
            return None
        body = self.cache.peek(parsed.key)
        if body is None:
            return None
        _, info = self.keys.cached(auth[7:].strip().decode("latin-1"))
        if info is None or "read" not in info.scopes or self.limiter.retry_after(info):
            return None
        self.cache.hit()
        self.cache.count_hot(parsed.spec)
        return body, parsed.media

    @staticmethod
    def tag(req: QueryRequest) -> str:
        return ":".join([req.dataset, *(req.value(p) or "*" for p in DATASETS[req.dataset].required)])

    async def _load(self, src: Source, req: QueryRequest) -> bytes:
        assert self.store is not None
        sql, params = build_sql(src, req, self.store.dialect)
        t0 = time.perf_counter()
        try:
            columns, rows = await self.store.fetch(sql, params)
        except MissingTable as exc:
            raise ApiError(503, f"{req.dataset}: table {src.table!r} does not exist in the store yet (run `tickflow migrate`): {exc}") from None
        STORE_SECONDS.labels(req.dataset).observe(time.perf_counter() - t0)
        if not rows:
            await self._check_known(src, req)
        body, _ = render(req, columns, rows_oldest_first(columns, rows))
        return body

    async def _check_known(self, src: Source, req: QueryRequest) -> None:
        """An empty result for a value the store has never seen is a 404 naming the parameter."""
        assert self.store is not None
        q = '"{}"' if self.store.dialect == "postgres" else "`{}`"
        for col, value in req.filters:
            known = self.known.get((src.table, col))
            if known is None:
                _, rows = await self.store.fetch(f"SELECT DISTINCT {q.format(col)} FROM {src.table} LIMIT 10000", {})
                known = self.known[(src.table, col)] = sorted(str(r[0]) for r in rows)
            if value not in known:
                close = difflib.get_close_matches(value, known, n=5, cutoff=0.5)
                hint = f"; did you mean {', '.join(close)}?" if close else f"; the store has {len(known)} distinct values"
                raise ApiError(404, f"unknown {col} {value!r} in {src.table}{hint}", col)

    async def latest(self, symbol: str) -> dict[str, Any]:
        if self.redis is None:
            raise ApiError(503, "REDIS_URL is empty: no latest snapshots")
        out: dict[str, list[Any]] = {}
        for kind, template in self.templates.items():
            if "symbol" not in template_fields(template):
                continue
            pattern = "latest:" + template.format(**{f: (symbol if f == "symbol" else "*") for f in template_fields(template)})
            keys = [k async for k in self.redis.scan_iter(match=pattern, count=1000)][:500]
            values = await self.redis.mget(keys) if keys else []
            out[kind] = sorted((orjson.loads(v) for v in values if v), key=lambda d: (d.get("exchange", ""), d.get("interval", "")))
        if not any(out.values()):
            raise ApiError(404, f"no latest values for symbol {symbol!r} (snapshots expire a few intervals after a feed stops)", "symbol")
        return {"symbol": symbol, **out}

    async def series(self) -> list[dict[str, str]]:
        """Every (exchange, symbol, interval) with live snapshots or stored candles: the dashboard's picker."""
        found: set[tuple[str, str, str]] = set()
        if self.redis is not None and "candles" in self.templates:
            fields = template_fields(self.templates["candles"])
            async for k in self.redis.scan_iter(match="latest:" + self.templates["candles"].format(**dict.fromkeys(fields, "*")), count=1000):
                parts = k.decode().split(":")[1 + 1 :]  # after "latest:candles:"
                if len(parts) == len(fields):
                    d = dict(zip(fields, parts, strict=True))
                    found.add((d.get("exchange", ""), d.get("symbol", ""), d.get("interval", "")))
                if len(found) >= 5000:
                    break
        if self.store is not None:
            q = '"{}"' if self.store.dialect == "postgres" else "`{}`"
            with contextlib.suppress(MissingTable):
                _, rows = await self.store.fetch(f"SELECT DISTINCT exchange, symbol, {q.format('interval')} FROM candles LIMIT 5000", {})
                found.update((str(a), str(b), str(c)) for a, b, c in rows)
        return [{"exchange": e, "symbol": s, "interval": i} for e, s, i in sorted(found)]

    async def pipeline_health(self) -> dict[str, object]:
        urls = [u.strip() for u in self.settings.gateway.gateway_pipeline_metrics.split(",") if u.strip()] or health.default_endpoints(self.settings.ops.metrics_port)
        scrape = health.Scrape(time.monotonic())

        async def one(url: str) -> None:
            try:
                r = await self.http.get(url)
                r.raise_for_status()
                health.add_text(scrape, r.text)
                scrape.reached.append(url)
            except (httpx.HTTPError, ValueError):
                scrape.unreachable.append(url)

        await asyncio.gather(*(one(u) for u in urls))
        out = health.summary(scrape, self.previous_scrape if self.previous_scrape and self.previous_scrape.reached == scrape.reached else None)
        self.previous_scrape = scrape
        return out

    # cache upkeep

    async def _invalidations(self) -> None:
        """Listen to the channels of every stored record type; a stored record invalidates its series."""
        assert self.redis is not None
        by_kind = {}
        for rt in RECORDS.values():
            ds = next((d for d in DATASETS.values() if d.table == rt.table), None)
            if rt.channel and ds is not None:
                by_kind[rt.channel.split(":", 1)[0]] = (rt, ds)
        patterns = [rt.channel.format(**dict.fromkeys(template_fields(rt.channel), "*")) for rt, _ in by_kind.values()]
        backoff = 0.5
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as ps:
                    await ps.psubscribe(*patterns)
                    backoff = 0.5
                    async for msg in ps.listen():
                        data = msg["data"]
                        if msg["type"] != "pmessage" or b'"is_final":false' in data:
                            continue  # in-progress candles are not stored: nothing cached changes
                        rt, ds = by_kind[msg["channel"].decode().split(":", 1)[0]]
                        try:
                            doc = orjson.loads(data)
                            tag = ":".join([ds.endpoint, *(str(doc[p]) for p in ds.required)])
                        except (orjson.JSONDecodeError, KeyError, TypeError):
                            continue  # the hub counts and logs non-JSON payloads
                        await self.cache.invalidate(tag)
                        if tag not in self._after_pending:  # one re-invalidation per tag and store lag, however many records came
                            self._after_pending.add(tag)
                            asyncio.get_running_loop().call_later(self.store_lag_s, lambda tag=tag: asyncio.ensure_future(self._after_store(tag)))
            except asyncio.CancelledError:
                raise
            except (aioredis.RedisError, OSError) as exc:
                log.warning("cache invalidation listener lost Redis; entries expire by TTL meanwhile", error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)

    async def _after_store(self, tag: str) -> None:
        """Once the store sinks have written the record: drop what was cached meanwhile, warm the hot requests."""
        self._after_pending.discard(tag)
        await self.cache.invalidate(tag)
        for spec in self.hot_by_tag.get(tag, ()):
            await self.warm(spec)

    async def warm(self, spec: str) -> None:
        try:
            doc = orjson.loads(spec)
            await self.dataset(doc["d"], doc["p"])
        except (ApiError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.info("warming skipped a request", spec=spec, error=str(exc))
        except Exception as exc:  # a store that is down: warming is best effort
            log.warning("warming failed", spec=spec, error=str(exc))

    async def _hot_loop(self) -> None:
        first = True
        while True:
            try:
                await self.cache.flush_hot()
                top = await self.cache.top_hot(self.settings.gateway.gateway_warm_top)
                by_tag: dict[str, list[str]] = {}
                for spec in top:
                    with contextlib.suppress(Exception):
                        doc = orjson.loads(spec)
                        ds = DATASETS[doc["d"]]
                        by_tag.setdefault(":".join([ds.endpoint, *(doc["p"].get(p, "*") for p in ds.required)]), []).append(spec)
                self.hot_by_tag = by_tag
                if first:
                    first = False
                    for spec in top:
                        await self.warm(spec)
                    log.info("cache warmed", requests=len(top))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("hot-request bookkeeping failed", error=str(exc))
            await asyncio.sleep(5.0)


def warm_spec(req: QueryRequest) -> str:
    params: dict[str, str] = dict(req.filters)
    for name in ("start", "end"):
        if getattr(req, name) is not None:
            params[name] = str(getattr(req, name))
    params["limit"] = str(req.limit)
    return orjson.dumps({"d": req.dataset, "p": params}, option=orjson.OPT_SORT_KEYS).decode()


def _token(headers: Any, query: Any = None) -> str | None:
    auth = headers.get("authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return query.get("token") if query is not None else None


class GatewayApp(FastAPI):
    """FastAPI, with the hot path in front: a dataset request whose answer is in L1 gets it from
    :meth:`Gateway.cached_answer` before FastAPI's middleware, routing, parameter validation and
    response classes, which cost several times the rest of such a request."""

    def __init__(self, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state.gateway = self.gateway = gateway
        self._seconds = {path: HTTP_SECONDS.labels(path, "200") for path in _DATASET_PATHS}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            scope[SERVER_SEND] = send  # the hub writes frames to the connection itself (streams.gateway.ws)
        elif scope["type"] == "http":
            t0 = time.perf_counter()
            hit = self.gateway.cached_answer(scope)
            if hit is not None:
                body, media = hit
                await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body)), (b"content-type", media.encode())]})
                await send({"type": "http.response.body", "body": body})
                self._seconds[scope["path"]].observe(time.perf_counter() - t0)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, store: Store | None = None) -> FastAPI:
    gw = Gateway(settings, store)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.close()

    app = GatewayApp(
        gw,
        title="tickflow gateway",
        version="1",
        description="Candles, indicators, on-chain, sentiment and signals: the query API (`/api/v1`), WebSocket rooms (`/ws`) and the dashboard (`/`). "
        "Every `/api/v1` request needs `Authorization: Bearer KEY` (`tickflow keys create`).",
        lifespan=lifespan,
    )
    app.add_middleware(LatencyMiddleware)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, str(exc), exc.parameter, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        """Readiness: the store, Redis and the key store answer."""
        checks: dict[str, str] = {}
        probes = {"store": gw.store.ping() if gw.store else None, "redis": gw.hub.ping()}
        for name, probe in probes.items():
            try:
                if probe is None:
                    raise RuntimeError("not configured")
                await asyncio.wait_for(probe, 2.0)
                checks[name] = "ok"
            except Exception as exc:
                checks[name] = f"failed: {exc}"
        if gw.keys is None:
            checks["keys"] = "failed: DATABASE_URL is empty"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"], include_in_schema=True)
    async def metrics() -> Response:
        """Prometheus metrics of this gateway process."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def described(**extra: str) -> dict[str, Any]:
        base = {
            "start": "Inclusive start: epoch ms or ISO-8601 (UTC unless stated)",
            "end": "Exclusive end: epoch ms or ISO-8601",
            "limit": "Most recent rows of the range, 1-10000 (default 500)",
            "format": "json (default) or csv",
            **extra,
        }
        return {k: Query(None, description=v) for k, v in base.items()}

    async def answer(request: Request, name: str) -> Response:
        await gw.authorize(_token(request.headers), "read")
        body, media = await gw.dataset(name, dict(request.query_params), request.scope["query_string"])
        return Response(body, media_type=media)

    market = {"symbol": "Symbol as stored, e.g. BTCUSDT or BTC/USDT", "interval": "1m, 5m, 1h, 1d, ...", "exchange": "Only this exchange (default: every exchange)"}

    def add_dataset_route(name: str, doc: str, params: dict[str, str]) -> None:
        queries = described(**params)

        async def endpoint(request: Request, **_: Any) -> Response:
            return await answer(request, name)

        endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
            + [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v, annotation=str | None) for k, v in queries.items()]
        )
        app.add_api_route(f"/api/v1/{name}", endpoint, methods=["GET"], summary=doc, tags=["query"], response_class=Response)

    add_dataset_route("candles", "Final candles of one symbol and interval, oldest first", market)
    add_dataset_route("indicators", "Indicators of one symbol and interval, oldest first", market)
    add_dataset_route("onchain", "On-chain metrics of one asset", {"asset": "Asset, e.g. BTC", "chain": "Chain", "metric": "Metric name"})
    add_dataset_route("sentiment", "Sentiment aggregates of one asset", {"asset": "Asset, e.g. BTC", "source": "Source"})
    add_dataset_route("signals", "Signals of one symbol", {"symbol": "Symbol", "exchange": "Exchange", "interval": "Interval", "strategy": "Strategy"})

    @app.get("/api/v1/latest/{symbol:path}", tags=["query"])
    async def latest(symbol: str, request: Request) -> JSONResponse:
        """The newest candle (in progress included) and indicators of every exchange and interval of a symbol, from Redis."""
        await gw.authorize(_token(request.headers), "read")
        hit = gw.small.get(f"latest:{symbol}")
        if hit is None:
            hit = gw.small[f"latest:{symbol}"] = await gw.latest(symbol)
        return JSONResponse(hit)

    @app.get("/api/v1/series", tags=["query"])
    async def series(request: Request) -> JSONResponse:
        """Every (exchange, symbol, interval) live on Redis or stored: what the dashboard offers."""
        await gw.authorize(_token(request.headers), "read")
        hit = gw.small.get("series")
        if hit is None:
            hit = gw.small["series"] = await gw.series()
        return JSONResponse({"series": hit})

    @app.get("/api/v1/health", tags=["query"])
    async def pipeline_health(request: Request) -> JSONResponse:
        """The pipeline's input rate, sink lag and dead letters, from its Prometheus endpoints."""
        await gw.authorize(_token(request.headers), "read")
        hit = gw.small.get("health")
        if hit is None:
            hit = gw.small["health"] = await gw.pipeline_health()
        return JSONResponse(hit)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            await gw.authorize(_token(websocket.headers, websocket.query_params), "stream")
        except ApiError as exc:
            code = {401: CLOSE_UNAUTHORIZED, 403: CLOSE_FORBIDDEN, 429: CLOSE_FLOOD}.get(exc.status, 1011)
            await websocket.close(code, str(exc)[:120])
            return
        await gw.hub.serve(websocket)

    return app
