"""Avro schemas and codec: round trips, the Confluent wire format, bad bytes, evolution, Schema Registry.

Evolution rule. A record is read with the *writer's* schema (found by the id in its header) and
resolved into the *reader's* schema, so every schema change must keep both directions readable:
new readers must read old records and old readers new records (Avro FULL compatibility):

- a new field is optional with a default (``{"name": "venue_seq", "type": ["null", "long"],
  "default": null}``); old readers skip it, new readers fill in the default for old records;
- fields are never removed, renamed or retyped; add a new field instead;
- enum symbols are only appended, and the enum keeps its ``default`` so an old reader can map a
  new symbol;
- a changed schema is a new version with a new id (the registry's, or a new ``LOCAL_IDS`` entry);
  an id always means the same schema.

A new field *without* a default breaks new readers on old records; a test below shows that this
fails as ``DecodeError`` rather than with wrong values.
"""

from __future__ import annotations

import copy
import json
import random
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from schemas.codec import LOCAL_IDS, SCHEMA_DIR, AvroCodec, DecodeError, load_schema
from schemas.models import (
    Candle,
    DeadLetter,
    FearGreed,
    Indicators,
    LateTrade,
    LiveCandles,
    NewsScored,
    OnchainBlock,
    OnchainBlockMetric,
    OnchainDay,
    OnchainInput,
    OnchainMetric,
    OnchainOutput,
    OnchainTx,
    RiskBar,
    SentimentAggregate,
    Signal,
    Trade,
    day_ms,
    TradeBatch,
    TradeIntent,
)
from streams.settings import Settings

TB = "tickflow.TradeBatch"
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
EXTREME_FLOATS = [0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1.7976931348623157e308, float("inf"), float("-inf"), float("nan")]
SYMBOLS = ["BTC/USDT", "", "比特币/USDT", "ÄÖÜ€/EUR", "🚀MOON/USDT", "nul\x00byte", "x" * 10_000]


def same(a: object, b: object) -> bool:
    """Exact equality, NaN and the sign of zero included (repr of a float round-trips its bits).
    A decoded batch's trades are plain tuples in Trade's field order: compared as tuples."""

    def plain(x: object) -> object:
        if isinstance(x, TradeBatch):
            return (x.exchange, x.symbol, x.received_at, [tuple(t) for t in x.trades])
        return x

    return repr(plain(a)) == repr(plain(b))


# ---------------------------------------------------------------------------- fake Schema Registry


class FakeRegistry:
    """Just enough of the Confluent Schema Registry REST API, in a thread.

    ``POST /subjects/{subject}/versions`` -> ``{"id": n}`` (an identical schema gets its old id, as in
    Confluent's), ``GET /schemas/ids/{id}`` -> ``{"schema": "..."}`` or 404. Ids start at 1001 so none
    coincides with a ``LOCAL_IDS`` id by accident.
    """

    def __init__(self) -> None:
        self.schemas: dict[int, dict[str, str]] = {}  # id -> the GET /schemas/ids/{id} answer
        self._canonical: dict[str, int] = {}
        self.subjects: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                path = urlsplit(self.path).path
                fake.requests.append(("POST", path))
                parts = path.strip("/").split("/")
                if len(parts) != 3 or parts[0] != "subjects" or parts[2] != "versions":
                    return self._reply(404, {"error_code": 404, "message": "not found"})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._reply(200, {"id": fake.add(parts[1], body["schema"])})

            def do_GET(self) -> None:  # noqa: N802
                path = urlsplit(self.path).path
                fake.requests.append(("GET", path))
                parts = path.strip("/").split("/")
                if len(parts) == 3 and parts[:2] == ["schemas", "ids"] and parts[2].isdigit() and int(parts[2]) in fake.schemas:
                    return self._reply(200, fake.schemas[int(parts[2])])
                self._reply(404, {"error_code": 40403, "message": "Schema not found"})

            def _reply(self, status: int, doc: dict[str, Any]) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def add(self, subject: str, text: str, schema_type: str | None = None) -> int:
        canonical = json.dumps(json.loads(text), sort_keys=True) if schema_type is None else text
        with self._lock:
            found = self._canonical.get(canonical)
            if found is None:
                found = self._canonical[canonical] = 1001 + len(self.schemas)
                self.schemas[found] = {"schema": text} | ({"schemaType": schema_type} if schema_type else {})
            versions = self.subjects.setdefault(subject, [])
            if found not in versions:
                versions.append(found)
            return found

    def gets(self, schema_id: int) -> int:
        return self.requests.count(("GET", f"/schemas/ids/{schema_id}"))

    def __enter__(self) -> FakeRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    with FakeRegistry() as fake:
        yield fake


