"""RedisSink against a real Redis: publish, latest snapshot, TTL, ordering of snapshots."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import orjson
import pytest
import redis
from prometheus_client import REGISTRY

from agents.indicators import VALUE_FIELDS
from schemas.models import Candle, Indicators
from sinks.base import DataRejected, SinkBatch
from schemas.registry import record_type
from sinks.redis import Channel, LiveFanout, RedisSink, candle_json, latest_per_key, snapshot_ttl
from streams.settings import Settings
from tests import throwaway_record

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
T0 = 1_700_000_040_000


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.skip(f"Redis at {REDIS_URL} unreachable: {exc}")
    yield client
    client.close()


@pytest.fixture
def exchange(r: redis.Redis) -> Iterator[str]:
    name = f"ex{uuid.uuid4().hex[:8]}"
    yield name
    for key in r.scan_iter(f"latest:candles:{name}:*"):
        r.delete(key)


@pytest.fixture
def sink() -> Iterator[RedisSink]:
    s = RedisSink(REDIS_URL)
    yield s
    s.close()


def candle(exchange: str, open_time: int = T0, *, close: float = 101.0, final: bool = False, interval: str = "1m", revision: int = 0) -> Candle:
    return Candle(exchange, "BTC/USDT", interval, open_time, open_time + 59_999, 100.0, 102.0, 99.5, close, 3.0, 300.0, 7, is_final=final, revision=revision)


def latest(r: redis.Redis, exchange: str, interval: str = "1m") -> dict | None:
    raw = r.get(f"latest:candles:{exchange}:BTC/USDT:{interval}")
    return None if raw is None else orjson.loads(raw)


def test_every_candle_is_published_in_order(sink: RedisSink, r: redis.Redis, exchange: str) -> None:
    pubsub = r.pubsub()
    channel = f"candles:{exchange}:BTC/USDT:1m"
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    sink.write(SinkBatch(candle=[candle(exchange, close=1.0), candle(exchange, close=2.0, final=True), candle(exchange, T0 + 60_000, close=3.0)]))
    got = []
    deadline = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=1)
        if msg and msg["type"] == "message":
            assert msg["channel"].decode() == channel
            got.append(orjson.loads(msg["data"]))
    pubsub.close()
    assert [(m["close"], m["is_final"]) for m in got] == [(1.0, False), (2.0, True), (3.0, False)]
    assert got[0]["open_time"] == T0 and got[0]["open_time_iso"] == "2023-11-14T22:14:00.000Z"
    assert got[0]["close_time_iso"] == "2023-11-14T22:14:59.999Z"


def test_latest_snapshot_and_ttl(sink: RedisSink, r: redis.Redis, exchange: str) -> None:
    sink.write(SinkBatch(candle=[candle(exchange, close=1.0), candle(exchange, close=2.0), candle(exchange, interval="1h", close=5.0)]))
    assert latest(r, exchange)["close"] == 2.0
    assert 170 <= r.ttl(f"latest:candles:{exchange}:BTC/USDT:1m") <= 180
    assert 3 * 3600 - 10 <= r.ttl(f"latest:candles:{exchange}:BTC/USDT:1h") <= 3 * 3600
    assert latest(r, exchange, "1h")["close"] == 5.0


def test_revision_of_an_older_window_does_not_replace_the_snapshot(sink: RedisSink, r: redis.Redis, exchange: str) -> None:
    sink.write(SinkBatch(candle=[candle(exchange, T0 + 60_000, close=7.0), candle(exchange, T0, close=1.0, final=True, revision=1)]))
    assert latest(r, exchange)["open_time"] == T0 + 60_000  # within one batch
    sink.write(SinkBatch(candle=[candle(exchange, T0, close=2.0, final=True, revision=2)]))
    assert latest(r, exchange)["close"] == 7.0  # across batches
    sink.write(SinkBatch(candle=[candle(exchange, T0 + 60_000, close=8.0, final=True)]))
    assert latest(r, exchange)["close"] == 8.0  # same window, later in order: replaces


def test_latest_per_key_prefers_newest_window_then_batch_order(exchange: str) -> None:
    cs = [candle(exchange, T0 + 60_000, close=1.0), candle(exchange, T0), candle(exchange, T0 + 60_000, close=2.0), candle(exchange, interval="5m")]
    ch = Channel(record_type("candle"))
    assert latest_per_key(ch, cs, [ch.channel(c) for c in cs]) == {f"candles:{exchange}:BTC/USDT:1m": 2, f"candles:{exchange}:BTC/USDT:5m": 3}


def test_intervals_and_ttl() -> None:
    assert snapshot_ttl("1s") == 60 and snapshot_ttl("5m") == 900 and snapshot_ttl("1w") == 3 * 604800
    with pytest.raises(ValueError):
        snapshot_ttl("0m")


def test_unusable_candle_is_rejected(sink: RedisSink, r: redis.Redis, exchange: str) -> None:
    with pytest.raises(DataRejected, match="interval"):
        sink.write(SinkBatch(candle=[candle(exchange, interval="weird")]))
    with pytest.raises(DataRejected):
        sink.write(SinkBatch(candle=[candle(exchange, 10**18)]))
    assert latest(r, exchange) is None


def test_json_has_every_candle_field(exchange: str) -> None:
    doc = orjson.loads(candle_json(candle(exchange)))
    assert set(doc) >= {"exchange", "symbol", "interval", "open_time", "close_time", "vwap", "is_final", "revision", "open_time_iso"}


def test_indicators_are_published_and_snapshotted(sink: RedisSink, r: redis.Redis, exchange: str) -> None:
    fields = {f: None for f in VALUE_FIELDS}
    first = Indicators(exchange, "BTC/USDT", "1m", T0, 101.0, 0, **{**fields, "rsi": 55.5, "ma50": 100.25})
    second = Indicators(exchange, "BTC/USDT", "1m", T0 + 60_000, 102.0, 0, **{**fields, "rsi": 61.0})
    pubsub = r.pubsub()
    pubsub.subscribe(f"indicators:{exchange}:BTC/USDT:1m")
    pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    try:
        sink.write(SinkBatch(indicators=[first, second]))
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=0.5)
            if msg and msg["type"] == "message":
                got.append(orjson.loads(msg["data"]))
        assert [(m["open_time"], m["rsi"], m["ma50"]) for m in got] == [(T0, 55.5, 100.25), (T0 + 60_000, 61.0, None)]
        snapshot = orjson.loads(r.get(f"latest:indicators:{exchange}:BTC/USDT:1m"))
        assert snapshot["open_time"] == T0 + 60_000 and snapshot["rsi"] == 61.0
        assert 0 < r.ttl(f"latest:indicators:{exchange}:BTC/USDT:1m") <= snapshot_ttl("1m")
    finally:
        pubsub.close()
        r.delete(f"latest:indicators:{exchange}:BTC/USDT:1m")


def test_an_update_never_hides_the_final_candle_of_its_window(sink: RedisSink, r: redis.Redis, exchange: str) -> None:
    """Finals and in-progress updates come from two topics, so an update can arrive after its final."""
    sink.write(SinkBatch(candle=[candle(exchange, final=True, close=105.0), candle(exchange, close=104.0)]))
    assert (latest(r, exchange)["is_final"], latest(r, exchange)["close"]) == (True, 105.0)
    sink.write(SinkBatch(candle=[candle(exchange, close=103.0)]))
    assert (latest(r, exchange)["is_final"], latest(r, exchange)["close"]) == (True, 105.0)
    sink.write(SinkBatch(candle=[candle(exchange, T0 + 60_000, close=106.0)]))  # the next window's update does replace it
    assert (latest(r, exchange)["is_final"], latest(r, exchange)["open_time"]) == (False, T0 + 60_000)


def test_a_redis_that_lost_the_script_gets_it_again(sink: RedisSink, r: redis.Redis, exchange: str) -> None:
    """A restarted (or flushed) Redis has no scripts: the next write loads it and still lands."""
    sink.write(SinkBatch(candle=[candle(exchange, close=1.0)]))
    r.script_flush()
    sink.write(SinkBatch(candle=[candle(exchange, T0 + 60_000, close=2.0)]))
    assert latest(r, exchange)["close"] == 2.0


# ------------------------------------------------------------------ the worker's direct fan-out


def test_sink_reads_candles_live_only_when_updates_do_not_come_from_the_worker() -> None:
    stored = ("candles", "indicators", "onchain_metrics", "onchain_block_metrics", "sentiment", "signals")
    assert RedisSink.topics_for(Settings(candle_updates="redis")) == stored
    assert RedisSink.topics_for(Settings(candle_updates="both")) == stored
    assert RedisSink.topics_for(Settings(candle_updates="kafka")) == (*stored, "candles-live")
    assert RedisSink.record_types(Settings(candle_updates="kafka")) == ("candle", "indicators", "onchain_metric", "onchain_block_metric", "sentiment_aggregate", "signal", "live_candles")


def _offer_and_settle(fanout: LiveFanout, *batches: list[Candle]) -> None:
    for candles in batches:
        fanout.offer(candles)
    assert fanout.flushed()


def test_live_fanout_publishes_in_order_and_keeps_the_final_snapshot(sink: RedisSink, r: redis.Redis, exchange: str) -> None:
    pubsub = r.pubsub()
    pubsub.subscribe(f"candles:{exchange}:BTC/USDT:1m", f"candles:{exchange}:BTC/USDT:5m")
    while (pubsub.get_message(timeout=1.0) or {}).get("type") != "subscribe":
        pass
    sink.write(SinkBatch(candle=[candle(exchange, close=90.0, final=True)]))
    assert pubsub.get_message(timeout=2.0)["type"] == "subscribe"  # the second channel's confirmation
    assert orjson.loads(pubsub.get_message(timeout=2.0)["data"])["close"] == 90.0

    fanout = LiveFanout(REDIS_URL)
    _offer_and_settle(fanout, [candle(exchange, close=101.0), candle(exchange, close=101.0, interval="5m")], [candle(exchange, close=102.0)])
    fanout.close()
    got = []
    while (msg := pubsub.get_message(timeout=1.0)) is not None:
        got.append((msg["channel"].decode().rsplit(":", 1)[1], orjson.loads(msg["data"])["close"]))
    assert got == [("1m", 101.0), ("5m", 101.0), ("1m", 102.0)]
    assert latest(r, exchange)["close"] == 90.0  # an update never hides its window's final candle
    assert latest(r, exchange, "5m")["close"] == 101.0
    pubsub.close()


def test_live_fanout_reloads_a_script_that_redis_lost(r: redis.Redis, exchange: str) -> None:
    """After SCRIPT FLUSH (or a Redis restart) the fan-out's EVALSHA meets NOSCRIPT and loads the
    script again: no in-progress update is dropped for it."""
    fanout = LiveFanout(REDIS_URL)
    _offer_and_settle(fanout, [candle(exchange, close=101.0)])
    r.script_flush()
    _offer_and_settle(fanout, [candle(exchange, close=102.0)])
    fanout.close()
    assert latest(r, exchange)["close"] == 102.0


def test_live_fanout_drops_and_counts_while_redis_is_away_and_never_raises() -> None:
    def dropped() -> float:
        return REGISTRY.get_sample_value("tickflow_live_fanout_dropped_total", {"reason": "redis down"}) or 0.0

    fanout = LiveFanout("redis://127.0.0.1:1/0", timeout_s=0.5, backoff_min_s=30)  # nothing listens on port 1
    before = dropped()
    _offer_and_settle(fanout, [candle("away"), candle("away", interval="5m")])
    assert dropped() - before == 2
    _offer_and_settle(fanout, [candle("away")])  # within the backoff: dropped without trying
    assert dropped() - before == 3
    fanout.close()


# ------------------------------------------------------------------ any registry type with a channel


def test_a_new_record_type_is_published_and_snapshotted_without_sink_code(r: redis.Redis, exchange: str, monkeypatch: pytest.MonkeyPatch) -> None:
    throwaway_record.register(monkeypatch)
    assert "test_gauge" in RedisSink.record_types(Settings())
    G = throwaway_record.Gauge  # noqa: N806
    channel = f"gauges:{exchange}:BTC/USDT:5m"
    pubsub = r.pubsub()
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    sink = RedisSink(REDIS_URL)
    try:
        sink.write(SinkBatch(test_gauge=[G(exchange, "BTC/USDT", "5m", T0 + 300_000, 2.0), G(exchange, "BTC/USDT", "5m", T0, 1.0, T0 * 1000 + 7, "late", version=3)]))
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=1)
            if msg and msg["type"] == "message":
                got.append(orjson.loads(msg["data"]))
        assert got[1] == {
            "exchange": exchange, "symbol": "BTC/USDT", "interval": "5m", "ts": T0, "value": 1.0, "seen_at": T0 * 1000 + 7, "label": "late",
            "flag": False, "version": 3, "ts_iso": "2023-11-14T22:14:00.000Z", "seen_at_iso": "2023-11-14T22:14:00.000007Z",
        }
        assert (got[0]["value"], got[0]["seen_at_iso"]) == (2.0, None)
        snapshot = orjson.loads(r.get(f"latest:{channel}"))
        assert snapshot["ts"] == T0 + 300_000  # the newest window, not the last published
        assert 3 * 300 - 10 <= r.ttl(f"latest:{channel}") <= 3 * 300
        sink.write(SinkBatch(test_gauge=[G(exchange, "BTC/USDT", "5m", T0, 9.0)]))  # an older window, a later batch
        assert orjson.loads(r.get(f"latest:{channel}"))["value"] == 2.0
        with pytest.raises(DataRejected, match="interval"):
            sink.write(SinkBatch(test_gauge=[G(exchange, "BTC/USDT", "weird", T0, 1.0)]))
    finally:
        sink.close()
        pubsub.close()
        r.delete(f"latest:{channel}")
