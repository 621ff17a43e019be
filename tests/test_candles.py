"""Unit tests of the event-time candle core (agents/candles.py), values checked by hand."""

from __future__ import annotations

import random
from collections import defaultdict

import orjson
import pytest

from agents.candles import IDS, BookOutput, CandleBook, CandleConfig, TradeIds
from schemas.intervals import INTERVAL_MS, interval_ms, parse_interval
from schemas.models import Candle, Trade

D = 1_704_067_200_000  # 2024-01-01 00:00:00 UTC, ms
MIN = 60_000
EX, SYM = "binance", "BTC/USDT"


def t(tid: str, ms: int, price: float, amount: float = 1.0, side: str = "buy") -> Trade:
    """A trade at ``D + ms`` (times in the tests are offsets in ms from midnight)."""
    return Trade(tid, (D + ms) * 1000, price, amount, side)


def hms(h: int = 0, m: int = 0, s: float = 0.0) -> int:
    return h * 3_600_000 + m * MIN + round(s * 1000)


def book(**kw) -> CandleBook:
    return CandleBook(CandleConfig(**kw))


def feed(b: CandleBook, trades: list[Trade], size: int = 1000, symbol: str = SYM) -> BookOutput:
    """Add trades in batches; merge the outputs."""
    total = BookOutput()
    for i in range(0, len(trades), size):
        merge(total, b.add(EX, symbol, trades[i : i + size]))
    return total


def merge(total: BookOutput, out: BookOutput) -> BookOutput:
    total.candles += out.candles
    total.late += out.late
    total.duplicates += out.duplicates
    total.dirty |= out.dirty
    return total


def by(out: BookOutput, interval: str) -> list[Candle]:
    return [c for c in out.candles if c.interval == interval]


def ohlcv(c: Candle) -> tuple:
    return (c.open_time - D, c.open, c.high, c.low, c.close, c.volume, c.trade_count)


# ------------------------------------------------------------------ intervals and config


def test_parse_interval():
    assert parse_interval("1m") == 60_000
    assert parse_interval("4h") == 4 * 3_600_000
    assert parse_interval("1d") == 86_400_000
    assert parse_interval("10m") == 600_000
    assert parse_interval("120s") == 120_000
    assert set(INTERVAL_MS) == {"1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d"}
    for bad in ("", "1w", "1M", "0m", "90s", "5", "m5", "1.5h", "-1m"):
        with pytest.raises(ValueError):
            parse_interval(bad)


