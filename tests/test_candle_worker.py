"""CandleWorker without Kafka: the in-progress throttle (leading edge, then at most one per symbol and candle_update_ms)."""

from __future__ import annotations

import pytest

from agents import candle_agent
from agents.candle_agent import CandleWorker, PartitionState
from agents.candles import CandleBook
from schemas.codec import AvroCodec
from schemas.models import Candle, LiveCandles, Trade, TradeBatch
from streams.settings import Settings

D_US = 1_704_067_200_000_000  # 2024-01-01 00:00:00 UTC
EX = "binance"


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Candle]] = []
        self.live_keys: list[str | bytes | None] = []
        self._candle = AvroCodec("tickflow.Candle")
        self._live = AvroCodec("tickflow.LiveCandles")

    def produce(self, topic: str, key: str | bytes | None, value: bytes, partition: int | None = None) -> None:
        if topic == "candles-live":  # one record per symbol, its forming candle of every interval
            self.live_keys.append(key)
            self.sent += [(topic, c) for c in LiveCandles.from_avro(self._live.decode(value)).candles]
        else:
            self.sent.append((topic, Candle.from_avro(self._candle.decode(value))))

    def poll(self, timeout: float = 0) -> None:
        return None

    def progress(self, symbol: str, interval: str = "1m") -> list[Candle]:
        return [c for _, c in self.sent if not c.is_final and c.symbol == symbol and c.interval == interval]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(candle_agent.time, "monotonic", c)
    return c


@pytest.fixture
def worker() -> CandleWorker:
    w = CandleWorker(Settings(candle_update_ms=100, candle_intervals="1m,5m", candle_updates="kafka", metrics_port=0), FakeProducer())  # type: ignore[arg-type]
    w.parts[0] = PartitionState(CandleBook(w.config))
    return w


class Feed:
    def __init__(self, worker: CandleWorker) -> None:
        self.worker = worker
        self.offset = 0
        self.codec = AvroCodec("tickflow.TradeBatch")

    def __call__(self, symbol: str, *trades: tuple[str, int, float]) -> None:
        batch = TradeBatch(EX, symbol, 0, [Trade(tid, D_US + ms * 1000, px, 1.0, "buy") for tid, ms, px in trades])
        self.worker.handle(0, self.offset, None, self.codec.encode(batch.to_avro()))
        self.offset += 1


def test_first_change_goes_out_at_once_then_at_most_one_per_interval(worker: CandleWorker, clock: Clock) -> None:
    out: FakeProducer = worker.producer  # type: ignore[assignment]
    feed = Feed(worker)
    feed("BTC", ("1", 1_000, 100.0))
    assert [c.close for c in out.progress("BTC")] == [100.0]  # leading edge: no wait
    assert [c.close for c in out.progress("BTC", "5m")] == [100.0]
    assert out.live_keys == [f"{EX}:BTC"]  # both intervals in one record
    clock.now += 0.03
    feed("BTC", ("2", 1_100, 101.0))
    clock.now += 0.03
    feed("BTC", ("3", 1_200, 102.0))
    worker.tick()
    assert len(out.progress("BTC")) == 1  # within candle_update_ms: held back
    clock.now += 0.05  # 110 ms after the first update
    worker.tick()
    assert [(c.close, c.trade_count) for c in out.progress("BTC")] == [(100.0, 1), (102.0, 3)]  # trailing edge, newest state
    worker.tick()
    clock.now += 1.0
    worker.tick()
    assert len(out.progress("BTC")) == 2  # nothing changed, nothing sent
    feed("BTC", ("4", 1_300, 103.0))
    assert [c.close for c in out.progress("BTC")] == [100.0, 102.0, 103.0]  # quiet for long enough: at once again


def test_a_record_only_sends_its_own_symbol_pending_ones_wait_for_the_tick(worker: CandleWorker, clock: Clock) -> None:
    out: FakeProducer = worker.producer  # type: ignore[assignment]
    feed = Feed(worker)
    feed("ETH", ("e1", 1_000, 10.0))
    clock.now += 0.01
    feed("ETH", ("e2", 1_010, 11.0))  # pending
    clock.now += 0.2
    feed("BTC", ("b1", 1_020, 100.0))
    assert [c.close for c in out.progress("BTC")] == [100.0]
    assert [c.close for c in out.progress("ETH")] == [10.0]
    worker.tick()
    assert [c.close for c in out.progress("ETH")] == [10.0, 11.0]


def test_updates_never_closer_than_candle_update_ms(worker: CandleWorker, clock: Clock) -> None:
    out: FakeProducer = worker.producer  # type: ignore[assignment]
    feed = Feed(worker)
    sent_at: list[float] = []
    for i in range(300):
        clock.now += 0.007
        before = len(out.progress("BTC"))
        feed("BTC", (str(i), 1_000 + i, 100.0 + i % 5))
        if i % 3 == 0:
            worker.tick()
        if len(out.progress("BTC")) > before:
            sent_at.append(clock.now)
    gaps = [b - a for a, b in zip(sent_at, sent_at[1:])]
    assert len(sent_at) >= 15
    assert min(gaps) >= 0.1 - 1e-9


