"""Feeds one sink from Kafka: consume a batch, write it, then commit its offsets.

At-least-once with idempotent writes gives exactly-once in effect: offsets are committed only after
``Sink.write`` returned, so a crash replays at most the uncommitted batch, which the store absorbs.

Failures never lose records:

- the store is down or failing: the same batch is retried with capped exponential backoff, for
  as long as it takes, with nothing committed meanwhile;
- the store rejects some data for good (:class:`~sinks.base.DataRejected`): the batch is bisected
  down to the offending records, which are dead-lettered with the reason, and the rest is written;
- a record that is not valid Avro for its topic is dead-lettered with its original bytes.

Dead-lettered records are committed with their batch, after ``dead_letter`` returned, so that
callable must make the letter durable before returning (e.g. produce, then flush).

Each sink has its own consumer group (``{app_id}-sink-{name}``), so a slow or broken store never
holds back another one.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
import structlog
from clickhouse_connect.driver import exceptions as ch_errors
from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_NOT_AVAILABLE, Consumer, ConsumerGroupTopicPartitions, IsolationLevel, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client import Counter, Gauge, Histogram
from psycopg_pool import PoolTimeout
from tenacity import RetryCallState, RetryError, Retrying, retry_if_exception, retry_if_exception_type, wait_exponential

from schemas.codec import codec_for
from schemas.models import DeadLetter
from schemas.registry import record_type, topic_of
from schemas.validation import Reason, reason
from sinks.base import DataRejected, Sink, SinkBatch
from sinks.clickhouse import ClickHouseSink, open_store
from sinks.migrations import check_clickhouse, check_postgres, migrate_clickhouse, migrate_postgres, postgres_options
from sinks.postgres import PostgresSink
from sinks.query import QueryServer
from sinks.redis import RedisSink
from sinks.telemetry import BROKER_UP, LAST_WRITE, RETRIES, STORE_UP, Written, observe_written, set_partition_lag
from streams.broker import BrokerIdentity
from streams.observability import received_header
from streams.settings import Settings

log = structlog.get_logger(__name__)

RECORDS = Counter("tickflow_sink_records_total", "Kafka records a sink handled: written, or dead-lettered", ["sink"])
WRITE_SECONDS = Histogram(
    "tickflow_sink_write_seconds",
    "Duration of successful sink writes",
    ["sink"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ERRORS = Counter("tickflow_sink_errors_total", "Sink failures: write (retried), rejected, undecodable, invalid (failed its record type's check), commit", ["sink", "kind"])
ERROR_KINDS = ("write", "rejected", "undecodable", "invalid", "commit")
LAG = Gauge("tickflow_sink_lag", "Records in the sink's topics not yet committed by its consumer group", ["sink"])


LAG_EVERY_S = 10.0  # how often run() refreshes the lag gauge
BROKER_CHECK_S = 2.0  # how often the broker's identity is checked (a restarted embedded broker lost its log)
COMMIT_EVERY_S = 1.0  # longest written offsets wait for their commit while records keep coming
_CONSUMER_ONLY = frozenset({"group.id", "enable.auto.commit", "auto.offset.reset", "session.timeout.ms", "fetch.wait.max.ms", "fetch.min.bytes"})
STORE_FETCH_MIN_BYTES = 1_000_000


def fetch_config(settings: Settings, batch_ms: int, realtime: bool) -> dict[str, int]:
    """Fetch settings for a sink that holds batches ``batch_ms``: a store sink lets the broker
    gather up to its batch window or 1 MB per fetch (it writes no sooner anyway), which spares the
    broker a fetch every few milliseconds; the Redis sink fetches as soon as anything arrives,
    within ``consumer_fetch_wait_ms`` when it carries in-progress candles (``realtime``), else
    within ``background_fetch_wait_ms`` (final candles wait for their window's close anyway)."""
    if batch_ms > settings.kafka.consumer_fetch_wait_ms:
        return {"fetch.wait.max.ms": batch_ms, "fetch.min.bytes": STORE_FETCH_MIN_BYTES}
    return {"fetch.wait.max.ms": settings.kafka.consumer_fetch_wait_ms if realtime else settings.kafka.background_fetch_wait_ms, "fetch.min.bytes": 1}


class _Stopped(Exception):
    """Stop was requested while a batch could not be written; it stays uncommitted."""


@dataclass(slots=True)
class _Record:
    msg: Message
    part: SinkBatch | None  # None: nothing to write (``problem`` says why when the whole record is bad)
    problem: str | None = None
    rejected: tuple[tuple[str, dict[str, Any]], ...] = ()  # parts its record type's check refused, with reasons


def _tp(msg: Message) -> tuple[str, int]:
    return msg.topic(), msg.partition()


class GroupLag:
    """Records of ``topics`` that consumer group ``group_id`` has not committed yet, per partition.

    Read through an admin client: on a consumer's own connection a request queues behind its fetch
    long-poll. Needs no group membership, so it works from any process (``tickflow run`` watches its
    sink processes with it) and is meaningful before the group has formed and with several members.
    """

    def __init__(self, conf: dict[str, Any], group_id: str, topics: list[str]) -> None:
        self.group_id = group_id
        self.topics = topics
        self._admin = AdminClient(conf)

    def total(self) -> int:
        return sum(max(high - done, 0) for high, done in self.partition_state().values())

    def partition_state(self) -> dict[tuple[str, int], tuple[int, int]]:
        """(end offset, group's committed offset or start of log) for every partition of the topics.

        The end is the last stable offset (read_committed, like the consumer): records of open
        transactions cannot be consumed yet and do not count.
        """
        tps = [TopicPartition(t, p) for t in self.topics for p in self._partitions(t)]
        if not tps:
            return {}
        committed = self._committed(tps)
        ends = self._list_offsets(committed, OffsetSpec.latest())
        unset = [k for k, off in committed.items() if off < 0]
        starts = self._list_offsets(unset, OffsetSpec.earliest()) if unset else {}
        return {k: (ends[k], off if off >= 0 else starts[k]) for k, off in committed.items()}

    def _committed(self, tps: list[TopicPartition]) -> dict[tuple[str, int], int]:
        futures = self._admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(self.group_id, tps)], request_timeout=10)
        return {(tp.topic, tp.partition): tp.offset for tp in futures[self.group_id].result().topic_partitions}

    def _partitions(self, topic: str) -> list[int]:
        meta = self._admin.list_topics(topic, timeout=10).topics.get(topic)
        return [] if meta is None or meta.error is not None else sorted(meta.partitions)

    def _list_offsets(self, keys: Any, spec: OffsetSpec) -> dict[tuple[str, int], int]:
        futures = self._admin.list_offsets(
            {TopicPartition(t, p): spec for t, p in keys}, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=10
        )
        return {(tp.topic, tp.partition): fut.result().offset for tp, fut in futures.items()}


