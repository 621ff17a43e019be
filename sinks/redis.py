"""Redis: realtime fan-out of every record type with a ``channel`` (``schemas.registry``).

Candles (final and in-progress) and indicators today; a new record type with a channel needs no
code here. Two writers share one script: the Redis sink (final candles, revisions, indicators;
in-progress updates too with ``CANDLE_UPDATES=kafka``) and :class:`LiveFanout`, through which the
candle worker publishes in-progress updates itself, one broker hop sooner (``redis`` and ``both``).

Each record is PUBLISHed as JSON (its fields, plus an ISO-8601 UTC copy ``<field>_iso`` of each
time field) on its type's channel formatted with its fields, e.g. ``candles:{exchange}:{symbol}:{interval}``,
and the newest one per channel is kept under ``latest:<channel>`` for clients that connect between
updates. A record with an ``interval`` field has its snapshot expire after three intervals (at
least 60 s) so a stopped feed does not look live; others keep it until replaced. One Lua call per
500 records publishes them and sets their snapshots, in one round trip.

"Newest" is by the type's ``time_column`` (the window): a revision of an already closed window (a
late trade) is published but must not replace the snapshot of the window after it. Within a batch
the last record of the newest window per channel wins (Kafka keeps a key's order); across batches
the script refuses to replace a snapshot of a later window. For types with an ``is_final`` field,
final records and in-progress updates take two paths (the worker, or the ``candles`` and
``candles-live`` topics), so their relative order is not kept: an update never replaces the
snapshot of its window's final record. Pub/sub is at-least-once: a replay re-publishes records.
"""

from __future__ import annotations

import string
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from operator import attrgetter
from typing import Any

import orjson
import redis
import structlog
from prometheus_client import Counter

from schemas.intervals import interval_ms
from schemas.models import Candle, LiveCandles
from schemas.registry import RECORDS, RecordType, record_type
from sinks.base import Column, DataRejected, Sink, SinkBatch, avro_columns
from streams.observability import E2E_LATENCY
from streams.settings import Settings

log = structlog.get_logger(__name__)

LIVE_PUBLISHED = Counter("tickflow_live_fanout_candles_total", "In-progress candles the candle worker published to Redis itself")
LIVE_DROPPED = Counter("tickflow_live_fanout_dropped_total", "In-progress candles the candle worker could not publish to Redis", ["reason"])
LIVE_DROP_REASONS = ("redis down", "unencodable")
for _reason in LIVE_DROP_REASONS:  # every series from the start: rate() sees 0, not "no data"
    LIVE_DROPPED.labels(_reason)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_TTL_S = 60
CHUNK = 500  # records per script call: one call blocks Redis while it runs

# One call per chunk of one record type: ARGV[1] = n, ARGV[2] = the type's time field ("" if none),
# then n (channel, payload) pairs to PUBLISH in order, then per snapshot key KEYS[k] four values:
# the index (0-based) of its payload among the publishes, its time ("" if none), ttl s (0: none),
# "0" when in progress (else "1"). A snapshot of a later window, and a final record against an
# update of its own window, are kept.
_PUBLISH_AND_SNAPSHOT = """
local n = tonumber(ARGV[1])
local time_field = ARGV[2]
for i = 0, n - 1 do
  redis.call('PUBLISH', ARGV[3 + 2 * i], ARGV[4 + 2 * i])
end
local base = 3 + 2 * n
for k = 1, #KEYS do
  local a = base + 4 * (k - 1)
  local new_time, ttl, final = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 3]
  local keep = false
  if new_time then
    local cur = redis.call('GET', KEYS[k])
    if cur then
      local ok, old = pcall(cjson.decode, cur)
      if ok and type(old) == 'table' and tonumber(old[time_field]) then
        local old_time = tonumber(old[time_field])
        -- final records and in-progress updates come from two topics: a late update never hides its final
        keep = old_time > new_time or (old_time == new_time and old['is_final'] == true and final == '0')
      end
    end
  end
  if not keep then
    local payload = ARGV[4 + 2 * tonumber(ARGV[a])]
    if ttl > 0 then
      redis.call('SET', KEYS[k], payload, 'EX', ttl)
    else
      redis.call('SET', KEYS[k], payload)
    end
  end
end
return n
"""


