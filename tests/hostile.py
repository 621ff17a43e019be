"""A good trade stream with hostile records mixed in, and the same stream clean, for the hostile
input tests (``tests/test_hostile.py`` in ``make test``, ``tests/chaos/test_hostile.py`` at scale).

The stream has two entries, as in production: a replay file read by ingest (bad rows of every kind
between good ones) and records written straight to ``ticks`` by "another producer" (bad Avro
bytes, and valid Avro with bad names, values or keys, some next to good trades). Each bad item
names the dead-letter code it must get; duplicates and late trades are counted, not dead-lettered.
The clean stream is the same good rows and good direct trades without any bad item.
"""

from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

from schemas.codec import AvroCodec
from schemas.models import Trade, TradeBatch
from schemas.validation import Reason
from schemas.wire import TradeBatchWriter

T0_US = 1_704_067_200_000_000  # 2024-01-01 00:00 UTC
EXCHANGE = "binance-futures"
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
DIRECT = ("direct", "XRP/USDT")  # the other producer's good trades, before the file's in event time
HEADER = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"
FAR_FUTURE_US = 4_102_444_800_000_000  # 2100
BIG = 1_000_000  # bytes of an oversized record
MAX_BIG = 3  # oversized items per kind: each costs a megabyte in the broker, and in every dead letter

# Rows of the replay file: (code, row). ``{ts}``, ``{id}``, ``{sym}`` are filled in per row.
ROW_KINDS: tuple[tuple[Reason, str], ...] = (
    (Reason.BAD_PRICE, "{ex},{sym},{ts},{ts},{id},buy,nan,1.0"),
    (Reason.BAD_PRICE, "{ex},{sym},{ts},{ts},{id},buy,inf,1.0"),
    (Reason.BAD_PRICE, "{ex},{sym},{ts},{ts},{id},sell,-5.0,1.0"),
    (Reason.BAD_PRICE, "{ex},{sym},{ts},{ts},{id},sell,0,1.0"),
    (Reason.BAD_AMOUNT, "{ex},{sym},{ts},{ts},{id},buy,100.0,nan"),
    (Reason.BAD_AMOUNT, "{ex},{sym},{ts},{ts},{id},buy,100.0,-inf"),
    (Reason.BAD_AMOUNT, "{ex},{sym},{ts},{ts},{id},buy,100.0,0.0"),
    (Reason.BAD_TIMESTAMP, "{ex},{sym},4102444800000000,{ts},{id},buy,100.0,1.0"),
    (Reason.BAD_TIMESTAMP, "{ex},{sym},1199145600000000,{ts},{id},buy,100.0,1.0"),
    (Reason.BAD_SYMBOL, "{ex},{long_sym},{ts},{ts},{id},buy,100.0,1.0"),
    (Reason.BAD_SYMBOL, "{ex},BTC USDT,{ts},{ts},{id},buy,100.0,1.0"),
    (Reason.BAD_SYMBOL, "{ex},BTC\x07USDT,{ts},{ts},{id},buy,100.0,1.0"),
    (Reason.BAD_SYMBOL, "{ex},,{ts},{ts},{id},buy,100.0,1.0"),
    (Reason.BAD_EXCHANGE, "BINANCE!,{sym},{ts},{ts},{id},buy,100.0,1.0"),
    (Reason.BAD_TRADE_ID, "{ex},{sym},{ts},{ts},,buy,100.0,1.0"),
    (Reason.BAD_TRADE_ID, "{ex},{sym},{ts},{ts},{long_id},buy,100.0,1.0"),
    (Reason.BAD_TRADE_ID, "{ex},{sym},{ts},{ts},id with spaces,buy,100.0,1.0"),
    (Reason.BAD_SIDE, "{ex},{sym},{ts},{ts},{id},long,100.0,1.0"),
    (Reason.UNPARSEABLE, "{ex},{sym},{ts},{id},buy,100.0"),
    (Reason.UNPARSEABLE, "{ex},{sym},not-a-time,{ts},{id},buy,100.0,1.0"),
    (Reason.UNPARSEABLE, "\x00\x01garbage\xff\xfe"),
    (Reason.OVERSIZED, "{ex},{huge_sym},{ts},{ts},{id},buy,100.0,1.0"),  # a 100,000-character symbol: longer than a line may be
)
# Records of another producer: (code, builder name). Each is one record, or one bad trade in a
# record whose other trade is good.
RECORD_KINDS: tuple[tuple[Reason, str], ...] = (
    (Reason.UNDECODABLE, "random"),
    (Reason.UNDECODABLE, "magic"),
    (Reason.UNDECODABLE, "truncated"),
    (Reason.UNDECODABLE, "schema_id"),
    (Reason.UNDECODABLE, "empty"),
    (Reason.UNDECODABLE, "huge_garbage"),
    (Reason.BAD_SYMBOL, "huge_symbol"),
    (Reason.BAD_SYMBOL, "control_symbol"),
    (Reason.BAD_EXCHANGE, "bad_exchange"),
    (Reason.KEY_MISMATCH, "key_mismatch"),
    (Reason.BAD_PRICE, "nan_price"),
    (Reason.BAD_AMOUNT, "inf_amount"),
    (Reason.BAD_TIMESTAMP, "future"),
    (Reason.BAD_TRADE_ID, "huge_trade_id"),
)
OVERSIZED_KINDS = {"{huge_sym}", "huge_garbage", "huge_symbol", "huge_trade_id"}


