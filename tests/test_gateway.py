"""The gateway against real PostgreSQL and Redis: keys, limits, the query API and its cache, WebSocket rooms."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import io
import os
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import orjson
import psycopg
import pytest
import redis
import websockets
from typer.testing import CliRunner

from sinks.base import SinkBatch
from sinks.postgres import PostgresSink
from sinks.redis import RedisSink, candle_json
from streams.gateway.auth import KeyStore
from streams.settings import Settings
from tests.gateway_util import REDIS_URL, T0, candles, indicators_of, pg_database, running_gateway

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with pg_database() as url:
        yield url


@pytest.fixture(scope="module")
def exchange() -> str:
    return f"gx{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def symbol() -> str:
    return f"T{uuid.uuid4().hex[:6].upper()}USDT"


@pytest.fixture(scope="module")
def stored(pg_url: str, exchange: str, symbol: str) -> list:
    cs = candles(exchange, symbol, 30) + candles(exchange, symbol, 6, "5m")
    sink = PostgresSink(pg_url)
    try:
        sink.write(SinkBatch(candle=cs, indicators=indicators_of(cs[:30])))
    finally:
        sink.close()
    return cs


@pytest.fixture(scope="module")
def settings(pg_url: str) -> Settings:
    return Settings(
        database_url=pg_url, redis_url=REDIS_URL, metrics_port=0, gateway_rate_limit=1000, gateway_ws_queue=50,
        gateway_ws_history=5, gateway_heartbeat_s=0.5, gateway_pipeline_metrics="http://127.0.0.1:1/metrics",
    )


@pytest.fixture(scope="module")
def keys(pg_url: str) -> dict[str, str]:
    store = KeyStore(pg_url)
    return {
        "all": store.create("all", ("read", "stream")),
        "read": store.create("readonly", ("read",)),
        "slow": store.create("limited", ("read",), rate_limit=1.0),
    }


@pytest.fixture(scope="module")
def gateway(settings: Settings, stored: list, keys: dict[str, str]) -> Iterator[str]:
    with running_gateway(settings) as base:
        yield base


def get(base: str, path: str, key: str | None, **params: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"http://{base}{path}", params=params, headers=headers, timeout=10)


def test_open_endpoints_and_metrics(gateway: str) -> None:
    assert get(gateway, "/healthz", None).json() == {"status": "ok"}
    ready = get(gateway, "/readyz", None)
    assert ready.status_code == 200, ready.text
    assert "/api/v1/candles" in get(gateway, "/openapi.json", None).json()["paths"]
    metrics = get(gateway, "/metrics", None).text
    for name in ("tickflow_gateway_ws_clients", "tickflow_gateway_ws_dropped_total", "tickflow_gateway_cache_requests_total", "tickflow_gateway_http_request_duration_seconds"):
        assert name in metrics


def test_keys_are_required_and_checked(gateway: str, keys: dict[str, str], symbol: str) -> None:
    r = get(gateway, "/api/v1/candles", None, symbol=symbol, interval="1m")
    assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
    wrong = keys["all"][:-4] + "AAAA"
    assert get(gateway, "/api/v1/candles", wrong, symbol=symbol, interval="1m").status_code == 401
    assert get(gateway, "/api/v1/candles", "not-a-key", symbol=symbol, interval="1m").status_code == 401


def test_rate_limit_answers_429_with_retry_after(gateway: str, keys: dict[str, str], symbol: str) -> None:
    codes = [get(gateway, "/api/v1/candles", keys["slow"], symbol=symbol, interval="1m") for _ in range(4)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited, [r.status_code for r in codes]
    assert int(limited[0].headers["Retry-After"]) >= 1


def test_candles_equal_the_store(gateway: str, keys: dict[str, str], exchange: str, symbol: str, pg_url: str) -> None:
    r = get(gateway, "/api/v1/candles", keys["all"], symbol=symbol, interval="1m", limit="10")
    assert r.status_code == 200, r.text
    got = r.json()["rows"]
    with psycopg.connect(pg_url) as conn:
        cur = conn.execute(
            'SELECT * FROM candles WHERE symbol = %s AND "interval" = %s ORDER BY open_time DESC LIMIT 10', (symbol, "1m")
        )
        cols = [d.name for d in cur.description]
        want = [dict(zip(cols, row, strict=True)) for row in reversed(cur.fetchall())]
    assert len(got) == 10 and [g["open_time"] for g in got] == [int(w["open_time"].timestamp() * 1000) for w in want]
    for g, w in zip(got, want, strict=True):
        for col in cols:
            if col in ("open_time", "close_time"):
                assert g[col] == int(w[col].timestamp() * 1000)
            else:
                assert g[col] == w[col], col
    # a range: start inclusive, end exclusive, ISO or ms
    r = get(gateway, "/api/v1/candles", keys["all"], symbol=symbol, interval="1m", start="2023-11-14T22:15:00Z", end=str(T0 + 5 * 60_000))
    assert [row["open_time"] for row in r.json()["rows"]] == [T0 + i * 60_000 for i in range(1, 5)]
    csv_rows = list(csv.reader(io.StringIO(get(gateway, "/api/v1/candles", keys["all"], symbol=symbol, interval="5m", format="csv").text)))
    assert csv_rows[0][:4] == ["exchange", "symbol", "interval", "open_time"] and len(csv_rows) == 7
    ind = get(gateway, "/api/v1/indicators", keys["all"], symbol=symbol, interval="1m", exchange=exchange, limit="3").json()["rows"]
    assert [row["rsi"] for row in ind] == [77.0, 78.0, 79.0]


@pytest.mark.parametrize(
    ("params", "parameter", "status"),
    [
        ({"interval": "1m"}, "symbol", 400),
        ({"symbol": "NOPE", "interval": "1m"}, "symbol", 404),
        ({"interval": "7q"}, "interval", 400),
        ({"start": "2024-01-02", "end": "2024-01-01"}, "start", 400),
        ({"start": "yesterday"}, "start", 400),
        ({"limit": "100000"}, "limit", 400),
        ({"limit": "-3"}, "limit", 400),
        ({"format": "xml"}, "format", 400),
        ({"colour": "red"}, "colour", 400),
        ({"symbol": "x' OR 1=1 --"}, "symbol", 400),
    ],
)
def test_bad_parameters_are_named(gateway: str, keys: dict[str, str], symbol: str, params: dict, parameter: str, status: int) -> None:
    full = {"symbol": symbol, "interval": "1m", **params}
    if "symbol" not in params and parameter == "symbol":
        del full["symbol"]
    r = get(gateway, "/api/v1/candles", keys["all"], **full)
    assert r.status_code == status, r.text
    assert r.json()["error"]["parameter"] == parameter


def test_datasets_without_a_table_say_so(gateway: str, keys: dict[str, str]) -> None:
    for path, params in (("/api/v1/onchain", {"asset": "BTC"}), ("/api/v1/sentiment", {"asset": "BTC"}), ("/api/v1/signals", {"symbol": "BTCUSDT"})):
        r = get(gateway, path, keys["all"], **params)
        assert r.status_code in (404, 503), r.text
        assert "onchain_metrics" in r.text or "sentiment_aggregates" in r.text or "signals" in r.text


def test_scopes(gateway: str, keys: dict[str, str]) -> None:
    async def go() -> tuple[int, str]:
        async with websockets.connect(f"ws://{gateway}/ws?token={keys['read']}") as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            return closed.value.rcvd.code, closed.value.rcvd.reason

    code, reason = asyncio.run(go())
    assert code == 4403 and "stream" in reason


def test_cache_hits_and_a_closed_candle_invalidates(gateway: str, keys: dict[str, str], exchange: str, symbol: str, pg_url: str) -> None:
    from streams.gateway.cache import CACHE_REQUESTS

    def hits() -> float:
        return CACHE_REQUESTS.labels("l1", "hit")._value.get()

    params = {"symbol": symbol, "interval": "1m", "limit": "2"}
    first = get(gateway, "/api/v1/candles", keys["all"], **params).json()["rows"]
    before = hits()
    assert get(gateway, "/api/v1/candles", keys["all"], **params).json()["rows"] == first
    assert hits() == before + 1
    # a new final candle: stored, then published as the Redis sink does; the next answer includes it
    new = candles(exchange, symbol, 31)[-1]
    sink = PostgresSink(pg_url)
    sink.write(SinkBatch(candle=[new]))
    sink.close()
    rs = RedisSink(REDIS_URL)
    rs.write(SinkBatch(candle=[new]))
    rs.close()
    for _ in range(100):
        rows = get(gateway, "/api/v1/candles", keys["all"], **params).json()["rows"]
        if rows[-1]["open_time"] == new.open_time:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert rows[-1]["open_time"] == new.open_time


def test_a_cached_answer_still_checks_the_key_its_scope_and_its_limit(gateway: str, keys: dict[str, str], symbol: str, pg_url: str) -> None:
    """Answers from L1 skip FastAPI, not the checks: the same URL, once cached, with other keys."""
    from streams.gateway.cache import CACHE_REQUESTS

    params = {"symbol": symbol, "interval": "5m", "limit": "3"}  # 5m: no other test closes a candle of it (which would empty L1)
    assert get(gateway, "/api/v1/candles", keys["all"], **params).status_code == 200  # now in L1
    hits = CACHE_REQUESTS.labels("l1", "hit")._value.get()
    store = KeyStore(pg_url)
    stream_only, one = store.create("streamonly", ("stream",)), store.create("one", ("read",), rate_limit=0.01)  # one request per 100 s
    assert get(gateway, "/api/v1/candles", None, **params).status_code == 401
    assert get(gateway, "/api/v1/candles", keys["all"][:-4] + "AAAA", **params).status_code == 401
    assert get(gateway, "/api/v1/candles", stream_only, **params).status_code == 403
    assert [get(gateway, "/api/v1/candles", one, **params).status_code for _ in range(3)] == [200, 429, 429]
    assert CACHE_REQUESTS.labels("l1", "hit")._value.get() == hits + 1  # only the answered one


def test_latest_and_series(gateway: str, keys: dict[str, str], exchange: str, symbol: str) -> None:
    live = candles(exchange, symbol, 40)[-1]
    live.is_final = False
    rs = RedisSink(REDIS_URL)
    rs.write(SinkBatch(candle=[live]))
    rs.close()
    body = get(gateway, f"/api/v1/latest/{symbol}", keys["all"]).json()
    assert body["candles"][0]["open_time"] == live.open_time and body["candles"][0]["is_final"] is False
    assert get(gateway, "/api/v1/latest/NOSUCHSYMBOL", keys["all"]).json()["error"]["parameter"] == "symbol"
    series = get(gateway, "/api/v1/series", keys["all"]).json()["series"]
    assert {"exchange": exchange, "symbol": symbol, "interval": "5m"} in series


async def _recv_type(ws, kind: str, timeout: float = 5.0) -> dict:  # noqa: ANN001
    while True:
        m = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
        if m["type"] == kind:
            return m


def test_websocket_rooms_sequences_and_recovery(gateway: str, keys: dict[str, str], exchange: str, symbol: str) -> None:
    from streams.gateway.ws import WS_SENT

    written = WS_SENT.labels("written")._value.get()
    r = redis.Redis.from_url(REDIS_URL)
    channel = f"candles:{exchange}:{symbol}:1m"
    cs = candles(exchange, symbol, 12)

    async def go() -> None:
        url = f"ws://{gateway}/ws?token={keys['all']}"
        async with websockets.connect(url) as a, websockets.connect(url, additional_headers={"Authorization": f"Bearer {keys['all']}"}) as b:
            await a.send(orjson.dumps({"op": "subscribe", "room": f"candles:{symbol}:1m", "id": 1}))
            ack = await _recv_type(a, "subscribed")
            assert ack["id"] == 1 and ack["seq"] == 0
            await b.send(orjson.dumps({"op": "subscribe", "rooms": [f"candles:{exchange}:{symbol}:*", "candles:NOPE:1m"]}))
            await _recv_type(b, "subscribed")
            for c in cs[:3]:
                r.publish(channel, candle_json(c))
            got = [await _recv_type(a, "message") for _ in range(3)]
            assert [m["seq"] for m in got] == [1, 2, 3]
            assert [m["data"]["open_time"] for m in got] == [c.open_time for c in cs[:3]]
            assert got[0]["channel"] == channel
            assert (await _recv_type(b, "message"))["room"] == f"candles:{exchange}:{symbol}:*"
            assert (await _recv_type(a, "heartbeat", 3))["ts"] > 0
            epoch = ack["epoch"]
        # a's room stays with its history while idle; more messages arrive meanwhile
        async with websockets.connect(url) as c:
            await c.send(orjson.dumps({"op": "subscribe", "room": "candles:ZZZ:1m"}))  # keeps the connection busy with something else
            for cd in cs[3:6]:
                r.publish(channel, candle_json(cd))
            await asyncio.sleep(0.3)
        async with websockets.connect(url) as a:
            await a.send(orjson.dumps({"op": "subscribe", "room": f"candles:{symbol}:1m", "since": 3, "epoch": epoch}))
            ack = await _recv_type(a, "subscribed")
            assert ack["recovered"] is True and ack["seq"] == 6
            assert [(await _recv_type(a, "message"))["seq"] for _ in range(3)] == [4, 5, 6]
            # the buffer holds 5 messages: since=0 is too old; a wrong epoch too
            await a.send(orjson.dumps({"op": "unsubscribe", "room": f"candles:{symbol}:1m", "id": 9}))
            assert (await _recv_type(a, "unsubscribed"))["id"] == 9
            await a.send(orjson.dumps({"op": "subscribe", "room": f"candles:{symbol}:1m", "since": 0, "epoch": epoch}))
            ack = await _recv_type(a, "subscribed")
            assert ack["recovered"] is False and "too old" in ack["gap"]
            await a.send(orjson.dumps({"op": "unsubscribe", "room": f"candles:{symbol}:1m"}))
            await _recv_type(a, "unsubscribed")
            await a.send(orjson.dumps({"op": "subscribe", "room": f"candles:{symbol}:1m", "since": 5, "epoch": "other"}))
            assert (await _recv_type(a, "subscribed"))["recovered"] is False

    asyncio.run(go())
    # the frames went straight to uvicorn's transport, encoded once per room, not through the ASGI send
    assert WS_SENT.labels("written")._value.get() >= written + 4


def test_bad_websocket_input_gets_clear_errors_and_the_gateway_stays_up(gateway: str, keys: dict[str, str], exchange: str, symbol: str) -> None:
    r = redis.Redis.from_url(REDIS_URL)

    async def go() -> None:
        url = f"ws://{gateway}/ws?token={keys['all']}"
        async with websockets.connect(url) as ws:
            await _recv_type(ws, "welcome")
            for frame, code in (
                (b"not json", "bad_json"), (b"[1,2]", "bad_message"), (b'{"op":"dance"}', "bad_op"),
                (b'{"op":"subscribe"}', "bad_message"), (b'{"op":"subscribe","room":"trades:X"}', "bad_room"),
                (b'{"op":"subscribe","room":"candles:a:b:c:d:e"}', "bad_room"), (b'{"op":"subscribe","room":"candles:\\"x:1m"}', "bad_room"),
                (b'{"op":"subscribe","room":"onchain:BTC:1m"}', "bad_room"), (b'{"op":"unsubscribe","room":"candles:Q:1m"}', "not_subscribed"),
                (orjson.dumps({"op": "subscribe", "room": "x" * 5000}), "too_large"),
            ):
                await ws.send(frame)
                err = await _recv_type(ws, "error")
                assert err["code"] == code and err["message"], (frame, err)
            # thousands of subscribes from one client: capped per connection, then the flood closes it
            await ws.send(orjson.dumps({"op": "subscribe", "rooms": [f"candles:S{i}:1m" for i in range(51)]}))
            assert (await _recv_type(ws, "error"))["code"] == "too_many_rooms"
            answers: list[str] = []
            for burst in range(3):
                await ws.send(orjson.dumps({"op": "subscribe", "rooms": [f"candles:B{burst}x{i}:1m" for i in range(50)]}))
                while len(answers) < 50 * (burst + 1):
                    m = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                    if m["type"] in ("subscribed", "error"):
                        answers.append(m.get("code", m["type"]))
            assert answers.count("subscribed") == 100 and answers.count("too_many_rooms") == 50
            # a client flooding messages (read as they come, so its queue never fills) is closed with 4429
            reader = asyncio.create_task(_recv_type(ws, "never", 10))
            with contextlib.suppress(websockets.ConnectionClosed):
                for _ in range(1000):
                    await ws.send(b'{"op":"ping"}')
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await reader
            assert closed.value.rcvd.code == 4429 and "messages/s" in closed.value.rcvd.reason
            # oversized frames are refused by the server
        async with websockets.connect(url) as ws:
            await ws.send(b"x" * 100_000)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(_recv_type(ws, "never"), 5)
            assert closed.value.rcvd.code == 1009
        # a non-JSON payload on a channel is counted, not forwarded; the next one still is
        async with websockets.connect(url) as ws:
            await ws.send(orjson.dumps({"op": "subscribe", "room": f"candles:{symbol}:15m"}))
            await _recv_type(ws, "subscribed")
            r.publish(f"candles:{exchange}:{symbol}:15m", b"\xff garbage")
            r.publish(f"candles:{exchange}:{symbol}:15m", b'{"ok": 1}')
            m = await _recv_type(ws, "message")
            assert m["data"] == {"ok": 1}

    asyncio.run(go())
    assert get(gateway, "/healthz", None).status_code == 200


def _raw_ws(base: str, key: str, rcvbuf: int) -> socket.socket:
    """A WebSocket by hand, with a tiny receive buffer: a client that can stop reading for real
    (client libraries keep reading into their own buffers)."""
    sk = socket.socket()
    sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    host, port = base.split(":")
    sk.connect((host, int(port)))
    sk.sendall(f"GET /ws?token={key} HTTP/1.1\r\nHost: {base}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    assert sk.recv(4096).startswith(b"HTTP/1.1 101")
    return sk


def _masked(payload: bytes) -> bytes:
    mask = os.urandom(4)
    head = bytes([0x81, 0x80 | len(payload)]) if len(payload) < 126 else bytes([0x81, 0x80 | 126]) + struct.pack(">H", len(payload))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _drain(sk: socket.socket) -> bytes:
    sk.settimeout(10)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sk.recv(1 << 20):
            data += chunk
    return data


@pytest.mark.parametrize("reads_later", [True, False])
def test_slow_consumer_is_closed_and_others_keep_receiving(gateway: str, keys: dict[str, str], exchange: str, symbol: str, reads_later: bool) -> None:
    """A client that stops reading overflows its queue (50 here) and is dropped; the one beside it gets
    every message. One that reads again gets the close frame 4008; one that never does is cut off."""
    from streams.gateway.ws import WS_DROPPED

    r = redis.Redis.from_url(REDIS_URL)
    room, channel = f"candles:{symbol}:4h", f"candles:{exchange}:{symbol}:4h"
    payload = orjson.dumps({"pad": "x" * 60_000})  # large frames fill the socket buffers quickly
    dropped = WS_DROPPED.labels("slow_consumer")._value.get()
    slow = _raw_ws(gateway, keys["all"], 4096)
    slow.sendall(_masked(orjson.dumps({"op": "subscribe", "room": room})))

    async def go() -> None:
        async with websockets.connect(f"ws://{gateway}/ws?token={keys['all']}", max_size=2**24) as fast:
            await fast.send(orjson.dumps({"op": "subscribe", "room": room}))
            await _recv_type(fast, "subscribed")
            await asyncio.sleep(0.2)
            n, received = 400, 0

            async def read_fast() -> None:
                nonlocal received
                while received < n:
                    if (await _recv_type(fast, "message", 10))["room"] == room:
                        received += 1

            reader = asyncio.create_task(read_fast())
            # published from a thread: the fast client reads meanwhile, as a fast client does
            await asyncio.to_thread(lambda: [r.publish(channel, payload) for _ in range(n)])
            await reader
            assert received == n

    got: list[bytes] = []

    def read_once_dropped() -> None:
        while WS_DROPPED.labels("slow_consumer")._value.get() == dropped:
            time.sleep(0.005)
        if not reads_later:
            time.sleep(3)  # past the close timeout: the gateway gives up on the close frame and cuts the connection
        got.append(_drain(slow))

    drainer = threading.Thread(target=read_once_dropped)
    drainer.start()
    asyncio.run(go())
    drainer.join(30)
    slow.close()
    data = got[0]
    assert WS_DROPPED.labels("slow_consumer")._value.get() > dropped
    close = re.search(rb"\x88.\x0f\xa8(slow consumer[^\x81\x82]*)", data)
    if reads_later:
        assert close is not None and b"more than 50 messages queued" in close.group(1)
    assert len(data) < 400 * len(payload)  # it did not get everything: it was dropped, not waited for


def test_keys_cli_prints_the_key_alone_on_its_last_line_and_revokes(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.cli import app
    from streams.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", pg_url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        out = runner.invoke(app, ["keys", "create", "--name", "cli", "--scopes", "read"])
        assert out.exit_code == 0, out.output
        key = out.stdout.strip().splitlines()[-1]
        assert key.startswith("tf_") and " " not in key
        with psycopg.connect(pg_url) as conn:
            salt, digest = conn.execute("SELECT salt, hash FROM api_keys WHERE name = 'cli'").fetchone()
            assert key.encode() not in bytes(digest) and len(bytes(salt)) == 16
        assert asyncio.run(_verify(pg_url, key)).scopes == ("read",)
        assert runner.invoke(app, ["keys", "create", "--name", "cli"]).exit_code != 0
        assert runner.invoke(app, ["keys", "create", "--name", "bad", "--scopes", "write"]).exit_code != 0
        assert "cli" in runner.invoke(app, ["keys", "list"]).output
        assert runner.invoke(app, ["keys", "revoke", "cli"]).exit_code == 0
        assert asyncio.run(_verify(pg_url, key)) is None
        assert runner.invoke(app, ["keys", "revoke", "cli"]).exit_code == 1
    finally:
        get_settings.cache_clear()


async def _verify(pg_url: str, key: str):  # noqa: ANN202
    store = KeyStore(pg_url, cache_s=0.001)
    await store.open()
    try:
        return await store.verify(key)
    finally:
        await store.close()