# ---------------------------------------------------------------------------- round trips


def trade_batches() -> list[TradeBatch]:
    trades = [
        Trade("1", 1_700_000_000_000_000, 42_000.5, 0.001, "buy"),
        Trade("", I64_MIN, 5e-324, 1.7976931348623157e308, "sell"),
        Trade("ид-💥", I64_MAX, float("inf"), float("nan"), "unknown"),
        Trade("x" * 1000, 0, -0.0, float("-inf"), "buy"),
    ]
    return [
        TradeBatch("binance", "BTC/USDT", 1_700_000_000_123_456, []),
        TradeBatch("binance", "BTC/USDT", 1_700_000_000_123_456, trades),
        *(TradeBatch("ex-ü", s, I64_MAX, trades[:1]) for s in SYMBOLS),
        TradeBatch("e", "s", 0, [Trade(str(i), i, float(i), 1.0, "buy") for i in range(5000)]),
    ]


def candles() -> list[Candle]:
    base = dict(exchange="binance", symbol="ETH/USDT", interval="1m", open_time=1_700_000_040_000, close_time=1_700_000_099_999)
    out = [
        Candle(**base, open=1.0, high=2.0, low=0.5, close=1.5, volume=10.0, quote_volume=15.0, trade_count=3),
        Candle(**base, open=1.0, high=2.0, low=0.5, close=1.5, volume=0.0, quote_volume=0.0, trade_count=0, vwap=None, taker_buy_volume=0.0, first_trade_id="", last_trade_id="🚀", is_final=True, revision=I32_MAX),
        Candle("ü", "比特币/USDT", "1d", I64_MIN, I64_MAX, *EXTREME_FLOATS[5:], 1e308, 5e-324, I64_MAX, -0.0, float("nan"), "a", "b", True, I32_MIN),
    ]
    for f in EXTREME_FLOATS:
        out.append(Candle(**base, open=f, high=f, low=f, close=f, volume=f, quote_volume=f, trade_count=I64_MIN, vwap=f, taker_buy_volume=f))
    return out


def dead_letters() -> list[DeadLetter]:
    return [
        DeadLetter("ingest", "bad price nan", b"", 0),
        DeadLetter("sink-clickhouse", "rejected: ü", bytes(range(256)) * 100, I64_MAX, "ticks", I32_MAX, I64_MAX, b"\x00\xff"),
        DeadLetter("candles", "", b"\x00", I64_MIN, "", I32_MIN, I64_MIN, b""),
    ]


def late_trades() -> list[LateTrade]:
    return [
        LateTrade("binance", s, Trade(str(i), ts, px, amt, side), "1m window closed", wm)
        for i, (s, ts, px, amt, side, wm) in enumerate(
            [
                ("BTC/USDT", 1_700_000_000_000_000, 1.0, 2.0, "buy", 1_700_000_100_000_000),
                ("比特币/USDT", I64_MIN, float("nan"), float("-inf"), "unknown", I64_MAX),
                ("", I64_MAX, -0.0, 5e-324, "sell", I64_MIN),
            ]
        )
    ]


def indicators() -> list[Indicators]:
    names = [f for f in Indicators.__dataclass_fields__ if f not in {"exchange", "symbol", "interval", "open_time", "close", "candle_revision"}]
    return [
        Indicators("binance", "BTC/USDT", "1m", 1_700_000_040_000, 42_000.0),
        Indicators("ü", "🚀/USDT", "4h", I64_MAX, float("nan"), I32_MAX, **{n: EXTREME_FLOATS[i % len(EXTREME_FLOATS)] for i, n in enumerate(names)}),
        Indicators("e", "s", "1d", I64_MIN, -0.0, I32_MIN, **{n: (None if i % 2 else 1.0 / (i + 1)) for i, n in enumerate(names)}),
    ]


