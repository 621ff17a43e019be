"""The gateway's pure parts: rooms, the protocol, keys and limits, query parameters and SQL, health."""

from __future__ import annotations

import orjson
import pytest

from schemas.registry import RECORDS
from streams.gateway import health
from streams.gateway.auth import KeyInfo, RateLimiter, TokenBucket, hash_secret, new_key, parse_scopes, split_key
from streams.gateway.protocol import MAX_FRAME_BYTES, ProtocolError, parse_command
from streams.gateway.query import DATASETS, Dataset, QueryError, Unavailable, build_sql, parse_request, source_of
from streams.gateway.rooms import RoomError, RoomHistory, channel_templates, message_frame, parse_room

TEMPLATES = channel_templates(RECORDS.values())


def test_rooms_map_onto_the_registry_channels() -> None:
    assert TEMPLATES["candles"] == RECORDS["candle"].channel
    assert parse_room("candles:BTCUSDT:1m", TEMPLATES).pattern == "candles:*:BTCUSDT:1m"
    assert parse_room("candles:binance:BTCUSDT:1m", TEMPLATES).pattern == "candles:binance:BTCUSDT:1m"
    assert parse_room("indicators:*:1h", TEMPLATES).pattern == "indicators:*:*:1h"
    assert parse_room("candles:BTC/USDT:1m", TEMPLATES).pattern == "candles:*:BTC/USDT:1m"
    # a kind with a channel declared later works without changes here
    later = {**TEMPLATES, "onchain": "onchain:{chain}:{asset}:{metric}"}
    assert parse_room("onchain:BTC", later).pattern == "onchain:*:BTC:*"


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "non-empty"), (7, "non-empty"), ("trades:BTC", "unknown room kind"),
        ("candles:BTCUSDT", "expected candles:{symbol}:{interval}"), ("candles:a:b:c:d", "expected"),
        ("candles:BTC USDT:1m", "part"), ("candles:[a-z]:1m", "part"), ("candles:" + "A" * 200, "longer than"),
    ],
)
def test_bad_rooms_say_why(name: object, says: str) -> None:
    with pytest.raises(RoomError, match=None) as err:
        parse_room(name, TEMPLATES)
    assert says in str(err.value)


def test_history_numbers_and_recovers_or_says_too_old() -> None:
    h = RoomHistory(3, "e1")
    for i in range(5):
        h.append(lambda seq, i=i: f"m{i}:{seq}".encode())
    assert h.seq == 5
    assert h.since(3, "e1").messages == [b"m3:4", b"m4:5"]
    assert h.since(5, "e1").messages == []
    assert h.since(2, "e1").messages == [b"m2:3", b"m3:4", b"m4:5"]
    assert h.since(1, "e1").messages is None  # seq 2 fell out of the buffer
    assert h.since(4, "other").messages is None  # another room lifetime
    frame = orjson.loads(message_frame("candles:X:1m", 7, "candles:b:X:1m", b'{"a":1}'))
    assert frame == {"type": "message", "room": "candles:X:1m", "seq": 7, "channel": "candles:b:X:1m", "data": {"a": 1}}


def test_protocol_accepts_and_refuses() -> None:
    cmd = parse_command('{"op":"subscribe","room":"candles:X:1m","since":4,"epoch":"e","id":3}')
    assert (cmd.op, cmd.rooms, cmd.since, cmd.epoch, cmd.request_id) == ("subscribe", ("candles:X:1m",), 4, "e", 3)
    assert parse_command('{"op":"subscribe","rooms":["a","a","b"]}').rooms == ("a", "b")
    for frame, code in [
        ("x" * (MAX_FRAME_BYTES + 1), "too_large"), ("{", "bad_json"), ("3", "bad_message"), ('{"op":1}', "bad_op"),
        ('{"op":"subscribe","rooms":[]}', "bad_message"), ('{"op":"subscribe","rooms":' + orjson.dumps(["r"] * 51).decode() + "}", "too_many_rooms"),
        ('{"op":"subscribe","room":"r","since":-1}', "bad_message"), ('{"op":"subscribe","rooms":["a","b"],"since":1}', "bad_message"),
        ('{"op":"unsubscribe","room":"r","since":1}', "bad_message"), ('{"op":"ping","id":true}', "bad_message"),
    ]:
        with pytest.raises(ProtocolError) as err:
            parse_command(frame)
        assert err.value.code == code, frame


