"""CandleLogic without Kafka: the in-progress throttle and the idle close, with time handed in."""

from __future__ import annotations

import pytest

from agents.candle_agent import CandleLogic
from agents.spec import AgentContext, Emit, Inbound
from schemas.models import Candle, Trade, TradeBatch
from streams.settings import Settings

D_US = 1_704_067_200_000_000  # 2024-01-01 00:00:00 UTC
EX = "binance"


class Feed:
    """Trade batches into a logic, with the runtime's timer call after each batch."""

    def __init__(self, **settings: object) -> None:
        self.logic = CandleLogic(AgentContext(Settings(candle_update_ms=100, candle_intervals="1m,5m", metrics_port=0, **settings), 0))
        self.offset = 0
        self.now = 1000.0
        self.out: list[Emit] = []

    def __call__(self, symbol: str, *trades: tuple[str, int, float]) -> None:
        batch = TradeBatch(EX, symbol, 0, [Trade(tid, D_US + ms * 1000, px, 1.0, "buy") for tid, ms, px in trades])
        self.out += self.logic.on_batch([Inbound("trade_batch", f"{EX}:{symbol}", batch, self.offset)])  # type: ignore[arg-type]
        self.offset += 1
        self.tick()

    def tick(self, quiet_s: float = 0.0) -> None:
        self.out += self.logic.on_timer(self.now, quiet_s)  # type: ignore[arg-type]

    def progress(self, symbol: str, interval: str = "1m") -> list[Candle]:
        return [c for e in self.out if e.record == "live_candles" for c in e.value.candles if c.symbol == symbol and c.interval == interval]

    def finals(self) -> list[Candle]:
        return [e.value for e in self.out if e.record == "candle"]


def test_first_change_goes_out_at_once_then_at_most_one_per_interval() -> None:
    feed = Feed()
    feed("BTC", ("1", 1_000, 100.0))
    assert [(c.close, c.trade_count) for c in feed.progress("BTC")] == [(100.0, 1)]
    assert [c.interval for c in feed.progress("BTC", "5m")] == ["5m"]  # one record carries every interval
    feed.now += 0.03
    feed("BTC", ("2", 1_100, 101.0))  # 30 ms later: held
    assert len(feed.progress("BTC")) == 1
    feed.now += 0.03
    feed("ETH", ("e1", 1_100, 10.0))  # another symbol is not held back by BTC's throttle
    assert len(feed.progress("ETH")) == 1
    feed.now += 0.05  # 110 ms after BTC's first update: the held one goes at the next timer call
    feed.tick()
    assert [(c.close, c.trade_count) for c in feed.progress("BTC")] == [(100.0, 1), (101.0, 2)]
    feed.tick()
    assert len(feed.progress("BTC")) == 2  # nothing changed since: nothing sent


def test_updates_never_closer_than_candle_update_ms() -> None:
    feed = Feed()
    sent_at: list[float] = []
    for i in range(200):
        before = len(feed.progress("BTC"))
        feed("BTC", (str(i), 1_000 + i, 100.0 + i))
        if len(feed.progress("BTC")) > before:
            sent_at.append(feed.now)
        feed.now += 0.007
    gaps = [b - a for a, b in zip(sent_at, sent_at[1:])]
    assert len(sent_at) > 5 and min(gaps) >= 0.1 - 1e-9


def test_in_progress_candles_are_counted_by_interval_once_a_second() -> None:
    from prometheus_client import REGISTRY

    def counted(interval: str) -> float:
        return REGISTRY.get_sample_value("tickflow_candles_emitted_total", {"interval": interval, "kind": "in_progress"}) or 0.0

    feed = Feed()
    feed.tick()  # the first call publishes the gauges and counters: from here on they wait a second
    before = counted("1m"), counted("5m")
    for i in range(5):
        feed(f"S{i}", (str(i), 1_000, 10.0))
    assert sum(len(feed.progress(f"S{i}")) for i in range(5)) == 5
    assert (counted("1m"), counted("5m")) == before
    feed.now += 1.0
    feed.tick()
    assert (counted("1m") - before[0], counted("5m") - before[1]) == (5, 5)


def test_idle_close_waits_for_the_quiet_time_the_runtime_reports() -> None:
    feed = Feed(candle_idle_timeout_s=10.0)
    feed("BTC", ("1", 1_000, 100.0))
    feed.now += 3600  # an hour of wall clock with input waiting (quiet 0): nothing is finalized
    feed.tick(quiet_s=0.0)
    assert feed.finals() == []
    feed.tick(quiet_s=9.9)
    assert feed.finals() == []
    feed.tick(quiet_s=10.0)
    assert [(c.interval, c.close) for c in feed.finals()] == [("1m", 100.0)]
    feed.tick(quiet_s=20.0)
    assert len(feed.finals()) == 1  # closed once


def test_restored_open_windows_close_after_the_quiet_time() -> None:
    feed = Feed(candle_idle_timeout_s=10.0)
    feed("BTC", ("1", 1_000, 100.0))
    restored = Feed(candle_idle_timeout_s=10.0)
    restored.logic.restore(feed.logic.snapshot())
    restored.tick(quiet_s=10.0)
    assert [(c.interval, c.close, c.trade_count) for c in restored.finals()] == [("1m", 100.0, 1)]


@pytest.mark.parametrize("quiet", [0.0, float("inf")])
def test_snapshot_and_restore_give_the_same_outputs(quiet: float) -> None:
    a, b = Feed(), Feed()
    trades = [(str(i), 1_000 + i * 7_000, 100.0 + i) for i in range(40)]
    for t in trades[:20]:
        a("BTC", t)
        b("BTC", t)
    c = Feed()
    c.logic.restore(b.logic.snapshot())
    for t in trades[20:]:
        a("BTC", t)
        c("BTC", t)
    a.tick(quiet)
    c.tick(quiet)
    assert a.finals()[len(b.finals()):] == c.finals()