def onchain_days() -> list[OnchainDay]:
    from datetime import date

    return [
        OnchainDay("btc", day_ms(date(2009, 1, 3)), "coinmetrics"),
        OnchainDay("eth", day_ms(date(2020, 7, 27)), "coinmetrics", 320.5, 3.6e10, None, 1.1e8, 5e8, 5e5, 1e6, 1234.5, 7e6),
        OnchainDay("", -86_400_000, "x", 0.0, 5e-324, 1.7976931348623157e308),
    ]


def onchain_blocks() -> list[OnchainBlock]:
    return [
        OnchainBlock("btc", 0, "0" * 64, None, 1231006505, [OnchainTx("t", True, [], [OnchainOutput(5_000_000_000, "1A1z")])]),
        OnchainBlock("btc", 2**40, "f" * 64, "e" * 64, 2**33, [
            OnchainTx("a", False, [OnchainInput(None), OnchainInput(2_100_000_000_000_000, "比特币", 1), OnchainInput(0, None, None)], [OnchainOutput(0), OnchainOutput(1, "")]),
        ]),
        OnchainBlock("", 1, "", "", 1, []),
    ]


def onchain_metrics() -> list[OnchainMetric]:
    from datetime import date

    return [
        OnchainMetric("btc", day_ms(date(2020, 7, 27)), "coinmetrics"),
        OnchainMetric("btc", day_ms(date(2010, 4, 10)), "bitcoind", 2**31 - 1, *([1.5] * 12), 2**63 - 1, 0.0, 150.0, 1.0, 0.75, 1.0, 2.0, -1.0, '{"x":[1.0,2.0]}', 3, 50000, 50002),
        OnchainMetric("", 2**62, "", 0, float("inf"), -0.0),
    ]


RECORDS = {
    "tickflow.TradeBatch": (TradeBatch, trade_batches()),
    "tickflow.Candle": (Candle, candles()),
    "tickflow.LiveCandles": (LiveCandles, [LiveCandles([]), LiveCandles(candles()[:1]), LiveCandles(candles())]),
    "tickflow.DeadLetter": (DeadLetter, dead_letters()),
    "tickflow.LateTrade": (LateTrade, late_trades()),
}
if (SCHEMA_DIR / "tickflow.Indicators.avsc").exists():
    RECORDS["tickflow.Indicators"] = (Indicators, indicators())
    RECORDS["tickflow.OnchainDay"] = (OnchainDay, onchain_days())
    RECORDS["tickflow.OnchainBlock"] = (OnchainBlock, onchain_blocks())
    RECORDS["tickflow.OnchainMetric"] = (OnchainMetric, onchain_metrics())
    RECORDS["tickflow.OnchainBlockMetric"] = (OnchainBlockMetric, [
        OnchainBlockMetric("btc", 50001, "0" * 64, 1_270_884_095_000, 0, False, 3, 0.0, 1.5, 7, None, None, None),
        OnchainBlockMetric("", 2**62, "", I64_MIN, 2**31 - 1, True, 2**63 - 1, None, -0.0, None, 1.0, 2.0, -1.0),
    ])
RECORDS["tickflow.NewsScored"] = (NewsScored, [
    NewsScored("news", "https://x.test/a", 1_648_796_400_000, "Bitcoin nears 19 million coins", "positive", 0.4123, "BTC", "lr-1", 1_700_000_000_000_000),
    NewsScored("social", "1534", 1_654_614_334_000, "gm ☀️ $sol", "neutral", -0.0, "", "lr-1", 1, "text", "https://t.co/x", 869.0),
])
RECORDS["tickflow.FearGreed"] = (FearGreed, [FearGreed(1_517_443_200_000, 30, "Fear", "fear_greed.csv", 1_700_000_000_000_000)])
RECORDS["tickflow.SentimentAggregate"] = (SentimentAggregate, [
    SentimentAggregate("BTC", "1h", 1_648_796_400_000, 1_648_799_999_999, 3, 0.125, 1 / 3, 1 / 3, 1 / 3, 0.0, None, None, None, True, 0),
    SentimentAggregate("MARKET", "1d", 1_648_771_200_000, 1_648_857_599_999, 2**40, -1.0, 0.0, 1.0, 0.0, 1e9, -0.5, 12, "Extreme Fear", True, 2**31 - 1),
])