@lru_cache(maxsize=64)
def snapshot_ttl(interval: str) -> int:
    return max(3 * interval_ms(interval) // 1000, MIN_TTL_S)


@lru_cache(maxsize=8192)
def _iso_ms(ms: int) -> bytes:
    """Cached: the candles of one batch share a few window bounds, and formatting is most of a candle's JSON cost."""
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()


def _iso_us(us: int) -> bytes:
    return (_EPOCH + timedelta(microseconds=us)).isoformat(timespec="microseconds").replace("+00:00", "Z").encode()


class Channel:
    """How records of one type go to Redis: channel, JSON, snapshot time, finality and TTL."""

    def __init__(self, rt: RecordType) -> None:
        if rt.channel is None:
            raise ValueError(f"record type {rt.name} has no Redis channel")
        self.record_type = rt
        names = [f.name for f in fields(rt.model)]
        # "candles:{exchange}:{symbol}" -> "candles:%s:%s" and a getter of (exchange, symbol): one C call a record
        parts = list(string.Formatter().parse(rt.channel))
        self._format = "".join(lit.replace("%", "%%") + ("%s" if field is not None else "") for lit, field, _, _ in parts)
        used = [field for _, field, _, _ in parts if field is not None]
        if not set(used) <= set(names):
            raise ValueError(f"record type {rt.name}: channel {rt.channel!r} names fields it does not have")
        self._values = _tuple_getter(used)
        self.time_field = rt.time_column or ""
        self.time = attrgetter(rt.time_column) if rt.time_column else None
        self.final = attrgetter("is_final") if "is_final" in names else None
        self.interval = attrgetter("interval") if "interval" in names else None
        avro = avro_columns(rt.schema)
        times = [(f, c) for f in names if (c := avro.get(f)) is not None and c.per_ms]
        self.json: Callable[[Any], bytes] = _json_writer(times)  # the record as published

    def channel(self, record: Any) -> str:
        return self._format % self._values(record)

    def channels(self, records: list[Any]) -> list[str]:
        fmt, values = self._format, self._values
        return [fmt % values(r) for r in records]

    def ttls(self, records: list[Any]) -> dict[str, int] | None:
        """Snapshot TTL by interval, or None when the type has no ``interval`` (no expiry).
        ValueError for an interval no TTL can be given."""
        if self.interval is None:
            return None
        return {iv: snapshot_ttl(iv) for iv in set(map(self.interval, records))}


def _json_writer(times: list[tuple[str, Column]]) -> Callable[[Any], bytes]:
    """The record's fields (orjson writes the dataclass itself, in field order) with an ISO-8601 copy
    of each time field appended to that object: half the cost of building a dict first. Specialised
    for a candle's two times: this runs for every update sent."""
    dumps = orjson.dumps
    isos = [_iso_ms if c.per_ms == 1 else _iso_us for _, c in times]
    tail = b"".join(b',"%s_iso":"%%s"' % f.encode() for f, _ in times) + b"}"
    if not times:
        return dumps
    if any(c.nullable for _, c in times):
        names = [f.encode() for f, _ in times]
        values = _tuple_getter([f for f, _ in times])

        def optional(record: Any) -> bytes:
            extra = b"".join(
                b',"%s_iso":%s' % (n, b"null" if v is None else b'"%s"' % iso(v)) for n, v, iso in zip(names, values(record), isos, strict=True)
            )
            return dumps(record)[:-1] + extra + b"}"

        return optional
    if len(times) == 1:
        one, (iso,) = attrgetter(times[0][0]), isos

        def single(record: Any) -> bytes:
            return dumps(record)[:-1] + tail % iso(one(record))

        return single
    if len(times) == 2:
        both, (iso_a, iso_b) = attrgetter(times[0][0], times[1][0]), isos

        def pair(record: Any) -> bytes:
            a, b = both(record)
            return dumps(record)[:-1] + tail % (iso_a(a), iso_b(b))

        return pair
    every = attrgetter(*(f for f, _ in times))

    def many(record: Any) -> bytes:
        return dumps(record)[:-1] + tail % tuple(iso(v) for iso, v in zip(isos, every(record), strict=True))

    return many


def _tuple_getter(names: list[str]) -> Any:
    """A getter of ``names`` that always returns a tuple (attrgetter of one name returns the value)."""
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda r: (one(r),)
    return attrgetter(*names) if names else (lambda r: ())


_CANDLES = Channel(record_type("candle"))
candle_json = _CANDLES.json  # a candle as published: its fields plus ``open_time_iso`` and ``close_time_iso``


def latest_per_key(ch: Channel, records: list[Any], channels: list[str]) -> dict[str, int]:
    """Index of each channel's snapshot record: the newest window, and the last of that window in
    order, except that an in-progress update never replaces its window's final record."""
    best: dict[str, int] = {}
    t, final = ch.time, ch.final
    for i, (r, key) in enumerate(zip(records, channels, strict=True)):
        j = best.get(key)
        if j is None or t is None:
            best[key] = i
            continue
        new, old = t(r), t(records[j])
        if new > old or (new == old and (final is None or final(r) or not final(records[j]))):
            best[key] = i
    return best


def script_calls(ch: Channel, records: list[Any], encoded: list[bytes]) -> Iterator[tuple[list[str], list[bytes | str | int]]]:
    """(keys, args) of one script call per chunk of ``records``, with ``encoded`` their payloads.
    Raises ValueError for a record no TTL can be given (an unknown interval) before yielding anything."""
    ttls = ch.ttls(records)
    channels = ch.channels(records)
    time_of, final, interval = ch.time, ch.final, ch.interval
    for start in range(0, len(records), CHUNK):
        chunk = records[start : start + CHUNK]
        names = channels[start : start + CHUNK]
        publishes: list[bytes | str | int] = []
        for name, payload in zip(names, encoded[start : start + CHUNK], strict=True):
            publishes += (name, payload)
        keys: list[str] = []
        snapshots: list[bytes | str | int] = []
        for key, i in latest_per_key(ch, chunk, names).items():
            r = chunk[i]
            keys.append(f"latest:{key}")
            ttl = ttls[interval(r)] if ttls is not None else 0  # type: ignore[misc]
            snapshots += (i, time_of(r) if time_of is not None else "", ttl, "0" if final is not None and not final(r) else "1")
        yield keys, [len(chunk), ch.time_field, *publishes, *snapshots]


class RedisSink(Sink):
    name = "redis"
    batch_ms_setting = "redis_sink_batch_ms"  # subscribers wait for every batch: keep it short

    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)
        self._publish = self._redis.register_script(_PUBLISH_AND_SNAPSHOT)
        self._channels: dict[str, Channel] = {}

    @classmethod
    def record_types(cls, settings: Settings) -> tuple[str, ...]:
        """Every type with a channel; ``live_candles`` (in-progress candles, carried as candles) only
        when they come this way (``CANDLE_UPDATES=kafka``): otherwise the worker publishes them itself."""
        names = tuple(rt.name for rt in RECORDS.values() if rt.channel)
        return (*names, "live_candles") if settings.agents.candle_updates == "kafka" else names

    def _channel(self, name: str) -> Channel | None:
        rt = record_type(name)
        if rt.channel is None:
            return None
        ch = self._channels.get(name)
        if ch is None or ch.record_type is not rt:
            ch = self._channels[name] = Channel(rt)
        return ch

    def write(self, batch: SinkBatch) -> None:
        calls = []
        try:  # every record encoded, and its channel and TTL known, before anything is published
            for name, records in batch.records.items():
                ch = self._channel(name) if records else None
                if ch is not None:
                    calls += script_calls(ch, records, [ch.json(r) for r in records])
        except (ValueError, OverflowError, TypeError) as exc:  # orjson's JSONEncodeError is a TypeError
            raise DataRejected(str(exc)) from exc
        # One EVALSHA per chunk, not a pipeline: redis-py's pipeline asks SCRIPT EXISTS before every
        # execute, a second round trip on the realtime path (the script reloads itself on NOSCRIPT).
        for keys, args in calls:
            self._publish(keys=keys, args=args)

    def close(self) -> None:
        self._redis.close()


