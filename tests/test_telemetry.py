"""Operational metrics: dead-letter reason classes, the memory limit, sink lag and latency samples."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from schemas.models import Candle, Indicators, Trade, TradeBatch
from schemas.validation import Reason
from sinks.base import SinkBatch
from sinks.telemetry import Sample, Written, latency_samples, observe_written, set_partition_lag
from streams.observability import (
    DEAD_LETTER_CLASSES,
    DEAD_LETTER_OTHER,
    RECEIVED_HEADER,
    ROLE_METRICS_PORTS,
    dead_letter_class,
    parse_memory_limit,
    received_header,
    role_port_offset,
)

S = 1_000_000  # µs per second


@pytest.mark.parametrize(
    ("reason", "klass"),
    [
        ("rejected by postgres: value too long for type", "store_rejected"),
        ("undecodable tickflow.Candle record: bad magic byte", "undecodable"),
        ("candle binance:BTC/USDT:1m 1700000000000 rev 2 is older than the kept history (oldest kept 1, history 64)", "too_late"),
        ("candle binance:BTC/USDT:1m 1 was applied already and its record has left the kept history", "too_late"),
        ("tardis line 17: could not convert string to float: 'x'", "unparseable"),
        ("ccxt-json: not valid JSON (unexpected character); payload is the first 4096 bytes", "unparseable"),
        ("candle binance:BTC/USDT:1m 1 is not final", "invalid_value"),
        ("candles failed on this record: ZeroDivisionError: division by zero", "agent_error"),
        ("something nobody planned for", DEAD_LETTER_OTHER),
        ("bad_price: price nan", "bad_price"),
        ("bad_symbol: symbol 'x\\n' is not ... (file.csv line 3)", "bad_symbol"),
        ("undecodable: trade_batch: bad magic byte 116, not Confluent Avro", "undecodable"),
        ("key_mismatch: key 'a:b' is not 'a:c'", "key_mismatch"),
        ("no_such_code: bad price", "invalid_value"),  # not a code: classified by its text
    ],
)
def test_dead_letter_labels_are_the_code_or_a_bounded_class(reason: str, klass: str) -> None:
    assert dead_letter_class(reason) == klass
    assert klass in {name for name, _ in DEAD_LETTER_CLASSES} | {DEAD_LETTER_OTHER} | set(Reason)


def test_memory_limit_prefers_the_cgroup_and_falls_back_to_the_machine() -> None:
    meminfo = "MemTotal:        8000000 kB\nMemFree: 1 kB\n"
    assert parse_memory_limit("536870912\n", None, meminfo) == 536870912
    assert parse_memory_limit("max\n", None, meminfo) == 8000000 * 1024
    assert parse_memory_limit(None, "9223372036854771712\n", meminfo) == 8000000 * 1024  # v1 "unlimited"
    assert parse_memory_limit(None, "1048576", None) == 1048576
    assert parse_memory_limit(None, None, None) is None
    assert REGISTRY.get_sample_value("tickflow_memory_limit_bytes") > 0


def test_role_ports_put_sink_processes_beside_the_worker() -> None:
    assert [role_port_offset(f"sink-{n}") for n in ("clickhouse", "postgres", "redis")] == [2, 3, 4]
    assert len(set(ROLE_METRICS_PORTS.values())) == len(ROLE_METRICS_PORTS)


def test_latency_samples_per_origin() -> None:
    now = 1_700_000_100 * S
    trades = TradeBatch("x", "BTC/USDT", now - 30_000, [Trade("1", now - 90_000, 1.0, 1.0), Trade("2", now - 50_000, 1.0, 1.0)])
    final = Candle("x", "BTC/USDT", "1m", 1_700_000_040_000, 1_700_000_099_999, 1, 1, 1, 1, 1, 1, 1, is_final=True)
    forming = Candle("x", "BTC/USDT", "1m", 1_700_000_100_000, 1_700_000_159_999, 1, 1, 1, 1, 1, 1, 1)
    ind = Indicators("x", "BTC/USDT", "1m", 1_700_000_040_000, 1.0)
    written = [
        Written(SinkBatch(trade_batch=[trades]), produced_ms=(now - 10_000) // 1000, received_us=None),
        Written(SinkBatch(candle=[final, forming]), produced_ms=None, received_us=now - 70_000),
        Written(SinkBatch(indicators=[ind]), produced_ms=0, received_us=None),
        Written(SinkBatch(trade_batch=[TradeBatch("x", "E", now, [])]), produced_ms=None, received_us=None),
    ]
    got = list(latency_samples(written, now))
    assert got == [
        Sample("trade", "exchange", 0.05),  # the newest trade of the batch
        Sample("trade", "receipt", 0.03),
        Sample("trade", "produced", 0.01),
        Sample("candle", "exchange", 0.0),  # window ended exactly now
        Sample("candle", "receipt", 0.07),
        Sample("candle_update", "receipt", 0.07),  # a forming window has no exchange-side end yet
        Sample("indicators", "exchange", 0.0),
    ]
    future = TradeBatch("x", "F", now + S, [Trade("1", now + S, 1.0, 1.0)])
    assert {s.seconds for s in latency_samples([Written(SinkBatch(trade_batch=[future]), None, None)], now)} == {0.0}


def test_observed_latency_lands_in_the_sla_bucket() -> None:
    now = 1_700_000_000 * S
    batch = TradeBatch("x", "BTC/USDT", now - 80_000, [Trade("1", now - 80_000, 1.0, 1.0)])
    labels = {"store": "teststore", "record": "trade", "origin": "receipt"}
    observe_written("teststore", [Written(SinkBatch(trade_batch=[batch]), None, None)], now)
    assert REGISTRY.get_sample_value("tickflow_e2e_latency_seconds_bucket", {**labels, "le": "0.1"}) == 1
    assert REGISTRY.get_sample_value("tickflow_e2e_latency_seconds_bucket", {**labels, "le": "0.075"}) == 0


def test_received_header_and_partition_lag() -> None:
    assert received_header([("other", b"1"), (RECEIVED_HEADER, b"123")]) == 123
    assert received_header([(RECEIVED_HEADER, b"x")]) is None
    assert received_header(None) is None
    total = set_partition_lag("g-test", {("ticks", 0): (10, 4), ("ticks", 1): (5, 7)})
    assert total == 6
    assert REGISTRY.get_sample_value("tickflow_consumer_lag", {"group": "g-test", "topic": "ticks", "partition": "0"}) == 6
    assert REGISTRY.get_sample_value("tickflow_consumer_lag", {"group": "g-test", "topic": "ticks", "partition": "1"}) == 0


def test_every_metric_is_in_the_operations_inventory() -> None:
    """docs/operations.md lists every tickflow metric the code registers, under its exposed name."""
    import importlib
    from pathlib import Path

    for module in ("streams.runtime", "agents.registry", "sinks.runner", "streams.broker", "streams.ingest", "streams.sources.ccxt_live"):
        importlib.import_module(module)
    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    names = {m.name + ("_total" if m.type == "counter" else "") for m in REGISTRY.collect() if m.name.startswith("tickflow_")}
    assert len(names) > 30
    assert {n for n in names if f"`{n}`" not in doc} == set()


@pytest.mark.integration
def test_the_runtime_carries_the_receipt_to_the_fanout_and_onto_derived_records(topics) -> None:  # noqa: ANN001
    """The realtime path is timed from ingest receipt: the agent runtime hands the Redis fan-out the
    newest receipt behind each live record (for a timer's outputs, the partition's newest), and puts
    it on the candles it produces as a header."""
    import threading
    import time

    from agents.candle_agent import CANDLES
    from schemas.codec import AvroCodec
    from schemas.wire import encoder_for
    from streams.producer import RecordProducer
    from streams.runtime import AgentRunner, LiveRoute
    from tests.kafka_util import read_topic
    from tests.test_runtime import produce_raw

    t0 = 1_704_067_200_000_000
    encode = encoder_for(AvroCodec("tickflow.TradeBatch"))
    records = [("bin:S", encode(TradeBatch("bin", "S", t0 + i * 10_000_000 + 7, [Trade(str(i), t0 + i * 10_000_000, 100.0, 0.5, "buy")]))) for i in range(20)]
    produce_raw(topics, records)
    published: list[tuple[object, int | None]] = []
    producer = RecordProducer(topics)
    runner = AgentRunner(CANDLES, topics, producer, live=LiveRoute(publish=lambda live, received: published.append((live, received)), to_topic=False))
    stop = threading.Event()
    runner.start(stop)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(m.headers() for m in read_topic(topics, topics.kafka.topic_candles, timeout=5)):
            time.sleep(0.5)
    finally:
        stop.set()
        runner.join(60)
        producer.close()
    receipts = {t0 + i * 10_000_000 + 7 for i in range(20)}
    assert published and {received for _, received in published} <= receipts
    candles = read_topic(topics, topics.kafka.topic_candles)
    assert candles and all(received_header(m.headers()) in receipts for m in candles)
