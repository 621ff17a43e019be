"""API keys and per-key rate limits.

A key reads ``tf_<key_id>_<secret>``. ``key_id`` (public, 12 hex characters) finds the key's row in
PostgreSQL (``api_keys``, migration 0008); only a salted scrypt hash of the secret is stored, so a
leaked table gives no usable key. scrypt is slow on purpose (about 20 ms), so verified keys are
remembered for ``GATEWAY_KEY_CACHE_S`` in memory, by a SHA-256 of the presented key: a revoked key
stops working within that time in every gateway process. Keys with an unknown ``key_id`` are refused
without hashing, so a flood of wrong keys costs no scrypt. One check per key runs at a time (the
first requests of a key's burst wait for it rather than each running scrypt), and a key in use is
checked again in the background once half its time is over, so a busy key never waits for scrypt
after its first request; the entry still expires on time, so revocation takes no longer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from cachetools import TTLCache
from psycopg_pool import AsyncConnectionPool

SCOPES = ("read", "stream")  # read: the query API; stream: the WebSocket
_KEY_RE = re.compile(r"^tf_([0-9a-f]{12})_([A-Za-z0-9_\-]{20,100})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
# scrypt cost: n=2^14, r=8 takes 16 MB and about 20 ms per check on one core.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}


@dataclass(frozen=True, slots=True)
class KeyInfo:
    name: str
    scopes: tuple[str, ...]
    rate_limit: float | None  # requests per second; None = the GATEWAY_RATE_LIMIT default


@dataclass(frozen=True, slots=True)
class NewKey:
    key: str  # shown once, never stored
    key_id: str
    salt: bytes
    hash: bytes


def hash_secret(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)


def new_key() -> NewKey:
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_bytes(16)
    return NewKey(f"tf_{key_id}_{secret}", key_id, salt, hash_secret(secret, salt))


def split_key(key: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None."""
    m = _KEY_RE.match(key)
    return (m.group(1), m.group(2)) if m else None


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValueError(f"key name {name!r}: letters, digits, '_', '.', '-', at most 64, starting with a letter or digit")
    return name


def parse_scopes(text: str) -> tuple[str, ...]:
    scopes = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ValueError(f"scopes must be a comma-separated subset of {', '.join(SCOPES)}, got {text!r}")
    return scopes


class TokenBucket:
    """``rate`` requests per second with bursts of ``burst``; pure given the clock passed in."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens, self._last = burst, now

    def take(self, now: float) -> float:
        """0 when the request may go, else the seconds until one token is back (for Retry-After)."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


class RateLimiter:
    """One bucket per key name, in this process (each gateway process limits on its own)."""

    def __init__(self, default_rate: float, burst_s: float = 2.0, max_keys: int = 100_000) -> None:
        self.default_rate, self.burst_s = default_rate, burst_s
        self._buckets: TTLCache[str, TokenBucket] = TTLCache(max_keys, ttl=3600)

    def retry_after(self, key: KeyInfo, now: float | None = None) -> int:
        """0: go; else whole seconds to put in Retry-After (at least 1)."""
        rate = key.rate_limit if key.rate_limit is not None else self.default_rate
        if rate <= 0:  # 0 = unlimited
            return 0
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key.name)
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[key.name] = TokenBucket(rate, max(1.0, rate * self.burst_s), now)
        wait = bucket.take(now)
        return 0 if wait == 0 else max(1, math.ceil(wait))


class KeyStore:
    """``api_keys`` in PostgreSQL: the CLI's create/list/revoke (sync) and the gateway's check (async)."""

    def __init__(self, conninfo: str, cache_s: float = 30.0) -> None:
        self.conninfo = conninfo
        self._pool: AsyncConnectionPool | None = None
        self._verified: TTLCache[bytes, tuple[KeyInfo | None, float]] = TTLCache(50_000, ttl=cache_s)  # digest -> (key, checked at)
        self._refresh_after = cache_s / 2
        self._checking: dict[bytes, asyncio.Future[KeyInfo | None]] = {}

    # CLI side
    def create(self, name: str, scopes: tuple[str, ...], rate_limit: float | None = None) -> str:
        check_name(name)
        k = new_key()
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            try:
                conn.execute(
                    "INSERT INTO api_keys (name, key_id, salt, hash, scopes, rate_limit) VALUES (%s, %s, %s, %s, %s, %s)",
                    (name, k.key_id, k.salt, k.hash, list(scopes), rate_limit),
                )
            except psycopg.errors.UniqueViolation:
                raise ValueError(f"a key named {name!r} exists (revoked keys keep their name)") from None
        return k.key

    def list(self) -> list[dict[str, Any]]:
        with psycopg.connect(self.conninfo) as conn:
            cur = conn.execute("SELECT name, key_id, scopes, rate_limit, created_at, last_used_at, revoked_at FROM api_keys ORDER BY created_at")
            cols = [d.name for d in cur.description or ()]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def revoke(self, name: str) -> bool:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            cur = conn.execute("UPDATE api_keys SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL", (name,))
            return cur.rowcount == 1

    # gateway side
    async def open(self) -> None:
        self._pool = AsyncConnectionPool(self.conninfo, min_size=1, max_size=4, open=False, kwargs={"autocommit": True})
        await self._pool.open(wait=False)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    def cached(self, key: str) -> tuple[bool, KeyInfo | None]:
        """(known, key) from the memory of checked keys, without I/O: (False, None) when it must be checked."""
        digest = hashlib.sha256(key.encode()).digest()
        entry = self._verified.get(digest)
        if entry is None:
            return False, None
        info, checked = entry
        if info is not None and time.monotonic() - checked > self._refresh_after and digest not in self._checking:
            self._check(digest, key)  # in the background: this request goes on with the current answer
        return True, info

    async def verify(self, key: str) -> KeyInfo | None:
        """The key's name and scopes, or None for a malformed, unknown, wrong or revoked key."""
        known, info = self.cached(key)
        if known:
            return info
        digest = hashlib.sha256(key.encode()).digest()
        return await asyncio.shield(self._checking.get(digest) or self._check(digest, key))

    def _check(self, digest: bytes, key: str) -> asyncio.Future[KeyInfo | None]:
        async def check() -> KeyInfo | None:
            try:
                started = time.monotonic()
                info = await self._lookup(key)
                self._verified[digest] = (info, started)
                return info
            finally:
                del self._checking[digest]

        task = self._checking[digest] = asyncio.ensure_future(check())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a failed background check: the entry expires as usual
        return task

    async def _lookup(self, key: str) -> KeyInfo | None:
        parts = split_key(key)
        if parts is None or self._pool is None:
            return None
        key_id, secret = parts
        async with self._pool.connection() as conn:
            row = await (await conn.execute(
                "SELECT name, salt, hash, scopes, rate_limit FROM api_keys WHERE key_id = %s AND revoked_at IS NULL", (key_id,)
            )).fetchone()
            if row is None:
                return None
            name, salt, stored, scopes, rate = row
            computed = await asyncio.to_thread(hash_secret, secret, bytes(salt))  # 20 ms: off the event loop
            if not hmac.compare_digest(computed, bytes(stored)):
                return None
            await conn.execute("UPDATE api_keys SET last_used_at = now() WHERE name = %s", (name,))
        return KeyInfo(name, tuple(scopes), rate)