class LiveFanout:
    """In-progress candles from the candle agent straight to Redis, the realtime path's short cut.

    Through ``candles-live`` and the Redis sink an update crosses the broker twice; published here it
    crosses once, and the sink skips that topic. An update needs no durability, the next one
    supersedes it: while Redis is away updates are dropped and counted, and the first send after
    the backoff tries again (``CANDLE_UPDATES=both`` keeps every update on ``candles-live`` besides).

    ``publish`` never blocks the agent: it queues, and a sender thread sends whatever queued
    meanwhile in one script call per chunk, in the order offered (redis-py's sync client packs
    commands with hiredis).
    """

    def __init__(self, url: str, *, timeout_s: float = 2.0, backoff_min_s: float = 0.1, backoff_max_s: float = 5.0) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._script = self._redis.register_script(_PUBLISH_AND_SNAPSHOT)
        self._pending: list[Candle] = []
        self._receipts: list[int] = []  # ingest receipt times (µs) behind the updates in _pending
        self._latency = E2E_LATENCY.labels("redis", "candle_update", "receipt")
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        self._retry_at = 0.0
        self._backoff_s = 0.0
        self._backoff_min_s, self._backoff_max_s = backoff_min_s, backoff_max_s
        self._thread = threading.Thread(target=self._run, name="live-fanout", daemon=True)
        self._thread.start()

    def publish(self, live: LiveCandles, received_us: int | None = None) -> None:
        """Queue one symbol's forming candles (the runtime's route for realtime records)."""
        self.offer(live.candles, received_us)

    def offer(self, candles: list[Candle], received_us: int | None = None) -> None:
        """Queue updates; ``received_us``, the ingest receipt of the trades behind them, times the
        realtime path once they are published (``tickflow_e2e_latency_seconds{store="redis",
        record="candle_update",origin="receipt"}``, the 100 ms SLA)."""
        if self._backoff_s and time.monotonic() < self._retry_at:
            LIVE_DROPPED.labels("redis down").inc(len(candles))
            return
        with self._lock:
            self._pending += candles
            if received_us is not None:
                self._receipts.append(received_us)
            self._idle.clear()
        self._wake.set()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(0.5)
            self._wake.clear()
            with self._lock:
                offered, self._pending = self._pending, []
                receipts, self._receipts = self._receipts, []
            if offered:
                self._send(offered, receipts)
            with self._lock:
                if not self._pending:
                    self._idle.set()

    def _send(self, offered: list[Candle], receipts: list[int]) -> None:
        batch: list[Candle] = []
        payloads: list[bytes] = []
        for c in offered:
            try:
                payloads.append(candle_json(c))
            except (ValueError, OverflowError) as exc:  # a time past year 9999: only possible from a bug upstream
                LIVE_DROPPED.labels("unencodable").inc()
                log.error("in-progress candle not encodable", error=str(exc), key=c.key, open_time=c.open_time)
                continue
            batch.append(c)
        try:
            for keys, args in script_calls(_CANDLES, batch, payloads):
                self._script(keys=keys, args=args)
        except (redis.RedisError, OSError) as exc:
            with self._lock:  # what queued meanwhile is as stale by the retry: dropped too
                stale, self._pending, self._receipts = len(self._pending), [], []
            LIVE_DROPPED.labels("redis down").inc(len(batch) + stale)
            self._backoff_s = min(max(self._backoff_s * 2, self._backoff_min_s), self._backoff_max_s)
            self._retry_at = time.monotonic() + self._backoff_s
            log.warning("redis unreachable: in-progress candles dropped", error=str(exc), retry_in_s=self._backoff_s)
            return
        LIVE_PUBLISHED.inc(len(batch))
        now = time.time_ns() // 1000
        for received in receipts:
            self._latency.observe(max(now - received, 0) / 1e6)
        if self._backoff_s:
            log.info("redis reachable again: in-progress candles flow")
            self._backoff_s = 0.0

    def flushed(self, timeout_s: float = 5.0) -> bool:
        """True once everything offered so far has been sent or dropped (False after ``timeout_s``)."""
        return self._idle.wait(timeout_s)

    def close(self) -> None:
        self.flushed()
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        self._redis.close()
