"""What an operator watches on the sinks: consumer lag per group and partition, store and broker
health, retries, and the end-to-end latency of every record a sink made durable.

The latency samples are computed here, purely (:func:`latency_samples`), from the times a record
carries; the runner observes them right after ``Sink.write`` returned, so a sample means "durable
in this store" (or "published on Redis") that long after the origin:

- ``exchange``: the exchange's event time, the newest trade of a trade batch, the end of a final
  candle's or indicators record's window (which includes ``CANDLE_LATENESS_MS`` by design); a
  replay of old data makes it as old as the data;
- ``receipt``: ingest's wall clock at receipt, carried by trade batches, and by derived records
  whose producer set the ``RECEIVED_HEADER`` Kafka header (the agent runtime does);
- ``produced``: the Kafka record's timestamp, the time since the previous stage wrote it.

The histogram itself (``E2E_LATENCY``) is declared in :mod:`streams.observability`, beside the
other shared metrics, because the Redis fan-out of the agents observes it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from prometheus_client import Counter, Gauge

from sinks.base import SinkBatch
from schemas.intervals import interval_ms
from streams.observability import E2E_LATENCY

CONSUMER_LAG = Gauge(
    "tickflow_consumer_lag", "Records of a topic partition not yet committed by a consumer group", ["group", "topic", "partition"]
)
STORE_UP = Gauge("tickflow_sink_store_up", "1 after the sink's last write succeeded, 0 while its writes fail", ["sink"])
BROKER_UP = Gauge("tickflow_broker_reachable", "1 when the component's last request to the Kafka broker succeeded, else 0", ["component"])
LAST_WRITE = Gauge(
    "tickflow_sink_last_write_timestamp_seconds",
    "Unix time of the sink's last successful write: time() minus it is how long the store has had nothing new (an outage, or no input)",
    ["sink"],
)
RETRIES = Counter("tickflow_sink_retries_total", "Sink writes that failed and were retried (same batch, after a backoff)", ["sink"])


class Sample(NamedTuple):
    record: str  # trade | candle | candle_update | indicators
    origin: str  # exchange | receipt | produced
    seconds: float


class Written(NamedTuple):
    """One consumed record as the runner knows it: its decoded part and its Kafka times."""

    part: SinkBatch
    produced_ms: int | None  # Kafka record timestamp
    received_us: int | None  # RECEIVED_HEADER, when present


def latency_samples(written: Iterable[Written], now_us: int) -> Iterator[Sample]:
    """Latency samples of records durable at ``now_us`` (pure); negative ages (clock skew) count as 0."""

    def age(us: float) -> float:
        return max(now_us - us, 0) / 1e6

    for w in written:
        produced = None if w.produced_ms is None or w.produced_ms <= 0 else age(w.produced_ms * 1000)
        for b in w.part.of("trade_batch"):
            if not b.trades:
                continue
            yield Sample("trade", "exchange", age(max(t[1] for t in b.trades)))  # TradeRow: ts is the second field
            yield Sample("trade", "receipt", age(b.received_at))
            if produced is not None:
                yield Sample("trade", "produced", produced)
        for c in w.part.of("candle"):
            record = "candle" if c.is_final else "candle_update"
            if c.is_final:
                yield Sample(record, "exchange", age((c.close_time + 1) * 1000))
            if w.received_us is not None:
                yield Sample(record, "receipt", age(w.received_us))
            if produced is not None:
                yield Sample(record, "produced", produced)
        for i in w.part.of("indicators"):
            try:
                window_end_ms = i.open_time + interval_ms(i.interval)
            except ValueError:
                window_end_ms = None
            if window_end_ms is not None:
                yield Sample("indicators", "exchange", age(window_end_ms * 1000))
            if w.received_us is not None:
                yield Sample("indicators", "receipt", age(w.received_us))
            if produced is not None:
                yield Sample("indicators", "produced", produced)


def observe_written(store: str, written: Iterable[Written], now_us: int) -> None:
    """Record the latency of records that just became durable in ``store``."""
    children: dict[tuple[str, str], object] = {}
    for record, origin, seconds in latency_samples(written, now_us):
        child = children.get((record, origin))
        if child is None:
            child = children[(record, origin)] = E2E_LATENCY.labels(store, record, origin)
        child.observe(seconds)  # type: ignore[attr-defined]


def set_partition_lag(group: str, state: dict[tuple[str, int], tuple[int, int]]) -> int:
    """Publish a group's lag per partition from (end, committed) offsets; return the total."""
    total = 0
    for (topic, partition), (high, done) in state.items():
        lag = max(high - done, 0)
        CONSUMER_LAG.labels(group, topic, str(partition)).set(lag)
        total += lag
    return total