def test_interval_ms_knows_weeks_and_months_too():
    assert [interval_ms(i) // 1000 for i in ("1s", "1m", "15m", "4h", "1d", "1w", "1M")] == [1, 60, 900, 14400, 86400, 604800, 31 * 86400]
    for bad in ("", "0m", "minute", "1y", "m5"):
        with pytest.raises(ValueError):
            interval_ms(bad)


def test_config_validation():
    with pytest.raises(ValueError):
        CandleConfig(intervals=("1m", "7x"))
    with pytest.raises(ValueError):
        CandleConfig(intervals=("1h", "60m"))
    with pytest.raises(ValueError):
        CandleConfig(lateness_ms=-1)
    with pytest.raises(ValueError):
        CandleConfig(intervals=())


# ------------------------------------------------------------------ 1m aggregation


def test_in_order_minute_values():
    b = book(intervals=("1m",), lateness_ms=0)
    out = feed(
        b,
        [
            t("1", hms(0, 0, 1), 100.0, 1.0, "buy"),
            t("2", hms(0, 0, 20), 104.0, 2.0, "sell"),
            t("3", hms(0, 0, 40), 98.0, 0.5, "buy"),
            t("4", hms(0, 0, 59.999), 101.0, 1.5, "sell"),
            t("5", hms(0, 1, 0), 102.0, 1.0, "buy"),
        ],
    )
    (c,) = out.candles
    assert c == Candle(
        EX, SYM, "1m", D, D + MIN - 1, 100.0, 104.0, 98.0, 101.0, 5.0, 100.0 + 208.0 + 49.0 + 151.5, 4,
        (100.0 + 208.0 + 49.0 + 151.5) / 5.0, 1.5, "1", "4", True, 0,
    )
    assert b.watermark_ms == D + MIN
    live = b.in_progress(EX, SYM, "1m")
    assert (live.open_time, live.open, live.trade_count, live.is_final) == (D + MIN, 102.0, 1, False)


def test_out_of_order_within_lateness_and_ties():
    b = book(intervals=("1m",), lateness_ms=2000)
    out = feed(
        b,
        [
            t("a", hms(0, 0, 30), 10.0),
            t("b", hms(0, 0, 10), 11.0),  # earlier: becomes the open
            t("c", hms(0, 0, 10), 12.0),  # same time as the open: first arrived stays open
            t("d", hms(0, 1, 1), 20.0),  # watermark 00:00:59 - not final yet
            t("e", hms(0, 0, 58), 13.0),  # within lateness: still live, becomes the close
            t("f", hms(0, 0, 58), 14.0),  # same time as the close: last arrived is the close
            t("g", hms(0, 1, 2), 21.0),  # watermark 00:01:00: minute 0 final
        ],
    )
    (c,) = out.candles
    assert (c.open, c.high, c.low, c.close, c.trade_count) == (11.0, 14.0, 10.0, 14.0, 5)
    assert (c.first_trade_id, c.last_trade_id, c.revision) == ("b", "f", 0)
    assert not out.late and out.duplicates == 0


def test_sides_unknown_gives_no_taker_volume():
    b = book(intervals=("1m",), lateness_ms=0)
    out = feed(b, [t("1", 0, 1.0, 1.0, "unknown"), t("2", 10, 1.0, 1.0, "unknown"), t("3", MIN, 1.0, 1.0, "sell")])
    assert out.candles[0].taker_buy_volume is None
    out = b.close_open_windows()
    assert out.candles[0].taker_buy_volume == 0.0  # a known side (sell), none bought


# ------------------------------------------------------------------ late data


def test_late_within_grace_revises_minute_and_rollup():
    b = book(intervals=("1m", "5m"), lateness_ms=0, grace_ms=60_000)
    out = feed(
        b,
        [
            t("1", hms(0, 0, 5), 10.0, 1.0),
            t("2", hms(0, 4, 30), 11.0, 1.0),
            t("3", hms(0, 5, 10), 12.0, 1.0),  # watermark 00:05:10: minutes 0-4 and 5m[0] final
        ],
    )
    assert [(c.interval, c.open_time - D, c.revision) for c in out.candles] == [
        ("1m", 0, 0), ("1m", MIN, 0), ("1m", 2 * MIN, 0), ("1m", 3 * MIN, 0), ("1m", 4 * MIN, 0), ("5m", 0, 0),
    ]
    assert ohlcv(out.candles[-1]) == (0, 10.0, 11.0, 10.0, 11.0, 2.0, 2)
    # 00:04:59 arrives 11 s late (watermark 00:05:10 < minute end 00:05:00 + grace 60 s): a revision
    out = b.add(EX, SYM, [t("4", hms(0, 4, 59), 9.0, 2.0), t("5", hms(0, 4, 58), 15.0, 1.0, "sell")])
    assert not out.late
    assert [(c.interval, c.open_time - D, c.revision) for c in out.candles] == [("1m", 4 * MIN, 1), ("5m", 0, 1)]
    m4, m5 = out.candles
    assert ohlcv(m4) == (4 * MIN, 11.0, 15.0, 9.0, 9.0, 4.0, 3)
    assert (m4.first_trade_id, m4.last_trade_id, m4.taker_buy_volume) == ("2", "4", 3.0)
    assert ohlcv(m5) == (0, 10.0, 15.0, 9.0, 9.0, 5.0, 4)
    assert (m5.first_trade_id, m5.last_trade_id, m5.quote_volume, m5.taker_buy_volume) == ("1", "4", 54.0, 4.0)
    # a second revision of the same minute gets revision 2
    out = b.add(EX, SYM, [t("6", hms(0, 4, 1), 10.5)])
    assert [(c.interval, c.revision) for c in out.candles] == [("1m", 2), ("5m", 2)]
    assert out.candles[0].close == 9.0 and out.candles[1].trade_count == 5


def test_revisions_coalesce_per_batch():
    b = book(intervals=("1m", "5m"), lateness_ms=0)
    feed(b, [t("1", 0, 10.0), t("2", hms(0, 5, 1), 11.0)])
    out = b.add(EX, SYM, [t(str(i), hms(0, 4, i), 10.0 + i) for i in range(10, 20)])  # into flat minute 4
    assert [(c.interval, c.open_time - D, c.revision, c.trade_count) for c in out.candles] == [
        ("1m", 4 * MIN, 1, 10), ("5m", 0, 1, 11),
    ]


def test_later_than_grace_is_late_trade():
    b = book(intervals=("1m",), lateness_ms=2000, grace_ms=60_000)
    feed(b, [t("1", hms(0, 0, 5), 10.0), t("2", hms(0, 2, 2), 11.0)])  # watermark 00:02:00
    late = t("3", hms(0, 0, 30), 9.0)
    out = b.add(EX, SYM, [late, t("4", hms(0, 1, 30), 12.0)])
    assert [x.trade for x in out.late] == [late]
    (x,) = out.late
    assert (x.exchange, x.symbol, x.watermark) == (EX, SYM, (D + 2 * MIN) * 1000)
    assert "2024-01-01T00:00:00.000Z" in x.reason and "grace 60000 ms" in x.reason
    assert [(c.open_time - D, c.revision, c.close) for c in out.candles] == [(MIN, 1, 12.0)]  # 00:01 is within grace


def test_duplicates_counted_once():
    b = book(intervals=("1m", "5m"), lateness_ms=0)
    out = feed(b, [t("1", 0, 10.0), t("1", 0, 10.0), t("2", 1000, 11.0)])
    assert out.duplicates == 1
    out = b.add(EX, SYM, [t("2", 1000, 11.0), t("3", hms(0, 1, 1), 12.0)])  # across batches
    assert out.duplicates == 1
    assert [(c.trade_count, c.volume) for c in out.candles] == [(2, 2.0)]
    out = b.add(EX, SYM, [t("4", 5000, 9.0), t("4", 5000, 9.0)])  # a revision and its duplicate
    assert out.duplicates == 1 and [(c.revision, c.trade_count) for c in out.candles] == [(1, 3)]
    out = b.add(EX, SYM, [t("4", 5000, 9.0), t("1", 0, 10.0)])  # duplicates of a revised window
    assert out.duplicates == 2 and not out.candles
    out = b.add(EX, SYM, [t("5", hms(0, 3), 9.0), t("1", 0, 10.0)])  # after grace: ids dropped, trade is late
    assert out.duplicates == 0 and len(out.late) == 1
    out = b.close_open_windows()
    assert [(c.interval, c.trade_count) for c in out.candles] == [("1m", 1)]


# ------------------------------------------------------------------ gaps


def test_gap_candles_middle_and_trailing():
    b = book(intervals=("1m",), lateness_ms=0)
    out = feed(b, [t("1", hms(0, 0, 10), 10.0, 1.0, "sell"), t("2", hms(0, 3, 10), 11.0)])
    assert [ohlcv(c) for c in out.candles] == [
        (0, 10.0, 10.0, 10.0, 10.0, 1.0, 1),
        (MIN, 10.0, 10.0, 10.0, 10.0, 0.0, 0),
        (2 * MIN, 10.0, 10.0, 10.0, 10.0, 0.0, 0),
    ]
    gap = out.candles[1]
    assert (gap.quote_volume, gap.vwap, gap.taker_buy_volume, gap.first_trade_id, gap.last_trade_id) == (0.0, None, 0.0, None, None)
    # another symbol in the same partition moves the watermark: BTC gets trailing flat candles
    out = b.add(EX, "ETH/USDT", [t("e1", hms(0, 6, 30), 1.0)])
    assert [ohlcv(c) for c in out.candles] == [
        (3 * MIN, 11.0, 11.0, 11.0, 11.0, 1.0, 1),
        (4 * MIN, 11.0, 11.0, 11.0, 11.0, 0.0, 0),
        (5 * MIN, 11.0, 11.0, 11.0, 11.0, 0.0, 0),
    ]
    assert all(c.symbol == SYM for c in out.candles)  # nothing before ETH's first trade


def test_gap_taker_volume_follows_previous_sides_and_no_fill():
    b = book(intervals=("1m",), lateness_ms=0)
    out = feed(b, [t("1", 0, 10.0, 1.0, "unknown"), t("2", hms(0, 2), 11.0)])
    assert [c.taker_buy_volume for c in out.candles] == [None, None]
    b = book(intervals=("1m", "5m"), lateness_ms=0, fill_gaps=False)
    out = feed(b, [t("1", 0, 10.0), t("2", hms(0, 2), 11.0), t("3", hms(0, 11), 12.0)])
    assert [(c.interval, c.open_time - D) for c in out.candles] == [("1m", 0), ("1m", 2 * MIN), ("5m", 0)]


def test_revision_in_gap_minute_rewrites_only_that_minute():
    b = book(intervals=("1m", "5m"), lateness_ms=0, grace_ms=120_000)
    feed(b, [t("1", 0, 10.0), t("2", hms(0, 3, 30), 20.0)])  # minutes 1, 2 flat at 10
    out = b.add(EX, SYM, [t("3", hms(0, 1, 5), 15.0, 2.0, "sell")])
    assert [(c.interval, c.open_time - D, c.revision) for c in out.candles] == [("1m", MIN, 1)]
    assert ohlcv(out.candles[0]) == (MIN, 15.0, 15.0, 15.0, 15.0, 2.0, 1)
    assert out.candles[0].taker_buy_volume == 0.0
    out = b.close_open_windows()
    assert ohlcv(out.candles[0]) == (3 * MIN, 20.0, 20.0, 20.0, 20.0, 1.0, 1)
    out = b.add(EX, "OTHER", [t("x", hms(0, 5, 30), 1.0)])  # minute 4 flat at the last close; 5m[0] final
    assert [ohlcv(c) for c in by(out, "1m")] == [(4 * MIN, 20.0, 20.0, 20.0, 20.0, 0.0, 0)]
    (m5,) = by(out, "5m")
    assert ohlcv(m5) == (0, 10.0, 20.0, 10.0, 20.0, 4.0, 3)
    assert (m5.first_trade_id, m5.last_trade_id, m5.quote_volume) == ("1", "2", 10.0 + 30.0 + 20.0)


def test_late_first_minute_of_a_symbol_starts_its_flat_candles():
    b = book(intervals=("1m", "5m"), lateness_ms=0, grace_ms=120_000)
    b.add(EX, "OTHER", [t("x", hms(0, 2, 30), 1.0)])
    out = b.add(EX, SYM, [t("1", hms(0, 0, 30), 10.0)])  # its minute is final already, within grace
    assert [(c.interval, c.open_time - D, c.trade_count, c.close, c.revision) for c in out.candles] == [
        ("1m", 0, 1, 10.0, 0), ("1m", MIN, 0, 10.0, 0),
    ]
    out = b.add(EX, SYM, [t("2", hms(0, 5, 10), 11.0)])
    assert [(c.interval, c.open_time - D, c.trade_count, c.close) for c in out.candles if c.symbol == SYM] == [
        ("1m", 2 * MIN, 0, 10.0), ("1m", 3 * MIN, 0, 10.0), ("1m", 4 * MIN, 0, 10.0), ("5m", 0, 1, 10.0),
    ]


def test_flat_candles_continue_from_a_revised_close():
    b = book(intervals=("1m",), lateness_ms=0, grace_ms=120_000)
    b.add(EX, SYM, [t("1", hms(0, 0, 10), 10.0)])
    out = b.add(EX, "OTHER", [t("x", hms(0, 2, 30), 1.0)])
    assert [(c.open_time - D, c.close) for c in out.candles] == [(0, 10.0), (MIN, 10.0)]
    out = b.add(EX, SYM, [t("2", hms(0, 0, 50), 12.0)])
    assert [(c.open_time - D, c.close, c.revision) for c in out.candles] == [(0, 12.0, 1)]
    out = b.add(EX, "OTHER", [t("y", hms(0, 3, 30), 1.0)])
    assert [(c.open_time - D, c.close, c.revision) for c in out.candles if c.symbol == SYM] == [(2 * MIN, 12.0, 0)]


def test_gap_fill_limit_makes_symbol_dormant():
    b = book(intervals=("1m", "5m"), lateness_ms=0, max_fill_minutes=3)
    out = feed(b, [t("1", 0, 10.0), t("2", hms(0, 20), 11.0)])
    assert [(c.interval, c.open_time - D, c.trade_count) for c in out.candles] == [
        ("1m", 0, 1), ("1m", MIN, 0), ("1m", 2 * MIN, 0), ("1m", 3 * MIN, 0), ("5m", 0, 1),
    ]
    out = b.close_open_windows()
    assert [(c.interval, c.open_time - D) for c in out.candles] == [("1m", 20 * MIN)]
    out = b.add(EX, "OTHER", [t("x", hms(0, 22), 1.0)])
    assert [(c.open_time - D, c.close, c.trade_count) for c in out.candles if c.symbol == SYM] == [(21 * MIN, 11.0, 0)]


# ------------------------------------------------------------------ roll-ups, day boundary, idle close


def test_rollups_by_hand():
    b = book(intervals=("1m", "5m", "1h", "1d"), lateness_ms=0)
    trades = [
        t("1", hms(0, 0, 10), 10.0, 1.0, "buy"),
        t("2", hms(0, 0, 50), 12.0, 2.0, "sell"),
        t("3", hms(0, 2, 0), 11.0, 1.0, "buy"),
        t("4", hms(0, 4, 59.999), 9.0, 3.0, "sell"),
        t("5", hms(0, 5, 0), 13.0, 1.0, "buy"),
        t("6", hms(0, 59, 30), 14.0, 1.0, "buy"),
        t("7", hms(1, 0, 0), 15.0, 1.0, "unknown"),
    ]
    out = feed(b, trades, size=2)
    five = by(out, "5m")
    assert ohlcv(five[0]) == (0, 10.0, 12.0, 9.0, 9.0, 7.0, 4)
    assert (five[0].quote_volume, five[0].taker_buy_volume, five[0].first_trade_id, five[0].last_trade_id) == (72.0, 2.0, "1", "4")
    assert five[0].vwap == 72.0 / 7.0
    assert ohlcv(five[1]) == (5 * MIN, 13.0, 13.0, 13.0, 13.0, 1.0, 1)
    assert [ohlcv(c) for c in five[2:11]] == [(i * 5 * MIN, 13.0, 13.0, 13.0, 13.0, 0.0, 0) for i in range(2, 11)]
    assert five[2].taker_buy_volume == 0.0
    assert ohlcv(five[11]) == (55 * MIN, 14.0, 14.0, 14.0, 14.0, 1.0, 1)
    (hour,) = by(out, "1h")
    assert ohlcv(hour) == (0, 10.0, 14.0, 9.0, 14.0, 9.0, 6)
    assert (hour.quote_volume, hour.taker_buy_volume, hour.first_trade_id, hour.last_trade_id) == (72.0 + 13.0 + 14.0, 4.0, "1", "6")
    assert len(by(out, "1m")) == 60 and not by(out, "1d")
    day = b.in_progress(EX, SYM, "1d")
    assert ohlcv(day) == (0, 10.0, 15.0, 9.0, 15.0, 10.0, 7) and not day.is_final
    # emission order: each minute, then the higher windows that became final with it
    order = [(c.interval, c.open_time - D) for c in out.candles]
    assert order[:7] == [("1m", 0), ("1m", MIN), ("1m", 2 * MIN), ("1m", 3 * MIN), ("1m", 4 * MIN), ("5m", 0), ("1m", 5 * MIN)]
    assert order[-3:] == [("1m", 59 * MIN), ("5m", 55 * MIN), ("1h", 0)]


def test_utc_day_boundary():
    b = book(intervals=("1m", "1d"), lateness_ms=0)
    out = feed(b, [t("1", -1, 10.0), t("2", 0, 11.0)])  # 2023-12-31 23:59:59.999 and 2024-01-01 00:00:00.000
    assert [(c.interval, c.open_time - D, c.close_time - D, c.close) for c in out.candles] == [
        ("1m", -MIN, -1, 10.0), ("1d", -86_400_000, -1, 10.0),
    ]
    day = b.in_progress(EX, SYM, "1d")
    assert (day.open_time, day.close_time, day.open, day.trade_count) == (D, D + 86_400_000 - 1, 11.0, 1)


def test_idle_close():
    b = book(intervals=("1m", "5m", "1d"), lateness_ms=60_000)
    feed(b, [t("1", hms(0, 3, 10), 10.0), t("2", hms(0, 4, 20), 11.0), t("3", hms(0, 4, 30), 12.0)])
    assert b.open_windows() == 2  # minutes 3 and 4 (higher windows hold final minutes only)
    out = b.close_open_windows()
    assert [(c.interval, c.open_time - D, c.close) for c in out.candles] == [
        ("1m", 3 * MIN, 10.0), ("1m", 4 * MIN, 12.0), ("5m", 0, 12.0),
    ]
    assert b.watermark_ms == D + 5 * MIN
    assert b.in_progress(EX, SYM, "1m") is None and b.in_progress(EX, SYM, "5m") is None
    day = b.in_progress(EX, SYM, "1d")
    assert (day.trade_count, day.close, day.is_final) == (3, 12.0, False)
    assert b.open_windows() == 1  # the partly covered day
    assert not b.close_open_windows().candles  # nothing open: no-op
    out = b.add(EX, SYM, [t("4", hms(0, 4, 40), 13.0)])  # a revision within grace
    assert [(c.interval, c.revision, c.close) for c in out.candles] == [("1m", 1, 13.0), ("5m", 1, 13.0)]


def test_in_progress_values_and_dirty():
    b = book(intervals=("1m", "5m", "1h"), lateness_ms=5000)
    assert b.in_progress(EX, SYM, "1m") is None and b.watermark_ms is None
    out = feed(b, [t("1", hms(0, 0, 10), 10.0, 1.0), t("2", hms(0, 1, 2), 12.0, 1.0), t("3", hms(0, 0, 58), 9.0, 2.0)])
    assert out.dirty == {(EX, SYM)}
    assert not out.candles  # watermark 00:00:57
    m1 = b.in_progress(EX, SYM, "1m")
    assert ohlcv(m1) == (MIN, 12.0, 12.0, 12.0, 12.0, 1.0, 1)
    m5 = b.in_progress(EX, SYM, "5m")  # two live minutes
    assert ohlcv(m5) == (0, 10.0, 12.0, 9.0, 12.0, 4.0, 3) and m5.close_time == D + 5 * MIN - 1
    out = b.add(EX, SYM, [t("4", hms(0, 1, 6), 11.0, 1.0)])  # minute 0 final now
    assert [ohlcv(c) for c in out.candles] == [(0, 10.0, 10.0, 9.0, 9.0, 3.0, 2)]
    h = b.in_progress(EX, SYM, "1h")  # final minute 0 + live minute 1
    assert ohlcv(h) == (0, 10.0, 12.0, 9.0, 11.0, 5.0, 4) and h.vwap == (10.0 + 18.0 + 12.0 + 11.0) / 5.0
    assert b.forming(EX, SYM) == [b.in_progress(EX, SYM, "1m"), b.in_progress(EX, SYM, "5m"), h]
    assert b.in_progress(EX, "NOPE", "1m") is None and b.forming(EX, "NOPE") == []
    with pytest.raises(ValueError):
        b.in_progress(EX, SYM, "4h")


def test_valid_but_odd_trades_never_raise():
    b = book(lateness_ms=0)
    trades = [
        Trade("1", D * 1000, 5, 2),  # int price and amount, default side
        Trade("2", D * 1000, 1e-12, 1e12, "sell"),
        Trade("3", (D + 86_400_000 * 3) * 1000, 1e9, 1e-9, "buy"),  # three quiet days later
        Trade("4", 1_230_940_800_000_000, 1.0, 1.0),  # 2009: far too late
    ]
    out = feed(b, trades, size=1)
    assert len(out.late) == 1
    assert len(by(out, "1m")) == 3 * 1440 and len(by(out, "1d")) == 3
    assert by(out, "1m")[0].volume == 2.0 + 1e12 and by(out, "1m")[0].open == 5


# ------------------------------------------------------------------ determinism, restart, model check


def disordered_stream(seed: int, n: int, symbols: tuple[str, ...] = ("A", "B", "C"), numeric: bool = False) -> list[tuple[str, list[Trade]]]:
    """Batches of one symbol each, time moving forward with jitter, revisions, late trades and duplicates.
    Trade ids are labels like ``A12``, or with ``numeric`` exchange-like integers counting up per
    symbol with an occasional gap."""
    rng = random.Random(seed)
    counters = {sym: 1000 * (k + 1) for k, sym in enumerate(symbols)}
    now = D + hms(23, 50)  # crosses midnight
    batches: list[tuple[str, list[Trade]]] = []
    seen: dict[str, list[Trade]] = defaultdict(list)
    i = 0
    while i < n:
        sym = rng.choice(symbols)
        batch = []
        for _ in range(rng.randint(1, 6)):
            now += rng.choice((0, 0, 50, 400, 3000, 20_000, 70_000)) if rng.random() < 0.97 else 200_000
            r = rng.random()
            if r < 0.05 and seen[sym]:
                tr = rng.choice(seen[sym][-20:])  # a duplicate
            else:
                back = 0 if r < 0.6 else rng.choice((500, 1500, 2500, 30_000, 65_000, 90_000, 200_000))
                side = rng.choice(("buy", "sell", "unknown")) if sym != "C" else "unknown"
                price = rng.choice((1.0, 1.5, 2.0, 2.5, 3.0))
                amount = rng.choice((0.1, 0.2, 1.0, 3.0))
                counters[sym] += 1 if rng.random() < 0.9 else 3
                tid = str(counters[sym]) if numeric else f"{sym}{i}"
                tr = Trade(tid, (now - back) * 1000 + rng.randrange(1000), price, amount, side)
                i += 1
            seen[sym].append(tr)
            batch.append(tr)
        batches.append((sym, batch))
    return batches


def run(b: CandleBook, batches: list[tuple[str, list[Trade]]]) -> list[BookOutput]:
    return [b.add(EX, sym, trades) for sym, trades in batches]


def as_data(outs: list[BookOutput]) -> list:
    return [(o.candles, o.late, o.duplicates, sorted(o.dirty)) for o in outs]


CFG = CandleConfig(intervals=("1m", "5m", "15m", "1h", "1d"), lateness_ms=2000, grace_ms=60_000)


@pytest.mark.parametrize("numeric", [False, True], ids=["label-ids", "numeric-ids"])
def test_snapshot_restore_at_every_split_point(numeric: bool):
    batches = disordered_stream(1, 220, numeric=numeric)
    whole = CandleBook(CFG)
    expected = as_data([*run(whole, batches), whole.close_open_windows()])
    assert sum(len(c) for c, *_ in expected) > 100 and any(late for _, late, *_ in expected)
    assert whole.open_windows() > 0
    for split in range(len(batches) + 1):
        first = CandleBook(CFG)
        outs = run(first, batches[:split])
        snap = orjson.loads(orjson.dumps(first.snapshot()))
        second = CandleBook.restore(CFG, snap)
        outs += [*run(second, batches[split:]), second.close_open_windows()]
        assert as_data(outs) == expected, f"split at batch {split}"
        assert second.snapshot() == whole.snapshot()


def test_trade_ids_checkpoint_as_runs_incrementally():
    ids = ["5", "6", "7", "9", "10", "007", "x-1", "0", "12345678901234567890", "11", "-3"]
    at_once, in_steps = TradeIds(), TradeIds()
    at_once.extend(ids)
    for k in (0, 2, 3, 6, 9, len(ids)):
        in_steps.extend(ids[len(in_steps) : k])
        in_steps.checkpoint()
    form = [[5, 3, 9, 2, 0, 1, 11, 1], ["007", "x-1", "12345678901234567890", "-3"]]
    odd = TradeIds()
    odd.extend([7, "8"])  # typed str everywhere, but an int from a direct caller must not break a checkpoint
    assert odd.checkpoint() == [[8, 1], [7]]
    assert at_once.checkpoint() == in_steps.checkpoint() == form
    back = TradeIds.restore(orjson.loads(orjson.dumps(form)))
    assert sorted(back) == sorted(ids) and back.checkpoint() == form
    back.append("12")
    at_once.append("12")
    assert back.checkpoint() == at_once.checkpoint() == [[5, 3, 9, 2, 0, 1, 11, 2], form[1]]


def test_checkpoint_of_a_busy_minute_stays_small():
    """100,000 consecutively numbered trades in one open minute: a run, not 100,000 strings."""
    b = CandleBook(CFG)
    feed(b, [t(str(10**9 + i), i // 2, 100.0 + i % 7) for i in range(100_000)])
    assert b.open_windows() > 0
    assert len(orjson.dumps(b.snapshot())) < 3000
    again = CandleBook.restore(CFG, orjson.loads(orjson.dumps(b.snapshot())))
    assert again.add(EX, SYM, [t(str(10**9 + 5), 70_000, 1.0), t(str(10**9 + 100_000), 70_001, 1.0)]).duplicates == 1


def test_restore_of_a_version_1_snapshot():
    """Checkpoints written before trade ids were kept as runs (plain id lists) still restore."""
    batches = disordered_stream(2, 200, numeric=True)
    whole = CandleBook(CFG)
    expected = as_data(run(whole, batches))
    first = CandleBook(CFG)
    outs = run(first, batches[:120])
    snap = orjson.loads(orjson.dumps(first.snapshot()))
    snap["version"] = 1
    for s in snap["symbols"]:
        for _, a in (*s["open1m"], *s["final1m"]):
            a[IDS] = list(TradeIds.restore(a[IDS]))
    outs += run(CandleBook.restore(CFG, snap), batches[120:])
    assert as_data(outs) == expected


def test_restore_rejects_other_intervals():
    b = CandleBook(CFG)
    b.add(EX, SYM, [t("1", 0, 1.0)])
    with pytest.raises(ValueError):
        CandleBook.restore(CandleConfig(intervals=("1m", "5m")), b.snapshot())


def latest(outs: list[BookOutput]) -> dict:
    """The last emitted value of every (symbol, interval, open_time), checking revisions count up."""
    last: dict = {}
    for o in outs:
        for c in o.candles:
            key = (c.symbol, c.interval, c.open_time)
            assert c.is_final and c.revision == (last[key].revision + 1 if key in last else 0), key
            last[key] = c
    return last


def values(candles: dict) -> dict:
    """Everything but the revision number, which counts emissions."""
    return {
        k: (c.open, c.high, c.low, c.close, c.volume, c.quote_volume, c.trade_count, c.vwap, c.taker_buy_volume,
            c.first_trade_id, c.last_trade_id)
        for k, c in candles.items()
    }


def test_values_do_not_depend_on_batching():
    batches = disordered_stream(2, 600)
    flat = [(sym, tr) for sym, trades in batches for tr in trades]
    one_by_one = [(sym, [tr]) for sym, tr in flat]
    a, b = CandleBook(CFG), CandleBook(CFG)
    out_a = [*run(a, batches), a.close_open_windows()]
    out_b = [*run(b, one_by_one), b.close_open_windows()]
    assert values(latest(out_a)) == values(latest(out_b))
    assert [x.trade for o in out_a for x in o.late] == [x.trade for o in out_b for x in o.late]
    assert sum(o.duplicates for o in out_a) == sum(o.duplicates for o in out_b)


def model(batches: list[tuple[str, list[Trade]]], cfg: CandleConfig) -> tuple[dict, list[Trade], int]:
    """Brute force: which trades count (not late, not duplicate) and their per-window trades in arrival order."""
    max_ms = None
    windows: dict = defaultdict(list)
    seen: dict[str, set[str]] = defaultdict(set)
    late: list[Trade] = []
    dups = 0
    for sym, trades in batches:
        for tr in trades:
            ms = tr.ts // 1000
            m = ms - ms % MIN
            wm = None if max_ms is None else max_ms - cfg.lateness_ms
            if wm is not None and m + MIN <= wm and wm >= m + MIN + cfg.grace_ms:
                late.append(tr)
                continue
            if tr.trade_id in seen[sym]:
                dups += 1
                continue
            seen[sym].add(tr.trade_id)
            max_ms = ms if max_ms is None else max(max_ms, ms)
            for name in cfg.intervals:
                iv = parse_interval(name)
                windows[(sym, name, ms - ms % iv)].append(tr)
    return windows, late, dups


def aggregate(trades: list[Trade]) -> tuple:
    first = min(range(len(trades)), key=lambda i: (trades[i].ts, i))
    last = max(range(len(trades)), key=lambda i: (trades[i].ts, i))
    sided = any(tr.side != "unknown" for tr in trades)
    return (
        trades[first].price, max(tr.price for tr in trades), min(tr.price for tr in trades), trades[last].price,
        len(trades), trades[first].trade_id, trades[last].trade_id,
        sum(tr.amount for tr in trades), sum(tr.price * tr.amount for tr in trades),
        sum(tr.amount for tr in trades if tr.side == "buy") if sided else None,
    )


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_against_brute_force_model(seed):
    batches = disordered_stream(seed, 1500)
    b = CandleBook(CFG)
    outs = [*run(b, batches), b.close_open_windows()]
    last = latest(outs)
    windows, late, dups = model(batches, CFG)
    assert [x.trade for o in outs for x in o.late] == late and late
    assert sum(o.duplicates for o in outs) == dups and dups
    wm = b.watermark_ms
    traded = {k for k, c in last.items() if c.trade_count}
    expected = {k for k in windows if k[2] + parse_interval(k[1]) <= wm}
    assert traded == expected
    for key in expected:
        c = last[key]
        exp = aggregate(windows[key])
        assert (c.open, c.high, c.low, c.close, c.trade_count, c.first_trade_id, c.last_trade_id) == exp[:7], key
        assert c.volume == pytest.approx(exp[7], rel=1e-12) and c.quote_volume == pytest.approx(exp[8], rel=1e-12)
        if exp[9] is None and key[1] != "1m":  # no traded side; a flat minute after a sided one adds 0.0
            assert c.taker_buy_volume in (None, 0.0)
        elif exp[9] is None:
            assert c.taker_buy_volume is None
        else:
            assert c.taker_buy_volume == pytest.approx(exp[9], rel=1e-12)
        if key[1] == "1m":
            assert (c.volume, c.quote_volume) == (exp[7], exp[8])  # same additions in the same order
    # every higher candle equals the roll-up of its final 1m candles (flat ones included)
    minutes: dict = defaultdict(list)
    for (sym, name, start), c in sorted(last.items()):
        if name == "1m":
            minutes[sym].append(c)
    for (sym, name, start), c in last.items():
        if name == "1m":
            continue
        inside = [m for m in minutes[sym] if start <= m.open_time <= c.close_time]
        with_trades = [m for m in inside if m.trade_count]
        if with_trades:
            assert (c.open, c.close) == (with_trades[0].open, with_trades[-1].close)
            assert (c.high, c.low) == (max(m.high for m in with_trades), min(m.low for m in with_trades))
        else:
            assert c.open == c.high == c.low == c.close == inside[0].open and c.trade_count == 0
        assert c.volume == pytest.approx(sum(m.volume for m in inside), rel=1e-12)
    # flat minutes: no hole between a symbol's first forward-finalized minute and its last one
    for sym, ms in minutes.items():
        firsts = [c.open_time for o in outs for c in o.candles if c.symbol == sym and c.interval == "1m"]
        opens = {c.open_time for c in ms}
        assert set(range(firsts[0], max(opens) + 1, MIN)) <= opens
        for c in ms:
            if not c.trade_count:
                assert c.open == c.high == c.low == c.close and c.volume == 0.0 and c.vwap is None


@pytest.mark.parametrize("intervals", [("1m", "5m", "15m", "1h", "4h", "1d"), ("5m", "1h"), ("1m",)])
def test_forming_is_in_progress_of_every_interval(intervals: tuple[str, ...]) -> None:
    """The one-pass ``forming`` the worker sends equals ``in_progress`` per interval, through
    disorder, late minutes, gaps and idle closes."""
    b = CandleBook(CandleConfig(intervals=intervals, lateness_ms=2000, grace_ms=60_000))
    checked = 0
    for i, (sym, trades) in enumerate(disordered_stream(3, 200)):
        b.add(EX, sym, trades)
        if i % 50 == 49:
            b.close_open_windows()
        for s in ("A", "B", "C", "NOPE"):
            expected = [c for name in intervals if (c := b.in_progress(EX, s, name)) is not None]
            assert b.forming(EX, s) == expected
            checked += len(expected)
    assert checked >= 50 * len(intervals)  # the stream leaves candles forming most of the time