def signals() -> list[Signal]:
    return [
        Signal("s", "1", "binance", "BTC/USDT", "1m", 1_700_000_040_000, 1_700_000_099_999, 42_000.5, "long", 0.75, 0.75, "rsi: RSI 25.0 < 30 -> long (weight 1)\nmacd_cross: MACD 1.5 crossed above signal 1.2 -> long (weight 2)"),
        Signal("ü", "2.0", "e", "🚀", "1d", I64_MAX, I64_MIN, -0.0, "flat", 1.0, -0.25, "", I32_MAX, I64_MIN, None, I64_MAX, 0),
    ]


def intents() -> list[TradeIntent]:
    return [
        TradeIntent("s:e:S:1m:0:0", "s", "1", "e", "S", "1m", 0, 60_000, 0, "open", "buy", "long", "signal", "accepted", 1.5, 1.5, 100.0, 98.0, 103.0, 10_000.0, 0.8, "why"),
        TradeIntent("x", "s", "1", "e", "S", "1m", I64_MIN, I64_MAX, I32_MAX, "close", "sell", "long", "stop", "rejected", 0.0, 2.0, 1e-300, None, None, -1.0, 0.0, "ü"),
    ]


RECORDS["tickflow.Signal"] = (Signal, signals())
RECORDS["tickflow.TradeIntent"] = (TradeIntent, intents())
RECORDS["tickflow.RiskBar"] = (RiskBar, [
    RiskBar("s", "1", "e", "S", "1m", 0, 59_999, 101.5, 99.0, 100.0, 1.25, "long", 0.8),
    RiskBar("x", "", "e", "S", "1d", I64_MIN, I64_MAX, 1e300, -0.0, 1e-300, None, "flat", 0.0),
])


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_round_trip_is_exact(name: str) -> None:
    model, records = RECORDS[name]
    codec = AvroCodec(name)
    for record in records:
        data = codec.encode(record.to_avro())
        back = model.from_avro(codec.decode(data))
        assert same(back, record), f"{name}: {record!r} came back as {back!r}"
        assert codec.encode(back.to_avro()) == data


def test_every_schema_file_has_a_local_id_and_a_tested_round_trip() -> None:
    top_level = {p.stem for p in SCHEMA_DIR.glob("tickflow.*.avsc")} - {"tickflow.Trade"}
    assert top_level <= set(LOCAL_IDS), f"schemas without a local id: {top_level - set(LOCAL_IDS)}"
    assert top_level <= set(RECORDS), f"schemas without a round-trip test: {top_level - set(RECORDS)}"
    assert len(set(LOCAL_IDS.values())) == len(LOCAL_IDS), "a local id is used twice"


def test_decoded_times_stay_integers() -> None:
    """Logical types are stripped on purpose: times decode as int, not datetime."""
    codec = AvroCodec(TB)
    back = codec.decode(codec.encode(trade_batches()[1].to_avro()))
    assert type(back["received_at"]) is int
    assert all(type(t["ts"]) is int for t in back["trades"])


# ---------------------------------------------------------------------------- wire format


@pytest.mark.parametrize("name", sorted(LOCAL_IDS))
def test_wire_header_is_magic_zero_and_big_endian_id(name: str) -> None:
    model, records = RECORDS[name]
    data = AvroCodec(name).encode(records[0].to_avro())
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == LOCAL_IDS[name]
    assert data[1:5] == LOCAL_IDS[name].to_bytes(4, "big")


def test_explicit_schema_id_is_written_big_endian() -> None:
    codec = AvroCodec(TB, schema_id=0x01020304)
    data = codec.encode(trade_batches()[0].to_avro())
    assert data[:5] == b"\x00\x01\x02\x03\x04"
    assert codec.decode(data)["trades"] == []


def test_body_is_plain_schemaless_avro() -> None:
    """After the header comes the bare Avro binary encoding: strings are zigzag length + UTF-8."""
    data = AvroCodec(TB).encode(TradeBatch("ab", "c", 1, []).to_avro())
    assert data[5:] == b"\x04ab" + b"\x02c" + b"\x02" + b"\x00"


# ---------------------------------------------------------------------------- bad bytes


