"""The streaming indicators against TA-Lib (the ``talib`` wheel) on real candles and on the edge
cases where TA-Lib has a quirk, plus revisions, late candles, re-delivery, snapshots and seeding."""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import json
import math
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import orjson
import pytest

from agents.indicators import (
    VALUE_FIELDS,
    BadCandle,
    IndicatorConfig,
    IndicatorEngine,
    RevisionTooOld,
)
from schemas.codec import AvroCodec
from schemas.models import Candle, Indicators

np = pytest.importorskip("numpy")
talib = pytest.importorskip("talib")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
XRP_1M = "freqtrade_binance_xrpeth/XRP_ETH-1m.json"
XRP_5M = "freqtrade_binance_xrpeth/XRP_ETH-5m.json"
TARDIS = "tardis_binance_futures_btcusdt/tardis_trades_binance-futures_BTCUSDT_2020-02-22.csv"
BINANCE = "binance_raw_streams/usdm_btcusdt_20240808.jsonl.gz"

RTOL = 1e-9
# Near zero a relative bound means nothing; allow 1e-12 of the scale instead: the field's own, or
# the price level for fields made of prices (MACD is a small difference of two large EMAs).
ATOL_OF_SCALE = 1e-12
PRICE_FIELDS = {"ma50", "ma200", "ema12", "ema26", "ema50", "ema200", "macd", "macd_signal", "macd_histogram",
                "bb_upper", "bb_middle", "bb_lower", "atr", "wma"}  # fmt: skip

SHORT = IndicatorConfig(
    sma_periods=(5, 20), ema_periods=(3, 5, 8, 21), rsi_period=7, macd_fast=5, macd_slow=13, macd_signal=4,
    bb_period=10, bb_dev_up=1.5, bb_dev_down=2.5, atr_period=5, stoch_fastk=9, stoch_slowk=2, stoch_slowd=4,
    wma_period=7, adx_period=6, cci_period=12, willr_period=11, mfi_period=8, roc_period=3,
)  # fmt: skip


def data_file(rel: str) -> Path:
    path = DATA / rel
    if not path.exists():
        pytest.skip(f"real data {path} absent (tests read ../shared/data beside the repo)")
    return path


# -- inputs -----------------------------------------------------------------------------------------


def candle(i: int, o: float, h: float, lo: float, c: float, v: float) -> Candle:
    """The i-th final 1-minute candle of a test series."""
    open_time = 1_570_752_000_000 + i * 60_000
    return Candle("binance", "XRP/ETH", "1m", open_time, open_time + 59_999, o, h, lo, c, v, c * v, 1, is_final=True)


def candles_of_rows(rows: Sequence[Sequence[float]], step_ms: int, key: tuple[str, str, str]) -> list[Candle]:
    """``[ts, o, h, l, c, v]`` rows (freqtrade/ccxt OHLCV) as candles."""
    return [
        Candle(*key, int(r[0]), int(r[0]) + step_ms - 1, *map(float, r[1:6]), 0.0, 0, is_final=True) for r in rows
    ]


def bars(trades: Iterable[tuple[int, float, float]], step_ms: int) -> list[list[float]]:
    """OHLCV rows from (time ms, price, quantity) in time order; intervals without trades have no row."""
    rows: list[list[float]] = []
    for ts, price, qty in trades:
        start = ts - ts % step_ms
        if rows and rows[-1][0] == start:
            row = rows[-1]
            row[2], row[3], row[4], row[5] = max(row[2], price), min(row[3], price), price, row[5] + qty
        else:
            rows.append([start, price, price, price, price, qty])
    return rows


