"""Strategies, the risk manager and the signal logic, each alone (pure, no services)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from agents.asof import AsOfTable
from agents.risk import RiskConfig, RiskManager
from agents.risk_agent import RISK, EventTimeMerge, RiskLogic
from agents.signal_agent import SIGNALS, SignalLogic
from agents.spec import Emit, Inbound, Reject
from agents.strategy import StrategyError, evaluate, load_strategy, parse_strategy
from schemas.codec import AvroCodec
from schemas.models import Candle, Indicators, OnchainMetric, RiskBar, SentimentAggregate, Signal, TradeIntent
from schemas.registry import RECORDS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "infra" / "strategies").glob("*.toml"))
T0 = 1_700_000_040_000  # a minute boundary, ms


def candle(i: int, close: float = 100.0, low: float | None = None, high: float | None = None, revision: int = 0) -> Candle:
    t = T0 + i * 60_000
    return Candle("ex", "BTCUSDT", "1m", t, t + 59_999, close, high or close + 1, low or close - 1, close, 1.0, close, 1, is_final=True, revision=revision)


def ind(i: int, close: float = 100.0, **values: float | None) -> Indicators:
    return Indicators("ex", "BTCUSDT", "1m", T0 + i * 60_000, close, **values)


def strategy(rules: list[dict], **extra: object):
    return parse_strategy({"name": "t", "version": "1", "interval": "1m", "rules": rules, **extra})


# ------------------------------------------------------------------------------ strategy files


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_strategies_load(path: Path) -> None:
    s = load_strategy(path)
    assert s.name == path.stem and s.rules and s.description


def test_two_examples_are_shipped() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize(
    ("data", "field", "why"),
    [
        ({"version": "1", "rules": [{"kind": "rsi"}]}, "name", "Field required"),
        ({"name": "x", "version": "1", "rules": [{"kind": "rsi", "below": 80, "above": 70}]}, "rules[0].below", "below (80.0) must be lower than above (70.0)"),
        ({"name": "x", "version": "1", "rules": [{"kind": "rsi"}, {"kind": "macd_crossover"}]}, "rules[1]", "does not match any of the expected tags"),
        ({"name": "x", "version": "1", "rules": [{"kind": "rsi", "weight": -1}]}, "rules[0].weight", "greater than 0"),
        ({"name": "x", "version": "1", "rules": [{"kind": "ma_cross", "fast": "ema13"}]}, "rules[0].fast", "Input should be"),
        ({"name": "x", "version": "1", "rules": [{"kind": "atr_filter"}]}, "rules", "at least one rule must vote"),
        ({"name": "x", "version": "1", "interval": "1w", "rules": [{"kind": "rsi"}]}, "interval", "unknown interval"),
        ({"name": "x", "version": "1", "rules": [{"kind": "rsi", "colour": 1}]}, "rules[0].colour", "Extra inputs are not permitted"),
        ({"name": "x", "version": "1", "rules": [{"kind": "onchain_zone", "metric": "sopr", "below": 1}]}, "rules[0].metric", "Input should be"),
        ({"name": "x", "version": "1", "entry_threshold": 1.5, "rules": [{"kind": "rsi"}]}, "entry_threshold", "less than or equal to 1"),
    ],
)
def test_bad_strategies_are_refused_naming_the_field(data: dict, field: str, why: str) -> None:
    with pytest.raises(StrategyError) as err:
        parse_strategy(data, "s.toml")
    assert f"{field}: " in str(err.value) and why in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("risk", "field"),
    [
        ({"risk_per_trade": 0.3, "max_drawdown": 0.2}, "risk.risk_per_trade: risk_per_trade (0.3) must be below max_drawdown (0.2)"),
        ({"risk_per_trade": 0.06, "max_daily_loss": 0.05}, "risk.risk_per_trade: risk_per_trade (0.06) must be below max_daily_loss"),
        ({"max_symbol_exposure": 3, "max_total_exposure": 2}, "risk.max_symbol_exposure: max_symbol_exposure (3.0) cannot exceed"),
        ({"max_drawdown": 1.5}, "risk.max_drawdown"),
        ({"equity": 0}, "risk.equity"),
        ({"atr_stop": -1}, "risk.atr_stop"),
        ({"cooldown_minutes": -5}, "risk.cooldown_minutes"),
        ({"leverage": 10}, "risk.leverage"),
    ],
)
def test_impossible_risk_settings_are_refused_naming_the_field(risk: dict, field: str) -> None:
    with pytest.raises(StrategyError) as err:
        strategy([{"kind": "rsi"}], risk=risk)
    assert f"strategy: {field}" in str(err.value), str(err.value)


def test_a_file_that_is_not_toml_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("name = 'x'\nrules = [\n")
    with pytest.raises(StrategyError, match=r"bad\.toml: not valid TOML"):
        load_strategy(path)
    with pytest.raises(StrategyError, match="cannot read"):
        load_strategy(tmp_path / "missing.toml")


# ------------------------------------------------------------------------------ evaluation


def test_rules_vote_with_weights_and_say_why_with_values() -> None:
    s = strategy([{"kind": "rsi", "below": 30, "weight": 2}, {"kind": "macd_cross", "weight": 1}, {"kind": "bollinger"}], entry_threshold=0.5)
    prev = ind(0, macd=-1.0, macd_signal=0.0)
    now = ind(1, rsi=25.0, macd=0.5, macd_signal=0.1, bb_upper=110.0, bb_lower=95.0)
    d = evaluate(s, candle(1, close=96.0, low=94.0), now, prev)
    assert d.direction == "long" and d.confidence == 1.0 and d.score == 1.0
    assert d.reasons[0] == "rsi: RSI 25.0 < 30 -> long (weight 2)"
    assert "MACD 0.5 crossed above signal 0.1" in d.reasons[1]
    assert "low 94 touched lower band 95" in d.reasons[2]


def test_rules_without_values_do_not_vote_and_mixed_votes_can_be_flat() -> None:
    s = strategy([{"kind": "rsi", "below": 30, "above": 70}, {"kind": "ma_cross", "fast": "ema12", "slow": "ema26", "trend": True}], entry_threshold=0.6)
    d = evaluate(s, candle(1), ind(1, rsi=None, ema12=101.0, ema26=100.0), None)
    assert (d.direction, d.confidence) == ("long", 1.0)  # RSI still warming up: only the trend voted
    d = evaluate(s, candle(1), ind(1, rsi=75.0, ema12=101.0, ema26=100.0), None)
    assert d.direction == "flat" and d.score == 0.0 and d.confidence == 1.0 and len(d.reasons) == 2


def test_atr_filter_blocks_with_its_reason() -> None:
    s = strategy([{"kind": "rsi", "below": 30}, {"kind": "atr_filter", "min_pct": 0.5}])
    d = evaluate(s, candle(1), ind(1, rsi=20.0, atr=0.1), None)
    assert d.direction == "flat"
    assert d.reasons[-1] == "blocked by atr_filter: ATR 0.100% of close < 0.5%"


def test_context_published_after_the_close_is_never_seen() -> None:
    close = T0 + 60_000
    day = 86_400_000
    table = AsOfTable()
    table.add("mvrv", "BTC", "BTC", close - 3 * day, close - 2 * day, 0.8)
    table.add("mvrv", "BTC", "BTC", close - day // 2, close - day // 4, 4.0)
    # published a day after its window's end: the second value is not out yet at the close
    assert table.latest("mvrv", "BTC", close, day, 10 * day).value == 0.8
    assert table.latest("mvrv", None, close, 0, 10 * day).value == 4.0
    assert table.latest("mvrv", "BTC", close, day, 2 * day) is None  # the usable one is too old
    assert table.latest("mvrv", "ETH", close, 0, 10 * day) is None
    s = strategy([{"kind": "onchain_zone", "metric": "mvrv", "below": 1.0, "above": 3.5, "known_after_hours": 24}])
    d = evaluate(s, candle(0), ind(0), None, table)
    assert d.direction == "long" and d.onchain_time == close - 3 * day and d.onchain_time <= close
    assert d.reasons == ("onchain_zone: mvrv 0.8 < 1 -> long (weight 1)",)


def test_the_first_published_value_of_a_window_wins() -> None:
    table = AsOfTable()
    assert table.add("mvrv", "BTC", "BTC", 0, 10, 1.0)
    assert not table.add("mvrv", "BTC", "BTC", 0, 10, 2.0)  # a revision: ignored, whenever it comes
    assert table.latest("mvrv", None, 10, 0, 100).value == 1.0
    assert AsOfTable.restore(table.snapshot()) == table


def test_a_table_is_complete_through_t_once_no_unseen_window_can_be_visible_at_t() -> None:
    day = 86_400_000
    table = AsOfTable()
    assert table.complete("mvrv", "BTC", 5 * day, 0)  # a series never seen is not waited for
    table.add("mvrv", "BTC", "BTC", 2 * day, 3 * day, 1.0)  # day 2, complete at the start of day 3
    assert table.complete("mvrv", "BTC", 4 * day - 1, 0)  # day 3 cannot be visible before day 4
    assert not table.complete("mvrv", "BTC", 4 * day, 0)  # day 3 could be: wait for it
    hour = 3_600_000  # published an hour after its end: waited for from then on
    assert table.complete("mvrv", "BTC", 4 * day + hour - 1, hour) and not table.complete("mvrv", "BTC", 4 * day + hour, hour)
    assert table.complete("mvrv", "ETH", 9 * day, 0) and not table.complete("mvrv", None, 9 * day, 0)
    table.add("mvrv", "BTC", "BTC", 3 * day, 4 * day, None)  # a window without the value still counts
    assert table.complete("mvrv", "BTC", 4 * day, 0)
    table.prune(10 * day)
    assert [v.time for v in table.fields["mvrv"]["BTC"].values] == [3 * day]  # the newest stays


def test_sentiment_extremes_are_contrarian_unless_told() -> None:
    hist = AsOfTable()
    hist.add("fear_greed_value", "MARKET:1h", "MARKET", T0 - 3_600_000, T0, 90.0)
    rule = {"kind": "sentiment", "field": "fear_greed_value", "below": 25, "above": 75}
    assert evaluate(strategy([rule]), candle(0), ind(0), None, hist).direction == "short"
    assert evaluate(strategy([{**rule, "contrarian": False}]), candle(0), ind(0), None, hist).direction == "long"


# ------------------------------------------------------------------------------ risk manager


def bar(i: int, direction: str = "long", close: float = 100.0, atr: float | None = 1.0, low: float | None = None, high: float | None = None, confidence: float = 1.0, symbol: str = "BTCUSDT") -> RiskBar:
    t = T0 + i * 60_000
    return RiskBar("t", "1", "ex", symbol, "1m", t, t + 59_999, high if high is not None else close + 0.5, low if low is not None else close - 0.5, close, atr, direction, confidence)  # type: ignore[arg-type]


def manager(**cfg: object) -> RiskManager:
    return RiskManager(RiskConfig(**cfg), "t", "1")


def test_fixed_fraction_size_with_an_atr_stop_and_take_profit() -> None:
    rm = manager(equity=10_000, risk_per_trade=0.01, atr_stop=2, take_profit_r=3, max_symbol_exposure=10, max_total_exposure=10)
    (intent,) = rm.on_candle(bar(0, atr=1.0))
    assert (intent.action, intent.side, intent.status) == ("open", "buy", "accepted")
    assert intent.quantity == 50.0  # 1% of 10,000 over a 2-ATR stop of 2.0
    assert (intent.stop_price, intent.take_profit_price, intent.reference_price) == (98.0, 106.0, 100.0)
    assert intent.ts == T0 + 60_000 and intent.intent_id == f"t:ex:BTCUSDT:1m:{T0}:0"
    assert rm.on_candle(bar(1)) == []  # same direction: nothing new


def test_exposure_caps_resize_and_say_why() -> None:
    rm = manager(equity=10_000, risk_per_trade=0.01, atr_stop=1, max_symbol_exposure=0.5, max_total_exposure=0.5)
    (intent,) = rm.on_candle(bar(0, atr=0.1))
    assert intent.status == "resized" and intent.requested_quantity == 1000.0 and intent.quantity == 50.0
    assert "above the per-symbol cap 0.5 x equity" in intent.reason


def test_stop_closes_and_starts_a_cooldown_that_rejects_entries() -> None:
    rm = manager(cooldown_minutes=5, max_symbol_exposure=100, max_total_exposure=100)
    rm.on_candle(bar(0))
    stop, rejected = rm.on_candle(bar(1, low=97.5))  # the same candle's long signal meets the cooldown
    assert (stop.action, stop.trigger, stop.side, stop.reference_price) == ("close", "stop", "sell", 98.0)
    assert "stop 98 hit (low 97.5)" in stop.reason
    assert rejected.status == "rejected" and rejected.quantity == 0 and "cooldown after a stop: 5 min left" in rejected.reason
    (rejected,) = rm.on_candle(bar(2))
    assert "cooldown after a stop: 4 min left" in rejected.reason
    assert rm.cash == pytest.approx(10_000 - 100.0)  # lost the 1% risked
    assert rm.on_candle(bar(7))[0].status == "accepted"


def test_opposite_signal_reverses_and_flat_exits_only_when_asked() -> None:
    rm = manager(max_symbol_exposure=100, max_total_exposure=100)
    rm.on_candle(bar(0, "long"))
    assert rm.on_candle(bar(1, "flat")) == []
    close, open_ = rm.on_candle(bar(2, "short"))
    assert (close.action, close.trigger, open_.action, open_.side) == ("close", "signal", "open", "sell")
    rm2 = manager(exit_on_flat=True, allow_short=False, max_symbol_exposure=100, max_total_exposure=100)
    rm2.on_candle(bar(0, "long"))
    (exit_,) = rm2.on_candle(bar(1, "flat"))
    assert exit_.action == "close"
    (refused,) = rm2.on_candle(bar(2, "short"))
    assert refused.status == "rejected" and refused.reason == "short signal but allow_short is false"


def _stopped_out(rm: RiskManager, times: int) -> list[TradeIntent]:
    """Open, then ``times`` candles that each hit the stop (and re-enter on their long signal)."""
    rm.on_candle(bar(0))
    out = []
    for i in range(1, times + 1):
        out = rm.on_candle(bar(i, low=97.5))
    return out


def test_daily_loss_halts_until_the_next_utc_day() -> None:
    rm = manager(max_daily_loss=0.025, max_drawdown=0.5, cooldown_minutes=0, max_symbol_exposure=100, max_total_exposure=100)
    stop, refused = _stopped_out(rm, 3)  # -1% three times: -2.97% on the day
    assert stop.trigger == "stop" and refused.status == "rejected"
    assert refused.reason.startswith("max daily loss: equity 9,702.99 is 2.97% below the day's start 10,000.00 (limit 2.5%)")
    assert rm.on_candle(bar(4))[0].status == "rejected"
    next_day = (T0 // 86_400_000 + 1) * 86_400_000
    assert rm.on_candle(bar((next_day - T0) // 60_000))[0].status == "accepted"


def test_drawdown_kill_switch_flattens_and_halts_for_good() -> None:
    rm = manager(max_daily_loss=0.9, max_drawdown=0.03, cooldown_minutes=0, max_symbol_exposure=100, max_total_exposure=100)
    stop, refused = _stopped_out(rm, 4)  # 2.97% after three stops is within the 3%; the fourth is not
    assert refused.reason.startswith("max drawdown: equity 9,605.96 is 3.94% below the peak 10,000.00 (limit 3%); trading halted")
    assert rm.on_candle(bar(5 + 1440))[0].status == "rejected"  # a new day does not lift it


def test_risk_snapshot_round_trips() -> None:
    rm = manager(max_symbol_exposure=100, max_total_exposure=100)
    rm.on_candle(bar(0))
    other = manager(max_symbol_exposure=100, max_total_exposure=100)
    other.restore(rm.snapshot())
    assert other.on_candle(bar(1, "short")) == rm.on_candle(bar(1, "short"))


# ------------------------------------------------------------------------------ signal logic


def _logic() -> SignalLogic:
    return SignalLogic(strategy([{"kind": "rsi", "below": 30, "above": 70}], risk={"max_symbol_exposure": 100, "max_total_exposure": 100}))


def test_one_signal_per_candle_whichever_record_comes_second() -> None:
    a, b = _logic(), _logic()
    c, i = candle(0), ind(0, rsi=20.0, atr=1.0)
    out_a = list(a.on_batch([Inbound("candle", c.key, c, 0)])) + list(a.on_batch([Inbound("indicators", i.key, i, 1)]))
    out_b = list(b.on_batch([Inbound("indicators", i.key, i, 0), Inbound("candle", c.key, c, 1)]))
    assert out_a == out_b
    sig, bar = out_a
    assert isinstance(sig, Emit) and sig.record == "signal" and sig.key == "ex:BTCUSDT:1m"
    assert sig.value.direction == "long" and sig.value.indicators_time == T0 and sig.value.close_time == T0 + 59_999
    assert bar.record == "risk_bar" and bar.key == "t" and (bar.value.direction, bar.value.atr, bar.value.low) == ("long", 1.0, c.low)
    # re-deliveries and revisions of a signalled candle change nothing
    again = [Inbound("candle", c.key, c, 2), Inbound("indicators", i.key, i, 3), Inbound("candle", c.key, candle(0, revision=1), 4)]
    assert list(a.on_batch(again)) == []


def test_other_series_are_ignored_and_unknown_records_rejected() -> None:
    logic = _logic()
    other = Candle("ex", "BTCUSDT", "5m", T0, T0 + 299_999, 1, 1, 1, 1, 1, 1, 1, is_final=True)
    assert list(logic.on_batch([Inbound("candle", other.key, other, 0)])) == []
    (rej,) = logic.on_batch([Inbound("late_trade", "k", object(), 7)])
    assert isinstance(rej, Reject) and rej.offset == 7 and "does not read 'late_trade'" in rej.reason


def test_snapshot_restore_continues_identically() -> None:
    records = []
    for n in range(6):
        c, i = candle(n, close=100 + n), ind(n, close=100 + n, rsi=[20, 50, 80, 25, 75, 50][n], atr=1.0)
        records += [Inbound("candle", c.key, c, 2 * n), Inbound("indicators", i.key, i, 2 * n + 1)]
    whole = _logic()
    expected = list(whole.on_batch(records))
    first = _logic()
    got = list(first.on_batch(records[:5]))  # stops between a candle and its indicators
    second = _logic()
    second.restore(first.snapshot())
    got += list(second.on_batch(records[5:]))
    assert got == expected and len([e for e in got if e.record == "signal"]) == 6


def test_spec_declares_registered_records() -> None:
    assert SIGNALS.name == "signals" and SIGNALS.inputs == ("candle", "indicators")
    assert SIGNALS.tables == ("onchain_metric", "sentiment_aggregate") and RISK.inputs == ("risk_bar",)
    for name in (*SIGNALS.inputs, *SIGNALS.tables, *SIGNALS.outputs, *RISK.inputs, *RISK.outputs):
        assert name in RECORDS
    assert RECORDS["signal"].channel == "signals:{symbol}" and RECORDS["signal"].local_id == 13
    assert (RECORDS["trade_intent"].topic, RECORDS["trade_intent"].table, RECORDS["trade_intent"].local_id) == ("trade_intents", "trade_intents", 14)


def test_signal_and_intent_round_trip_through_avro() -> None:
    sig = Signal("t", "1", "ex", "BTCUSDT", "1m", T0, T0 + 59_999, 100.5, "long", 0.75, 0.75, "a\nb", 0, T0, T0 - 60_000, None, T0 - 1)
    intent = TradeIntent("id", "t", "1", "ex", "BTCUSDT", "1m", T0, T0 + 60_000, 0, "open", "buy", "long", "signal", "accepted", 1.5, 2.0, 100.0, 98.0, None, 10_000.0, 0.8, "why")
    for value in (sig, intent):
        codec = AvroCodec(RECORDS["signal" if value is sig else "trade_intent"].schema)
        assert type(value).from_avro(codec.decode(codec.encode(value.to_avro()))) == value


def test_onchain_metric_records_feed_the_onchain_rules_a_day_after_their_day() -> None:
    from schemas.models import OnchainMetric

    day = (T0 // 86_400_000 - 1) * 86_400_000  # yesterday (UTC): over, so published, at the candle's close
    fresh = day + 86_400_000  # today: not over at the close, so not known yet
    logic = SignalLogic(strategy([{"kind": "onchain_zone", "metric": "mvrv", "below": 1.0, "asset": "BTC"}], risk={"max_symbol_exposure": 100, "max_total_exposure": 100}))
    recs = [Inbound("onchain_metric", "BTC", OnchainMetric("BTC", day, "coinmetrics", mvrv=0.9), 0),
            Inbound("onchain_metric", "BTC", OnchainMetric("BTC", fresh, "coinmetrics", mvrv=2.0), 1),
            Inbound("onchain_metric", "ETH", OnchainMetric("ETH", fresh, "coinmetrics", mvrv=0.1), 2)]  # fmt: skip
    c, i = candle(0), ind(0, atr=1.0)
    assert list(logic.on_table(recs)) == []
    sig = next(o.value for o in logic.on_batch([Inbound("candle", c.key, c, 3), Inbound("indicators", i.key, i, 4)]) if o.record == "signal")
    assert sig.direction == "long" and sig.onchain_time == day < sig.close_time
    assert sig.reasons == "onchain_zone: mvrv 0.9 < 1 -> long (weight 1)"


# ------------------------------------------------------------------------------ context tables

DAY = 86_400_000
TODAY = T0 // DAY * DAY


def mvrv(day: int, value: float | None, asset: str = "BTC", revision: int = 0) -> Inbound:
    return Inbound("onchain_metric", asset, OnchainMetric(asset, day, "coinmetrics", revision=revision, mvrv=value), 0)


def _context_logic(wait_s: float = 30.0) -> SignalLogic:
    rules = [{"kind": "onchain_zone", "metric": "mvrv", "below": 1.0, "above": 3.0, "asset": "BTC"}]
    return SignalLogic(strategy(rules), wait_s)


def _candles(n: int) -> list[Inbound]:
    out = []
    for k in range(n):
        c, i = candle(k), ind(k, atr=1.0)
        out += [Inbound("candle", c.key, c, 2 * k), Inbound("indicators", i.key, i, 2 * k + 1)]
    return out


def signals_of(outputs: list) -> list[Signal]:
    return [o.value for o in outputs if o.record == "signal"]


def test_a_signal_waits_until_the_table_is_complete_through_its_close() -> None:
    logic = _context_logic()
    assert list(logic.on_table([mvrv(TODAY - 2 * DAY, 5.0)])) == []
    # yesterday's value could be out at the close (its day is over) and is not here yet: wait
    assert signals_of(list(logic.on_batch(_candles(2)))) == []
    out = list(logic.on_table([mvrv(TODAY - DAY, 0.5), mvrv(TODAY - DAY, 9.0, revision=1)]))
    sigs = signals_of(out)
    assert [s.open_time for s in sigs] == [T0, T0 + 60_000]
    assert all(s.direction == "long" and s.onchain_time == TODAY - DAY for s in sigs)
    assert [o.record for o in out] == ["signal", "risk_bar", "signal", "risk_bar"]


def test_signals_are_the_same_whenever_the_table_records_arrive() -> None:
    """The table's records and the candles interleaved every way once the table has its series
    (the runtime reads every table to its end before an agent's first record): the same signals,
    to the byte."""
    table = [mvrv(TODAY - 3 * DAY, 5.0), mvrv(TODAY - 2 * DAY, 2.0), mvrv(TODAY - 2 * DAY, 0.1, revision=1), mvrv(TODAY - DAY, 0.5), mvrv(TODAY, 4.0)]
    candles_in = _candles(3)
    runs = []
    for cut in range(1, len(table) + 1):
        logic = _context_logic()
        out = list(logic.on_table(table[:cut])) + list(logic.on_batch(candles_in)) + list(logic.on_table(table[cut:]))
        out += logic.on_timer(0.0, math.inf)
        runs.append(out)
    assert all(run == runs[0] for run in runs) and len(signals_of(runs[0])) == 3
    assert {s.onchain_time for s in signals_of(runs[0])} == {TODAY - DAY}


def test_the_wait_is_bounded_and_counted() -> None:
    from agents.signal_agent import WAITS_EXPIRED

    logic = _context_logic(wait_s=5.0)
    list(logic.on_table([mvrv(TODAY - 2 * DAY, 0.5)]))
    assert signals_of(list(logic.on_batch(_candles(1)))) == []
    before = WAITS_EXPIRED.labels("signals")._value.get()
    assert list(logic.on_timer(100.0, 0.0)) == [] and list(logic.on_timer(104.9, 0.0)) == []
    restored = _context_logic(wait_s=5.0)
    restored.restore(logic.snapshot())  # a waiting candle survives a restart
    (sig,) = signals_of(list(logic.on_timer(105.0, 0.0)))
    assert sig.onchain_time == TODAY - 2 * DAY and WAITS_EXPIRED.labels("signals")._value.get() == before + 1
    assert signals_of(list(restored.on_timer(0.0, math.inf))) == [sig]


def test_a_table_never_fed_holds_nothing_back() -> None:
    logic = _context_logic()
    sigs = signals_of(list(logic.on_batch(_candles(2))))
    assert len(sigs) == 2 and all(s.onchain_time is None and s.direction == "flat" for s in sigs)


def test_sentiment_windows_are_visible_once_over() -> None:
    rule = {"kind": "sentiment", "field": "mean_score", "below": -0.5, "above": 0.5}
    logic = SignalLogic(strategy([rule]))
    hour = 3_600_000
    start = T0 // hour * hour
    agg = SentimentAggregate("MARKET", "1h", start, start + hour - 1, 3, 0.9, 1.0, 0.0, 0.0, 0.0, None, None, None, True)
    prior = SentimentAggregate("MARKET", "1h", start - hour, start - 1, 3, -0.9, 0.0, 1.0, 0.0, 0.0, None, None, None, True)
    list(logic.on_table([Inbound("sentiment_aggregate", agg.key, a, k) for k, a in enumerate((prior, agg))]))
    (sig,) = signals_of(list(logic.on_batch(_candles(1))))
    assert sig.sentiment_time == start - hour and sig.direction == "long"  # the window holding the candle is not over


# ------------------------------------------------------------------------------ the risk agent


def risk_bar(i: int, symbol: str, direction: str = "long", close: float = 100.0, low: float | None = None) -> Inbound:
    return Inbound("risk_bar", "t", bar(i, direction, close=close, low=low, symbol=symbol), i)


def test_the_merge_orders_bars_by_event_time_whatever_their_arrival() -> None:
    a = [risk_bar(i, "AAA", close=100 + i) for i in range(4)]
    b = [risk_bar(i, "BBB", "short", close=50 - i) for i in range(4)]
    orders = [a[:1] + b[:1] + a[1:] + b[1:], b[:1] + a[:1] + b[1:] + a[1:], [x for pair in zip(a, b) for x in pair]]
    runs = []
    for order in orders:
        logic = RiskLogic(strategy([{"kind": "rsi"}]), wait_s=5.0)
        out = []
        for r in order:
            out += logic.on_batch([r])
        out += logic.on_timer(0.0, math.inf)
        runs.append(sorted(o.value.intent_id for o in out))
    assert runs[0] == runs[1] == runs[2] and len(runs[0]) >= 2


def test_the_merge_waits_for_the_slowest_series_and_drops_redeliveries() -> None:
    merge = EventTimeMerge()
    assert merge.add(bar(0, symbol="AAA")) and merge.add(bar(0, symbol="BBB"))
    assert [b.symbol for b in merge.release()] == ["AAA", "BBB"]
    merge.add(bar(1, symbol="AAA"))
    merge.add(bar(2, symbol="AAA"))
    assert not merge.add(bar(1, symbol="AAA"))  # re-delivered
    assert merge.release() == []  # BBB has not reached minute 1
    merge.add(bar(1, symbol="BBB"))
    assert [(b.symbol, b.open_time) for b in merge.release()] == [("AAA", T0 + 60_000), ("BBB", T0 + 60_000)]
    assert [b.open_time for b in merge.release(force=True)] == [T0 + 120_000]
    assert "ex:BBB:1m" not in merge.reached  # left behind: no longer holds the merge
    assert EventTimeMerge.restore(merge.snapshot()) == merge


def test_a_strategy_naming_its_series_waits_for_each_first_bar() -> None:
    named = RiskLogic(strategy([{"kind": "rsi"}], exchange="ex", symbols=["AAA", "BBB"]), wait_s=5.0)
    assert list(named.on_batch([risk_bar(0, "AAA"), risk_bar(1, "AAA")])) == []  # BBB not seen yet, but named
    out = list(named.on_batch([risk_bar(0, "BBB", "short")]))
    assert [(o.value.symbol, o.value.open_time) for o in out] == [("AAA", T0), ("BBB", T0)]
    unnamed = RiskLogic(strategy([{"kind": "rsi"}]), wait_s=5.0)
    assert len(list(unnamed.on_batch([risk_bar(0, "AAA")]))) == 1  # only AAA is known: it goes through


def test_the_exposure_cap_holds_across_symbols() -> None:
    cfg = {"max_symbol_exposure": 1.0, "max_total_exposure": 1.5, "risk_per_trade": 0.04, "atr_stop": 1}
    logic = RiskLogic(strategy([{"kind": "rsi"}], risk=cfg), wait_s=5.0)
    a, b = [o.value for o in logic.on_batch([risk_bar(0, "AAA"), risk_bar(0, "BBB")])]
    assert (a.symbol, a.status, a.quantity) == ("AAA", "resized", 100.0)
    assert (b.symbol, b.status) == ("BBB", "resized") and "total exposure cap 1.5 x equity leaves 5,000.00" in b.reason
    assert b.quantity == pytest.approx(50.0)


def test_the_daily_loss_of_all_symbols_halts_every_symbol() -> None:
    """Two stops of 4% each: per symbol neither reaches the 7% daily limit; the one book does, and
    flattens the third symbol's position with an intent of that symbol."""
    cfg = {"max_symbol_exposure": 100, "max_total_exposure": 100, "risk_per_trade": 0.04, "atr_stop": 1, "max_daily_loss": 0.07}
    logic = RiskLogic(strategy([{"kind": "rsi"}], risk=cfg), wait_s=5.0)
    opens = [o.value for o in logic.on_batch([risk_bar(0, s) for s in ("AAA", "BBB", "CCC")])]
    assert [(i.symbol, i.action, i.status) for i in opens] == [(s, "open", "accepted") for s in ("AAA", "BBB", "CCC")]
    out = list(logic.on_batch([risk_bar(1, "AAA", "flat", low=98.5), risk_bar(1, "BBB", "flat", low=98.5), risk_bar(1, "CCC")]))
    got = [(o.value.symbol, o.value.action, o.value.trigger, o.value.status) for o in out]
    assert got == [("AAA", "close", "stop", "accepted"), ("BBB", "close", "stop", "accepted"),
                   ("CCC", "close", "daily_loss", "accepted"), ("CCC", "open", "signal", "rejected")]  # fmt: skip
    assert all(o.key == f"ex:{o.value.symbol}:1m" for o in out) and "max daily loss" in out[-1].value.reason
    assert len({i.intent_id for i in [*opens, *(o.value for o in out)]}) == len(opens) + len(out)