def test_keys_hash_and_parse() -> None:
    k = new_key()
    key_id, secret = split_key(k.key)  # type: ignore[misc]
    assert key_id == k.key_id and hash_secret(secret, k.salt) == k.hash and secret.encode() not in k.hash
    assert hash_secret(secret, b"another salt 16b") != k.hash
    assert split_key("tf_short_x") is None and split_key(k.key + " ") is None
    assert parse_scopes("read, stream,read") == ("read", "stream")
    with pytest.raises(ValueError, match="scopes"):
        parse_scopes("read,admin")


def test_rate_limits() -> None:
    b = TokenBucket(rate=2, burst=2, now=0.0)
    assert [b.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert b.take(0.5) == 0.0  # a token came back
    limiter = RateLimiter(default_rate=1.0, burst_s=1.0)
    key, free = KeyInfo("k", ("read",), None), KeyInfo("f", ("read",), 0.0)
    assert limiter.retry_after(key, now=0.0) == 0 and limiter.retry_after(key, now=0.1) == 1
    assert all(limiter.retry_after(free, now=0.0) == 0 for _ in range(100))


def test_query_parameters_and_sql() -> None:
    src = source_of(DATASETS["candles"], RECORDS.values())
    req = parse_request("candles", {"symbol": "BTCUSDT", "interval": "1m", "start": "2024-01-01T00:00:00Z", "end": "1704067260000", "limit": "2"}, src.columns)
    assert (req.start, req.end, req.limit) == (1704067200000, 1704067260000, 2)
    sql, params = build_sql(src, req, "clickhouse")
    assert "FROM candles FINAL" in sql and "ORDER BY `open_time` DESC, `exchange` DESC LIMIT 2" in sql
    assert params == {"f_symbol": "BTCUSDT", "f_interval": "1m", "start": 1704067200000, "end": 1704067260000}
    sql, _ = build_sql(src, req, "postgres")
    assert "FINAL" not in sql and '"interval" = %(f_interval)s' in sql
    assert req.cache_key == parse_request("candles", {"limit": "2", "end": "1704067260000", "interval": "1m", "start": "1704067200000", "symbol": "BTCUSDT"}, src.columns).cache_key
    with pytest.raises(Unavailable, match="no_such_table"):
        source_of(Dataset("gauges", "no_such_table", ("symbol",)), RECORDS.values())
    assert source_of(DATASETS["onchain"], RECORDS.values()).time_column == "day"
    for params, parameter in [
        ({"interval": "1m"}, "symbol"), ({"symbol": "X", "interval": "0m"}, "interval"), ({"symbol": "X", "interval": "1m", "limit": "0"}, "limit"),
        ({"symbol": "X", "interval": "1m", "start": "5", "end": "5"}, "start"), ({"symbol": "X;", "interval": "1m"}, "symbol"),
    ]:
        with pytest.raises(QueryError) as err:
            parse_request("candles", params, src.columns)
        assert err.value.parameter == parameter


def test_health_summary_from_two_scrapes() -> None:
    text = 'tickflow_trades_in_total{source="synthetic"} 1000\ntickflow_dlq_records_total{component="ingest"} 2\ntickflow_sink_lag{sink="postgres"} 17\n'
    a, b = health.Scrape(10.0), health.Scrape(12.0)
    health.add_text(a, text)
    health.add_text(b, text.replace("1000", "1500"))
    out = health.summary(b, a)
    assert out["input_trades_per_s"] == 250.0 and out["dead_letters_total"] == 2 and out["sink_lag"] == {"postgres": 17}
    assert health.summary(a, None)["input_trades_per_s"] is None


async def test_cache_single_flight_and_invalidation_during_a_load() -> None:
    import asyncio

    from streams.gateway.cache import QueryCache

    cache = QueryCache(None, l1_size=100, ttl_s=60, l2_ttl_s=60)
    loads = 0
    gate = asyncio.Event()

    async def load() -> bytes:
        nonlocal loads
        loads += 1
        await gate.wait()
        return b"v%d" % loads

    waiting = [asyncio.create_task(cache.get("k", "candles:X:1m", load)) for _ in range(20)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiting) == [b"v1"] * 20 and loads == 1  # one load for twenty callers
    assert await cache.get("k", "candles:X:1m", load) == b"v1"  # and then from L1
    await cache.invalidate("candles:X:1m")
    assert await cache.get("k", "candles:X:1m", load) == b"v2"
    # an invalidation while a load runs: its result is answered but not kept
    gate.clear()
    await cache.invalidate("candles:X:1m")
    task = asyncio.create_task(cache.get("k", "candles:X:1m", load))
    await asyncio.sleep(0)
    await cache.invalidate("candles:X:1m")
    gate.set()
    assert await task == b"v3"
    assert await cache.get("k", "candles:X:1m", load) == b"v4"


def test_text_frames_parse_as_websocket_frames() -> None:
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    from streams.gateway.protocol import frame_payload, text_frame

    for size in (0, 125, 126, 65_535, 65_536, 200_000):
        payload = b"x" * size
        reader = StreamReader()
        reader.feed_data(text_frame(payload))
        parse = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parse)
        except StopIteration as done:
            frame = done.value
        assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, payload)
        assert frame_payload(text_frame(payload)) == payload


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing


