"""Kafka producer for tickflow records: idempotent, acks=all, compressed, delivery errors surfaced.

Delivery failures are never ignored: they are counted, logged, and raised from ``flush``/``check``
so the caller stops instead of silently losing data.

A broker that restarted without its log (the embedded one: a new cluster id) is the exception: an
idempotent producer keeps the producer id the old broker gave it, which the new one does not know,
and librdkafka retries such records until they time out. A watcher thread checks the cluster id
every ``BROKER_CHECK_S``; when it changed, the records not yet delivered (bound for, and derived
from, the lost log) are discarded, logged and counted, a new librdkafka producer takes the old
one's place, and :attr:`RecordProducer.generation` goes up. Callers that must not commit past
discarded records pass the generation they started from (``expect``) and get :class:`LogLost`.
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from schemas.codec import codec_for
from schemas.models import DeadLetter
from streams.broker import BrokerIdentity
from streams.observability import BYTES_OUT, DLQ_RECORDS, PRODUCE_LATENCY, PRODUCER_DISCARDED, dead_letter_class
from streams.settings import Settings

log = structlog.get_logger(__name__)


# Delivery reports are served at most this often from produce(): poll() releases the GIL, and
# getting it back behind the sink threads cost the event loop milliseconds per record.
POLL_EVERY_S = 0.01
BROKER_CHECK_S = 2.0  # how often the broker's cluster id is checked
PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)
# Delivery errors that a broker without the producer's log gives (or a broker away for too long):
# before raising them, check whether the broker lost its log.
SUSPECT = (
    KafkaError.UNKNOWN_PRODUCER_ID, KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH, KafkaError._MSG_TIMED_OUT,
)


class DeliveryError(RuntimeError):
    """The broker did not accept a record after the producer's own retries."""


class LogLost(DeliveryError):
    """The broker restarted without its log: records produced before were discarded (see the module)."""