@functools.cache
def tardis_trades() -> tuple[tuple[int, float, float], ...]:
    with data_file(TARDIS).open() as f:
        return tuple((int(r["timestamp"]) // 1000, float(r["price"]), float(r["amount"])) for r in csv.DictReader(f))


@functools.cache
def binance_trades() -> tuple[tuple[int, float, float], ...]:
    trades = []
    with gzip.open(data_file(BINANCE), "rt") as f:
        for line in f:
            message = json.loads(line.split(" ", 1)[1])
            event = message.get("data", message)
            if event.get("e") == "trade":
                trades.append((event["T"], float(event["p"]), float(event["q"])))
    return tuple(trades)


def dataset(name: str) -> list[Candle]:
    if name == "xrp-1m":
        return candles_of_rows(json.loads(data_file(XRP_1M).read_text()), 60_000, ("binance", "XRP/ETH", "1m"))
    if name == "xrp-5m":
        return candles_of_rows(json.loads(data_file(XRP_5M).read_text()), 300_000, ("binance", "XRP/ETH", "5m"))
    if name == "tardis-1m":
        return candles_of_rows(bars(tardis_trades(), 60_000), 60_000, ("binanceusdm", "BTCUSDT", "1m"))
    step = {"binance-1s": 1_000, "binance-5s": 5_000}[name]
    return candles_of_rows(bars(binance_trades(), step), step, ("binanceusdm", "BTCUSDT", name[-2:]))


# -- the oracle -------------------------------------------------------------------------------------


def talib_values(candles: Sequence[Candle], cfg: IndicatorConfig) -> dict[str, np.ndarray]:
    h, lo, c, v = (np.array([getattr(k, f) for k in candles], dtype=float) for f in ("high", "low", "close", "volume"))
    out = {"rsi": talib.RSI(c, cfg.rsi_period)}
    out["ma50"], out["ma200"] = (talib.SMA(c, p) for p in cfg.sma_periods)
    out["ema12"], out["ema26"], out["ema50"], out["ema200"] = (talib.EMA(c, p) for p in cfg.ema_periods)
    out["macd"], out["macd_signal"], out["macd_histogram"] = talib.MACD(c, cfg.macd_fast, cfg.macd_slow, cfg.macd_signal)
    out["bb_upper"], out["bb_middle"], out["bb_lower"] = talib.BBANDS(
        c, cfg.bb_period, cfg.bb_dev_up, cfg.bb_dev_down, talib.MA_Type.SMA
    )
    out["atr"] = talib.ATR(h, lo, c, cfg.atr_period)
    out["stoch_k"], out["stoch_d"] = talib.STOCH(
        h, lo, c, cfg.stoch_fastk, cfg.stoch_slowk, talib.MA_Type.SMA, cfg.stoch_slowd, talib.MA_Type.SMA
    )
    out["obv"] = talib.OBV(c, v)
    out["wma"] = talib.WMA(c, cfg.wma_period)
    out["adx"] = talib.ADX(h, lo, c, cfg.adx_period)
    out["plus_di"] = talib.PLUS_DI(h, lo, c, cfg.adx_period)
    out["minus_di"] = talib.MINUS_DI(h, lo, c, cfg.adx_period)
    out["cci"] = talib.CCI(h, lo, c, cfg.cci_period)
    out["willr"] = talib.WILLR(h, lo, c, cfg.willr_period)
    out["mfi"] = talib.MFI(h, lo, c, v, cfg.mfi_period)
    out["roc"] = talib.ROC(c, cfg.roc_period)
    assert set(out) == set(VALUE_FIELDS)
    return out


def assert_matches_talib(records: Sequence[Indicators], candles: Sequence[Candle], cfg: IndicatorConfig) -> None:
    """Every record belongs to its candle, None exactly where TA-Lib has NaN, values within 1e-9."""
    assert [(r.open_time, r.close, r.candle_revision) for r in records] == [
        (k.open_time, k.close, k.revision) for k in candles
    ]
    expected = talib_values(candles, cfg)
    for name in VALUE_FIELDS:
        ref = expected[name]
        got = np.array([math.nan if getattr(r, name) is None else getattr(r, name) for r in records])
        missing = np.isnan(ref)
        assert np.array_equal(np.isnan(got), missing), f"{name}: None where TA-Lib has no NaN, or the reverse"
        assert not any(getattr(r, name) is not None and math.isnan(getattr(r, name)) for r in records)
        if missing.all():
            continue
        scale = float(np.nanmax(np.abs(ref)))
        if name in PRICE_FIELDS:
            scale = max(scale, max(abs(k.close) for k in candles))
        atol = ATOL_OF_SCALE * scale
        np.testing.assert_allclose(got[~missing], ref[~missing], rtol=RTOL, atol=atol, err_msg=name)


def run(candles: Iterable[Candle], cfg: IndicatorConfig = IndicatorConfig()) -> list[Indicators]:
    engine = IndicatorEngine(cfg)
    return [engine.update(k) for k in candles]


def synthetic(n: int, *, seed: int = 7, price: float = 100.0, flat_every: int = 0) -> list[Candle]:
    """A random walk with zero-volume bars; every ``flat_every``-th stretch of 25 bars is flat."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        o = price
        if flat_every and (i // 25) % flat_every == 1:
            out.append(candle(i, price, price, price, price, 0.0))
            continue
        price *= math.exp(rnd.gauss(0, 0.01))
        hi, lo = max(o, price) * (1 + rnd.random() * 0.002), min(o, price) * (1 - rnd.random() * 0.002)
        out.append(candle(i, o, hi, lo, price, 0.0 if rnd.random() < 0.1 else rnd.random() * 50))
    return out


# -- equality with TA-Lib on real data --------------------------------------------------------------


@pytest.mark.parametrize("name", ["xrp-1m", "xrp-5m", "tardis-1m", "binance-1s", "binance-5s"])
def test_real_candles_equal_talib(name: str) -> None:
    candles = dataset(name)
    assert len(candles) >= 60
    assert_matches_talib(run(candles), candles, IndicatorConfig())


@pytest.mark.parametrize("name", ["xrp-5m", "tardis-1m", "binance-5s"])
def test_configured_periods_equal_talib(name: str) -> None:
    candles = dataset(name)
    assert_matches_talib(run(candles, SHORT), candles, SHORT)


# TA-Lib 0.8 computes these with a fused multiply-add (the EMA step, so also MACD; ATR's Wilder
# step; the upper band when the two band multipliers differ); Python 3.11 has no fma, so they may
# differ in the last bits. Every other value is bit-identical with the pinned TA-Lib: this pins
# the arithmetic order (a TA-Lib upgrade can legitimately break it while the 1e-9 tests hold).
FUSED = {"ema12", "ema26", "ema50", "ema200", "macd", "macd_signal", "macd_histogram", "atr"}


def fused(cfg: IndicatorConfig) -> set[str]:
    return FUSED | ({"bb_upper"} if cfg.bb_dev_up != cfg.bb_dev_down else set())


@pytest.mark.parametrize("name", ["xrp-1m", "binance-1s", "walk-with-flat-stretches"])
def test_bit_identical_to_pinned_talib(name: str) -> None:
    candles = synthetic(3000, flat_every=4) if name == "walk-with-flat-stretches" else dataset(name)
    for cfg in (IndicatorConfig(), SHORT):
        records = run(candles, cfg)
        expected = talib_values(candles, cfg)
        for field in sorted(set(VALUE_FIELDS) - fused(cfg)):
            got = [getattr(r, field) for r in records]
            want = [None if math.isnan(x) else float(x) for x in expected[field]]
            assert got == want, field


def test_real_data_reaches_the_quirk_paths() -> None:
    """The XRP candles have zero-volume stretches: whole MFI windows without money flow."""
    candles = dataset("xrp-1m")
    assert sum(k.volume == 0 for k in candles) > 1000
    assert sum(r.mfi == 0.0 for r in run(candles)) > 10


# -- equality with TA-Lib on the edges of its arithmetic ---------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: synthetic(3000, flat_every=4), id="walk-with-flat-stretches"),
        pytest.param(lambda: [candle(i, 61234.56, 61234.56, 61234.56, 61234.56, 1.0) for i in range(300)], id="flat-btc"),
        pytest.param(lambda: [candle(i, 0.3, 0.3, 0.3, 0.1 + 0.2 if i % 2 else 0.3, 1.0) for i in range(300)], id="0.1+0.2"),
        pytest.param(
            lambda: [candle(i, *[61234.56 if i % 2 else math.nextafter(61234.56, 1e9)] * 4, 1.0) for i in range(300)],
            id="one-ulp-wiggle",
        ),
        pytest.param(
            lambda: [dataclasses.replace(k, open=k.open * 1e-17, high=k.high * 1e-17, low=k.low * 1e-17, close=k.close * 1e-17)
                     for k in synthetic(400, seed=3)],
            id="prices-1e-17",
        ),  # fmt: skip
        pytest.param(
            lambda: [dataclasses.replace(k, close=0.0, low=0.0) if i in (40, 41, 90) else k for i, k in enumerate(synthetic(300))],
            id="zero-closes",
        ),  # fmt: skip
        pytest.param(lambda: synthetic(300, price=1e7), id="large-prices"),
        pytest.param(
            lambda: [candle(i, 100.0 + i, 100.0 + i + 1, 100.0 + i - 1, 100.0 + i, 5.0) for i in range(300)], id="trend-up"
        ),
    ],
)
def test_edge_series_equal_talib(make: Callable[[], list[Candle]]) -> None:
    candles = make()
    assert_matches_talib(run(candles), candles, IndicatorConfig())
    assert_matches_talib(run(candles, SHORT), candles, SHORT)


def test_talib_quirks_are_kept() -> None:
    """The documented quirks, stated directly: a flat market gives RSI 0, STOCH/WILLR/CCI/MFI 0."""
    flat = [candle(i, 2.0, 2.0, 2.0, 2.0, 1.0) for i in range(250)]
    last = run(flat)[-1]
    assert (last.rsi, last.stoch_k, last.stoch_d, last.willr, last.cci, last.mfi) == (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert last.bb_upper == last.bb_middle == last.bb_lower == 2.0
    assert last.obv == 1.0 and last.atr == 0.0 and last.adx == 0.0 and last.plus_di == 0.0


# -- the record -------------------------------------------------------------------------------------


def test_record_round_trips_through_avro() -> None:
    candles = dataset("xrp-5m")
    records = run(candles)
    codec = AvroCodec("tickflow.Indicators")
    assert [f["name"] for f in codec.schema["fields"]] == [f.name for f in dataclasses.fields(Indicators)]
    for record in (records[0], records[-1]):
        assert Indicators.from_avro(codec.decode(codec.encode(record.to_avro()))) == record
    assert records[-1].key == "binance:XRP/ETH:5m"
    assert records[0].ma50 is None and records[-1].ma200 is not None


# -- revisions, late candles, re-delivery ------------------------------------------------------------


def revised(k: Candle, factor: float = 1.003) -> Candle:
    close = k.close * factor
    return dataclasses.replace(
        k, close=close, high=max(k.high, close), low=min(k.low, close), volume=k.volume + 7.0, revision=k.revision + 1
    )


def test_revision_recomputes_from_the_revised_candle() -> None:
    candles = dataset("xrp-5m")
    engine = IndicatorEngine()
    for k in candles[:400]:
        engine.update(k)
    fixed = revised(candles[380])
    changed = engine.process(fixed)
    corrected = [*candles[:380], fixed, *candles[381:]]
    assert [r.open_time for r in changed] == [k.open_time for k in corrected[380:400]]
    assert changed[0].candle_revision == 1
    tail = [engine.update(k) for k in candles[400:]]
    everything = run(corrected[:380]) + changed + tail
    assert_matches_talib(everything, corrected, IndicatorConfig())


def test_revision_of_the_last_candle() -> None:
    candles = synthetic(300)
    engine = IndicatorEngine()
    records = [engine.update(k) for k in candles]
    fixed = revised(candles[-1], 0.99)
    assert engine.process(fixed) == [engine.update(fixed)]
    corrected = [*candles[:-1], fixed]
    assert_matches_talib([*records[:-1], engine.update(fixed)], corrected, IndicatorConfig())


def test_late_candle_is_inserted_and_later_ones_recomputed() -> None:
    candles = dataset("xrp-5m")
    engine = IndicatorEngine()
    held_back = 500
    for k in candles[:held_back] + candles[held_back + 1 : 540]:
        engine.update(k)
    changed = engine.process(candles[held_back])
    assert [r.open_time for r in changed] == [k.open_time for k in candles[held_back:540]]
    records = run(candles[:held_back]) + changed + [engine.update(k) for k in candles[540:]]
    assert_matches_talib(records, candles, IndicatorConfig())


def test_candle_before_the_series_start_restarts_it_while_history_covers_the_start() -> None:
    candles = synthetic(40)
    engine = IndicatorEngine()
    for k in candles[1:]:
        engine.update(k)
    changed = engine.process(candles[0])
    assert len(changed) == 40
    assert_matches_talib(changed, candles, IndicatorConfig())


def test_revision_older_than_history_is_rejected_and_changes_nothing() -> None:
    cfg = dataclasses.replace(IndicatorConfig(), history=8)
    candles = synthetic(120)
    engine = IndicatorEngine(cfg)
    records = [engine.update(k) for k in candles[:100]]
    before = orjson.dumps(engine.snapshot())
    with pytest.raises(RevisionTooOld) as err:
        engine.process(revised(candles[90]))
    assert "older than the kept history" in err.value.reason
    with pytest.raises(RevisionTooOld):
        engine.process(revised(candles[0]))
    assert orjson.dumps(engine.snapshot()) == before
    engine.process(revised(candles[92]))  # the oldest kept candle can still be revised
    corrected = [*candles[:92], revised(candles[92]), *candles[93:]]
    records = run(corrected[:100], cfg) + [engine.update(k) for k in candles[100:]]
    assert_matches_talib(records, corrected, cfg)


def test_redelivery_older_than_history_is_ignored_and_a_late_candle_there_rejected() -> None:
    """A backfill run again re-sends revision-0 candles long applied: nothing to do, nothing to
    dead-letter. A candle the series never had at that age is still late beyond repair."""
    cfg = dataclasses.replace(IndicatorConfig(), history=8)
    candles = synthetic(120)
    missing = 30
    engine = IndicatorEngine(cfg)
    records = [engine.update(k) for i, k in enumerate(candles[:100]) if i != missing]
    before = orjson.dumps(engine.snapshot())
    for i in (0, 29, 31, 91):
        assert engine.process(candles[i]) == []
    with pytest.raises(RevisionTooOld):
        engine.update(candles[5])
    with pytest.raises(RevisionTooOld):
        engine.process(candles[missing])
    assert orjson.dumps(engine.snapshot()) == before
    assert engine.process(candles[92]) == [records[91]]  # still kept: its record comes back
    restored = IndicatorEngine.restore(orjson.loads(orjson.dumps(engine.snapshot())))
    assert restored.process(candles[3]) == []
    assert restored.series[candles[0].key].gone == [candles[0].open_time, 60_000, 30, candles[31].open_time, 60_000, 61]
    records += [restored.update(k) for k in candles[100:]]
    assert_matches_talib(records, [k for i, k in enumerate(candles) if i != missing], cfg)


def test_open_times_past_the_history_are_remembered_in_bounded_runs() -> None:
    cfg = dataclasses.replace(IndicatorConfig(), history=4)
    every_other = synthetic(2000)[::2]  # a gap after every bar: one run each
    engine = IndicatorEngine(cfg)
    for k in every_other:
        engine.update(k)
    gone = engine.series[every_other[0].key].gone
    assert len(gone) == 3 * 256 and gone[-3:] == [every_other[-5].open_time, 60_000, 1]
    assert engine.process(every_other[-5]) == [] and engine.process(every_other[-260]) == []  # 256 runs back from -5
    with pytest.raises(RevisionTooOld):
        engine.process(every_other[-261])


def test_redelivery_returns_the_same_record_and_changes_nothing() -> None:
    candles = synthetic(260)
    engine = IndicatorEngine()
    records = [engine.update(k) for k in candles[:250]]
    before = orjson.dumps(engine.snapshot())
    for i in (249, 240, 200):
        assert engine.process(candles[i]) == [records[i]]
    stale = dataclasses.replace(candles[245], close=1.0, revision=-1)
    assert engine.update(stale) == records[245]
    assert orjson.dumps(engine.snapshot()) == before
    records += [engine.update(k) for k in candles[250:]]
    assert_matches_talib(records, candles, IndicatorConfig())


# -- snapshot, restore, seed, peek --------------------------------------------------------------------


def test_snapshot_restore_continues_exactly() -> None:
    candles = dataset("xrp-1m")
    other = synthetic(500, seed=11)
    other = [dataclasses.replace(k, symbol="BTC/USDT") for k in other]
    engine = IndicatorEngine()
    for k in candles[:2000] + other[:300]:
        engine.update(k)
    restored = IndicatorEngine.restore(orjson.loads(orjson.dumps(engine.snapshot())))
    assert restored.snapshot() == engine.snapshot()
    # the oldest kept candle can be revised right after a restore: its window came along
    deep = revised(candles[2000 - IndicatorConfig().history])
    assert restored.process(deep) == engine.process(deep)
    for k in candles[2000:] + other[300:]:
        assert restored.update(k) == engine.update(k)
    # the history travels too: a revision behind the snapshot point recomputes the same way
    fixed = revised(candles[-5])
    assert restored.process(fixed) == engine.process(fixed)


def test_snapshot_right_after_restore_and_of_an_empty_engine() -> None:
    empty = IndicatorEngine(SHORT)
    again = IndicatorEngine.restore(orjson.loads(orjson.dumps(empty.snapshot())))
    assert again.config == SHORT and again.series == {}
    with pytest.raises(ValueError, match="version"):
        IndicatorEngine.restore({"version": 99})


def test_seed_equals_streaming_and_talib() -> None:
    candles = dataset("xrp-5m")
    history = candles[:600]
    shuffled = [*history, *(dataclasses.replace(k, close=9.9, revision=-1) for k in history[::7])]
    random.Random(5).shuffle(shuffled)
    engine = IndicatorEngine()
    last = engine.seed(candles[0].key, shuffled)
    streamed = run(history)
    assert last == streamed[-1]
    records = streamed + [engine.update(k) for k in candles[600:]]
    assert_matches_talib(records, candles, IndicatorConfig())
    assert engine.seed("binance:XRP/ETH:5m", []) is None
    with pytest.raises(BadCandle):
        engine.seed("other:key:1m", candles[:3])


def test_seed_replaces_an_existing_series() -> None:
    candles = synthetic(200)
    engine = IndicatorEngine()
    for k in synthetic(50, seed=99):
        engine.update(k)
    engine.seed(candles[0].key, candles[:150])
    records = run(candles[:150]) + [engine.update(k) for k in candles[150:]]
    assert_matches_talib(records, candles, IndicatorConfig())


def test_peek_shows_a_forming_candle_without_changing_state() -> None:
    candles = synthetic(300)
    engine = IndicatorEngine()
    for k in candles[:299]:
        engine.update(k)
    before = orjson.dumps(engine.snapshot())
    forming = dataclasses.replace(candles[299], is_final=False)
    peeked = engine.peek(forming)
    assert orjson.dumps(engine.snapshot()) == before
    assert peeked == engine.update(candles[299])
    with pytest.raises(BadCandle, match="newer"):
        engine.peek(dataclasses.replace(candles[100], is_final=False))


# -- bad input and configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"close": math.nan}, "bad close"),
        ({"high": math.inf}, "bad high"),
        ({"volume": "12"}, "bad volume"),
        ({"high": 0.5, "low": 0.6}, "below low"),
        ({"volume": -1.0}, "negative volume"),
        ({"open_time": 1.5}, "bad open_time"),
        ({"is_final": False}, "not final"),
    ],
)
def test_bad_candle_is_reported_not_applied(change: dict, reason: str) -> None:
    candles = synthetic(40)
    engine = IndicatorEngine()
    for k in candles[:30]:
        engine.update(k)
    before = orjson.dumps(engine.snapshot())
    with pytest.raises(BadCandle) as err:
        engine.process(dataclasses.replace(candles[30], **change))
    assert reason in err.value.reason
    assert orjson.dumps(engine.snapshot()) == before
    records = run(candles[:30]) + [engine.update(k) for k in candles[30:]]
    assert_matches_talib(records, candles, IndicatorConfig())


@pytest.mark.parametrize(
    "change",
    [
        {"rsi_period": 1},
        {"sma_periods": (50,)},
        {"ema_periods": (12, 26, 50, 0)},
        {"macd_fast": 26, "macd_slow": 12},
        {"history": 0},
        {"bb_dev_up": math.inf},
        {"stoch_slowd": 2.5},
    ],
)
def test_bad_config_is_refused(change: dict) -> None:
    with pytest.raises(ValueError):
        IndicatorConfig(**change)


def test_series_are_independent() -> None:
    a, b = synthetic(300, seed=1), synthetic(300, seed=2)
    b = [dataclasses.replace(k, interval="5m") for k in b]
    engine = IndicatorEngine()
    records_a, records_b = [], []
    for ka, kb in zip(a, b, strict=True):
        records_a.append(engine.update(ka))
        records_b.append(engine.update(kb))
    assert_matches_talib(records_a, a, IndicatorConfig())
    assert_matches_talib(records_b, b, IndicatorConfig())
    assert set(engine.series) == {a[0].key, b[0].key}


@pytest.mark.parametrize("seed", range(12))
def test_random_mix_of_late_revised_redelivered_candles_and_restarts(seed: int) -> None:
    """Whatever the order of events, the kept records equal TA-Lib over the series as applied."""
    rnd = random.Random(seed)
    cfg = dataclasses.replace(SHORT if seed % 2 else IndicatorConfig(), history=rnd.randint(2, 40))
    truth = synthetic(rnd.randint(80, 400), seed=seed)
    engine = IndicatorEngine(cfg)
    applied: dict[int, Candle] = {}
    latest: dict[int, Indicators] = {}

    def apply(k: Candle) -> None:
        try:
            records = engine.process(k)
        except RevisionTooOld:  # only for a candle older than the last `history` applied ones
            assert len(applied) > cfg.history and k.open_time < sorted(applied)[-cfg.history]
            return
        applied[k.open_time] = k
        latest.update((r.open_time, r) for r in records)

    held: list[Candle] = []
    for k in truth:
        if rnd.random() < 0.05:
            held.append(k)
            continue
        apply(k)
        if held and rnd.random() < 0.2:
            apply(held.pop(rnd.randrange(len(held))))
        if rnd.random() < 0.1:
            apply(revised(applied[rnd.choice(sorted(applied)[-cfg.history - 3 :])], 1 + rnd.gauss(0, 0.01)))
        if rnd.random() < 0.05:
            at = rnd.choice(sorted(applied)[-cfg.history :])
            assert engine.process(applied[at]) == [latest[at]]
        if rnd.random() < 0.03:
            engine = IndicatorEngine.restore(orjson.loads(orjson.dumps(engine.snapshot())))
    for k in held:
        apply(k)
    times = sorted(applied)
    assert_matches_talib([latest[t] for t in times], [applied[t] for t in times], cfg)