def test_input_delay_is_measured_from_the_batchs_receipt(worker: CandleWorker) -> None:
    from prometheus_client import REGISTRY

    from streams.sources.base import now_us

    def observed() -> tuple[float, float]:
        count = REGISTRY.get_sample_value("tickflow_candle_input_delay_seconds_count") or 0.0
        return count, REGISTRY.get_sample_value("tickflow_candle_input_delay_seconds_sum") or 0.0

    count, total = observed()
    batch = TradeBatch(EX, "BTC", now_us() - 3_000_000, [Trade("1", D_US, 100.0, 1.0, "buy")])
    worker.handle(0, 0, None, AvroCodec("tickflow.TradeBatch").encode(batch.to_avro()))
    after_count, after_total = observed()
    assert after_count == count + 1
    assert 3.0 <= after_total - total < 4.0
    late = REGISTRY.get_sample_value("tickflow_candle_input_delay_seconds_bucket", {"le": "2.5"})
    assert late is not None and late <= after_count - 1  # the 3 s sample is above the 2.5 s bucket


def test_a_held_update_goes_out_when_its_interval_has_passed_not_at_the_next_tick(worker: CandleWorker, clock: Clock) -> None:
    out: FakeProducer = worker.producer  # type: ignore[assignment]
    scheduled: list[tuple[float, object]] = []
    worker.call_later = lambda delay, fn: scheduled.append((clock.now + delay, fn))
    feed = Feed(worker)
    feed("BTC", ("1", 1_000, 100.0))
    clock.now += 0.03
    feed("BTC", ("2", 1_100, 101.0))  # held: 30 ms after the first update
    clock.now += 0.03
    feed("ETH", ("e1", 1_100, 10.0))
    feed("BTC", ("3", 1_200, 102.0))  # held too; the flush already scheduled covers it
    assert [round(at - 1000.0, 6) for at, _ in scheduled] == [0.1]  # one flush, at the first update + 100 ms
    assert len(out.progress("BTC")) == 1
    clock.now = scheduled[0][0]
    scheduled.pop(0)[1]()  # type: ignore[operator]
    assert [(c.close, c.trade_count) for c in out.progress("BTC")] == [(100.0, 1), (102.0, 3)]
    assert scheduled == []  # nothing left held, nothing rescheduled
    worker.parts.pop(0)
    clock.now += 0.01
    worker.parts[0] = ps = PartitionState(CandleBook(worker.config))
    feed("BTC", ("4", 1_300, 103.0))  # held (10 ms after the last update): a flush is scheduled
    worker.parts[0] = PartitionState(CandleBook(worker.config))  # the partition changes hands before it fires
    clock.now = scheduled[0][0]
    scheduled.pop(0)[1]()  # type: ignore[operator]
    assert ps.dirty == {(EX, "BTC")} and len(out.progress("BTC")) == 2  # a dropped state sends nothing


def test_in_progress_candles_are_counted_by_interval_at_the_tick(worker: CandleWorker, clock: Clock) -> None:
    from prometheus_client import REGISTRY

    def counted(interval: str) -> float:
        return REGISTRY.get_sample_value("tickflow_candles_emitted_total", {"interval": interval, "kind": "in_progress"}) or 0.0

    out: FakeProducer = worker.producer  # type: ignore[assignment]
    before = counted("1m"), counted("5m")
    feed = Feed(worker)
    for i in range(5):
        feed(f"S{i}", (str(i), 1_000, 10.0))  # each symbol's first update goes out at once
    assert sum(len(out.progress(f"S{i}")) for i in range(5)) == 5
    assert (counted("1m"), counted("5m")) == before  # not yet: counters are added at the tick
    worker.tick()
    assert (counted("1m") - before[0], counted("5m") - before[1]) == (5, 5)


@pytest.mark.parametrize("where", ["redis", "both"])
def test_updates_go_to_the_worker_fanout_and_to_candles_live_only_with_both(where: str, clock: Clock) -> None:
    """``CANDLE_UPDATES=redis``: in-progress candles go from the worker straight to Redis and not to
    ``candles-live``; ``both``: the same candles to each. Final candles go to ``candles`` either way."""
    offered: list[list[Candle]] = []

    class FakeFanout:
        def offer(self, candles: list[Candle]) -> None:
            offered.append(list(candles))

    out = FakeProducer()
    worker = CandleWorker(Settings(candle_update_ms=100, candle_intervals="1m,5m", candle_updates=where, metrics_port=0), out, FakeFanout())  # type: ignore[arg-type]
    worker.parts[0] = PartitionState(CandleBook(worker.config))
    feed = Feed(worker)
    feed("BTC", ("1", 1_000, 100.0))
    clock.now += 0.2
    feed("BTC", ("2", 61_000 + 2_000, 101.0))  # past the 1m window and the lateness: 1m is final
    assert [c.close for _, c in out.sent if c.is_final] == [100.0]
    assert [[(c.interval, c.close) for c in batch] for batch in offered] == [[("1m", 100.0), ("5m", 100.0)], [("1m", 101.0), ("5m", 101.0)]]
    live = [c for _, c in out.sent if not c.is_final]
    assert live == ([c for batch in offered for c in batch] if where == "both" else [])