class RecordProducer:
    """The one producer of every tickflow topic: ingest's trades, agents' outputs and checkpoints, dead letters."""

    def __init__(self, settings: Settings, *, component: str = "producer", **overrides: Any) -> None:
        self.settings = settings
        self.component = component
        conf = {
            "bootstrap.servers": settings.kafka.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": settings.kafka.producer_linger_ms,
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
        self._conf = conf
        self._producer = Producer(conf)
        self._report = functools.partial(self._on_delivery, 0)  # the delivery callback of the current producer
        self._lock = threading.Lock()  # a record goes to the current librdkafka producer, never to one being replaced
        self._watching = threading.Lock()
        self.generation = 0  # goes up each time the broker is found to have lost its log
        # The cluster id is read through a client of its own: a librdkafka producer that failed for
        # good (its id refused by a restarted broker) answers no metadata request any more.
        self._identity = BrokerIdentity(AdminClient({"bootstrap.servers": conf["bootstrap.servers"]}), component, timeout_s=BROKER_CHECK_S)
        self._discarded = PRODUCER_DISCARDED.labels(component)
        self._closed = threading.Event()
        threading.Thread(target=_watch, args=(weakref.ref(self), self._closed), name=f"{component}-broker-watch", daemon=True).start()
        self._errors: list[str] = []
        self._suspect = False  # an error in _errors may come from a broker that lost its log
        self.delivered = 0
        self._dlq_codec = codec_for("tickflow.DeadLetter", settings.kafka.topic_dlq, settings.kafka.schema_registry_url)
        self._bytes_out: dict[str, Any] = {}  # BYTES_OUT children by topic: labels() on every record is costly
        self._polled = 0.0

    def _on_delivery(self, generation: int, err: KafkaError | None, msg: Message) -> None:
        """One callable per librdkafka producer, for all its records: a closure per record was a tenth
        of the worker's time. Reports of a replaced producer are of records bound for a lost log."""
        if err is not None:
            if err.code() in PURGED or generation != self.generation:  # discarded with the lost log (logged by broker_changed)
                self._discarded.inc()
                return
            self._errors.append(f"{msg.topic()}: {err}")
            self._suspect = self._suspect or err.code() in SUSPECT
            log.error("delivery failed", topic=msg.topic(), error=str(err))
            return
        self.delivered += 1
        latency = msg.latency()
        if latency is not None:
            PRODUCE_LATENCY.observe(latency)

    def produce(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        *,
        expect: int | None = None,
    ) -> None:
        """Queue a record; with ``expect``, raise :class:`LogLost` instead when the generation moved on
        (the caller's earlier records were discarded: this one must not follow them into the new log)."""
        if self._errors:
            self.check()
        while True:
            with self._lock:
                if expect is not None and expect != self.generation:
                    raise LogLost(f"the broker lost its log (producer generation {expect} -> {self.generation})")
                producer, report = self._producer, self._report
                try:
                    if partition is None:
                        producer.produce(topic, value, key, on_delivery=report, headers=headers)
                    else:
                        producer.produce(topic, value, key, partition, on_delivery=report, headers=headers)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    pass
                except KafkaException as exc:
                    fatal = exc
                else:
                    fatal = None
            if fatal is not None:
                self._fatal(fatal, producer)
                continue
            self._poll(producer, 0.05)
        counter = self._bytes_out.get(topic)
        if counter is None:
            counter = self._bytes_out[topic] = BYTES_OUT.labels(topic)
        counter.inc(len(value))
        now = time.monotonic()
        if now - self._polled >= POLL_EVERY_S:
            self._polled = now
            self._poll(self._producer, 0)

    def dead_letter(self, letter: DeadLetter) -> None:
        """Send a rejected input to the dead-letter topic with its reason and original bytes."""
        DLQ_RECORDS.labels(letter.component, dead_letter_class(letter.reason)).inc()
        log.warning("dead-lettered", component=letter.component, reason=letter.reason, topic=letter.source_topic, partition=letter.source_partition, offset=letter.source_offset)
        self.produce(self.settings.kafka.topic_dlq, letter.key, self._dlq_codec.encode(letter.to_avro()))

    def dead_letter_durably(self, letter: DeadLetter) -> None:
        """Dead-letter and wait for the broker, for callers that commit the input right after."""
        self.dead_letter(letter)
        try:
            self.flush()
        except LogLost as lost:  # its input was in the lost log too: the caller reads the new log from its start
            log.error("dead letter discarded: the broker lost its log", component=letter.component, error=str(lost))

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
        self._poll(self._producer, timeout)

    def _poll(self, producer: Producer, timeout: float) -> None:
        try:
            producer.poll(timeout)
        except KafkaException as exc:
            self._fatal(exc, producer)

    def check(self) -> None:
        """Raise the delivery errors reported so far, but those of records bound for a log the broker
        lost (found now): they were discarded with it and the generation moved on."""
        if self._errors and self._suspect:
            self._suspect = False
            self.watch_once()
        if self._errors:
            errors, self._errors = self._errors, []
            raise DeliveryError("; ".join(errors[:5]))

    def flush(self, timeout: float = 60.0, *, expect: int | None = None) -> None:
        """Wait until every queued record is delivered. Raises :class:`LogLost` when the broker lost
        its log meanwhile (or since generation ``expect``): some of them were discarded."""
        start = self.generation if expect is None else expect
        deadline = time.monotonic() + timeout
        while True:
            producer = self._producer
            try:
                remaining = producer.flush(max(min(BROKER_CHECK_S, deadline - time.monotonic()), 0))
            except KafkaException as exc:
                self._fatal(exc, producer)
                remaining = 1
            if self.generation != start:
                break
            if not remaining or time.monotonic() >= deadline:
                break
        self.check()
        if self.generation != start:
            raise LogLost(f"the broker lost its log while records were queued (producer generation {start} -> {self.generation})")
        if remaining:
            raise DeliveryError(f"{remaining} records not delivered within {timeout}s")

    def _fatal(self, exc: KafkaException, failed: Producer) -> None:
        """librdkafka's producer ``failed`` for good. An idempotent producer does when a restarted
        broker refuses its producer id: unless it was replaced already, check the broker at once; a
        new log replaces it (the caller then sees the generation moved on), else re-raise."""
        if failed is self._producer:
            self.watch_once()
        if failed is self._producer:
            raise exc

    def broker_changed(self, old: str, new: str) -> None:
        """The broker restarted without its log: discard what is queued, go on with a new librdkafka
        producer (the new broker does not know the old one's producer id)."""
        with self._lock:
            retired = self._producer
            queued = len(retired)  # records, requests and reports not yet served (the counter counts the records)
            errors, self._errors, self._suspect = self._errors, [], False  # reports of records bound for the lost log
            try:
                retired.purge(in_queue=True, in_flight=True, blocking=False)
            except KafkaException as exc:  # failed for good already: it delivers nothing more anyway
                log.info("replaced producer not purged", component=self.component, error=str(exc))
            self._producer = Producer(self._conf)
            self.generation += 1
            self._report = functools.partial(self._on_delivery, self.generation)
        log.error(
            "broker restarted without its log: records not yet delivered discarded, producing to the new log",
            component=self.component, old_cluster_id=old, new_cluster_id=new, queue_length=queued, delivery_errors_dropped=len(errors),
        )
        try:
            retired.poll(0)  # their delivery reports: counted as discarded; a flush still waiting on it returns
        except KafkaException as exc:  # its fatal error (the new broker refused its producer id): it is gone anyway
            log.info("replaced producer's error", component=self.component, error=str(exc))

    def close(self, timeout: float = 60.0) -> None:
        """Deliver what is queued, then disconnect now rather than at garbage collection (after an
        embedded broker stopped, librdkafka would log its disconnection)."""
        self._closed.set()
        try:
            self.flush(timeout)
        finally:
            with self._lock:
                self._producer.close()

    def watch_once(self) -> None:
        """One check of the broker's cluster id (the watcher thread's step)."""
        with self._watching:  # the watcher thread and a caller that met a fatal error
            if (change := self._identity.check()) is not None:
                self.broker_changed(*change)


def _watch(ref: weakref.ref[RecordProducer], closed: threading.Event) -> None:
    """The watcher thread: holds its producer weakly, so an unclosed one is still collected. The first
    check runs at once: the cluster id the producer's first records went to is the one to compare with."""
    while True:
        producer = ref()
        if producer is None:
            return
        try:
            producer.watch_once()
        except Exception:  # noqa: BLE001 - the watch must outlive any one failed check
            log.exception("broker check failed", component=producer.component)
        del producer
        if closed.wait(BROKER_CHECK_S):
            return
