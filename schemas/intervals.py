"""Candle interval names (``1m``, ``4h``, ``1d``, ``1w``): the one parser of them.

The candle book builds epoch-aligned windows, which need a whole number of minutes and at most a day;
exchange klines (backfill) and the Redis snapshots' TTL also meet weeks and months, whose length
only needs to be known (a month counts 31 days, its longest).
"""

from __future__ import annotations

import re

MINUTE_MS = 60_000
INTERVAL_MS: dict[str, int] = {
    "1m": MINUTE_MS,
    "3m": 3 * MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS,
    "1h": 60 * MINUTE_MS,
    "2h": 120 * MINUTE_MS,
    "4h": 240 * MINUTE_MS,
    "6h": 360 * MINUTE_MS,
    "8h": 480 * MINUTE_MS,
    "12h": 720 * MINUTE_MS,
    "1d": 1440 * MINUTE_MS,
}
_UNIT_MS = {"s": 1000, "m": MINUTE_MS, "h": 60 * MINUTE_MS, "d": 1440 * MINUTE_MS, "w": 7 * 1440 * MINUTE_MS, "M": 31 * 1440 * MINUTE_MS}
_INTERVAL_RE = re.compile(r"^([1-9][0-9]*)([smhdwM])$")


def interval_ms(name: str) -> int:
    """Milliseconds of any interval ``<n><unit>``, unit s, m, h, d, w or M (31 days)."""
    if name in INTERVAL_MS:
        return INTERVAL_MS[name]
    m = _INTERVAL_RE.match(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"unknown interval {name!r}: use <n>s, <n>m, <n>h, <n>d, <n>w or <n>M")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_interval(name: str) -> int:
    """Milliseconds of an interval the candle book can build: a whole number of minutes, at most
    days (weeks and months do not start at epoch multiples of their length)."""
    if name in INTERVAL_MS:
        return INTERVAL_MS[name]
    m = _INTERVAL_RE.match(name) if isinstance(name, str) else None
    if m is None or m.group(2) in "wM":
        raise ValueError(f"unknown interval {name!r}: use <n>m, <n>h or <n>d (weeks and months are not epoch-aligned)")
    ms = int(m.group(1)) * _UNIT_MS[m.group(2)]
    if ms % MINUTE_MS:
        raise ValueError(f"interval {name!r} is not a multiple of 1m")
    return ms
