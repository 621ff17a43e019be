"""Kafka producer for tickflow records: idempotent, acks=all, compressed, delivery errors surfaced.

Delivery failures are never ignored: they are counted, logged, and raised from ``flush``/``check``
so the caller stops instead of silently losing data.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas.codec import codec_for
from schemas.models import DeadLetter
from streams.observability import BYTES_OUT, DLQ_RECORDS, PRODUCE_LATENCY, dead_letter_class
from streams.settings import Settings

log = structlog.get_logger(__name__)


# Delivery reports are served at most this often from produce(): poll() releases the GIL, and
# getting it back behind the sink threads cost the event loop milliseconds per record.
POLL_EVERY_S = 0.01


class DeliveryError(RuntimeError):
    """The broker did not accept a record after the producer's own retries."""


class RecordProducer:
    """The one producer of every tickflow topic: ingest's trades, agents' outputs and checkpoints, dead letters."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self.settings = settings
        conf = {
            "bootstrap.servers": settings.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": settings.producer_linger_ms,
            "batch.size": 1_000_000,
            "message.max.bytes": 8_000_000,
            "queue.buffering.max.kbytes": 512_000,
            "delivery.timeout.ms": 120_000,
            "partitioner": "murmur2_random",
            # Topics are created with their partition counts (streams.topics), never by a record:
            # a broker that restarted empty would otherwise make them with its default count.
            "allow.auto.create.topics": False,
        }
        conf.update(overrides)
        self._producer = Producer(conf)
        self._errors: list[str] = []
        self.delivered = 0
        self._dlq_codec = codec_for("tickflow.DeadLetter", settings.topic_dlq, settings.schema_registry_url)
        self._bytes_out: dict[str, Any] = {}  # BYTES_OUT children by topic: labels() on every record is costly
        self._polled = 0.0

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        """One bound method for every record: a closure per record was a tenth of the worker's time."""
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err}")
            log.error("delivery failed", topic=msg.topic(), error=str(err))
            return
        self.delivered += 1
        latency = msg.latency()
        if latency is not None:
            PRODUCE_LATENCY.observe(latency)

    def produce(
        self, topic: str, key: str | bytes | None, value: bytes, partition: int | None = None, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        if self._errors:
            self.check()
        while True:
            try:
                if partition is None:
                    self._producer.produce(topic, value, key, on_delivery=self._on_delivery, headers=headers)
                else:
                    self._producer.produce(topic, value, key, partition, on_delivery=self._on_delivery, headers=headers)
                break
            except BufferError:  # local queue full: let deliveries drain
                self._producer.poll(0.05)
        counter = self._bytes_out.get(topic)
        if counter is None:
            counter = self._bytes_out[topic] = BYTES_OUT.labels(topic)
        counter.inc(len(value))
        now = time.monotonic()
        if now - self._polled >= POLL_EVERY_S:
            self._polled = now
            self._producer.poll(0)

    def dead_letter(self, letter: DeadLetter) -> None:
        """Send a rejected input to the dead-letter topic with its reason and original bytes."""
        DLQ_RECORDS.labels(letter.component, dead_letter_class(letter.reason)).inc()
        log.warning("dead-lettered", component=letter.component, reason=letter.reason, topic=letter.source_topic, partition=letter.source_partition, offset=letter.source_offset)
        self.produce(self.settings.topic_dlq, letter.key, self._dlq_codec.encode(letter.to_avro()))

    def dead_letter_durably(self, letter: DeadLetter) -> None:
        """Dead-letter and wait for the broker, for callers that commit the input right after."""
        self.dead_letter(letter)
        self.flush()

    def connect(self, topic: str, timeout: float = 10.0) -> bool:
        """Connect and learn ``topic``'s partition leaders now (blocking); False, logged, when the
        broker did not answer in time (records then queue until it does). librdkafka does this on
        the first record otherwise, and with a source that starts at once the records of the first
        0.8 s queued behind it (seen in the latency benchmark)."""
        try:
            self._producer.list_topics(topic, timeout=timeout)
        except KafkaException as exc:
            log.warning("broker not reachable yet, records queue until it is", topic=topic, error=str(exc))
            return False
        return True

    def poll(self, timeout: float = 0) -> None:
        self._producer.poll(timeout)

    def check(self) -> None:
        if self._errors:
            errors, self._errors = self._errors, []
            raise DeliveryError("; ".join(errors[:5]))

    def flush(self, timeout: float = 60.0) -> None:
        remaining = self._producer.flush(timeout)
        self.check()
        if remaining:
            raise DeliveryError(f"{remaining} records not delivered within {timeout}s")

    def close(self, timeout: float = 60.0) -> None:
        """Deliver what is queued, then disconnect now rather than at garbage collection (after an
        embedded broker stopped, librdkafka would log its disconnection)."""
        try:
            self.flush(timeout)
        finally:
            self._producer.close()
