"""The candle core against independent oracles on real recorded trades (../shared/data).

1. Binance's own klines: freqtrade's XRP/ETH aggTrades against the exchange's 1m and 5m candles
   of the same period, zero-volume (flat) candles included.
2. ccxt's ``build_ohlcvc`` over the same trades, for every trade file in ../shared/data, at 1m,
   5m and 1h: every candle with trades must equal it (time, OHLC, volume, count).

Trades are fed in realistic batches of 100-500 and all final candles are collected after a final
``close_open_windows()``; where a window was revised, its last revision counts. The files are
parsed by tiny local helpers so that this test depends only on the candle core.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from collections.abc import Iterable
from pathlib import Path

import ccxt
import orjson
import pytest

from agents.candles import CandleBook, CandleConfig
from schemas.models import Candle, Trade

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
XRP = "freqtrade_binance_xrpeth"
WS_FILES = ("spot_btcusdt", "spot_ethusdt", "usdm_btcusdt", "usdm_ethusdt")


def data_file(rel: str) -> Path:
    path = DATA / rel
    if not path.exists():
        pytest.skip(f"real data {path} absent (tests read ../shared/data beside the repo)")
    return path


# ------------------------------------------------------------------ tiny parsers


def ccxt_list_trades(path: Path) -> list[Trade]:
    """freqtrade's compact ccxt list: ``[timestamp_ms, id, type, side, price, amount, cost]``."""
    return [Trade(str(r[1]), r[0] * 1000, r[4], r[5], r[3] or "unknown") for r in json.loads(path.read_bytes())]


def ccxt_full_trades(path: Path) -> list[Trade]:
    """ccxt ``fetch_trades`` dicts."""
    rows = json.loads(path.read_bytes())
    return [Trade(str(r["id"]), r["timestamp"] * 1000, r["price"], r["amount"], r["side"] or "unknown") for r in rows]


def tardis_trades(path: Path) -> list[Trade]:
    """Tardis CSV: ``exchange,symbol,timestamp(us),local_timestamp,id,side,price,amount``."""
    with path.open(newline="") as f:
        rows = csv.reader(f)
        next(rows)
        return [Trade(r[4], int(r[2]), float(r[6]), float(r[7]), r[5] if r[5] in ("buy", "sell") else "unknown") for r in rows]


def ws_trades(path: Path) -> list[tuple[int, Trade]]:
    """Binance combined-stream lines ``<local_ns> <json>``: trade events as (receive time, trade)."""
    out = []
    with gzip.open(path, "rb") as f:
        for line in f:
            local_ns, _, payload = line.partition(b" ")
            msg = orjson.loads(payload)
            d = msg.get("data", msg)
            if d.get("e") == "trade":
                side = "sell" if d["m"] else "buy"  # the buyer was the maker: the taker sold
                out.append((int(local_ns), Trade(str(d["t"]), d["T"] * 1000, float(d["p"]), float(d["q"]), side)))
    return out


# ------------------------------------------------------------------ helpers


def batches(trades: list[Trade], seed: int = 0) -> Iterable[list[Trade]]:
    rng = random.Random(seed)
    i = 0
    while i < len(trades):
        n = rng.randint(100, 500)
        yield trades[i : i + n]
        i += n


def final_candles(b: CandleBook, outs: Iterable, exchange: str, intervals: tuple[str, ...]) -> dict[tuple[str, str, int], Candle]:
    """Last revision of every final candle, by (symbol, interval, open_time); no trade may be late.

    A higher window that the data covers only in part (the last 5m or 1h) stays open after
    ``close_open_windows()``; its in-progress candle is taken instead.
    """
    last: dict[tuple[str, str, int], Candle] = {}
    for out in [*outs, b.close_open_windows()]:
        assert not out.late, out.late[:3]
        assert out.duplicates == 0
        for c in out.candles:
            last[(c.symbol, c.interval, c.open_time)] = c
    for symbol in {k[0] for k in last}:
        for iv in intervals:
            live = b.in_progress(exchange, symbol, iv)
            if live is not None:
                assert (symbol, iv, live.open_time) not in last and iv != "1m"
                last[(symbol, iv, live.open_time)] = live
    return last


def build(trades: list[Trade], intervals: tuple[str, ...], seed: int = 0) -> dict[tuple[str, int], Candle]:
    b = CandleBook(CandleConfig(intervals=intervals))
    last = final_candles(b, (b.add("x", "S", batch) for batch in batches(trades, seed)), "x", intervals)
    return {(iv, t): c for (_, iv, t), c in last.items()}