class _Conn:
    """What the hub uses of uvicorn's websockets-sansio connection."""

    def __init__(self) -> None:
        import asyncio

        self.transport, self.writable, self.close_sent = _Transport(), asyncio.Event(), False
        self.writable.set()

    async def send(self, message: dict) -> None:
        raise AssertionError("frames go to the transport, not through the ASGI send")


class _WebSocket:
    def __init__(self, server_send: object) -> None:
        from streams.gateway.ws import SERVER_SEND

        self.scope = {SERVER_SEND: server_send}
        self.texts: list[str] = []

    async def send_text(self, text: str) -> None:
        self.texts.append(text)


async def test_a_client_gets_frames_written_queued_while_its_socket_is_full_and_is_closed_on_overflow() -> None:
    import asyncio

    from streams.gateway.protocol import text_frame
    from streams.gateway.ws import CLOSE_SLOW, NOT_SENT, QUEUED, WRITTEN, Client

    conn = _Conn()
    client = Client(_WebSocket(conn.send), 4)  # type: ignore[arg-type]
    sender = asyncio.create_task(client.drain())
    frames = [text_frame(b'{"n":%d}' % i) for i in range(8)]
    assert client.offer(frames[0]) == WRITTEN
    conn.writable.clear()  # uvicorn's pause_writing: the transport's buffer is over its high-water mark
    assert [client.offer(f) for f in frames[1:4]] == [QUEUED] * 3
    await asyncio.sleep(0)
    assert conn.transport.written == frames[:1]
    conn.writable.set()  # resume_writing
    assert client.offer(frames[4]) == QUEUED  # behind the queue, in order
    await asyncio.sleep(0)
    assert conn.transport.written == frames[:5] and not client.queue
    assert client.offer(frames[5]) == WRITTEN
    conn.writable.clear()
    assert [client.offer(f) for f in frames[:4]] == [QUEUED] * 4
    assert client.offer(frames[4]) == NOT_SENT and client.closed is not None and client.closed[0] == CLOSE_SLOW
    assert client.overflowed.is_set() and not client.queue
    conn.writable.set()
    await asyncio.sleep(0)  # the sender finds the queue emptied by the overflow, writes nothing more
    assert len(conn.transport.written) == 6 and not sender.done()
    sender.cancel()


async def test_a_client_of_another_asgi_server_gets_its_frames_through_the_asgi_send() -> None:
    import asyncio

    from streams.gateway.protocol import text_frame
    from streams.gateway.ws import QUEUED, Client

    ws = _WebSocket(object())
    client = Client(ws, 10)  # type: ignore[arg-type]
    assert client.conn is None
    sender = asyncio.create_task(client.drain())
    assert client.offer(text_frame(b'{"a":1}')) == QUEUED
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert ws.texts == ['{"a":1}']
    sender.cancel()
