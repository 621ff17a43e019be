"""Trade file readers on the real recorded files and on small files modelled on the documented layouts,
and the replay source's pacing and micro-batching."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import time
from pathlib import Path

import pytest

from schemas.models import Trade, TradeBatch
from streams.sources.base import BadInput
from streams.sources.formats import FORMATS, detect_format, iter_trades
from streams.sources.replay import ReplaySource, parse_source_speed

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TARDIS = "tardis_binance_futures_btcusdt/tardis_trades_binance-futures_BTCUSDT_2020-02-22.csv"
CCXT_FULL = "freqtrade_binance_xrpeth/XRP_ETH-trades-ccxt-full.json"
CCXT_LIST = "freqtrade_binance_xrpeth/XRP_ETH-trades-ccxt-list.json"
TARDIS_HEADER = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount"


def data_file(rel: str) -> Path:
    path = DATA / rel
    if not path.exists():
        pytest.skip(f"real data {path} absent (tests read ../shared/data beside the repo)")
    return path


def trades_of(items: list) -> list[tuple[str, str, Trade]]:
    assert not [i for i in items if isinstance(i, BadInput)]
    return items


def write(path: Path, text: str, *, gz: bool = False) -> Path:
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


async def collect(source: ReplaySource) -> list:
    return [item async for item in source.stream()]


# --- real files -------------------------------------------------------------------------------


def test_tardis_file_matches_its_text() -> None:
    path = data_file(TARDIS)
    assert detect_format(path) == "tardis"
    items = trades_of(list(iter_trades(path, "tardis")))
    assert len(items) == 9999
    lines = path.read_text().splitlines()
    assert lines[0] == TARDIS_HEADER
    for (exchange, symbol, trade), line in ((items[0], lines[1]), (items[-1], lines[-1])):
        ex, sym, ts, _local, tid, side, price, amount = line.split(",")
        assert (exchange, symbol) == (ex, sym) == ("binance-futures", "BTCUSDT")
        assert trade == Trade(tid, int(ts), float(price), float(amount), side)
    ids = [int(t.trade_id) for _, _, t in items]
    assert ids == list(range(ids[0], ids[0] + 9999))
    assert items[0][2] == Trade("42377944", 1582329602111000, 9682.0, 0.132, "buy")


def test_tardis_gzip_is_detected_by_magic_bytes_not_suffix(tmp_path: Path) -> None:
    path = data_file(TARDIS)
    disguised = tmp_path / "trades.csv"  # gzip content under a plain name
    disguised.write_bytes(gzip.compress(path.read_bytes()))
    named = tmp_path / "trades.csv.gz"
    shutil.copy(disguised, named)
    plain = list(iter_trades(path, "tardis"))
    for p in (disguised, named):
        assert detect_format(p) == "tardis"
        assert list(iter_trades(p, "tardis")) == plain


def test_ccxt_full_and_compact_list_give_identical_trades() -> None:
    full, compact = data_file(CCXT_FULL), data_file(CCXT_LIST)
    assert detect_format(full) == detect_format(compact) == "ccxt-json"
    a = trades_of(list(iter_trades(full, "ccxt-json")))
    b = trades_of(list(iter_trades(compact, "ccxt-json")))
    assert len(a) == len(b) == 12477
    assert a == b
    raw = json.loads(full.read_text())
    for (exchange, symbol, trade), d in ((a[0], raw[0]), (a[-1], raw[-1])):
        assert (exchange, symbol) == ("binance", d["symbol"]) == ("binance", "XRP/ETH")
        assert trade == Trade(d["id"], d["timestamp"] * 1000, d["price"], d["amount"], d["side"])
    assert a[0][2] == Trade("13519807", 1570752011620000, 0.00141342, 23.0, "sell")
    assert {e for e, _, _ in iter_trades(compact, "ccxt-json", exchange="binanceus")} == {"binanceus"}


@pytest.mark.parametrize(
    ("name", "count", "exchange", "symbol"),
    [
        ("spot_btcusdt_20240808.jsonl.gz", 9757, "binance", "BTCUSDT"),
        ("spot_ethusdt_20240808.jsonl.gz", 6106, "binance", "ETHUSDT"),
        ("usdm_btcusdt_20240808.jsonl.gz", 21313, "binance-futures", "BTCUSDT"),
        ("usdm_ethusdt_20240808.jsonl.gz", 14076, "binance-futures", "ETHUSDT"),
    ],
)
def test_binance_raw_stream_files(name: str, count: int, exchange: str, symbol: str) -> None:
    path = data_file(f"binance_raw_streams/{name}")
    assert detect_format(path) == "binance-ws"
    items = trades_of(list(iter_trades(path, "binance-ws")))
    assert len(items) == count
    assert {(e, s) for e, s, _ in items} == {(exchange, symbol)}
    with gzip.open(path, "rt") as f:
        events = [json.loads(line.split(" ", 1)[1])["data"] for line in f if '"e":"trade"' in line]
    assert len(events) == count
    for (_, _, trade), e in ((items[0], events[0]), (items[-1], events[-1])):
        assert trade == Trade(str(e["t"]), e["T"] * 1000, float(e["p"]), float(e["q"]), "sell" if e["m"] else "buy")
    assert {t.side for _, _, t in items} == {"buy", "sell"}


# --- Binance public-data CSVs (data.binance.vision layouts) -------------------------------------

def csv(*rows: str) -> str:
    return "".join(row + "\n" for row in rows)


SPOT_TRADES = csv(
    "3735683259,61837.63000000,0.02000000,1236.75260000,1723161255342,True,True",
    "3735683260,61837.64000000,0.04800000,2968.20672000,1723161255617,False,True",
)
FUTURES_TRADES = csv(
    "id,price,qty,quote_qty,time,is_buyer_maker",
    "5266583935,61800.30,0.006,370.8018,1723161256322,false",
    "5266583936,61800.40,0.199,12298.2796,1723161256344,true",
)
SPOT_AGG = csv(
    "2222000001,61837.63000000,0.02000000,3735683259,3735683259,1723161255342,True,True",
    "2222000002,61837.64000000,0.04800000,3735683260,3735683261,1723161255617,False,True",
)
FUTURES_AGG = csv(
    "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker",
    "2222000001,61800.30,0.006,5266583935,5266583935,1723161256322,false",
    "2222000002,61800.40,0.199,5266583936,5266583940,1723161256344,true",
)
# Spot files since 2025 stamp trades in microseconds.
SPOT_TRADES_US = csv(
    "4500000001,95000.01000000,0.00100000,95.00001000,1735689600123456,True,True",
    "4500000002,95000.02000000,0.00200000,190.00004000,1735689600223456,False,True",
)
SPOT_EXPECTED = [Trade("3735683259", 1723161255342000, 61837.63, 0.02, "sell"), Trade("3735683260", 1723161255617000, 61837.64, 0.048, "buy")]
FUTURES_EXPECTED = [Trade("5266583935", 1723161256322000, 61800.3, 0.006, "buy"), Trade("5266583936", 1723161256344000, 61800.4, 0.199, "sell")]
AGG_IDS = ("2222000001", "2222000002")


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    ("name", "text", "fmt", "exchange", "expected"),
    [
        ("BTCUSDT-trades-2024-08-08.csv", SPOT_TRADES, "binance-trades", "binance", SPOT_EXPECTED),
        ("BTCUSDT-trades-2024-08-08.csv", FUTURES_TRADES, "binance-trades", "binance-futures", FUTURES_EXPECTED),
        ("BTCUSDT-aggTrades-2024-08-08.csv", SPOT_AGG, "binance-aggtrades", "binance",
         [t._replace(trade_id=i) for t, i in zip(SPOT_EXPECTED, AGG_IDS, strict=True)]),
        ("BTCUSDT-aggTrades-2024-08-08.csv", FUTURES_AGG, "binance-aggtrades", "binance-futures",
         [t._replace(trade_id=i) for t, i in zip(FUTURES_EXPECTED, AGG_IDS, strict=True)]),
        ("BTCUSDT-trades-2025-01-01.csv", SPOT_TRADES_US, "binance-trades", "binance",
         [Trade("4500000001", 1735689600123456, 95000.01, 0.001, "sell"), Trade("4500000002", 1735689600223456, 95000.02, 0.002, "buy")]),
    ],
)
def test_binance_public_csv(tmp_path: Path, gz: bool, name: str, text: str, fmt: str, exchange: str, expected: list[Trade]) -> None:
    path = write(tmp_path / (name + ".gz" if gz else name), text, gz=gz)
    assert detect_format(path) == fmt
    assert list(iter_trades(path, fmt)) == [(exchange, "BTCUSDT", t) for t in expected]


def test_binance_csv_header_is_optional(tmp_path: Path) -> None:
    with_header = write(tmp_path / "ETHUSDT-trades-2024-08-08.csv", FUTURES_TRADES)
    without = write(tmp_path / "ETHUSDT-trades-2024-08-09.csv", FUTURES_TRADES.split("\n", 1)[1])
    assert detect_format(with_header) == detect_format(without) == "binance-trades"
    assert list(iter_trades(with_header, "binance-trades")) == list(iter_trades(without, "binance-trades"))


def test_binance_csv_symbol_and_exchange_arguments(tmp_path: Path) -> None:
    path = write(tmp_path / "trades.csv", SPOT_TRADES)
    with pytest.raises(ValueError, match="symbol"):
        iter_trades(path, "binance-trades")
    items = list(iter_trades(path, "binance-trades", symbol="BTCUSDT", exchange="binance-archive"))
    assert [(e, s) for e, s, _ in items] == [("binance-archive", "BTCUSDT")] * 2


def test_coin_margined_futures_csv_is_binance_delivery(tmp_path: Path) -> None:
    path = write(tmp_path / "BTCUSD_PERP-trades-2024-08-08.csv", FUTURES_TRADES)
    assert {(e, s) for e, s, _ in iter_trades(path, "binance-trades")} == {("binance-delivery", "BTCUSD_PERP")}


# --- bad input ---------------------------------------------------------------------------------


def test_bad_csv_lines_become_bad_input_and_good_lines_still_come(tmp_path: Path) -> None:
    bad = [
        b"binance-futures,BTCUSDT,1582329602116000,1582329602418420,42377945,buy,abc,0.412",
        b"binance-futures,BTCUSDT,1582329602117000",
        b"\xff\xfe garbage",
        b"binance-futures,BTCUSDT,not-a-time,1582329602418420,42377946,buy,9682,0.1",
    ]
    good = [
        b"binance-futures,BTCUSDT,1582329602111000,1582329602418379,42377944,buy,9682,0.132",
        b"binance-futures,BTCUSDT,1582329602120000,1582329602418500,42377947,sell,9681.5,0.5",
    ]
    body = b"\n".join([TARDIS_HEADER.encode(), good[0], *bad, b"", good[1]]) + b"\r\n"
    path = tmp_path / "t.csv"
    path.write_bytes(body)
    items = list(iter_trades(path, "tardis"))
    assert [i.payload for i in items if isinstance(i, BadInput)] == bad
    assert all("tardis line" in i.reason for i in items if isinstance(i, BadInput))
    assert isinstance(items[0], tuple) and isinstance(items[-1], tuple)
    assert [t.trade_id for i in items if isinstance(i, tuple) for t in [i[2]]] == ["42377944", "42377947"]


def test_bad_binance_csv_lines(tmp_path: Path) -> None:
    lines = SPOT_TRADES.splitlines()
    bad = ["3735683261,61837.63,0.02,1236.75,1723161255342,maybe,True", "3735683262,61837.63", "x,y,z,1,2,True,True"]
    path = write(tmp_path / "BTCUSDT-trades-2024-08-08.csv", "\n".join([lines[0], *bad, lines[1]]) + "\n")
    items = list(iter_trades(path, "binance-trades"))
    assert [i.payload.decode() for i in items if isinstance(i, BadInput)] == bad
    assert [i[2].trade_id for i in items if not isinstance(i, BadInput)] == ["3735683259", "3735683260"]


def test_websocket_lines_trades_skips_and_bad_input(tmp_path: Path) -> None:
    trade = {"e": "trade", "E": 1723161255343, "s": "BTCUSDT", "t": 3735683259, "p": "61837.63", "q": "0.02", "T": 1723161255342,
             "m": True}
    agg = {"e": "aggTrade", "E": 1723161255400, "s": "ETHUSDT", "a": 99, "p": "2683.80", "q": "1.5", "f": 1, "l": 2, "T": 1723161255399,
           "m": False}
    book = {"stream": "btcusdt@bookTicker", "data": {"u": 1, "s": "BTCUSDT", "b": "1", "B": "1", "a": "2", "A": "1"}}
    depth = {"stream": "btcusdt@depth@100ms", "data": {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "b": [], "a": []}}
    bad = [
        b'{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT","t":1,',
        json.dumps({"e": "trade", "s": "BTCUSDT", "t": 2, "q": "1", "T": 1723161255342, "m": True}).encode(),
        json.dumps({"e": "trade", "s": "BTCUSDT", "t": 3, "p": "n/a", "q": "1", "T": 1723161255342, "m": True}).encode(),
        b"[1, 2, 3]",
        b"abc {}",
    ]
    lines = [
        b"1723161254087896568 " + json.dumps({"stream": "btcusdt@trade", "data": trade}).encode(),
        json.dumps(book).encode(),
        *bad[:2],
        json.dumps(agg).encode(),
        json.dumps(depth).encode(),
        b'{"result":null,"id":1}',
        *bad[2:],
    ]
    path = tmp_path / "capture.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert detect_format(path) == "binance-ws"
    items = list(iter_trades(path, "binance-ws"))
    assert [i.payload for i in items if isinstance(i, BadInput)] == bad
    assert [i for i in items if not isinstance(i, BadInput)] == [
        ("binance", "BTCUSDT", Trade("3735683259", 1723161255342000, 61837.63, 0.02, "sell")),
        ("binance", "ETHUSDT", Trade("99", 1723161255399000, 2683.8, 1.5, "buy")),
    ]
    futures = tmp_path / "futures_capture.jsonl"
    shutil.copy(path, futures)
    assert {i[0] for i in iter_trades(futures, "binance-ws") if not isinstance(i, BadInput)} == {"binance-futures"}


def test_ccxt_bad_items_and_bad_file(tmp_path: Path) -> None:
    rows = [
        [1570752011620, "1", None, "sell", 0.00141342, 23.0, 0.0325],
        [1570752011620, "2", None, "sell", "oops", 23.0, 0.0325],
        [1570752011621],
        "not a trade",
        {"timestamp": 1570752011700, "id": "4", "symbol": "XRP/ETH", "side": "buy", "price": 0.0014, "amount": 5.0},
        {"timestamp": 1570752011800, "id": "5", "side": "buy", "price": 0.0014, "amount": 5.0},
    ]
    path = write(tmp_path / "XRP_ETH-trades.json", json.dumps(rows))
    items = list(iter_trades(path, "ccxt-json"))
    assert [json.loads(i.payload) for i in items if isinstance(i, BadInput)] == [rows[1], rows[2], rows[3]]
    assert [i for i in items if not isinstance(i, BadInput)] == [
        ("binance", "XRP/ETH", Trade("1", 1570752011620000, 0.00141342, 23.0, "sell")),
        ("binance", "XRP/ETH", Trade("4", 1570752011700000, 0.0014, 5.0, "buy")),
        ("binance", "XRP/ETH", Trade("5", 1570752011800000, 0.0014, 5.0, "buy")),
    ]
    anonymous = write(tmp_path / "trades.json", json.dumps([rows[0], rows[4], rows[5]]))
    assert [type(i).__name__ for i in iter_trades(anonymous, "ccxt-json")] == ["BadInput", "tuple", "BadInput"]
    broken = write(tmp_path / "XRP_ETH-trades-broken.json", '[[1570752011620, "1", null, "sell", 0.1')
    [item] = list(iter_trades(broken, "ccxt-json"))
    assert isinstance(item, BadInput) and item.payload == broken.read_bytes()
    futures = write(tmp_path / "BTC_USDT_USDT-trades.json", json.dumps(rows[:1]))
    assert [s for _, s, _ in iter_trades(futures, "ccxt-json")] == ["BTC/USDT:USDT"]


def test_detect_format_rejects_unknown_and_empty(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown trade file format"):
        detect_format(write(tmp_path / "x.csv", "date,open,high,low,close\n2024-01-01,1,2,0.5,1.5\n"))
    with pytest.raises(ValueError, match="empty"):
        detect_format(write(tmp_path / "e.csv", "\n\n"))
    with pytest.raises(ValueError, match="unknown trade file format"):
        iter_trades(tmp_path / "x.csv", "parquet")
    assert len(FORMATS) == 5


def test_hostile_files_fail_clearly_or_dead_letter_what_they_cannot_read(tmp_path: Path) -> None:
    """A binary file is refused up front, naming it; a truncated gzip gives its good rows, then one
    dead letter naming the line and offset reached; an overlong line and bad names are dead-lettered
    with the file and line, and the rows after them still come."""
    binary = tmp_path / "trades.csv"
    binary.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(ValueError, match=rf"{binary}: a binary file, not a trade file"):
        detect_format(binary)
    with pytest.raises(ValueError, match=rf"{binary}: a binary file"):
        ReplaySource(binary)

    rows = [f"binance-futures,BTCUSDT,{T0 + i * 1000},{T0 + i * 1000},{i},buy,100.5,0.25" for i in range(20_000)]
    whole = gzip.compress(("\n".join([TARDIS_HEADER, *rows]) + "\n").encode())
    truncated = tmp_path / "cut.csv.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    assert detect_format(truncated) == "tardis"
    items = list(iter_trades(truncated, "tardis"))
    *good, last = items
    assert 0 < len(good) < len(rows) and all(isinstance(i, tuple) for i in good)
    assert [t.trade_id for _, _, t in good] == [str(i) for i in range(len(good))]
    assert isinstance(last, BadInput) and last.reason.startswith(f"unreadable_file: {truncated}: cannot read past line ")
    assert "EOFError" in last.reason and " (byte " in last.reason

    hostile = [
        "binance-futures," + "S" * 100_000 + f",{T0},{T0},h1,buy,1.0,1.0",  # longer than a line may be
        f"binance-futures,{'L' * 65},{T0},{T0},h2,buy,1.0,1.0",
        f"binance-futures,BTC USDT,{T0},{T0},h3,buy,1.0,1.0",
        f"Binance Futures,BTCUSDT,{T0},{T0},h4,buy,1.0,1.0",
    ]
    path = write(tmp_path / "names.csv", "\n".join([TARDIS_HEADER, rows[0], *hostile, rows[1]]) + "\n")
    items = list(iter_trades(path, "tardis"))
    bad = [i for i in items if isinstance(i, BadInput)]
    assert [i.reason.split(":")[0] for i in bad] == ["oversized", "bad_symbol", "bad_symbol", "bad_exchange"]
    assert bad[0].reason.startswith("oversized: names.csv line 3 (byte ") and len(bad[0].payload) == 64 * 1024
    assert [i.reason.endswith(f"(names.csv line {n})") for i, n in zip(bad[1:], (4, 5, 6))] == [True] * 3
    assert [i.payload.decode() for i in bad[1:]] == hostile[1:]
    assert [t.trade_id for i in items if isinstance(i, tuple) for t in [i[2]]] == ["0", "1"]


def test_a_file_in_another_format_dead_letters_each_line_naming_it(tmp_path: Path) -> None:
    path = tardis_file(tmp_path / "t.csv", [("BTCUSDT", T0 + i, 100.0) for i in range(5)])
    items = list(iter_trades(path, "binance-ws"))
    assert len(items) == 6 and all(isinstance(i, BadInput) for i in items)
    assert [i.reason.split(" ")[:4] for i in items[:2]] == [["unparseable:", "t.csv", "binance-ws", "line"]] * 2
    with pytest.raises(ValueError, match="t.csv: bad_symbol"):
        iter_trades(path, "binance-trades", symbol="BTC USDT")


# --- ReplaySource ------------------------------------------------------------------------------


def tardis_file(path: Path, rows: list[tuple[str, int, float]]) -> Path:
    """A Tardis CSV of (symbol, ts µs, price) rows with ids counting from 1."""
    lines = [TARDIS_HEADER] + [f"binance,{s},{ts},{ts + 5},{n},buy,{p},1.5" for n, (s, ts, p) in enumerate(rows, 1)]
    return write(path, "\n".join(lines) + "\n")


T0 = 1_723_161_255_000_000


def test_parse_source_speed() -> None:
    assert parse_source_speed("max") is None
    assert parse_source_speed(" MAX ") is None
    assert parse_source_speed("1x") == 1.0
    assert parse_source_speed("10x") == 10.0
    assert parse_source_speed("10") == 10.0
    assert parse_source_speed("0.5x") == 0.5
    for bad in ("fast", "0", "-2x", "x", "inf", ""):
        with pytest.raises(ValueError):
            parse_source_speed(bad)


async def test_speed_paces_on_event_time(tmp_path: Path) -> None:
    path = tardis_file(tmp_path / "t.csv", [("BTCUSDT", T0 + k * 100_000, 100.0 + k) for k in range(21)])  # 2 s
    start = time.perf_counter()
    paced = await collect(ReplaySource(path, speed=20))
    elapsed = time.perf_counter() - start
    assert 0.05 < elapsed < 1.0
    start = time.perf_counter()
    fast = await collect(ReplaySource(path))
    assert time.perf_counter() - start < elapsed
    assert [b.trades for b in paced] == [b.trades for b in fast]
    assert sum(len(b.trades) for b in fast) == 21


async def test_batches_close_at_max_trades(tmp_path: Path) -> None:
    path = tardis_file(tmp_path / "t.csv", [("BTCUSDT", T0 + k, 100.0) for k in range(1200)])  # all within 1.2 ms
    batches = await collect(ReplaySource(path))
    assert [len(b.trades) for b in batches] == [500, 500, 200]
    assert [t.trade_id for b in batches for t in b.trades] == [str(n) for n in range(1, 1201)]
    assert {(b.exchange, b.symbol) for b in batches} == {("binance", "BTCUSDT")}


async def test_batches_close_at_max_ms_of_event_time_one_symbol_each(tmp_path: Path) -> None:
    rows = [("BTCUSDT" if k % 3 else "ETHUSDT", T0 + k * 7_000, 100.0) for k in range(300)]  # 2.1 s, a trade per 7 ms
    path = tardis_file(tmp_path / "t.csv", rows)
    batches = await collect(ReplaySource(path, max_trades=500, max_ms=50))
    for b in batches:
        assert isinstance(b, TradeBatch)
        assert b.trades[-1].ts - b.trades[0].ts < 50_000
        assert b.key in ("binance:BTCUSDT", "binance:ETHUSDT")
    for symbol in ("BTCUSDT", "ETHUSDT"):
        mine = [b for b in batches if b.symbol == symbol]
        assert [t.trade_id for b in mine for t in b.trades] == [str(n) for n, r in enumerate(rows, 1) if r[0] == symbol]
        # a batch holds exactly the symbol's trades of the 50 ms of event time from its first one
        for b in mine:
            start = b.trades[0].ts
            window = [str(n) for n, r in enumerate(rows, 1) if r[0] == symbol and start <= r[1] < start + 50_000]
            assert [t.trade_id for t in b.trades] == window


async def test_replay_of_a_real_stream_keeps_every_trade_in_order() -> None:
    path = data_file("binance_raw_streams/spot_ethusdt_20240808.jsonl.gz")
    batches = await collect(ReplaySource(path, max_trades=100))
    assert all(isinstance(b, TradeBatch) and 0 < len(b.trades) <= 100 for b in batches)
    assert all(b.trades[-1].ts - b.trades[0].ts < 50_000 for b in batches)
    assert [t for b in batches for t in b.trades] == [t for _, _, t in iter_trades(path, "binance-ws")]


async def test_replay_yields_bad_input_between_batches(tmp_path: Path) -> None:
    path = tardis_file(tmp_path / "t.csv", [("BTCUSDT", T0 + k * 1000, 100.0) for k in range(10)])
    with path.open("ab") as f:
        f.write(b"binance,BTCUSDT,oops\n")
        f.write(f"binance,BTCUSDT,{T0 + 20_000},{T0},11,sell,99.5,2\n".encode())
    items = await collect(ReplaySource(path, fmt="tardis", exchange="binance-test"))
    [bad] = [i for i in items if isinstance(i, BadInput)]
    assert bad.payload == b"binance,BTCUSDT,oops"
    assert [t.trade_id for b in items if isinstance(b, TradeBatch) for t in b.trades] == [str(n) for n in range(1, 12)]
    assert {b.exchange for b in items if isinstance(b, TradeBatch)} == {"binance-test"}


async def test_aclose_stops_a_running_replay_and_flushes(tmp_path: Path) -> None:
    path = tardis_file(tmp_path / "t.csv", [("BTCUSDT", T0 + k * 10_000, 100.0) for k in range(1000)])  # 10 s
    source = ReplaySource(path, speed=10)
    got: list[TradeBatch] = []

    async def consume() -> None:
        async for b in source.stream():
            got.append(b)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.2)
    await source.aclose()
    await asyncio.wait_for(task, 1.0)
    ids = [t.trade_id for b in got for t in b.trades]
    assert 0 < len(ids) < 1000
    assert ids == [str(n) for n in range(1, len(ids) + 1)]


def test_replay_rejects_bad_arguments(tmp_path: Path) -> None:
    path = tardis_file(tmp_path / "t.csv", [("BTCUSDT", T0, 100.0)])
    with pytest.raises(ValueError):
        ReplaySource(path, fmt="csv")
    with pytest.raises(ValueError):
        ReplaySource(path, speed=0)
    assert ReplaySource(path).fmt == "tardis"


def test_unpaced_sources_batch_by_the_unpaced_span(tmp_path: Path) -> None:
    """Nobody waits for the records of a replay at full speed: they close at UNPACED_BATCH_MAX_MS."""
    from streams.cli import open_source
    from streams.settings import Settings

    settings = Settings(batch_max_ms=50, unpaced_batch_max_ms=1000)
    path = tmp_path / "t.csv"
    path.write_text("")

    def source(spec: str, **kw: object) -> object:
        args = {"symbols": [], "fmt": "tardis", "speed": "max", "rate": None, "limit": None, "exchange": None} | kw
        return open_source(spec, settings, **args)  # type: ignore[arg-type]

    assert source(f"replay:{path}").max_ms == 1000
    assert source(f"replay:{path}", speed="10x").max_ms == 50
    assert source("synthetic").max_ms == 1000
    assert source("synthetic", rate=2000.0).max_ms == 50
