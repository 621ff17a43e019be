"""The sentiment agent's logic alone: windows, revisions, Fear & Greed, dedup, restore, determinism."""

from __future__ import annotations

from agents.sentiment_agent import SPEC, SentimentLogic
from agents.spec import Emit, Inbound, Reject
from schemas.models import FearGreed, NewsScored

H = 3_600_000
D = 86_400_000
T0 = 1_700_006_400_000  # 2023-11-15 00:00 UTC


def item(i: int, ts: int, score: float, label: str, assets: str = "", engagement: float | None = None) -> Inbound:
    return Inbound("news_scored", "market", NewsScored("news", f"id{i}", ts, f"title {i}", label, score, assets, "m", 0, engagement=engagement), i)


def fg(offset: int, day: int, value: int, cls: str) -> Inbound:
    return Inbound("fear_greed", "market", FearGreed(day, value, cls, "test", 0), offset)


def aggs(outputs) -> dict[tuple[str, str, int], object]:
    """The newest emission of each window."""
    out = {}
    for o in outputs:
        assert isinstance(o, Emit) and o.record == "sentiment_aggregate"
        v = o.value
        out[(v.asset, v.interval, v.window_start)] = v
    return out


def test_windows_close_on_watermark_with_counts_shares_and_weighted_score():
    logic = SentimentLogic(lateness_ms=0, grace_ms=2 * D, idle_timeout_s=10)
    out = list(logic.on_batch([
        item(1, T0 + 60_000, 0.8, "positive", "BTC", engagement=3),
        item(2, T0 + 120_000, -0.4, "negative", "BTC;ETH", engagement=1),
        item(3, T0 + 180_000, 0.0, "neutral"),
    ]))
    assert out == []  # nothing closed yet
    out = list(logic.on_batch([item(4, T0 + H + 1, 0.2, "positive")]))
    got = aggs(out)
    assert set(got) == {("MARKET", "1h", T0), ("BTC", "1h", T0), ("ETH", "1h", T0)}
    btc = got[("BTC", "1h", T0)]
    assert btc.items == 2 and btc.revision == 0 and btc.is_final
    assert abs(btc.mean_score - 0.2) < 1e-9
    assert btc.positive_share == 0.5 and btc.negative_share == 0.5 and btc.neutral_share == 0.0
    assert abs(btc.weighted_score - (3 * 0.8 - 0.4) / 4) < 1e-9 and btc.engagement == 4
    market = got[("MARKET", "1h", T0)]
    assert market.items == 3 and market.weighted_score is not None and abs(market.neutral_share - 1 / 3) < 1e-6
    assert got[("ETH", "1h", T0)].items == 1


def test_late_item_revises_final_window_and_too_late_is_rejected():
    logic = SentimentLogic(lateness_ms=0, grace_ms=H, idle_timeout_s=10)
    list(logic.on_batch([item(1, T0 + 10, 0.5, "positive"), item(2, T0 + H + 10, 0.5, "positive")]))
    out = list(logic.on_batch([item(3, T0 + 20, -0.5, "negative")]))
    rev = aggs(out)[("MARKET", "1h", T0)]
    assert rev.revision == 1 and rev.items == 2 and rev.mean_score == 0.0
    out = list(logic.on_batch([item(4, T0 + 3 * H, 0.1, "positive"), item(5, T0 + 30, 0.1, "positive")]))
    rejects = [o for o in out if isinstance(o, Reject)]
    assert len(rejects) == 1 and rejects[0].offset == 5 and "grace" in rejects[0].reason


def test_duplicate_item_counts_once_and_bad_score_is_rejected():
    logic = SentimentLogic(lateness_ms=0, grace_ms=D, idle_timeout_s=10)
    out = list(logic.on_batch([item(1, T0, 0.5, "positive"), item(1, T0, 0.5, "positive"), item(2, T0 + 5, 3.0, "positive")]))
    assert [o.offset for o in out if isinstance(o, Reject)] == [2]
    got = aggs(logic.on_timer(now=0.0, quiet_s=11))
    assert got[("MARKET", "1h", T0)].items == 1