def valid_bytes(name: str) -> bytes:
    model, records = RECORDS[name]
    return AvroCodec(name).encode(records[min(1, len(records) - 1)].to_avro())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "shorter than"),
        (b"", "shorter than"),
        (b"\x00", "shorter than"),
        (b"\x00\x00\x00\x00", "shorter than"),
        (b"\x01\x00\x00\x00\x01" + valid_bytes(TB)[5:], "bad magic"),
        (b"\xff\x00\x00\x00\x01", "bad magic"),
        (b"\x00\x00\x00\x03\xe7" + valid_bytes(TB)[5:], "unknown schema id 999"),
        (b"\x00\xff\xff\xff\xff", "unknown schema id"),
        (b"\x00\x00\x00\x00\x01", "undecodable"),
        (valid_bytes(TB) + b"\x00", "1 trailing bytes"),
        (valid_bytes(TB) + b"garbage", "7 trailing bytes"),
    ],
)
def test_bad_bytes_raise_decode_error(data: bytes | None, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        AvroCodec(TB).decode(data)


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_every_truncation_is_a_decode_error(name: str) -> None:
    data = valid_bytes(name)
    codec = AvroCodec(name)
    for end in range(len(data)):
        with pytest.raises(DecodeError):
            codec.decode(data[:end])


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_another_record_type_is_a_decode_error(name: str) -> None:
    codec = AvroCodec(name)
    for other in RECORDS:
        if other != name:
            with pytest.raises(DecodeError):
                codec.decode(valid_bytes(other))


def test_random_bytes_only_ever_raise_decode_error() -> None:
    """Seeded fuzz: raw random bytes, random bodies behind every valid header, and mutated records."""
    rng = random.Random(20240809)
    codecs = [AvroCodec(name) for name in sorted(RECORDS)]
    headers = [b""] + [struct.pack(">bI", 0, i) for i in sorted(LOCAL_IDS.values())]
    valid = [valid_bytes(name) for name in sorted(RECORDS)]
    decoded = 0
    for i in range(6000):
        codec = codecs[i % len(codecs)]
        kind = i % 3
        if kind == 0:
            data = rng.randbytes(rng.randrange(0, 80))
        elif kind == 1:
            data = rng.choice(headers) + rng.randbytes(rng.randrange(0, 80))
        else:
            buf = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 4)):
                pos = rng.randrange(5, len(buf) + 1)
                op = rng.randrange(3)
                if op == 0 and pos < len(buf):
                    buf[pos] = rng.getrandbits(8)
                elif op == 1:
                    del buf[pos:]
                else:
                    buf[pos:pos] = rng.randbytes(rng.randrange(1, 9))
            data = bytes(buf)
        try:
            record = codec.decode(data)
        except DecodeError:
            continue
        decoded += 1
        assert isinstance(record, dict)
    assert decoded < 6000  # the fuzz did reach the failure paths


# ---------------------------------------------------------------------------- schema evolution


def trade_batch_v2(field: dict[str, Any] | None = None) -> dict[str, Any]:
    """TradeBatch whose Trade has one more field (default: ``venue_seq``, optional, default null)."""
    schema = copy.deepcopy(load_schema(TB))
    trade = next(f for f in schema["fields"] if f["name"] == "trades")["type"]["items"]
    trade["fields"].append(field or {"name": "venue_seq", "type": ["null", "long"], "default": None})
    return schema


V2_ID = 9001


def v2_record() -> dict[str, Any]:
    record = trade_batches()[1].to_avro()
    for i, t in enumerate(record["trades"]):
        t["venue_seq"] = [None, 7, I64_MAX, I64_MIN][i % 4]
    return record


def test_v2_round_trip_with_its_own_schema() -> None:
    codec = AvroCodec(TB, schema=trade_batch_v2(), schema_id=V2_ID)
    record = v2_record()
    assert same(codec.decode(codec.encode(record)), record)


def test_old_reader_reads_new_writer_through_the_registry(registry: FakeRegistry) -> None:
    """The v1 reader has never seen the v2 id: it fetches the writer schema and skips the new field."""
    writer = AvroCodec(TB, topic="ticks", registry=SchemaRegistryClient({"url": registry.url}), schema=trade_batch_v2())
    reader = AvroCodec(TB, registry=SchemaRegistryClient({"url": registry.url}), schema_id=LOCAL_IDS[TB])
    data = writer.encode(v2_record())
    assert struct.unpack(">I", data[1:5])[0] == writer.schema_id
    back = reader.decode(data)
    assert all("venue_seq" not in t for t in back["trades"])
    assert same(TradeBatch.from_avro(back), trade_batches()[1])
    assert registry.gets(writer.schema_id) == 1
    reader.decode(data)
    assert registry.gets(writer.schema_id) == 1, "the writer schema is fetched once, then cached"


