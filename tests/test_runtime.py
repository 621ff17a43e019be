"""The agent runtime on the embedded broker: hostile input, timers under backlog, restarts."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import pytest
from confluent_kafka import Producer

from agents.candle_agent import CANDLES, CandleLogic
from agents.spec import AgentSpec
from schemas.codec import AvroCodec
from schemas.models import Candle, DeadLetter, OnchainMetric, Trade, TradeBatch
from schemas.validation import Reason, reason_code
from schemas.wire import encoder_for
from streams.producer import RecordProducer
from streams.runtime import AgentRunner, LiveRoute
from streams.settings import Settings
from tests.kafka_util import read_topic



T0_US = 1_704_067_200_000_000  # 2024-01-01 00:00 UTC
BACKLOG = int(os.environ.get("TICKFLOW_TEST_BACKLOG_RECORDS", "200000"))  # `make chaos` runs a million


def produce_raw(settings: Settings, records: list[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap, "linger.ms": 20, "batch.size": 1_000_000, "message.max.bytes": 2_000_000, "partitioner": "murmur2_random"})
    for key, value in records:
        while True:
            try:
                producer.produce(settings.kafka.topic_ticks, value, key)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0


def one_trade_records(n: int, symbols: int = 3) -> list[tuple[str, bytes]]:
    """``n`` records of one trade each, a trade every 100 ms of event time per symbol."""
    encode = encoder_for(AvroCodec("tickflow.TradeBatch"))
    out = []
    for i in range(n):
        sym = f"S{i % symbols}"
        ts = T0_US + (i // symbols) * 100_000
        out.append((f"bin:{sym}", encode(TradeBatch("bin", sym, ts, [Trade(str(i), ts, 100.0 + (i % 17), 0.5, "buy")]))))
    return out


class SlowCandles(CandleLogic):
    """The candle logic taking 20 ms a batch: librdkafka hands out one partition's fetched records
    before the next one's, so with a slow agent a partition's records wait behind the others' for
    far longer than the quiet timeout."""

    def on_batch(self, records):  # noqa: ANN001, ANN201
        time.sleep(0.02)
        return super().on_batch(records)


@contextmanager
def running(settings: Settings, spec: AgentSpec = CANDLES) -> Iterator[AgentRunner]:
    producer = RecordProducer(settings)
    runner = AgentRunner(spec, settings, producer, live=LiveRoute(to_topic=False))
    stop = threading.Event()
    runner.start(stop)
    try:
        yield runner
    finally:
        stop.set()
        runner.join(60)
        producer.close()
    assert runner.error is None, runner.error


def wait_for(cond, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def candles(settings: Settings) -> list[Candle]:
    codec = AvroCodec("tickflow.Candle")
    return [Candle.from_avro(codec.decode(m.value())) for m in read_topic(settings, settings.kafka.topic_candles)]


@pytest.mark.integration
def test_a_backlog_never_finalizes_a_window_early(topics: Settings) -> None:
    """One trade per record and a quiet timeout far shorter than the time the backlog takes: a
    timer that looked at wall clock alone finalized windows while their trades were still unread,
    then revised them."""
    settings = topics.updated(candle_idle_timeout_s=0.1, candle_intervals="1m,5m")
    records = one_trade_records(BACKLOG, symbols=8)
    produce_raw(settings, records)
    with running(settings, dataclasses.replace(CANDLES, logic=SlowCandles)) as runner:
        wait_for(lambda: sum(o for (_, _), o in runner.positions().items()) >= len(records), 600, "the backlog to be read")
        time.sleep(1.5)  # quiet now: the idle close runs
    got = candles(settings)
    assert got, "no candles"
    assert [c for c in got if c.revision] == []
    assert sum(c.trade_count for c in got if c.interval == "1m") == len(records)  # every window closed, each trade once


@pytest.mark.integration
def test_a_restart_after_the_last_input_still_closes_every_window(topics: Settings) -> None:
    settings = topics.updated(candle_idle_timeout_s=3600.0, candle_intervals="1m")
    records = one_trade_records(3000)
    produce_raw(settings, records)
    with running(settings) as runner:
        wait_for(lambda: sum(runner.positions().values()) >= len(records), 120, "the input to be read")
    before = candles(settings)
    assert sum(c.trade_count for c in before) < len(records)  # each symbol's last minute still open, checkpointed
    restarted = settings.updated(candle_idle_timeout_s=0.5)
    with running(restarted):
        wait_for(lambda: sum(c.trade_count for c in candles(settings)) >= len(records), 60, "the restored windows to close")
    got = candles(settings)
    assert sum(c.trade_count for c in got) == len(records)
    assert len({(c.symbol, c.open_time) for c in got}) == len(got)  # nothing emitted twice


@pytest.mark.integration
def test_hostile_bytes_are_dead_lettered_and_good_records_go_on(topics: Settings) -> None:
    """Bytes that are not a record, and records another producer wrote with bad names, values or
    keys: each dead-lettered with its code, the good trades beside a bad one still counted."""
    rng = random.Random(7)
    good = one_trade_records(600)
    encode = encoder_for(AvroCodec("tickflow.TradeBatch"))
    header = AvroCodec("tickflow.TradeBatch").header
    hostile = [
        rng.randbytes(64),  # random
        b"\x07" + good[0][1][1:],  # wrong magic byte
        good[1][1][: len(good[1][1]) // 2],  # truncated
        struct.pack(">bI", 0, 999_999) + good[2][1][5:],  # unknown schema id
        b"",  # empty
        header + rng.randbytes(900_000),  # 900 kB of garbage behind a valid header
    ]
    ts = T0_US + 30_000_000
    refused = [  # valid Avro, refused whole: (key, record, code)
        ("bin:" + "S" * 100_000, encode(TradeBatch("bin", "S" * 100_000, ts, [Trade("h1", ts, 100.0, 0.5, "buy")])), Reason.BAD_SYMBOL),
        ("bin:S1", encode(TradeBatch("bin", "S0", ts, [Trade("h2", ts, 100.0, 0.5, "buy")])), Reason.KEY_MISMATCH),
        ("BIN:S0", encode(TradeBatch("BIN", "S0", ts, [Trade("h3", ts, 100.0, 0.5, "buy")])), Reason.BAD_EXCHANGE),
    ]
    # A NaN price and a far-future trade beside a good trade (id 10_000) of S0, at its event time.
    beside = encode(TradeBatch("bin", "S0", ts, [Trade("h4", ts, math.nan, 0.5, "buy"), Trade("10000", ts, 100.0, 0.5, "buy"), Trade("h5", 2**62, 1.0, 1.0, "sell")]))
    mixed = good[:300] + [("bin:S0", h) for h in hostile] + [(k, v) for k, v, _ in refused] + [("bin:S0", beside)] + good[300:]
    produce_raw(topics, mixed)
    settings = topics.updated(candle_idle_timeout_s=0.3, candle_intervals="1m")
    with running(settings) as runner:
        wait_for(lambda: sum(runner.positions().values()) >= len(mixed), 120, "every record to be read")
        time.sleep(1.0)
    letters = [DeadLetter.from_avro(AvroCodec("tickflow.DeadLetter").decode(m.value())) for m in read_topic(topics, topics.kafka.topic_dlq)]
    assert {letter.component for letter in letters} == {"candles"}
    codes = Counter(reason_code(letter.reason) for letter in letters)
    assert codes == Counter({Reason.UNDECODABLE: len(hostile), Reason.BAD_SYMBOL: 1, Reason.KEY_MISMATCH: 1, Reason.BAD_EXCHANGE: 1, Reason.BAD_PRICE: 1, Reason.BAD_TIMESTAMP: 1})
    assert sorted(letter.payload for letter in letters if reason_code(letter.reason) is Reason.UNDECODABLE) == sorted(hostile)
    assert sorted(letter.payload for letter in letters if reason_code(letter.reason) in (Reason.BAD_SYMBOL, Reason.KEY_MISMATCH, Reason.BAD_EXCHANGE)) == sorted(v for _, v, _ in refused)
    nan = next(letter for letter in letters if reason_code(letter.reason) is Reason.BAD_PRICE)
    assert orjson.loads(nan.payload)["trade_id"] == "h4" and nan.source_topic == topics.kafka.topic_ticks and nan.key == b"bin:S0"
    assert sum(c.trade_count for c in candles(settings)) == len(good) + 1


class FakeConsumer:
    """The high watermarks of the last fetch, as librdkafka caches them."""

    def __init__(self) -> None:
        self.high: dict[tuple[str, int], int] = {}

    def get_watermark_offsets(self, tp, cached: bool = False):  # noqa: ANN001, ANN201
        return 0, self.high.get((tp.topic, tp.partition), -1)


class RecordingLogic:
    def __init__(self, ctx) -> None:  # noqa: ANN001
        self.quiet: list[float] = []

    def on_batch(self, records):  # noqa: ANN001, ANN201
        return []

    def on_timer(self, now: float, quiet_s: float):  # noqa: ANN201
        self.quiet.append(quiet_s)
        return []

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes) -> None: ...


def test_timers_count_quiet_time_only_with_nothing_unread() -> None:
    """Unit test of the rule, without a broker: a partition whose last fetch shows records past its
    position reports 0 quiet seconds however long it waits; at the high watermark, quiet time runs."""
    from streams.runtime import PartitionState

    spec = AgentSpec("probe", ("trade_batch",), (), RecordingLogic, timer_s=0.01)
    settings = Settings(metrics_port=0)
    runner = AgentRunner(spec, settings, producer=None)
    consumer = FakeConsumer()
    runner._consumer = consumer  # type: ignore[assignment]  # noqa: SLF001
    logic = RecordingLogic(None)
    runner.parts[0] = PartitionState(logic, {settings.kafka.topic_ticks: 100})  # type: ignore[arg-type]
    consumer.high[(settings.kafka.topic_ticks, 0)] = 5000  # a backlog behind the position
    for now in (10.0, 20.0, 3600.0):
        runner._timers(now)  # noqa: SLF001
    assert logic.quiet == [0.0, 0.0, 0.0]
    consumer.high[(settings.kafka.topic_ticks, 0)] = 100  # caught up
    runner._timers(4000.0)  # noqa: SLF001
    runner._timers(4002.5)  # noqa: SLF001
    assert logic.quiet[3:] == [0.0, 2.5]
    consumer.high.clear()  # no fetch answered yet (a partition just restored): not known to be caught up
    runner.parts[1] = PartitionState(RecordingLogic(None), {})  # type: ignore[arg-type]
    runner._timers(5000.0)  # noqa: SLF001
    assert runner.parts[1].logic.quiet == [0.0]  # type: ignore[attr-defined]


class TableProbe:
    """Keeps the (asset, day) of every table record it is handed, and how many it had when the
    first input record came."""

    def __init__(self, ctx) -> None:  # noqa: ANN001
        self.seen: list[tuple[str, int]] = []
        self.inputs = 0
        self.seen_before_input: int | None = None

    def on_batch(self, records):  # noqa: ANN001, ANN201
        if self.seen_before_input is None:
            self.seen_before_input = len(self.seen)
        self.inputs += len(records)
        return []

    def on_table(self, records):  # noqa: ANN001, ANN201
        self.seen += [(r.key, r.value.day) for r in records]
        return []

    def on_timer(self, now: float, quiet_s: float):  # noqa: ANN201
        return []

    def snapshot(self) -> bytes:
        return orjson.dumps({"seen": self.seen, "inputs": self.inputs, "before": self.seen_before_input})

    def restore(self, data: bytes) -> None:
        d = orjson.loads(data)
        self.seen, self.inputs, self.seen_before_input = [tuple(x) for x in d["seen"]], d["inputs"], d["before"]


def produce_metrics(settings: Settings, days: range, assets: int = 6) -> list[tuple[str, int]]:
    encode = encoder_for(AvroCodec("tickflow.OnchainMetric"))
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap, "partitioner": "murmur2_random"})
    out = []
    for d in days:
        for a in range(assets):
            m = OnchainMetric(f"A{a}", d * 86_400_000, "test", mvrv=1.0 + d)
            producer.produce(settings.kafka.topic_onchain_metrics, encode(m), m.key)
            out.append((m.asset, m.day))
    assert producer.flush(30) == 0
    return out


@pytest.mark.integration
def test_every_partition_reads_a_table_whole_before_its_input_and_once_across_a_restart(topics: Settings) -> None:
    settings = topics.updated(topic_suffix=f"-{topics.kafka.app_id.rsplit('-', 1)[-1]}")
    spec = AgentSpec("tableprobe", ("trade_batch",), (), TableProbe, tables=("onchain_metric",))
    from confluent_kafka.admin import AdminClient, NewTopic

    from streams.topics import state_topic

    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap})
    admin.create_topics([NewTopic(state_topic(settings, spec), settings.kafka.ticks_partitions, 1)])[state_topic(settings, spec)].result()
    table = produce_metrics(settings, range(10))
    ticks = one_trade_records(40, symbols=8)
    produce_raw(settings, ticks)

    def probes(runner: AgentRunner) -> list[TableProbe]:
        return [runner.parts[p].logic for p in sorted(runner.parts)]  # type: ignore[misc]

    with running(settings, spec) as runner:
        wait_for(lambda: len(runner.parts) == settings.kafka.ticks_partitions and sum(p.inputs for p in probes(runner)) == len(ticks)
                 and all(len(p.seen) == len(table) for p in probes(runner)), 60, "the table and the input to be read")  # fmt: skip
        for probe in probes(runner):
            assert sorted(probe.seen) == sorted(table)
            assert probe.seen_before_input in (None, len(table))  # the table came whole before any input
    more = produce_metrics(settings, range(10, 12))
    with running(settings, spec) as runner:  # restored from the checkpoints
        wait_for(lambda: len(runner.parts) == settings.kafka.ticks_partitions and all(len(p.seen) >= len(table) + len(more) for p in probes(runner)), 60, "the new table records")
        time.sleep(0.5)
        for probe in probes(runner):
            assert sorted(probe.seen) == sorted(table + more)  # each record once: the checkpoint knew where it stood
        assert sum(p.inputs for p in probes(runner)) == len(ticks)