def test_fear_greed_attached_and_late_value_revises_the_days_windows():
    logic = SentimentLogic(lateness_ms=0, grace_ms=2 * D, idle_timeout_s=10)
    list(logic.on_batch([fg(0, T0, 25, "Extreme Fear"), item(1, T0 + 5, -0.2, "negative")]))
    got = aggs(logic.on_timer(0.0, quiet_s=60))
    assert got[("MARKET", "1d", T0)].fear_greed_value == 25 and got[("MARKET", "1h", T0)].fear_greed_class == "Extreme Fear"
    assert list(logic.on_timer(0.0, quiet_s=60)) == []  # emitted once
    got = aggs(logic.on_batch([fg(2, T0, 30, "Fear")]))
    assert {k: v.revision for k, v in got.items()} == {("MARKET", "1h", T0): 1, ("MARKET", "1d", T0): 1}
    assert got[("MARKET", "1d", T0)].fear_greed_value == 30


def test_timer_waits_for_quiet():
    logic = SentimentLogic(lateness_ms=0, grace_ms=D, idle_timeout_s=10)
    list(logic.on_batch([item(1, T0, 0.1, "neutral")]))
    assert list(logic.on_timer(0.0, quiet_s=0)) == []
    assert len(list(logic.on_timer(0.0, quiet_s=10))) == 2


def stream():
    recs = [fg(0, T0 - D, 40, "Fear"), fg(1, T0, 55, "Greed")]
    for i in range(2, 300):
        ts = T0 - D + (i * 7_919_000) % (2 * D)  # out of order within two days
        recs.append(item(i, ts, ((i * 37) % 200 - 100) / 100, ("positive", "neutral", "negative")[i % 3], ("BTC", "ETH;SOL", "")[i % 3], engagement=float(i % 5) or None))
    return recs


def run(logic, recs, cut=None):
    out = []
    for k in range(0, len(recs), 17):
        if cut is not None and k == cut:
            snap = logic.snapshot()
            logic = SentimentLogic(lateness_ms=600_000, grace_ms=2 * D)
            logic.restore(snap)
        out.extend(logic.on_batch(recs[k : k + 17]))
    out.extend(logic.on_timer(0.0, quiet_s=100))
    return out


def test_deterministic_and_restart_safe():
    recs = stream()
    a = run(SentimentLogic(lateness_ms=600_000, grace_ms=2 * D), recs)
    b = run(SentimentLogic(lateness_ms=600_000, grace_ms=2 * D), recs)
    c = run(SentimentLogic(lateness_ms=600_000, grace_ms=2 * D), recs, cut=17 * 8)
    assert a == b == c
    final = aggs(a)
    total = sum(v.items for (asset, interval, _), v in final.items() if asset == "MARKET" and interval == "1d")
    assert total == 298
    assert {v.fear_greed_value for (asset, interval, s), v in final.items() if s == T0 and interval == "1d"} == {55}


def test_spec_declares_registered_records():
    from schemas.registry import record_type

    for name in (*SPEC.inputs, *SPEC.outputs):
        assert record_type(name).name == name


def test_final_rows_converge_whichever_input_topic_is_read_first():
    """The runtime interleaves news and Fear & Greed as it reads them: windows emitted without
    their day's value wait for it, even past the grace period, so the newest versions agree."""
    days = [fg(i, T0 + (i - 1000) * D, 10 + i % 80, "Fear") for i in range(1000, 1010)]
    items = [item(i, T0 + i * 7 * H, 0.1, "positive", "BTC") for i in range(30)]  # ten days of news

    def newest(order):
        logic = SentimentLogic(lateness_ms=0, grace_ms=H, idle_timeout_s=10)
        out = []
        for rec in order:
            out.extend(logic.on_batch([rec]))
        out.extend(logic.on_timer(0.0, quiet_s=100))
        return {k: (v.items, v.fear_greed_value, v.fear_greed_class) for k, v in aggs(out).items()}

    first = newest(days + items)
    assert newest(items + days) == first
    assert newest([r for pair in zip(items, days) for r in pair] + items[len(days):]) == first
    assert all(v[1] is not None for v in first.values())
