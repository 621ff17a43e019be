"""Redis: realtime fan-out of every candle, final and in-progress, and of every indicators record.

Two writers share one script: the Redis sink (final candles, revisions, indicators; in-progress
updates too with ``CANDLE_UPDATES=kafka``) and :class:`LiveFanout`, through which the candle
worker publishes in-progress updates itself, one broker hop sooner (``redis`` and ``both``).

Each candle is PUBLISHed as JSON on ``candles:{exchange}:{symbol}:{interval}`` and the newest one per
key is kept under ``latest:candles:{exchange}:{symbol}:{interval}`` for clients that connect between
updates, expiring after three intervals (at least 60 s) so a stopped feed does not look live.
One Lua call per 500 records publishes them and sets their snapshots, in one round trip.

"Newest" is by window: a revision of an already closed window (a late trade) is published but must
not replace the snapshot of the window after it. Within a batch the last candle of the newest window
per key wins (Kafka keeps a key's order); across batches the script refuses to replace a
snapshot of a later window. Final candles and in-progress updates take two paths (the worker, or
the ``candles`` and ``candles-live`` topics), so their relative order is not kept: an update never
replaces the snapshot of its window's final candle. Pub/sub is at-least-once: a replay re-publishes
candles.

Indicators records go the same way on ``indicators:{exchange}:{symbol}:{interval}`` with the
snapshot ``latest:indicators:{exchange}:{symbol}:{interval}``, as JSON with ``open_time_iso``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import orjson
import redis
import structlog
from prometheus_client import Counter

from schemas.models import Candle, Indicators, LiveCandles
from sinks.base import CANDLE_COLUMNS, INDICATOR_COLUMNS, DataRejected, Sink, SinkBatch
from streams.settings import Settings

log = structlog.get_logger(__name__)

LIVE_PUBLISHED = Counter("tickflow_live_fanout_candles_total", "In-progress candles the candle worker published to Redis itself")
LIVE_DROPPED = Counter("tickflow_live_fanout_dropped_total", "In-progress candles the candle worker could not publish to Redis", ["reason"])

_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "M": 31 * 86400}
_INTERVAL_RE = re.compile(r"^(\d+)([smhdwM])$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_TTL_S = 60
CHUNK = 500  # records per script call: one call blocks Redis while it runs

# One call per chunk of a batch: ARGV[1] = n, then n (channel, payload) pairs to PUBLISH in order,
# then per snapshot key KEYS[k] four values: the index (0-based) of its payload among the
# publishes, open_time ms, ttl s, "1" when final (or not a candle). A snapshot of a later window,
# and a final candle against an update of its own window, are kept.
_PUBLISH_AND_SNAPSHOT = """
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  redis.call('PUBLISH', ARGV[2 + 2 * i], ARGV[3 + 2 * i])
end
local base = 2 + 2 * n
for k = 1, #KEYS do
  local a = base + 4 * (k - 1)
  local new_time, final = tonumber(ARGV[a + 1]), ARGV[a + 3]
  local keep = false
  local cur = redis.call('GET', KEYS[k])
  if cur then
    local ok, old = pcall(cjson.decode, cur)
    if ok and type(old) == 'table' and tonumber(old['open_time']) then
      local old_time = tonumber(old['open_time'])
      -- final candles and in-progress updates come from two topics: a late update never hides its final
      keep = old_time > new_time or (old_time == new_time and old['is_final'] == true and final == '0')
    end
  end
  if not keep then
    redis.call('SET', KEYS[k], ARGV[3 + 2 * tonumber(ARGV[a])], 'EX', ARGV[a + 2])
  end
end
return n
"""


def interval_seconds(interval: str) -> int:
    """Length of a candle interval such as ``1m``, ``4h``, ``1d``, ``1w`` (``M`` counts 31 days)."""
    m = _INTERVAL_RE.match(interval)
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"unknown candle interval {interval!r}")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


@lru_cache(maxsize=64)
def snapshot_ttl(interval: str) -> int:
    return max(3 * interval_seconds(interval), MIN_TTL_S)


@lru_cache(maxsize=8192)
def _iso(ms: int) -> str:
    """Cached: the candles of one batch share a few window bounds, and formatting is most of a candle's JSON cost."""
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def candle_json(c: Candle) -> bytes:
    """The candle's fields plus ISO-8601 UTC copies of its times (``open_time_iso``, ``close_time_iso``).

    orjson writes the dataclass itself (its fields in order, as ``CANDLE_COLUMNS``); the two copies
    are appended to that object: half the cost of building a dict first, on every update sent."""
    return b'%s,"open_time_iso":"%s","close_time_iso":"%s"}' % (orjson.dumps(c)[:-1], _iso(c.open_time).encode(), _iso(c.close_time).encode())