def ccxt_ohlcvc(trades: list[Trade], interval: str) -> dict[int, list]:
    """ccxt's candles; it needs trades in time order (a stable sort keeps arrival order for ties)."""
    ordered = sorted(trades, key=lambda t: t.ts)
    rows = ccxt.Exchange().build_ohlcvc([{"timestamp": t.ts // 1000, "price": t.price, "amount": t.amount} for t in ordered], interval)
    return {r[0]: r for r in rows}


def assert_equals_ccxt(ours: dict[tuple[str, int], Candle], trades: list[Trade], interval: str) -> int:
    expected = ccxt_ohlcvc(trades, interval)
    traded = {t: c for (iv, t), c in ours.items() if iv == interval and c.trade_count}
    assert sorted(traded) == sorted(expected)
    for t, (_, o, h, low, c, v, n) in expected.items():
        got = traded[t]
        assert (got.open, got.high, got.low, got.close, got.trade_count) == (o, h, low, c, n), (interval, t)
        if interval == "1m":
            assert got.volume == v, (interval, t)  # the same additions in the same order
        else:  # a roll-up adds its minutes' sums
            assert got.volume == pytest.approx(v, rel=1e-9, abs=1e-12), (interval, t)
    return len(expected)


# ------------------------------------------------------------------ 1. exchange klines


def locally_disordered(trades: list[Trade], seed: int) -> list[Trade]:
    """Trades reordered by up to 1.5 s (within the 2 s lateness); trades of the same ms keep their order."""
    rng = random.Random(seed)
    jitter: dict[int, int] = {}
    return sorted(trades, key=lambda t: t.ts + jitter.setdefault(t.ts, rng.randrange(1_500_000)))


@pytest.mark.parametrize("order", ["as recorded", "disordered within lateness"])
def test_xrpeth_equals_binance_klines(order):
    """All 3,560 1m and 712 5m exchange candles are compared: the trades cover every one in full.

    The trades run from 2019-10-11 00:00:11.620 to 2019-10-13 11:19:28.844 and the candles from
    00:00 to 11:19; the first and last candles' volumes equal the sums of the file's trades in
    them, so neither is partial, and 1,091 1m candles have no trade (flat at the previous close).
    """
    trades = ccxt_list_trades(data_file(f"{XRP}/XRP_ETH-trades-ccxt-list.json"))
    if order != "as recorded":
        trades = locally_disordered(trades, seed=11)
    ours = build(trades, ("1m", "5m"))
    compared = {}
    for interval in ("1m", "5m"):
        klines = json.loads(data_file(f"{XRP}/XRP_ETH-{interval}.json").read_bytes())
        assert klines[0][0] <= trades[0].ts // 1000 and trades[-1].ts // 1000 < klines[-1][0] + (60_000 if interval == "1m" else 300_000)
        for ts, o, h, low, c, v in klines:
            got = ours[(interval, ts)]
            assert (got.open, got.high, got.low, got.close) == (o, h, low, c), (interval, ts)
            assert got.volume == pytest.approx(v, rel=1e-9, abs=0.0), (interval, ts)
            if v == 0:
                assert (got.trade_count, got.vwap, got.first_trade_id) == (0, None, None)
        assert len({t for iv, t in ours if iv == interval}) == len(klines)  # no candle the exchange lacks
        compared[interval] = len(klines)
    assert compared == {"1m": 3560, "5m": 712}


# ------------------------------------------------------------------ 2. ccxt build_ohlcvc on every trade file


@pytest.mark.parametrize(
    "rel,parse",
    [
        (f"{XRP}/XRP_ETH-trades-ccxt-list.json", ccxt_list_trades),
        (f"{XRP}/XRP_ETH-trades-ccxt-full.json", ccxt_full_trades),
        ("tardis_binance_futures_btcusdt/tardis_trades_binance-futures_BTCUSDT_2020-02-22.csv", tardis_trades),
    ],
    ids=["freqtrade-list", "freqtrade-full", "tardis"],
)
def test_trade_files_equal_ccxt(rel, parse):
    trades = parse(data_file(rel))
    assert len(trades) in (12_477, 9_999)
    ours = build(trades, ("1m", "5m", "1h"))
    counts = {iv: assert_equals_ccxt(ours, trades, iv) for iv in ("1m", "5m", "1h")}
    assert counts["1m"] > counts["5m"] > counts["1h"] > 0


def test_binance_streams_in_one_partition_equal_ccxt():
    """The four recorded Binance streams in one book, merged in the order they were received.

    One partition's watermark is shared by its symbols, so this checks that real cross-stream
    delays stay within the lateness and that symbol interleaving changes nothing.
    """
    streams = {name: ws_trades(data_file(f"binance_raw_streams/{name}_20240808.jsonl.gz")) for name in WS_FILES}
    assert [len(s) for s in streams.values()] == [9_757, 6_106, 21_313, 14_076]
    arrivals = sorted((local_ns, name, trade) for name, items in streams.items() for local_ns, trade in items)
    b = CandleBook(CandleConfig(intervals=("1m", "5m", "1h")))
    outs = []
    run: list[Trade] = []
    for i, (_, name, trade) in enumerate(arrivals):
        run.append(trade)
        nxt = arrivals[i + 1][1] if i + 1 < len(arrivals) else None
        if nxt != name or len(run) == 500:  # micro-batch: consecutive trades of one stream
            outs.append(b.add("binance", name, run))
            run = []
    last = final_candles(b, outs, "binance", ("1m", "5m", "1h"))
    for name, items in streams.items():
        trades = [t for _, t in items]
        ours = {(iv, t): c for (sym, iv, t), c in last.items() if sym == name}
        counts = {iv: assert_equals_ccxt(ours, trades, iv) for iv in ("1m", "5m", "1h")}
        assert counts["1m"] >= 6 and counts["1h"] >= 1  # about 23:54 to 00:00 UTC, some past midnight