def test_new_reader_reads_old_writer_with_the_default() -> None:
    """No registry needed: the old writer's id is a local id, whose schema ships with the code."""
    old = AvroCodec(TB)
    new = AvroCodec(TB, schema=trade_batch_v2(), schema_id=V2_ID)
    original = trade_batches()[1]
    back = new.decode(old.encode(original.to_avro()))
    assert [t["venue_seq"] for t in back["trades"]] == [None] * len(original.trades)
    assert same(TradeBatch.from_avro(back), original)


def test_new_reader_reads_old_writer_through_the_registry(registry: FakeRegistry) -> None:
    old = AvroCodec(TB, topic="ticks", registry=SchemaRegistryClient({"url": registry.url}))
    new = AvroCodec(TB, registry=SchemaRegistryClient({"url": registry.url}), schema=trade_batch_v2(), schema_id=V2_ID)
    original = trade_batches()[1]
    back = new.decode(old.encode(original.to_avro()))
    assert [t["venue_seq"] for t in back["trades"]] == [None] * len(original.trades)
    assert registry.gets(old.schema_id) == 1


def test_old_reader_without_the_new_id_says_so() -> None:
    data = AvroCodec(TB, schema=trade_batch_v2(), schema_id=V2_ID).encode(v2_record())
    with pytest.raises(DecodeError, match=f"unknown schema id {V2_ID}"):
        AvroCodec(TB).decode(data)


def test_a_new_field_without_default_breaks_old_records_as_decode_error() -> None:
    """Why the evolution rule demands defaults: resolution fails, and fails loudly."""
    broken = AvroCodec(TB, schema=trade_batch_v2({"name": "venue_seq", "type": "long"}), schema_id=V2_ID)
    with pytest.raises(DecodeError, match="undecodable"):
        broken.decode(AvroCodec(TB).encode(trade_batches()[1].to_avro()))


# ---------------------------------------------------------------------------- Schema Registry


