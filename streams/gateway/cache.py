"""Query cache: L1 in this process (cachetools TTL, bounded), L2 in Redis shared by gateway processes.

Entries are response bodies keyed by the canonical request and tagged by the series they read
(``candles:BTCUSDT:1m``). A stored record of that series (a candle closing or revised, an
indicators record) invalidates the tag in both layers: every gateway process hears the same Redis
message and drops its L1 entries, and deletes the L2 keys listed under the tag (idempotent, so N
processes doing it is harmless). A load that started before an invalidation does not store its
(possibly stale) result: each tag has a local generation, checked after the load.

One load per key at a time (single flight): concurrent misses of one key wait for the first.
Hot requests are counted locally and added to a Redis sorted set every few seconds; the gateway
warms the top ones at start and re-runs a tag's hot requests after it is invalidated.
"""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
import structlog
from cachetools import TTLCache
from prometheus_client import Counter

log = structlog.get_logger(__name__)

CACHE_REQUESTS = Counter("tickflow_gateway_cache_requests_total", "Query cache lookups by layer (l1, l2) and result (hit, miss)", ["layer", "result"])
CACHE_INVALIDATIONS = Counter("tickflow_gateway_cache_invalidations_total", "Series tags invalidated because a stored record of theirs arrived")
_L1_HIT, _L1_MISS = CACHE_REQUESTS.labels("l1", "hit"), CACHE_REQUESTS.labels("l1", "miss")
_L2_HIT, _L2_MISS = CACHE_REQUESTS.labels("l2", "hit"), CACHE_REQUESTS.labels("l2", "miss")

PREFIX = "gw:cache:"
HOT_KEY = "gw:hot"

# Delete every L2 entry listed under a tag, and the list.
_DROP_TAG = """
local keys = redis.call('SMEMBERS', KEYS[1])
for i = 1, #keys, 500 do
  redis.call('DEL', unpack(keys, i, math.min(i + 499, #keys)))
end
redis.call('DEL', KEYS[1])
return #keys
"""


class QueryCache:
    def __init__(self, redis: aioredis.Redis | None, *, l1_size: int, ttl_s: float, l2_ttl_s: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self._redis = redis
        self._l1: TTLCache[str, bytes] = TTLCache(l1_size, ttl=ttl_s)
        self._l2_ttl = l2_ttl_s
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
        self._gen: defaultdict[str, int] = defaultdict(int)
        self._by_tag: defaultdict[str, set[str]] = defaultdict(set)  # L1 keys per tag, for invalidation
        self._drop = redis.register_script(_DROP_TAG) if redis is not None else None
        self.hot: Tally[str] = Tally()  # warm-spec -> requests since the last flush

    async def get(self, key: str, tag: str, load: Callable[[], Awaitable[bytes]]) -> bytes:
        if not self.enabled:
            return await load()
        body = self._l1.get(key)
        if body is not None:
            _L1_HIT.inc()
            return body
        _L1_MISS.inc()
        waiting = self._inflight.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            body = await self._fill(key, tag, load)
            fut.set_result(body)
            return body
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved here: waiters get it too, none left unobserved
            raise
        finally:
            del self._inflight[key]

    def peek(self, key: str) -> bytes | None:
        """The L1 entry of ``key`` without counting a lookup: the caller counts it with :meth:`hit` once it answers from it."""
        return self._l1.get(key) if self.enabled else None

    @staticmethod
    def hit() -> None:
        _L1_HIT.inc()

    async def _fill(self, key: str, tag: str, load: Callable[[], Awaitable[bytes]]) -> bytes:
        gen = self._gen[tag]
        if self._redis is not None:
            try:
                body = await self._redis.get(PREFIX + key)
            except (aioredis.RedisError, OSError) as exc:
                log.warning("L2 cache unreachable", error=str(exc))
                body = None
            if body is not None:
                _L2_HIT.inc()
                if gen == self._gen[tag]:
                    self._put_l1(key, tag, body)
                return body
            _L2_MISS.inc()
        body = await load()
        if gen == self._gen[tag]:  # no invalidation meanwhile: the result is current
            self._put_l1(key, tag, body)
            if self._redis is not None:
                try:
                    async with self._redis.pipeline(transaction=False) as p:
                        p.set(PREFIX + key, body, ex=self._l2_ttl)
                        p.sadd(PREFIX + "tag:" + tag, PREFIX + key)
                        p.expire(PREFIX + "tag:" + tag, self._l2_ttl)
                        await p.execute()
                except (aioredis.RedisError, OSError) as exc:
                    log.warning("L2 cache unreachable", error=str(exc))
        return body

    def _put_l1(self, key: str, tag: str, body: bytes) -> None:
        self._l1[key] = body
        keys = self._by_tag[tag]
        keys.add(key)
        if len(keys) > 4 * (self._l1.maxsize or 1):  # expired L1 keys linger here; trim to the live ones
            keys.intersection_update(self._l1.keys())

    async def invalidate(self, tag: str) -> None:
        self._gen[tag] += 1
        CACHE_INVALIDATIONS.inc()
        for key in self._by_tag.pop(tag, ()):
            self._l1.pop(key, None)
        if self._drop is not None:
            try:
                await self._drop(keys=[PREFIX + "tag:" + tag])
            except (aioredis.RedisError, OSError) as exc:
                log.warning("L2 invalidation failed: entries expire by TTL", tag=tag, error=str(exc))

    def count_hot(self, spec: str) -> None:
        self.hot[spec] += 1

    async def flush_hot(self) -> None:
        """Add the local request counts to the ranking all gateway processes share."""
        if self._redis is None or not self.hot:
            return
        counts, self.hot = self.hot, Tally()
        async with self._redis.pipeline(transaction=False) as p:
            for spec, n in counts.items():
                p.zincrby(HOT_KEY, n, spec)
            p.zremrangebyrank(HOT_KEY, 0, -1001)  # keep the top 1,000
            await p.execute()

    async def top_hot(self, n: int) -> list[str]:
        if self._redis is None or n <= 0:
            return [spec for spec, _ in self.hot.most_common(n)]
        return [s.decode() if isinstance(s, bytes) else s for s in await self._redis.zrevrange(HOT_KEY, 0, n - 1)]
