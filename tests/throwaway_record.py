"""A record type that exists only in tests, registered for one test at a time.

It proves that the sinks write any registry type with a ``table`` and publish any type with a
``channel`` with no code of their own, and that the migrations generate its tables.
Its fields cover what the generic path handles: a millisecond time (the window), an optional
microsecond time, an optional string, a bool, an int version.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from typing import Any

import pytest

from schemas import codec, registry
from schemas.registry import RecordType

NAME = "test_gauge"
SCHEMA_NAME = "tickflow.test.Gauge"
SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Gauge",
    "namespace": "tickflow.test",
    "fields": [
        {"name": "exchange", "type": "string"},
        {"name": "symbol", "type": "string"},
        {"name": "interval", "type": "string"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "value", "type": "double"},
        {"name": "seen_at", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}], "default": None},
        {"name": "label", "type": ["null", "string"], "default": None},
        {"name": "flag", "type": "boolean"},
        {"name": "version", "type": "int"},
    ],
}


@dataclass(slots=True)
class Gauge:
    exchange: str
    symbol: str
    interval: str
    ts: int  # ms
    value: float
    seen_at: int | None = None  # µs
    label: str | None = None
    flag: bool = False
    version: int = 0

    def to_avro(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> Gauge:
        return cls(**d)


def register(monkeypatch: pytest.MonkeyPatch) -> RecordType:
    """Register the type (its table and topic unique to the calling test) until the test ends."""
    tag = uuid.uuid4().hex[:8]
    rt = RecordType(
        NAME, SCHEMA_NAME, Gauge, f"test-gauges-{tag}", "topic_test_gauges", 9999, lambda g: f"{g.exchange}:{g.symbol}",
        table=f"gauges_{tag}", table_key=("exchange", "symbol", "interval", "ts"), version="version", time_column="ts",
        channel="gauges:{exchange}:{symbol}:{interval}",
    )
    monkeypatch.setitem(registry.RECORDS, NAME, rt)
    monkeypatch.setitem(registry.LOCAL_IDS, SCHEMA_NAME, rt.local_id)
    load = codec.load_schema
    monkeypatch.setattr(codec, "load_schema", lambda name: SCHEMA if name == SCHEMA_NAME else load(name))
    return rt


POSTGRES_ROWS = (
    "SELECT exchange, symbol, \"interval\", (extract(epoch FROM ts) * 1000)::int8, value, "
    "(extract(epoch FROM seen_at) * 1000000)::int8, label, flag, version FROM {table} ORDER BY symbol, ts"
)
CLICKHOUSE_ROWS = (
    "SELECT exchange, symbol, `interval`, toUnixTimestamp64Milli(ts), value, toUnixTimestamp64Micro(seen_at), label, flag, version "
    "FROM {table} FINAL ORDER BY symbol, ts"
)