def test_codec_registers_under_topic_value(registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", registry.url)
    url = Settings().kafka.schema_registry_url
    assert url == registry.url
    client = SchemaRegistryClient({"url": url})
    ticks = AvroCodec(TB, topic="ticks-x", registry=client)
    candles_ = AvroCodec("tickflow.Candle", topic="candles-x", registry=client)
    unnamed = AvroCodec("tickflow.DeadLetter", registry=client)
    assert registry.subjects == {
        "ticks-x-value": [ticks.schema_id],
        "candles-x-value": [candles_.schema_id],
        "tickflow.DeadLetter-value": [unnamed.schema_id],
    }
    assert json.loads(registry.schemas[ticks.schema_id]["schema"]) == load_schema(TB)
    assert len({ticks.schema_id, candles_.schema_id, unnamed.schema_id}) == 3
    data = ticks.encode(trade_batches()[1].to_avro())
    assert data[:5] == struct.pack(">bI", 0, ticks.schema_id)
    assert ticks.schema_id not in LOCAL_IDS.values()
    again = AvroCodec(TB, topic="ticks-x", registry=SchemaRegistryClient({"url": url}))
    assert again.schema_id == ticks.schema_id, "registering an unchanged schema keeps its id"


def test_reader_resolves_an_unseen_writer_id(registry: FakeRegistry) -> None:
    writer = AvroCodec("tickflow.Candle", topic="candles", registry=SchemaRegistryClient({"url": registry.url}))
    reader = AvroCodec("tickflow.Candle", registry=SchemaRegistryClient({"url": registry.url}), schema_id=LOCAL_IDS["tickflow.Candle"])
    assert registry.gets(writer.schema_id) == 0
    for c in candles():
        assert same(Candle.from_avro(reader.decode(writer.encode(c.to_avro()))), c)
    assert registry.gets(writer.schema_id) == 1


def test_id_missing_from_the_registry_is_a_decode_error(registry: FakeRegistry) -> None:
    reader = AvroCodec(TB, registry=SchemaRegistryClient({"url": registry.url}), schema_id=LOCAL_IDS[TB])
    with pytest.raises(DecodeError, match="not in registry"):
        reader.decode(struct.pack(">bI", 0, 4242) + valid_bytes(TB)[5:])


@pytest.mark.parametrize(
    ("text", "schema_type"),
    [
        ('syntax = "proto3"; message Trade { string id = 1; }', "PROTOBUF"),
        ('{"type": "object", "properties": {"id": {"type": "string"}}}', "JSON"),
    ],
)
def test_non_avro_writer_schema_is_a_decode_error(registry: FakeRegistry, text: str, schema_type: str) -> None:
    """Another producer's Protobuf or JSON-Schema record on the topic is bad input, not a crash."""
    schema_id = registry.add("ticks-value", text, schema_type)
    reader = AvroCodec(TB, registry=SchemaRegistryClient({"url": registry.url}), schema_id=LOCAL_IDS[TB])
    with pytest.raises(DecodeError, match=f"schema id {schema_id}"):
        reader.decode(struct.pack(">bI", 0, schema_id) + b"\x02a")


def test_hand_written_to_avro_has_every_field() -> None:
    """Candle and TradeBatch build their Avro dicts by hand (asdict/_asdict are slow): none may miss a field."""
    import dataclasses

    c = Candle("binance", "BTCUSDT", "1m", 60_000, 119_999, 1.0, 2.0, 0.5, 1.5, 3.0, 4.5, 3, 1.4, 1.0, "1", "3", True, 2)
    assert c.to_avro() == dataclasses.asdict(c)
    b = TradeBatch("binance", "BTCUSDT", 1, [Trade("1", 2, 3.0, 4.0, "buy")])
    assert b.to_avro()["trades"] == [t._asdict() for t in b.trades]
    assert TradeBatch.from_avro(b.to_avro()) == b


def test_with_a_registry_every_writer_uses_registered_ids(registry: FakeRegistry) -> None:
    """Ingest, the candle agent, the indicator agent and dead letters all write registry ids, and
    read each other's records, when SCHEMA_REGISTRY_URL is set."""
    from agents.candle_agent import CandleLogic
    from agents.indicator_agent import IndicatorLogic
    from agents.spec import AgentContext, Emit, Inbound
    from schemas.codec import codec_for
    from schemas.wire import encoder_for

    settings = Settings(schema_registry_url=registry.url, topic_ticks="ticks-r", topic_candles="candles-r", topic_indicators="ind-r", candle_update_ms=0)
    ticks = codec_for(TB, settings.kafka.topic_ticks, settings.kafka.schema_registry_url)
    candle_codec = codec_for("tickflow.Candle", settings.kafka.topic_candles, settings.kafka.schema_registry_url)
    ind_codec = codec_for("tickflow.Indicators", settings.kafka.topic_indicators, settings.kafka.schema_registry_url)
    candles = CandleLogic(AgentContext(settings, 0))
    t0 = 1_700_000_000_000_000  # µs
    out: list = []
    for offset in range(30):  # a trade every 20 s over 10 minutes, through the wire and back
        trade = Trade(str(offset), t0 + offset * 20_000_000, 100.0 + offset, 1.0, "buy")
        batch = TradeBatch.from_avro(ticks.decode(encoder_for(ticks)(TradeBatch("binance", "BTC/USDT", trade.ts, [trade]))))
        out += candles.on_batch([Inbound("trade_batch", None, batch, offset)])
    out += candles.on_timer(0.0, float("inf"))
    encode = encoder_for(candle_codec)
    produced = [encode(o.value) for o in out if isinstance(o, Emit) and o.record == "candle"]
    assert produced
    ids = {struct.unpack_from(">bI", v)[1] for v in produced}
    assert ids == set(registry.subjects["candles-r-value"]) and not ids & set(LOCAL_IDS.values())

    indicators = IndicatorLogic(AgentContext(settings.updated(indicator_warm_start_bars=0), 0))
    read = [Inbound("candle", None, Candle.from_avro(candle_codec.decode(v)), i) for i, v in enumerate(produced)]
    encode_ind = encoder_for(ind_codec)
    written = [encode_ind(o.value) for o in indicators.on_batch(read) if isinstance(o, Emit)]
    assert written and {struct.unpack_from(">bI", v)[1] for v in written} == set(registry.subjects["ind-r-value"])


def _random_candle(rng: random.Random) -> Candle:
    def maybe(value: Any) -> Any:
        return None if rng.random() < 0.3 else value

    def number() -> float:
        return rng.choice([0.0, -0.0, rng.uniform(-1e9, 1e9), rng.expovariate(1e-3), 1e-300, float("inf"), 12345.678901234])

    text = lambda: "".join(rng.choice("abcXYZ/:-_0é€🙂") for _ in range(rng.randrange(0, 40)))  # noqa: E731
    open_time = rng.randrange(-(2**62), 2**62) if rng.random() < 0.2 else rng.randrange(0, 2**41)
    return Candle(
        text(), text(), rng.choice(["1m", "5m", "1d", text()]), open_time, open_time + rng.randrange(0, 2**31),
        number(), number(), number(), number(), number(), number(), rng.choice([0, 1, 127, 128, 4095, 4096, 2**63 - 1, rng.randrange(2**40)]),
        maybe(number()), maybe(number()), maybe(text()), maybe(str(rng.randrange(10**18))), rng.random() < 0.5,
        rng.choice([0, 1, 63, 64, 2**31 - 1, rng.randrange(1000)]),
    )


def test_hand_compiled_candle_writer_writes_fastavros_bytes() -> None:
    from schemas.wire import CandleWriter

    codec = AvroCodec("tickflow.Candle")
    writer = CandleWriter(codec)
    rng = random.Random(7)
    for _ in range(5000):
        c = _random_candle(rng)
        assert writer.encode(c) == codec.encode(c.to_avro()), c


def test_hand_compiled_live_candles_writer_writes_fastavros_bytes() -> None:
    from schemas.wire import LiveCandlesWriter

    codec = AvroCodec("tickflow.LiveCandles")
    writer = LiveCandlesWriter(codec)
    rng = random.Random(8)
    for n in [0, 1, 2, 6, 63, 64, 65, *(rng.randrange(0, 20) for _ in range(300))]:
        candles = [_random_candle(rng) for _ in range(n)]
        encoded = writer.encode(candles)
        assert encoded == codec.encode(LiveCandles(candles).to_avro()), candles
    with pytest.raises(ValueError, match="tickflow.Candle"):
        LiveCandlesWriter(AvroCodec("tickflow.Candle"))


def test_hand_compiled_trade_batch_writer_writes_fastavros_bytes() -> None:
    from schemas.wire import TradeBatchWriter

    codec = AvroCodec("tickflow.TradeBatch")
    writer = TradeBatchWriter(codec)
    rng = random.Random(9)
    text = lambda: "".join(rng.choice("abcXYZ/:-_0é€🙂") for _ in range(rng.randrange(1, 40)))  # noqa: E731

    def number() -> float:
        return rng.choice([1e-300, rng.uniform(1e-9, 1e9), rng.expovariate(1e-3), 12345.678901234, 7, float("inf")])

    batches = [*trade_batches()]
    for _ in range(500):
        trades = [
            Trade(text(), rng.choice([0, -1, 63, 64, I64_MAX, I64_MIN, rng.randrange(2**40, 2**53)]), number(), number(), rng.choice(["buy", "sell", "unknown"]))
            for _ in range(rng.choice([0, 1, 2, 63, 64, 65, rng.randrange(0, 300)]))
        ]
        batches.append(TradeBatch(text(), text(), rng.randrange(0, 2**53), trades))
    for b in batches:
        assert writer.encode(b) == codec.encode(b.to_avro()), b
    with pytest.raises(ValueError, match="tickflow.Candle"):
        TradeBatchWriter(AvroCodec("tickflow.Candle"))


def test_hand_compiled_candle_writer_uses_the_codecs_schema_id() -> None:
    from schemas.wire import CandleWriter

    codec = AvroCodec("tickflow.Candle", schema_id=40_000)
    c = _random_candle(random.Random(1))
    assert CandleWriter(codec).encode(c) == codec.encode(c.to_avro())
    with pytest.raises(ValueError, match="tickflow.Indicators"):
        CandleWriter(AvroCodec("tickflow.Indicators"))


def test_hand_compiled_candle_writer_refuses_a_schema_it_does_not_match() -> None:
    from schemas.wire import CandleWriter

    changed = copy.deepcopy(load_schema("tickflow.Candle"))
    changed["fields"].insert(3, {"name": "venue", "type": "string", "default": ""})
    with pytest.raises(RuntimeError, match="no longer matches"):
        CandleWriter(AvroCodec("tickflow.Candle", schema=changed, schema_id=40_001))
