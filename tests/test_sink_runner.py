"""SinkRunner on the embedded broker: write-then-commit, retries while the store is down, poison records."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from prometheus_client import REGISTRY

from schemas.codec import AvroCodec
from schemas.models import Candle, DeadLetter, Trade, TradeBatch
from schemas.registry import topic_of
from sinks.base import DataRejected, Sink, SinkBatch, layout_of
from sinks.migrations import migrate_postgres
from sinks.postgres import PostgresSink
from sinks.runner import SinkRunner
from streams import topics as streams_topics
from streams.settings import Settings
from tests import throwaway_record

pytestmark = pytest.mark.integration

T0 = 1_700_000_040_000
TB = AvroCodec("tickflow.TradeBatch")
CANDLE = AvroCodec("tickflow.Candle")


class MemorySink(Sink):
    """Keeps what it is given; fails the first ``fail_first`` writes; validates like the real stores."""

    name = "memory"

    @classmethod
    def record_types(cls, settings: Settings) -> tuple[str, ...]:
        return ("trade_batch", "candle")

    def __init__(self, fail_first: int = 0, on_fail=None) -> None:  # noqa: ANN001
        self.trades: list[tuple[str, str, Trade]] = []
        self.candles: list[Candle] = []
        self.attempts = 0
        self.fail_first = fail_first
        self.on_fail = on_fail

    def write(self, batch: SinkBatch) -> None:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            if self.on_fail:
                self.on_fail()
            raise ConnectionError("store down")
        layout_of("candle").to_columns(batch.of("candle"))  # DataRejected for unstorable candles
        self.trades.extend((b.exchange, b.symbol, t) for b in batch.of("trade_batch") for t in map(Trade._make, b.trades))
        self.candles.extend(batch.of("candle"))

    def close(self) -> None:
        pass


def settings_for(topics: Settings) -> Settings:
    # A short session makes the embedded broker form the group faster (it waits half the session).
    return topics.updated(sink_batch_ms=200, sink_batch_size=50, session_timeout_s=4.0)


def produce(settings: Settings, items: list[tuple[str, bytes, bytes]]) -> None:
    p = Producer({"bootstrap.servers": settings.kafka.bootstrap})
    for topic, key, value in items:
        p.produce(topic, key=key, value=value)
    assert p.flush(30) == 0


def trade_batch(symbol: str, first: int, n: int) -> TradeBatch:
    return TradeBatch("binance", symbol, T0 * 1000, [Trade(str(first + i), T0 * 1000 + (first + i) * 1000, 100.0, 1.0, "buy") for i in range(n)])


def candle(symbol: str, minute: int, **kw) -> Candle:  # noqa: ANN003
    t = T0 + minute * 60_000
    return Candle("binance", symbol, "1m", t, t + 59_999, 1.0, 2.0, 0.5, 1.5, 3.0, 4.5, 3, is_final=True, **kw)


def sample(settings: Settings) -> tuple[list[tuple[str, bytes, bytes]], int, int]:
    items = []
    for sym in ("BTC/USDT", "ETH/USDT", "SOL/USDT"):
        for k in range(3):
            items.append((settings.kafka.topic_ticks, f"binance:{sym}".encode(), TB.encode(trade_batch(sym, k * 10, 10).to_avro())))
        for m in range(4):
            items.append((settings.kafka.topic_candles, f"binance:{sym}:1m".encode(), CANDLE.encode(candle(sym, m).to_avro())))
    return items, 90, 12


def committed_total(settings: Settings, group_id: str) -> int:
    """Sum of committed offsets of a group over both topics, read by an outside consumer."""
    c = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": group_id, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(t, p) for t in (settings.kafka.topic_ticks, settings.kafka.topic_candles) for p in range(settings.kafka.ticks_partitions)]
        return sum(max(tp.offset, 0) for tp in c.committed(tps, timeout=10))
    finally:
        c.close()


@pytest.fixture
def letters() -> list[DeadLetter]:
    return []


@pytest.fixture
def runner_factory(letters: list[DeadLetter]) -> Iterator:
    made: list[SinkRunner] = []

    def make(sink: Sink, settings: Settings, **kw) -> SinkRunner:  # noqa: ANN003
        r = SinkRunner(sink, settings, dead_letter=letters.append, backoff_initial_s=0.05, backoff_max_s=0.2, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_records_are_written_then_committed(topics: Settings, runner_factory, letters: list[DeadLetter]) -> None:  # noqa: ANN001
    settings = settings_for(topics)
    items, n_trades, n_candles = sample(settings)
    produce(settings, items)
    sink = MemorySink()
    runner = runner_factory(sink, settings)
    assert runner.group_id == f"{settings.kafka.app_id}-sink-memory"
    assert runner.lag() > 0  # group-wide: known before the group has formed
    before = REGISTRY.get_sample_value("tickflow_sink_records_total", {"sink": "memory"}) or 0
    runner.run_until_drained(idle_s=0.5, timeout_s=60)
    assert REGISTRY.get_sample_value("tickflow_sink_records_total", {"sink": "memory"}) - before == len(items)
    assert REGISTRY.get_sample_value("tickflow_sink_lag", {"sink": "memory"}) == 0
    assert len(sink.trades) == n_trades and len({(s, t.trade_id) for _, s, t in sink.trades}) == n_trades
    assert sorted((c.symbol, c.open_time) for c in sink.candles) == sorted((s, T0 + m * 60_000) for s in ("BTC/USDT", "ETH/USDT", "SOL/USDT") for m in range(4))
    assert runner.lag() == 0 and letters == []
    assert committed_total(settings, runner.group_id) == len(items)
    for sym in ("BTC/USDT", "ETH/USDT", "SOL/USDT"):  # per-key Kafka order is kept
        assert [t.ts for _, s, t in sink.trades if s == sym] == sorted(t.ts for _, s, t in sink.trades if s == sym)


def test_store_down_commits_nothing_and_loses_nothing(topics: Settings, runner_factory) -> None:  # noqa: ANN001
    settings = settings_for(topics)
    items, n_trades, n_candles = sample(settings)
    produce(settings, items)
    seen: list[int] = []
    sink = MemorySink(fail_first=4, on_fail=lambda: seen.append(committed_total(settings, runner.group_id)))
    runner = runner_factory(sink, settings)
    runner.run_until_drained(idle_s=0.5, timeout_s=60)
    assert sink.attempts > 4
    assert seen == [0, 0, 0, 0]  # nothing committed while the store was down
    assert len(sink.trades) == n_trades and len(sink.candles) == n_candles
    assert committed_total(settings, runner.group_id) == len(items)


def test_poison_records_are_dead_lettered_and_the_rest_written(topics: Settings, runner_factory, letters: list[DeadLetter]) -> None:  # noqa: ANN001
    settings = settings_for(topics)
    items, n_trades, n_candles = sample(settings)
    garbage = b"\x00\x00\x00\x00\x02not avro at all"
    unstorable = CANDLE.encode(candle("BTC/USDT", 0, revision=1).to_avro() | {"open_time": 10**16})
    key = b"binance:BTC/USDT:1m"
    produce(settings, items[:5] + [(settings.kafka.topic_candles, key, garbage)] + items[5:9] + [(settings.kafka.topic_candles, key, unstorable)] + items[9:])
    sink = MemorySink()
    runner = runner_factory(sink, settings)
    runner.run_until_drained(idle_s=0.5, timeout_s=60)
    assert len(sink.trades) == n_trades and len(sink.candles) == n_candles
    by_payload = {dl.payload: dl for dl in letters}
    assert set(by_payload) == {garbage, unstorable}
    assert by_payload[garbage].reason.startswith("undecodable: tickflow.Candle record")
    assert by_payload[unstorable].reason.startswith("store_rejected: rejected by memory") and "outside the storable range" in by_payload[unstorable].reason
    for dl in letters:
        assert dl.component == "sink-memory" and dl.source_topic == settings.kafka.topic_candles and dl.key == key
        assert dl.source_partition is not None and dl.source_offset is not None
    assert committed_total(settings, runner.group_id) == len(items) + 2


def test_run_stops_on_request_and_a_second_run_resumes(topics: Settings, runner_factory) -> None:  # noqa: ANN001
    settings = settings_for(topics)
    items, n_trades, n_candles = sample(settings)
    produce(settings, items[:10])
    sink = MemorySink()
    stop = threading.Event()
    runner = runner_factory(sink, settings)
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 30
    while committed_total(settings, runner.group_id) < 10 and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    runner.close()
    produce(settings, items[10:])
    again = runner_factory(sink, settings)
    again.run_until_drained(idle_s=0.5, timeout_s=60)
    assert len({(s, t.trade_id) for _, s, t in sink.trades}) == n_trades and len(sink.candles) == n_candles
    assert committed_total(settings, again.group_id) == len(items)


def test_postgres_sink_end_to_end(topics: Settings, runner_factory, letters: list[DeadLetter]) -> None:  # noqa: ANN001
    admin_url = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    name = f"tickflow_test_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    try:
        migrate_postgres(url)
        settings = settings_for(topics)
        items, n_trades, n_candles = sample(settings)
        produce(settings, items + items[:4])  # redelivered duplicates
        sink = PostgresSink(url)
        try:
            runner_factory(sink, settings).run_until_drained(idle_s=0.5, timeout_s=60)
        finally:
            sink.close()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM trades").fetchone() == (n_trades,)
            assert conn.execute("SELECT count(*) FROM candles").fetchone() == (n_candles,)
        assert letters == []
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_data_rejected_outside_a_single_record_is_bisected(topics: Settings, runner_factory, letters: list[DeadLetter]) -> None:  # noqa: ANN001
    """A store that rejects any batch holding one particular trade: only that record is lost to the DLQ."""
    settings = settings_for(topics)
    items, n_trades, _ = sample(settings)

    class Picky(MemorySink):
        def write(self, batch: SinkBatch) -> None:
            if any(b.symbol == "ETH/USDT" and t[0] == "15" for b in batch.of("trade_batch") for t in b.trades):
                raise DataRejected("trade 15 is cursed")
            super().write(batch)

    produce(settings, items)
    sink = Picky()
    runner_factory(sink, settings).run_until_drained(idle_s=0.5, timeout_s=60)
    assert len(letters) == 1 and letters[0].reason == "store_rejected: rejected by memory: trade 15 is cursed"
    assert TB.decode(letters[0].payload)["trades"][5]["trade_id"] == "15"
    assert len(sink.trades) == n_trades - 10


class RealtimeSink(MemorySink):
    name = "realtime"
    batch_ms_setting = "redis_sink_batch_ms"


def test_each_sink_batches_for_its_own_setting(topics: Settings, runner_factory) -> None:  # noqa: ANN001
    """The Redis sink's batches must not wait the analytic stores' sink_batch_ms (a latency floor)."""
    settings = topics.updated(sink_batch_ms=500, redis_sink_batch_ms=5)
    assert runner_factory(MemorySink(), settings)._batch_s == 0.5  # noqa: SLF001
    assert runner_factory(RealtimeSink(), settings)._batch_s == 0.005  # noqa: SLF001
    from sinks.redis import RedisSink

    assert RedisSink.batch_ms_setting == "redis_sink_batch_ms"


def test_a_new_record_type_flows_from_its_topic_and_bad_rows_are_dead_lettered(
    topics: Settings, runner_factory, letters: list[DeadLetter], monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    """A registry type with a table and its DDL, nothing else: the PostgreSQL sink consumes its topic,
    keeps the highest version of each row, and dead-letters the records the store cannot take."""
    admin_url = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    rt = throwaway_record.register(monkeypatch)
    settings = settings_for(topics)
    kafka_admin = streams_topics.admin(settings)
    topic = topic_of(settings, rt.name)  # the isolated name of the run, as every sink and agent reads it
    kafka_admin.create_topics([NewTopic(topic, 2, settings.kafka.replication_factor)])[topic].result(timeout=30)
    name = f"tickflow_test_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    try:
        migrate_postgres(url)  # the type's table, generated from its registry entry
        G = throwaway_record.Gauge  # noqa: N806
        gauge = AvroCodec(rt.schema)
        good = [G("x", s, "1m", T0 + m * 60_000, float(v), version=v) for s in ("A", "B") for m in range(3) for v in (1, 3, 2)]
        unstorable = gauge.encode(G("x", "A", "1m", T0, 1.0, label="nul\x00", version=9).to_avro())
        garbage = b"\x00\x00\x00\x27\x0fnot avro"
        items = [(topic, rt.key(g).encode(), gauge.encode(g.to_avro())) for g in good]
        produce(settings, items[:4] + [(topic, b"x:A", unstorable), (topic, b"x:A", garbage)] + items[4:])
        sink = PostgresSink(url)
        try:
            runner_factory(sink, settings).run_until_drained(idle_s=0.5, timeout_s=60)
        finally:
            sink.close()
        with psycopg.connect(url) as conn:
            stored = conn.execute(f"SELECT symbol, (extract(epoch FROM ts) * 1000)::int8, value, version, label FROM {rt.table} ORDER BY symbol, ts").fetchall()
        assert stored == [(s, T0 + m * 60_000, 3.0, 3, None) for s in ("A", "B") for m in range(3)]
        by_payload = {dl.payload: dl for dl in letters}
        assert set(by_payload) == {unstorable, garbage}
        assert by_payload[unstorable].reason == "store_rejected: rejected by postgres: test_gauge label contains a NUL character"
        assert by_payload[garbage].reason.startswith("undecodable: tickflow.test.Gauge record")
        assert all(dl.source_topic == topic and dl.key == b"x:A" for dl in letters)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_only_the_realtime_path_fetches_every_consumer_fetch_wait() -> None:
    """Store sinks fetch per batch window, the Redis sink within BACKGROUND_FETCH_WAIT_MS unless it
    carries in-progress candles, and the candle agent alone of the agents is realtime: each idle
    consumer polling Tansu every 10 ms cost it about 0.05 cores."""
    from agents.registry import AGENTS
    from schemas.registry import record_type
    from sinks.redis import RedisSink
    from sinks.runner import STORE_FETCH_MIN_BYTES, fetch_config

    s = Settings()
    assert fetch_config(s, s.stores.sink_batch_ms, PostgresSink.realtime(s)) == {"fetch.wait.max.ms": s.stores.sink_batch_ms, "fetch.min.bytes": STORE_FETCH_MIN_BYTES}
    assert not RedisSink.realtime(s)
    assert fetch_config(s, s.stores.redis_sink_batch_ms, False) == {"fetch.wait.max.ms": s.kafka.background_fetch_wait_ms, "fetch.min.bytes": 1}
    through_kafka = s.updated(candle_updates="kafka")
    assert RedisSink.realtime(through_kafka)
    assert fetch_config(through_kafka, s.stores.redis_sink_batch_ms, True) == {"fetch.wait.max.ms": s.kafka.consumer_fetch_wait_ms, "fetch.min.bytes": 1}
    assert [spec.name for spec in AGENTS if any(record_type(n).realtime for n in spec.outputs)] == ["candles"]