class SinkRunner:
    def __init__(
        self,
        sink: Sink,
        settings: Settings,
        *,
        dead_letter: Callable[[DeadLetter], None],
        group_id: str | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float | None = None,
        consumer_config: dict[str, Any] | None = None,
    ) -> None:
        self.sink = sink
        self.settings = settings
        self.group_id = group_id or sink_group_id(settings, sink.name)
        self._dead_letter = dead_letter
        self._wait = wait_exponential(multiplier=backoff_initial_s, max=settings.stores.sink_retry_max_s if backoff_max_s is None else backoff_max_s)
        self._failing_since: float | None = None  # monotonic time of the first failed write of an outage
        self._failed_attempts = 0
        self._component = f"sink-{sink.name}"
        self._log = log.bind(sink=sink.name)
        for kind in ERROR_KINDS:  # every series from the start: rate() and alerts see 0, not "no data"
            ERRORS.labels(sink.name, kind)
        RETRIES.labels(sink.name)
        self._batch_s = getattr(settings.stores, sink.batch_ms_setting) / 1000
        self._types = {topic_of(settings, name): record_type(name) for name in sink.record_types(settings)}
        self._codecs = {topic: codec_for(rt.schema, topic, settings.kafka.schema_registry_url) for topic, rt in self._types.items()}
        conf = {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": int(settings.kafka.session_timeout_s * 1000),
            "client.id": f"tickflow-{self._component}",
            **fetch_config(settings, getattr(settings.stores, sink.batch_ms_setting), sink.realtime(settings)),
        }
        conf.update(consumer_config or {})
        self._consumer = Consumer(conf)
        # Metadata and end offsets go through an admin client: on the consumer's own connection a
        # request queues behind the fetch long-poll (up to fetch.wait.max.ms per partition queried).
        self._lag: GroupLag | None = GroupLag({k: v for k, v in conf.items() if k not in _CONSUMER_ONLY}, self.group_id, list(self._types))
        self._consumer.subscribe(list(self._types), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke)
        self._pending: list[_Record] = []
        self._to_commit: dict[tuple[str, int], int] = {}
        self._next_commit = 0.0
        self._identity = BrokerIdentity(self._lag._admin, self._component)
        self._next_identity = 0.0
        self._stop = threading.Event()
        self._closed = False

    # -- public API

    def run(self, stop: threading.Event) -> None:
        """Consume, write and commit until ``stop`` is set, then commit everything written; a batch
        that cannot be written then stays uncommitted."""
        self._stop = stop
        next_lag = 0.0
        try:
            while not stop.is_set():
                self._cycle()
                if time.monotonic() >= next_lag:
                    self._update_lag()
                    next_lag = time.monotonic() + LAG_EVERY_S
            self._flush(commit=True)
            self._log.info("stopped; written records committed")
        except _Stopped:
            self._log.warning("stopped with an unwritten batch; it will be consumed again", records=len(self._pending))

    def run_until_drained(self, idle_s: float, *, timeout_s: float | None = None) -> None:
        """Return once the group has stayed fully committed (lag 0, nothing pending) for ``idle_s``.

        Used by ``tickflow run --until-drained`` and tests.

        ``timeout_s`` bounds the wait (TimeoutError); None waits as long as records keep coming or
        the store keeps failing.
        """
        self._stop = threading.Event()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        idle_since: float | None = None
        while True:
            if self._cycle():
                idle_since = None
            elif self._drained():
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= idle_s:
                    return
            else:
                idle_since = None
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"sink {self.sink.name} not drained within {timeout_s}s")

    def lag(self) -> int:
        """Records in the sink's topics not yet committed by its group (KafkaException if unreachable)."""
        try:
            state = self._partition_state()
        except KafkaException:
            BROKER_UP.labels(self._component).set(0)
            raise
        BROKER_UP.labels(self._component).set(1)
        total = set_partition_lag(self.group_id, state)
        LAG.labels(self.sink.name).set(total)
        return total

    def _update_lag(self) -> None:
        try:
            self.lag()
        except KafkaException as exc:
            self._log.warning("lag unknown", error=str(exc))

    def close(self) -> None:
        """Leave the consumer group; the sink itself is closed by its owner."""
        if not self._closed:
            self._closed = True
            self._consumer.close()  # commits what is written, through _on_revoke
            self._lag = None  # destroys the admin client's librdkafka handle now rather than at garbage collection

    def __enter__(self) -> SinkRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- consume

    def _cycle(self) -> int:
        """Collect one batch, write and commit it; return the number of records consumed."""
        if time.monotonic() >= self._next_identity:
            self._next_identity = time.monotonic() + BROKER_CHECK_S
            if (change := self._identity.check()) is not None:
                self._broker_lost_log(*change)
        n = self._poll_batch()
        self._flush(commit=n == 0 or time.monotonic() >= self._next_commit)
        return n

    def _poll_batch(self) -> int:
        """Consume until sink_batch_size rows/records, or the sink's batch time (``Sink.batch_ms_setting``)
        after the first record.

        With nothing to consume, returns after one such wait, so callers can check stop
        conditions; the batch clock starts at the first record, which bounds how long one waits.
        """
        size, window = self.settings.stores.sink_batch_size, self._batch_s
        count = rows = 0
        deadline: float | None = None
        while count < size and rows < size and not self._stop.is_set():
            timeout = window if deadline is None else deadline - time.monotonic()
            if timeout <= 0:
                break
            msgs = self._consumer.consume(num_messages=min(size - count, 10_000), timeout=timeout)
            if not msgs and deadline is None:
                break
            deadline = deadline or time.monotonic() + window
            for msg in msgs:
                record = self._decode(msg)
                if record is None:
                    continue
                self._pending.append(record)
                count += 1
                rows += len(record.part) if record.part is not None else 1
        return count

    def _decode(self, msg: Message) -> _Record | None:
        err = msg.error()
        if err is not None:
            if err.fatal():
                raise KafkaException(err)
            if err.code() != KafkaError._PARTITION_EOF:
                self._log.warning("consumer error", error=str(err))
            return None
        rt = self._types[msg.topic()]
        try:
            record = rt.model.from_avro(self._codecs[msg.topic()].decode(msg.value()))
        except Exception as exc:  # any failure to read the bytes is the record's fault
            return _Record(msg, None, reason(Reason.UNDECODABLE, f"{rt.schema} record: {exc}"))
        if rt.check is None:
            return _Record(msg, SinkBatch.of_model(rt, record))
        key = msg.key()
        checked = rt.check(record, key.decode(errors="replace") if key is not None else None, time.time_ns() // 1000)
        if checked.value is None:
            return _Record(msg, None, checked.problem, checked.rejected)
        return _Record(msg, SinkBatch.of_model(rt, checked.value), None, checked.rejected)

    def _broker_lost_log(self, old: str, new: str) -> None:
        """The broker restarted without its log: positions and commits refer to records that are
        gone, and the new log's records sit below them. Read every assigned partition again from
        the new log's start (writes are idempotent); what the old log held beyond what was written
        is lost with it."""
        assigned = self._consumer.assignment()
        self._log.error(
            "broker restarted without its log: reading every partition again from the start of the new log",
            old_cluster_id=old, new_cluster_id=new, unwritten_records_lost=len(self._pending), partitions=len(assigned),
        )
        self._pending, self._to_commit = [], {}
        for tp in assigned:
            try:
                self._consumer.seek(TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING))
            except KafkaException as exc:  # not fetching yet: it starts at the group's offset, none on a new broker, so the beginning
                self._log.info("partition not seekable yet", partition=f"{tp.topic}[{tp.partition}]", error=str(exc))

    # -- write

    def _flush(self, *, commit: bool = True) -> None:
        """Write the pending records; commit written offsets when ``commit`` (at most every
        ``COMMIT_EVERY_S`` while records flow: a synchronous commit per short batch would stall the
        realtime sink on a broker round trip and load the broker; a crash re-writes at most that
        much, idempotently)."""
        records = self._pending
        if records:
            for rec in records:
                if rec.problem is not None:
                    ERRORS.labels(self.sink.name, "undecodable" if rec.problem.startswith(Reason.UNDECODABLE) else "invalid").inc()
                    self._send_dead_letter(rec, rec.problem)
                for why, part in rec.rejected:
                    ERRORS.labels(self.sink.name, "invalid").inc()
                    self._send_dead_letter(rec, why, orjson.dumps(part))
            self._write_isolating([r for r in records if r.part is not None])
            for rec in records:
                self._to_commit[_tp(rec.msg)] = rec.msg.offset() + 1
            RECORDS.labels(self.sink.name).inc(len(records))
            self._pending = []
        if commit:
            self._commit()

    def _write_isolating(self, records: list[_Record]) -> None:
        """Write the records; on DataRejected split in halves until the rejected ones are alone."""
        if not records:
            return
        try:
            self._write_retrying(SinkBatch.merge(r.part for r in records if r.part is not None), records)
        except DataRejected as exc:
            if len(records) == 1:
                ERRORS.labels(self.sink.name, "rejected").inc()
                self._send_dead_letter(records[0], reason(Reason.STORE_REJECTED, f"rejected by {self.sink.name}: {exc}"))
                return
            mid = len(records) // 2
            self._write_isolating(records[:mid])
            self._write_isolating(records[mid:])

    def _write_retrying(self, batch: SinkBatch, records: list[_Record]) -> None:
        def before_sleep(state: RetryCallState) -> None:
            ERRORS.labels(self.sink.name, "write").inc()
            RETRIES.labels(self.sink.name).inc()
            STORE_UP.labels(self.sink.name).set(0)
            self._failed_attempts += 1
            if self._failing_since is None:
                self._failing_since = time.monotonic()
            exc = state.outcome.exception() if state.outcome else None
            first, last = records[0].msg, records[-1].msg
            self._log.warning(
                "sink write failed; retrying",
                attempt=state.attempt_number,
                retry_in_s=round(state.next_action.sleep, 2) if state.next_action else None,
                error=f"{type(exc).__name__}: {exc}",
                records=len(records),
                partition=first.partition(),
                offset=first.offset(),
                last_partition=last.partition(),
                last_offset=last.offset(),
            )

        try:
            for attempt in self._retrying(before_sleep, retry_if_exception(lambda e: not isinstance(e, DataRejected))):
                with attempt:
                    started = time.perf_counter()
                    self.sink.write(batch)
                    WRITE_SECONDS.labels(self.sink.name).observe(time.perf_counter() - started)
            self._recovered()
            observe_written(self.sink.name, self._written(records), time.time_ns() // 1000)
        except RetryError as exc:
            raise _Stopped from exc

    def _recovered(self) -> None:
        """A write went through: the store is up; after an outage, say how long it lasted."""
        STORE_UP.labels(self.sink.name).set(1)
        LAST_WRITE.labels(self.sink.name).set(time.time())
        if self._failing_since is not None:
            self._log.warning(
                "store reachable again; catching up", down_s=round(time.monotonic() - self._failing_since, 1), failed_attempts=self._failed_attempts
            )
            self._failing_since, self._failed_attempts = None, 0

    @staticmethod
    def _written(records: list[_Record]) -> list[Written]:
        out = []
        for r in records:
            if r.part is not None:
                kind, ts = r.msg.timestamp()
                out.append(Written(r.part, ts if kind != TIMESTAMP_NOT_AVAILABLE else None, received_header(r.msg.headers())))
        return out

    def _send_dead_letter(self, rec: _Record, why: str, payload: bytes | None = None) -> None:
        """Dead-letter the record's bytes, or ``payload`` (a rejected part of it) with its coordinates."""
        msg = rec.msg
        letter = DeadLetter(
            component=self._component,
            reason=why,
            payload=(msg.value() or b"") if payload is None else payload,
            ts=time.time_ns() // 1_000_000,
            source_topic=msg.topic(),
            source_partition=msg.partition(),
            source_offset=msg.offset(),
            key=msg.key(),
        )
        self._log.error("record dead-lettered", reason=why, topic=msg.topic(), partition=msg.partition(), offset=msg.offset())

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self._log.warning("dead-letter failed; retrying", attempt=state.attempt_number, error=f"{type(exc).__name__}: {exc}")

        try:
            for attempt in self._retrying(before_sleep, retry_if_exception_type(Exception)):
                with attempt:
                    self._dead_letter(letter)
        except RetryError as exc:
            raise _Stopped from exc

    def _retrying(self, before_sleep: Callable[[RetryCallState], None], retry: Any) -> Retrying:
        """Forever, with capped exponential backoff; a stop request ends it (RetryError)."""
        return Retrying(
            wait=self._wait,
            retry=retry,
            stop=lambda _state: self._stop.is_set(),
            sleep=self._stop.wait,
            before_sleep=before_sleep,
            reraise=False,
        )

    # -- offsets

    def _commit(self, only: set[tuple[str, int]] | None = None) -> None:
        """Commit written offsets synchronously; a failure keeps them for the next attempt."""
        if only is None:
            self._next_commit = time.monotonic() + COMMIT_EVERY_S
        todo = {k: v for k, v in self._to_commit.items() if only is None or k in only}
        if not todo:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in todo.items()]
        try:
            result = self._consumer.commit(offsets=offsets, asynchronous=False) or []
            failed = [tp for tp in result if tp.error is not None]
            if failed:
                raise KafkaException(failed[0].error)
        except KafkaException as exc:
            # The rows are written; if the partitions moved to another member it re-reads and
            # rewrites them idempotently, otherwise the next cycle commits again.
            ERRORS.labels(self.sink.name, "commit").inc()
            self._log.warning("offset commit failed", error=str(exc), partitions=len(offsets))
            return
        for key, offset in todo.items():
            if self._to_commit.get(key) == offset:
                del self._to_commit[key]

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._log.info("partitions assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Drop uncommitted work of partitions this member loses: the next owner re-reads it."""
        gone = {(p.topic, p.partition) for p in partitions}
        self._commit(only=gone)
        self._pending = [r for r in self._pending if _tp(r.msg) not in gone]
        self._to_commit = {k: v for k, v in self._to_commit.items() if k not in gone}
        self._log.info("partitions revoked", partitions=sorted(f"{t}[{p}]" for t, p in gone))

    def _partition_state(self) -> dict[tuple[str, int], tuple[int, int]]:
        if self._lag is None:
            raise RuntimeError(f"sink runner {self.sink.name} is closed")
        return self._lag.partition_state()

    def _drained(self) -> bool:
        """True when this member has partitions, nothing pending, and the group is committed to the end.

        Records consumed up to the end but ending in transaction markers leave the position past the
        last record's offset + 1; committing the position then closes that gap.
        """
        if self._pending or self._to_commit or not self._consumer.assignment():
            return False
        try:
            state = self._partition_state()
        except KafkaException as exc:
            self._log.warning("offsets unknown; not drained yet", error=str(exc))
            return False
        set_partition_lag(self.group_id, state)
        behind = {k for k, (high, done) in state.items() if high > done}
        if behind:
            assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
            mine = [TopicPartition(t, p) for t, p in behind & assigned]
            for tp in self._consumer.position(mine) if mine else []:
                high, done = state[(tp.topic, tp.partition)]
                if tp.offset >= high > done:
                    self._to_commit[(tp.topic, tp.partition)] = tp.offset
            if not self._to_commit:
                LAG.labels(self.sink.name).set(sum(max(h - d, 0) for h, d in state.values()))
                return False
            self._commit()
            return False
        LAG.labels(self.sink.name).set(0)
        return True


SINKS: dict[str, type[Sink]] = {"clickhouse": ClickHouseSink, "postgres": PostgresSink, "redis": RedisSink}


BATCH_SINKS = frozenset({"clickhouse", "postgres"})
BATCH_SINK_NICENESS = 19  # the lowest: a store that lags catches up when the cores are free


def yield_cores(name: str) -> None:
    """Lower a store sink's CPU priority (this thread and the threads it starts afterwards, the
    embedded ClickHouse's among them), in ``tickflow run``'s sink processes and in ``tickflow sink``
    alike. The stores are written in batches of up to SINK_BATCH_MS: when the cores are contended,
    the realtime path (the broker, the worker, Redis) gets them first. 19 rather than 10: with every
    sink on two cores the latency p99 was 50-125 ms at nice 19, 85-159 at nice 10. On a host or
    container of its own the sink has no one to yield to, and runs as fast as before."""
    if name in BATCH_SINKS:
        os.nice(BATCH_SINK_NICENESS)


def sink_group_id(settings: Settings, name: str) -> str:
    """Each sink's own consumer group, so a slow or broken store never holds back another one."""
    return f"{settings.kafka.app_id}-sink-{name}"


def sink_lag(settings: Settings, name: str) -> GroupLag:
    """The lag of sink ``name``'s group, readable from any process."""
    return GroupLag({"bootstrap.servers": settings.kafka.bootstrap}, sink_group_id(settings, name), list(SINKS[name].topics_for(settings)))


def configured_sinks(settings: Settings) -> list[str]:
    """ClickHouse always, PostgreSQL and Redis when their URL is set."""
    return ["clickhouse"] + (["postgres"] if settings.stores.database_url else []) + (["redis"] if settings.stores.redis_url else [])


def open_sinks(settings: Settings, *, migrate: bool = True, only: str | None = None, stop: threading.Event | None = None) -> list[Sink]:
    """The configured sinks (or just ``only``), their stores migrated first and then checked to hold
    every registry type's table (SchemaMismatch names what a missing migration left out).

    With ``stop`` (a long-running sink), a store that cannot be reached yet is waited for, with
    backoff and a log line per attempt, until it answers or ``stop`` is set (then
    :class:`StoppedWaiting`): a sink started during a store outage waits for it like a running one,
    rather than exiting. Without it (one-off commands) the error is raised at once.
    """
    names = [n for n in configured_sinks(settings) if only is None or n == only]
    sinks: list[Sink] = []
    if "clickhouse" in names:
        sinks.append(_when_reachable(settings, "clickhouse", stop, lambda: _open_clickhouse(settings, migrate)))
    if "postgres" in names:
        sinks.append(_when_reachable(settings, "postgres", stop, lambda: _open_postgres(settings, migrate)))
    if "redis" in names:
        sinks.append(RedisSink(settings.stores.redis_url))  # type: ignore[arg-type]  # connects on its first write
    return sinks


UNREACHABLE = (psycopg.OperationalError, PoolTimeout, ch_errors.OperationalError)


class StoppedWaiting(Exception):
    """Stop was requested while a sink waited for its store to become reachable."""


def _when_reachable(settings: Settings, name: str, stop: threading.Event | None, open_: Callable[[], Sink]) -> Sink:
    if stop is None:
        return open_()

    def before_sleep(state: RetryCallState) -> None:
        STORE_UP.labels(name).set(0)
        exc = state.outcome.exception() if state.outcome else None
        log.warning("store not reachable; waiting for it", sink=name, attempt=state.attempt_number, error=f"{type(exc).__name__}: {exc}")

    retrying = Retrying(
        retry=retry_if_exception_type(UNREACHABLE),
        wait=wait_exponential(multiplier=0.5, max=settings.stores.sink_retry_max_s),
        stop=lambda _state: stop.is_set(),
        sleep=stop.wait,
        before_sleep=before_sleep,
    )
    try:
        sink = retrying(open_)
    except RetryError as exc:
        raise StoppedWaiting(f"stopped while waiting for the {name} store") from exc
    STORE_UP.labels(name).set(1)
    return sink


def _open_clickhouse(settings: Settings, migrate: bool) -> ClickHouseSink:
    dsn = settings.stores.clickhouse_dsn
    client = open_store(dsn)
    # Embedded chdb is open in one process only: from now on this one answers `tickflow sql`.
    server = QueryServer(dsn).start() if dsn.startswith("chdb://") else None
    try:
        if migrate:
            migrate_clickhouse(client)
            check_clickhouse(client)
    except BaseException:
        if server is not None:
            server.close()
        client.close()
        raise
    return ClickHouseSink(client, owns_client=True, query_server=server)


def _open_postgres(settings: Settings, migrate: bool) -> PostgresSink:
    if migrate:
        migrate_postgres(settings.stores.database_url, **postgres_options(settings))  # type: ignore[arg-type]
        check_postgres(settings.stores.database_url)  # type: ignore[arg-type]
    return PostgresSink(settings.stores.database_url)  # type: ignore[arg-type]