@dataclass
class Stream:
    """One run's input: the replay file's lines and the direct records (key, value) for ``ticks``."""

    lines: list[str] = field(default_factory=list)
    records: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Hostile:
    hostile: Stream
    clean: Stream
    ingest_codes: list[Reason]  # one dead letter from ingest per bad row
    record_codes: list[Reason]  # one dead letter from each consumer of ticks per bad record or trade
    record_payloads: list[bytes]  # the original bytes of the whole bad records (undecodable ones)
    duplicates: int
    late: int


def build(good_trades: int, bad: int, seed: int = 23) -> Hostile:
    """``good_trades`` good file rows over ``SYMBOLS`` (one every 2 s of event time per symbol,
    prices a seeded random walk), with ``bad`` bad items mixed in: about half file rows, half
    direct records, every kind in turn; about one in twenty is a duplicate or a late trade."""
    rng = random.Random(seed)
    writer = TradeBatchWriter(AvroCodec("tickflow.TradeBatch"))
    hostile, clean = Stream([HEADER]), Stream([HEADER])
    ingest_codes: list[Reason] = []
    record_codes: list[Reason] = []
    payloads: list[bytes] = []
    dups = late = 0
    big_used: dict[str, int] = {}

    # The other producer's good trades, before the file's in event time (the watermark only rises).
    direct = [Trade(f"d{i}", T0_US - 600_000_000 + i * 1_000_000, 0.5 + i * 1e-4, 10.0, "buy") for i in range(max(bad // 20, 20))]
    good_direct = iter(direct)

    def direct_record(trades: list[Trade], *, exchange: str = DIRECT[0], symbol: str = DIRECT[1], key: str | None = None) -> tuple[str, bytes]:
        batch = TradeBatch(exchange, symbol, T0_US, trades)
        return key or f"{exchange}:{symbol}", writer.encode(batch)

    def bad_record(kind: str) -> tuple[str, bytes]:
        """The hostile record of ``kind``. A record refused whole holds a trade of its own; a bad
        trade travels beside a good one, which must get through."""
        key, sample = direct_record([Trade("x1", T0_US - 700_000_000, 1.0, 1.0, "buy")])
        whole = {
            "random": lambda: (key, rng.randbytes(64)),
            "magic": lambda: (key, b"\x07" + sample[1:]),
            "truncated": lambda: (key, sample[: len(sample) // 2]),
            "schema_id": lambda: (key, struct.pack(">bI", 0, 999_999) + sample[5:]),
            "empty": lambda: (key, b""),
            "huge_garbage": lambda: (key, sample[:5] + rng.randbytes(BIG)),
            "huge_symbol": lambda: direct_record([Trade("x2", T0_US - 700_000_000, 1.0, 1.0, "buy")], symbol="S" * BIG, key=key),
            "control_symbol": lambda: direct_record([Trade("x3", T0_US - 700_000_000, 1.0, 1.0, "buy")], symbol="XRP/\x00USDT"),
            "bad_exchange": lambda: direct_record([Trade("x4", T0_US - 700_000_000, 1.0, 1.0, "buy")], exchange="Direct Exchange"),
            "key_mismatch": lambda: direct_record([Trade("x5", T0_US - 700_000_000, 1.0, 1.0, "buy")], key=f"{DIRECT[0]}:BTC/USDT"),
        }.get(kind)
        if whole is not None:
            return whole()
        bad_trade = {
            "nan_price": Trade("bp", T0_US - 500_000_000, math.nan, 1.0, "buy"),
            "inf_amount": Trade("ba", T0_US - 500_000_000, 1.0, math.inf, "sell"),
            "future": Trade("bt", FAR_FUTURE_US, 1.0, 1.0, "sell"),
            "huge_trade_id": Trade("i" * BIG, T0_US - 500_000_000, 1.0, 1.0, "sell"),
        }[kind]
        g = next(good_direct, None)
        good = [g] if g is not None else []
        if good:
            clean.records.append(direct_record(good))
        return direct_record([bad_trade, *good])

    def spend_big(kind: str) -> bool:
        """False for an oversized kind used ``MAX_BIG`` times already: the next kind goes instead."""
        if kind not in OVERSIZED_KINDS:
            return True
        big_used[kind] = big_used.get(kind, 0) + 1
        return big_used[kind] <= MAX_BIG

    recent: dict[str, list[tuple[int, str]]] = {s: [] for s in SYMBOLS}
    price = {s: 100.0 * (i + 1) for i, s in enumerate(SYMBOLS)}
    every = max(good_trades // max(bad, 1), 1)
    n_bad = row_kind = record_kind = 0
    for i in range(good_trades):
        sym = SYMBOLS[i % len(SYMBOLS)]
        ts = T0_US + (i // len(SYMBOLS)) * 2_000_000 + (i % len(SYMBOLS)) * 1_000
        price[sym] = round(price[sym] * (1 + rng.gauss(0, 0.001)), 4)
        row = f"{EXCHANGE},{sym},{ts},{ts},{i},{'buy' if rng.random() < 0.5 else 'sell'},{price[sym]},{round(rng.lognormvariate(0, 1), 6)}\n"
        hostile.lines.append(row)
        clean.lines.append(row)
        recent[sym].append((ts, row))
        del recent[sym][:-5]
        if i % every or n_bad >= bad:
            continue
        n_bad += 1
        if n_bad % 20 == 0 and len(recent[sym]) >= 4:  # a duplicate: an earlier row again, its price changed
            _, old = recent[sym][0]
            cells = old.rstrip("\n").split(",")
            cells[6] = str(float(cells[6]) * 2)
            hostile.lines.append(",".join(cells) + "\n")
            dups += 1
        elif n_bad % 20 == 10 and ts > T0_US + 900_000_000:  # a trade 10 minutes late, far past the grace
            hostile.lines.append(f"{EXCHANGE},{sym},{ts - 600_000_000},{ts},late{i},buy,{price[sym]},1.0\n")
            late += 1
        elif n_bad % 2:
            code, template = ROW_KINDS[row_kind % len(ROW_KINDS)]
            row_kind += 1
            if not spend_big("{huge_sym}" if "{huge_sym}" in template else template):
                code, template = ROW_KINDS[row_kind % len(ROW_KINDS)]
                row_kind += 1
            hostile.lines.append(
                template.format(ex=EXCHANGE, sym=sym, ts=ts, id=f"b{i}", long_sym="L" * 65, long_id="7" * 200, huge_sym="H" * 100_000) + "\n"
            )
            ingest_codes.append(code)
        else:
            code, kind = RECORD_KINDS[record_kind % len(RECORD_KINDS)]
            record_kind += 1
            while not spend_big(kind):
                code, kind = RECORD_KINDS[record_kind % len(RECORD_KINDS)]
                record_kind += 1
            record = bad_record(kind)
            hostile.records.append(record)
            record_codes.append(code)
            if code is Reason.UNDECODABLE:
                payloads.append(record[1])
    rest = list(good_direct)
    for t in rest:  # the good direct trades no bad record carried
        hostile.records.append(direct_record([t]))
        clean.records.append(direct_record([t]))
    return Hostile(hostile, clean, ingest_codes, record_codes, payloads, dups, late)


def write_file(stream: Stream, path: Path) -> Path:
    path.write_bytes("".join(stream.lines).encode("utf-8", errors="surrogateescape"))
    return path