def indicators_json(ind: Indicators) -> bytes:
    """The record's fields plus an ISO-8601 UTC copy of its candle's open time (``open_time_iso``)."""
    doc = {name: getattr(ind, name) for name in INDICATOR_COLUMNS}
    doc["open_time_iso"] = _iso(ind.open_time)
    return orjson.dumps(doc)


def latest_per_key(records: list[Candle] | list[Indicators]) -> dict[str, int]:
    """Index of each key's snapshot record: the newest window, and the last of that window in order,
    except that an in-progress update never replaces its window's final candle."""
    best: dict[str, int] = {}
    for i, c in enumerate(records):
        j = best.get(c.key)
        if j is None or c.open_time > records[j].open_time:
            best[c.key] = i
        elif c.open_time == records[j].open_time and (getattr(c, "is_final", True) or not getattr(records[j], "is_final", True)):
            best[c.key] = i
    return best


def script_calls(kind: str, records: list[Candle] | list[Indicators], encoded: list[bytes]) -> Iterator[tuple[list[str], list[bytes | str | int]]]:
    """(keys, args) of one script call per chunk of ``records``, with ``encoded`` their payloads."""
    ttls = {r.interval: snapshot_ttl(r.interval) for r in records}
    for start in range(0, len(records), CHUNK):
        chunk = records[start : start + CHUNK]
        publishes: list[bytes | str | int] = []
        for r, payload in zip(chunk, encoded[start : start + CHUNK], strict=True):
            publishes += (f"{kind}:{r.key}", payload)
        keys: list[str] = []
        snapshots: list[bytes | str | int] = []
        for key, i in latest_per_key(chunk).items():
            r = chunk[i]
            keys.append(f"latest:{kind}:{key}")
            snapshots += (i, r.open_time, ttls[r.interval], "0" if kind == "candles" and not r.is_final else "1")
        yield keys, [len(chunk), *publishes, *snapshots]


class RedisSink(Sink):
    name = "redis"
    topics = ("candles", "candle_updates", "indicators")
    batch_ms_setting = "redis_sink_batch_ms"  # subscribers wait for every batch: keep it short

    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)
        self._publish = self._redis.register_script(_PUBLISH_AND_SNAPSHOT)

    @classmethod
    def topics_for(cls, settings: Settings) -> tuple[str, ...]:
        """``candle_updates`` only when in-progress candles come this way (``CANDLE_UPDATES=kafka``)."""
        return tuple(t for t in cls.topics if t != "candle_updates" or settings.candle_updates == "kafka")

    def write(self, batch: SinkBatch) -> None:
        if not batch.candles and not batch.indicators:
            return
        try:
            payloads = [candle_json(c) for c in batch.candles]
            ind_payloads = [indicators_json(i) for i in batch.indicators]
            for interval in {r.interval for r in (*batch.candles, *batch.indicators)}:
                snapshot_ttl(interval)  # raises on an interval no TTL can be given
        except (ValueError, OverflowError) as exc:
            raise DataRejected(str(exc)) from exc
        # One EVALSHA per chunk, not a pipeline: redis-py's pipeline asks SCRIPT EXISTS before every
        # execute, a second round trip on the realtime path (the script reloads itself on NOSCRIPT).
        for kind, records, encoded in (("candles", batch.candles, payloads), ("indicators", batch.indicators, ind_payloads)):
            for keys, args in script_calls(kind, records, encoded):
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

    def publish(self, live: LiveCandles) -> None:
        """Queue one symbol's forming candles (the runtime's route for realtime records)."""
        self.offer(live.candles)

    def offer(self, candles: list[Candle]) -> None:
        if self._backoff_s and time.monotonic() < self._retry_at:
            LIVE_DROPPED.labels("redis down").inc(len(candles))
            return
        with self._lock:
            self._pending += candles
            self._idle.clear()
        self._wake.set()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(0.5)
            self._wake.clear()
            with self._lock:
                offered, self._pending = self._pending, []
            if offered:
                self._send(offered)
            with self._lock:
                if not self._pending:
                    self._idle.set()

    def _send(self, offered: list[Candle]) -> None:
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
            for keys, args in script_calls("candles", batch, payloads):
                self._script(keys=keys, args=args)
        except (redis.RedisError, OSError) as exc:
            with self._lock:  # what queued meanwhile is as stale by the retry: dropped too
                stale, self._pending = len(self._pending), []
            LIVE_DROPPED.labels("redis down").inc(len(batch) + stale)
            self._backoff_s = min(max(self._backoff_s * 2, self._backoff_min_s), self._backoff_max_s)
            self._retry_at = time.monotonic() + self._backoff_s
            log.warning("redis unreachable: in-progress candles dropped", error=str(exc), retry_in_s=self._backoff_s)
            return
        LIVE_PUBLISHED.inc(len(batch))
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
