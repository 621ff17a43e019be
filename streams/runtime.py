"""The agent runtime: runs any :class:`agents.spec.AgentSpec` on Kafka, one thread and one consumer per agent.

Everything an agent would otherwise repeat lives here once: the consumer group (``{app_id}-{agent}``,
range assignment, so partition p of every input topic lands on one worker), decoding through the
record registry, one logic object per input partition, checkpoints, dead letters, metrics, producing
outputs and timers.

Records are taken in batches straight from librdkafka (``Consumer.consume``), decoded and handed to
``on_batch`` a partition at a time: the per-record cost is the Avro decode and the agent's own work,
a few microseconds, where a stream framework's per-record path costs tens.

Restart safety: a partition's checkpoint is (next offset of each input topic, ``snapshot()``) in one
record of the agent's state topic, written after every output before it is durable. When a
partition is assigned, its checkpoint is restored and the consumer starts at the checkpoint's
offsets (the input's beginning without one), whatever the group committed; outputs emitted after
the last checkpoint are emitted again, identically, and the idempotent sinks absorb them.

Table inputs (``AgentSpec.tables``): a second consumer, outside the group, reads every partition
of those topics and hands each record to every partition's logic (``on_table``), a broadcast as
Faust's GlobalTable. As a Kafka Streams GlobalKTable is restored before processing starts, the
tables are read to the end they had when partitions were assigned before any input record is
handed over. Each partition's checkpoint records how far it has read each table partition, so a
restored partition is fed the table records it has not seen, and only those.

Timers: ``on_timer(now, quiet_s)`` runs after every batch and at least every ``timer_s``. ``quiet_s``
counts only while the partition has nothing unread (its position has reached the high watermark
of the last fetch), so a quiet timeout never fires while input waits behind the consumer, and a
partition restored from a checkpoint starts counting when it is assigned.
"""

from __future__ import annotations

import math
import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from agents.spec import AgentContext, AgentLogic, AgentSpec, CandleHistory, Emit, Inbound, Reject
from schemas.codec import AvroCodec, DecodeError, codec_for
from schemas.models import DeadLetter
from schemas.registry import RecordType, record_type, topic_of
from schemas.validation import Reason, reason
from schemas.wire import encoder_for
from streams.checkpoint import CheckpointStore, TableOffsets, encode_checkpoint
from streams.observability import BROKER_LOST_LOG, RECEIVED_HEADER, received_header
from streams.producer import LogLost
from streams.settings import Settings
from streams.topics import high_watermarks, state_topic

log = structlog.get_logger(__name__)

RECORDS = Counter("tickflow_agent_records_total", "Input records an agent processed", ["agent"])
OUTPUTS = Counter("tickflow_agent_outputs_total", "Records an agent emitted", ["agent", "record"])
DEAD_LETTERS = Counter("tickflow_agent_dead_letters_total", "Input records an agent dead-lettered", ["agent"])
LAG = Gauge("tickflow_agent_lag", "Records of an input partition not yet processed by its agent", ["agent", "partition"])
CHECKPOINT_SECONDS = Histogram(
    "tickflow_agent_checkpoint_seconds", "Time to snapshot and durably write an agent's checkpoints", ["agent"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_SECONDS = Histogram(
    "tickflow_agent_batch_seconds", "Time an agent took for one partition's batch of records", ["agent"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
INPUT_DELAY = Histogram(
    "tickflow_agent_input_delay_seconds",
    "Wall-clock time from a record's receipt by ingest to its agent reading it (broker hop plus queueing)",
    ["agent"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0),
)

CONSUME_MAX = 2000  # records taken from librdkafka per call
IDLE_WAIT_S = 0.1  # longest a consume call waits when no timer is due sooner
LAG_EVERY_S = 1.0


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class PartitionState:
    """One input partition of an agent: its logic and where it stands in each input topic."""

    logic: AgentLogic
    offsets: dict[str, int]  # input topic -> next offset expected
    tables: TableOffsets = field(default_factory=dict)  # (table topic, partition) -> next offset this logic expects
    quiet_since: float | None = None  # monotonic time since when nothing was unread, None while input waits
    changed: bool = False  # state or position moved since the last checkpoint
    receipt_us: int | None = None  # ingest receipt of the newest input read: what a timer's outputs are timed from


@dataclass
class _Input:
    topic: str
    rtype: RecordType
    codec: AvroCodec


@dataclass
class LiveRoute:
    """Where realtime-only records (``RecordType.realtime``) go: a callable that publishes them
    (the Redis fan-out the shell passes in, given the record and the newest ingest receipt behind
    it, for the realtime latency metric) and/or their topic."""

    publish: Callable[[Any, int | None], None] | None = None
    to_topic: bool = False


class AgentRunner:
    """One agent: its consumer, its partitions' logic, checkpoints and outputs, in one thread."""

    def __init__(
        self,
        spec: AgentSpec,
        settings: Settings,
        producer: Any,  # streams.producer.RecordProducer
        *,
        history: CandleHistory | None = None,
        live: LiveRoute | None = None,
        consumer_config: dict[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.producer = producer
        self.history = history
        self.live = live or LiveRoute(to_topic=True)
        self.name = spec.name
        self.group_id = f"{settings.kafka.app_id}-{spec.name}"
        registry = settings.kafka.schema_registry_url
        self.inputs: dict[str, _Input] = {}
        for name in spec.inputs:
            rt = record_type(name)
            topic = topic_of(settings, name)
            self.inputs[topic] = _Input(topic, rt, codec_for(rt.schema, topic, registry))
        self.tables: dict[str, _Input] = {}
        for name in spec.tables:
            rt = record_type(name)
            topic = topic_of(settings, name)
            self.tables[topic] = _Input(topic, rt, codec_for(rt.schema, topic, registry))
        self._table_consumer: Consumer | None = None
        self._table_ends: dict[tuple[str, int], tuple[int, int]] | None = None  # to read before the next input record
        self._outputs: dict[str, tuple[str, Callable[[Any], bytes], bool]] = {}
        for name in spec.outputs:
            rt = record_type(name)
            topic = topic_of(settings, name)
            self._outputs[name] = (topic, encoder_for(codec_for(rt.schema, topic, registry)), rt.realtime)
        self.realtime = any(realtime for _, _, realtime in self._outputs.values())
        self.checkpoints = CheckpointStore(settings, self.state_topic, list(self.inputs))
        self.parts: dict[int, PartitionState] = {}
        self._consumer_config = consumer_config or {}
        self._consumer: Consumer | None = None
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._out_counts: dict[str, int] = {}
        self._records = RECORDS.labels(self.name)
        self._dead = DEAD_LETTERS.labels(self.name)
        self._batch_s = BATCH_SECONDS.labels(self.name)
        self._input_delay = INPUT_DELAY.labels(self.name)
        self._log = log.bind(agent=self.name)
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.assigned = threading.Event()  # set once partitions have been assigned and their state loaded
        self._generation = 0  # the producer's generation this agent's state and outputs belong to

    @property
    def state_topic(self) -> str:
        return state_topic(self.settings, self.spec)

    # -- lifecycle

    def start(self, stop: threading.Event) -> AgentRunner:
        self.thread = threading.Thread(target=self._run_guarded, args=(stop,), name=f"agent-{self.name}", daemon=True)
        self.thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def _run_guarded(self, stop: threading.Event) -> None:
        try:
            self.run(stop)
        except BaseException as exc:  # reported to the process that started the thread, which stops
            self.error = exc
            self._log.exception("agent stopped on an error")
            stop.set()

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` on the agent's thread between two batches (state is only touched there)."""
        fut: Future[Any] = Future()
        self._calls.put((fn, fut))
        return fut

    def run(self, stop: threading.Event) -> None:
        conf = {
            "bootstrap.servers": self.settings.kafka.bootstrap,
            "group.id": self.group_id,
            "client.id": f"tickflow-agent-{self.name}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "range",  # co-partitioned inputs: partition p of each topic together
            "session.timeout.ms": int(self.settings.kafka.session_timeout_s * 1000),
            # An agent with realtime outputs (in-progress candles) is on the realtime path; the
            # others poll the broker less often (an idle consumer every 10 ms costs Tansu ~0.05 cores).
            "fetch.wait.max.ms": self.settings.kafka.consumer_fetch_wait_ms if self.realtime else self.settings.kafka.background_fetch_wait_ms,
            "fetch.queue.backoff.ms": 1,  # librdkafka waits 1 s by default before refetching a partition with queued records
            "fetch.message.max.bytes": 8_000_000,
            **self._consumer_config,
        }
        consumer = self._consumer = Consumer(conf)
        if self.tables:
            self._table_consumer = Consumer({
                "bootstrap.servers": self.settings.kafka.bootstrap,
                "group.id": f"{self.group_id}-tables",  # never joined: partitions are assigned by hand
                "client.id": f"tickflow-agent-{self.name}-tables",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": self.settings.kafka.consumer_fetch_wait_ms,
                "fetch.queue.backoff.ms": 1,
                "fetch.message.max.bytes": 8_000_000,
            })  # fmt: skip
        consumer.subscribe(list(self.inputs), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        checkpoint_s = self.settings.agents.agent_checkpoint_s
        next_checkpoint = time.monotonic() + checkpoint_s
        next_timer = 0.0
        next_lag = 0.0
        self._generation = self.producer.generation
        timer_s = self.spec.timer_s
        try:
            while not stop.is_set():
                self._run_calls()
                now = time.monotonic()
                wait = IDLE_WAIT_S if timer_s is None else max(0.0, min(IDLE_WAIT_S, next_timer - now))
                try:
                    tables = self._poll_tables()
                    msgs = consumer.consume(CONSUME_MAX, 0.0 if tables else wait)  # a rebalance's checkpoint may find the log lost
                    if self.producer.generation != self._generation:
                        raise LogLost("the producer found the broker without its log")
                    if msgs:
                        self._handle(msgs)
                    now = time.monotonic()
                    if timer_s is not None and (msgs or now >= next_timer):
                        self._timers(now)
                        next_timer = now + timer_s
                    if now >= next_checkpoint:
                        self.write_checkpoints()
                        next_checkpoint = time.monotonic() + checkpoint_s
                except LogLost as lost:
                    self._broker_lost_log(consumer, str(lost))
                if now >= next_lag:
                    self._update_lag()
                    next_lag = now + LAG_EVERY_S
                self.producer.poll(0)
            self._run_calls()
            try:
                self.write_checkpoints()
            except LogLost as lost:  # nothing to keep: the next start rebuilds from the new log
                self._log.error("checkpoints at stop discarded: the broker lost its log", error=str(lost))
        finally:
            self._consumer = None
            consumer.close()  # leaves the group: the partitions move to another worker at once
            if self._table_consumer is not None:
                self._table_consumer.close()
                self._table_consumer = None
            self.parts.clear()

    def _run_calls(self) -> None:
        while True:
            try:
                fn, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    fut.set_exception(exc)

    # -- partitions

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        new = sorted({tp.partition for tp in partitions} - set(self.parts))
        saved = self.checkpoints.newest(new)
        for p in new:
            self.parts[p] = self._load(p, saved.get(p))
        for tp in partitions:
            tp.offset = self.parts[tp.partition].offsets.get(tp.topic, OFFSET_BEGINNING)
        consumer.assign(partitions)
        self._assign_tables()
        self._log.info("partitions assigned", partitions=sorted({tp.partition for tp in partitions}))
        self.assigned.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        mine = sorted({tp.partition for tp in partitions} & set(self.parts))
        if mine:
            try:
                self.write_checkpoints(mine)
            except LogLost as lost:  # their next owner rebuilds them from the new log
                self._log.error("checkpoints of revoked partitions discarded: the broker lost its log", partitions=mine, error=str(lost))
        for p in mine:
            del self.parts[p]
        consumer.unassign()

    def _broker_lost_log(self, consumer: Consumer, why: str) -> None:
        """The broker restarted without its log (the producer found it and discarded the outputs it
        had not delivered): this agent's state was derived from records that are gone and its next
        offsets point past the new log's records. Every partition starts again, empty, from the new
        log's start, so that its state is again the fold of its input log, its outputs are emitted
        again, and checkpoints written from now on refer to that log."""
        self._generation = self.producer.generation
        BROKER_LOST_LOG.labels(f"agent-{self.name}").inc()
        self._log.error(
            "broker restarted without its log: every partition's state rebuilt from the start of the new log",
            reason=why, next_offsets_lost={p: dict(ps.offsets) for p, ps in self.parts.items()},
        )
        for p in list(self.parts):
            self.parts[p] = PartitionState(self.spec.logic(AgentContext(self.settings, p, self.history)), {}, changed=True)
            for topic in self.inputs:
                try:
                    consumer.seek(TopicPartition(topic, p, OFFSET_BEGINNING))
                except KafkaException as exc:  # not fetching yet: it starts where _on_assign says, the beginning
                    self._log.info("partition not seekable yet", partition=f"{topic}[{p}]", error=str(exc))
        self._assign_tables()  # the tables too: every logic reads them again from the new log's start

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Another member owns them now: what changed here since the last checkpoint is its to redo."""
        for tp in partitions:
            self.parts.pop(tp.partition, None)

    def _load(self, partition: int, data: bytes | None) -> PartitionState:
        """The partition's state from its newest checkpoint record ``data`` (None: none)."""
        logic = self.spec.logic(AgentContext(self.settings, partition, self.history))
        found = None
        if data is not None:
            try:
                found = self.checkpoints.decode(partition, data)
            except (zlib.error, ValueError, KeyError) as exc:  # zlib's checksum caught a damaged record
                self._log.error("checkpoint unreadable: rebuilding from the input", partition=partition, error=str(exc))
        offsets: dict[str, int] = {}
        tables: TableOffsets = {}
        if found is not None:
            saved, snapshot, saved_tables = found
            offsets = {t: o for t, o in saved.items() if t in self.inputs}
            tables = {tp: o for tp, o in saved_tables.items() if tp[0] in self.tables}
            if offsets or tables:
                try:
                    logic.restore(snapshot)
                except Exception as exc:  # noqa: BLE001 - any agent's restore: rebuild rather than stop
                    self._log.error("checkpoint not restorable: rebuilding from the input", partition=partition, error=str(exc))
                    logic, offsets, tables = self.spec.logic(AgentContext(self.settings, partition, self.history)), {}, {}
            else:
                self._log.warning("checkpoint of other input topics ignored", partition=partition, topics=sorted(saved))
        # Quiet is measured from the first fetch that shows nothing unread: open windows a restored
        # partition holds close after the quiet timeout even when no input ever comes again.
        return PartitionState(logic, offsets, tables)

    # -- table inputs

    def _assign_tables(self) -> None:
        """Read every partition of the table topics from the oldest position any partition's logic
        still needs (a logic skips what it has seen)."""
        tc = self._table_consumer
        if tc is None:
            return
        tps = []
        ends: dict[tuple[str, int], tuple[int, int]] = {}
        for topic in self.tables:
            meta = tc.list_topics(topic, timeout=10.0).topics[topic]
            for p in sorted(meta.partitions):
                starts = [ps.tables.get((topic, p), OFFSET_BEGINNING) for ps in self.parts.values()]
                start = OFFSET_BEGINNING if not starts or OFFSET_BEGINNING in starts else min(starts)
                tps.append(TopicPartition(topic, p, start))
        ends = high_watermarks(tc, [TopicPartition(tp.topic, tp.partition) for tp in tps])
        tc.assign(tps)
        self._table_ends = ends

    def _bootstrap_tables(self, timeout: float = 60.0) -> None:
        """Read the tables to the ends they had at assignment, before the first input record."""
        ends, self._table_ends = self._table_ends, None
        if not ends:
            return
        started = time.monotonic()
        while True:
            behind = [tp for tp, (lo, hi) in ends.items() if hi > lo and any(ps.tables.get(tp, lo) < hi for ps in self.parts.values())]
            if not behind:
                self._log.info("tables read", seconds=round(time.monotonic() - started, 3))
                return
            if time.monotonic() - started > timeout:
                self._log.warning("tables not read to their end in time: going on", behind=behind)
                return
            if not self._poll_tables():
                time.sleep(0.01)

    def _poll_tables(self) -> int:
        """Hand the table records waiting in the table consumer to every partition's logic."""
        tc = self._table_consumer
        if tc is None or not self.parts:
            return 0
        msgs = tc.consume(CONSUME_MAX, 0)
        decoded: list[tuple[tuple[str, int], Inbound]] = []
        for msg in msgs:
            if msg.error() is not None:
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    self._log.warning("table consumer error", error=str(msg.error()))
                continue
            inp = self.tables[msg.topic()]
            try:
                model = inp.rtype.model.from_avro(inp.codec.decode(msg.value()))
            except (DecodeError, KeyError, TypeError, ValueError) as exc:
                self._dead_letter(msg, f"undecodable {inp.rtype.name}: {exc}")
                continue
            key = msg.key()
            rec = Inbound(inp.rtype.name, key.decode(errors="replace") if key is not None else None, model, msg.offset())
            decoded.append(((msg.topic(), msg.partition()), rec))
        if not decoded:
            return len(msgs)
        for ps in list(self.parts.values()):
            mine = []
            for tp, rec in decoded:
                if rec.offset >= ps.tables.get(tp, 0):
                    ps.tables[tp] = rec.offset + 1
                    mine.append(rec)
            if not mine:
                continue
            ps.changed = True
            self._emit(ps.logic.on_table(mine), None, ps.receipt_us)  # type: ignore[attr-defined]  # a TableLogic
        self._flush_out_counts()
        return len(msgs)

    # -- records

    def _handle(self, msgs: list[Message]) -> None:
        if self._table_ends is not None:
            self._bootstrap_tables()
        by_part: dict[int, list[Message]] = {}
        for msg in msgs:
            if msg.error() is not None:
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    self._log.warning("consumer error", error=str(msg.error()))
                continue
            by_part.setdefault(msg.partition(), []).append(msg)
        for p, part_msgs in by_part.items():
            ps = self.parts.get(p)
            if ps is not None:
                self._handle_partition(p, ps, part_msgs)

    def _handle_partition(self, partition: int, ps: PartitionState, msgs: list[Message]) -> None:
        started = time.perf_counter()
        records: list[Inbound] = []
        raw: dict[tuple[str, int], Message] = {}  # (record type, offset): offsets of two input topics can be equal
        offsets = ps.offsets
        newest_receipt = None
        now = _now_us()
        for msg in msgs:
            topic, offset = msg.topic(), msg.offset()
            expected = offsets.get(topic)
            if expected is not None and offset < expected:
                continue  # already in the state (delivered again after a rebalance)
            offsets[topic] = offset + 1
            inp = self.inputs[topic]
            value = msg.value()
            try:
                model = inp.rtype.model.from_avro(inp.codec.decode(value))
            except (DecodeError, KeyError, TypeError, ValueError) as exc:
                self._dead_letter(msg, reason(Reason.UNDECODABLE, f"{inp.rtype.name}: {exc}"))
                continue
            key = msg.key()
            key_text = key.decode(errors="replace") if key is not None else None
            if inp.rtype.check is not None:
                checked = inp.rtype.check(model, key_text, now)
                if checked.problem is not None:
                    self._dead_letter(msg, checked.problem)
                for why, part in checked.rejected:
                    self._dead_letter(msg, why, orjson.dumps(part))
                if checked.value is None:
                    continue
                model = checked.value
            received = getattr(model, "received_at", None)
            if received is None:
                received = received_header(msg.headers())
            if received is not None:
                newest_receipt = received
            name = inp.rtype.name
            records.append(Inbound(name, key_text, model, offset))
            raw[name, offset] = msg
        ps.changed = True
        ps.quiet_since = None
        if not records:
            return
        self._records.inc(len(records))
        if newest_receipt is not None:
            ps.receipt_us = newest_receipt
            self._input_delay.observe(max(_now_us() - newest_receipt, 0) / 1e6)
        try:
            outputs = list(ps.logic.on_batch(records))
        except Exception as exc:  # noqa: BLE001 - a record the logic did not foresee must not stop the agent
            if len(records) == 1:
                self._dead_letter(raw[records[0].record, records[0].offset], reason(Reason.AGENT_ERROR, f"{self.name} failed on this record: {type(exc).__name__}: {exc}"))
                return
            # One at a time, to find the culprit; the others go through as usual.
            outputs = []
            for rec in records:
                try:
                    outputs += ps.logic.on_batch([rec])
                except Exception as one:  # noqa: BLE001
                    self._log.exception("record failed in the agent's logic")
                    self._dead_letter(raw[rec.record, rec.offset], reason(Reason.AGENT_ERROR, f"{self.name} failed on this record: {type(one).__name__}: {one}"))
        self._emit(outputs, raw, newest_receipt)
        self._batch_s.observe(time.perf_counter() - started)

    def _emit(self, outputs: Iterable[Emit | Reject], raw: dict[tuple[str, int], Message] | None = None, received_us: int | None = None) -> None:
        headers = None if received_us is None else [(RECEIVED_HEADER, str(received_us).encode())]
        counts = self._out_counts
        for out in outputs:
            if type(out) is Emit:
                topic, encode, realtime = self._outputs[out.record]
                if realtime:
                    if self.live.publish is not None:
                        self.live.publish(out.value, received_us)
                    if not self.live.to_topic:
                        counts[out.record] = counts.get(out.record, 0) + 1
                        continue
                self.producer.produce(topic, out.key, encode(out.value), headers=headers, expect=self._generation)
                counts[out.record] = counts.get(out.record, 0) + 1
            else:
                msg = None
                if raw:
                    if out.record is not None:
                        msg = raw.get((out.record, out.offset))
                    else:
                        msg = next((m for (_, offset), m in raw.items() if offset == out.offset), None)
                if msg is not None:
                    self._dead_letter(msg, out.reason)
                else:
                    self._log.warning("rejected record not in this batch", offset=out.offset, reason=out.reason)

    def _dead_letter(self, msg: Message, why: str, payload: bytes | None = None) -> None:
        """Dead-letter ``msg``'s bytes, or ``payload`` (a rejected part of it) with its coordinates."""
        self._dead.inc()
        self.producer.dead_letter(
            DeadLetter(self.name, why, (msg.value() or b"") if payload is None else payload, _now_us() // 1000, msg.topic(), msg.partition(), msg.offset(), msg.key())
        )

    def _timers(self, now: float) -> None:
        consumer = self._consumer
        for p, ps in list(self.parts.items()):
            if ps.quiet_since is None and consumer is not None and self._caught_up(consumer, p, ps):
                ps.quiet_since = now
            quiet = 0.0 if ps.quiet_since is None else now - ps.quiet_since
            outputs = list(ps.logic.on_timer(now, quiet))
            if outputs:
                ps.changed = True
                self._emit(outputs, None, ps.receipt_us)
        self._flush_out_counts()

    def _caught_up(self, consumer: Consumer, partition: int, ps: PartitionState) -> bool:
        """Nothing unread in any input topic of ``partition``, by the high watermark of the last fetch."""
        for topic in self.inputs:
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except Exception:  # noqa: BLE001 - no fetch answered yet: not known to be caught up
                return False
            if high < 0 or ps.offsets.get(topic, 0) < high:
                return False
        return True

    def _flush_out_counts(self) -> None:
        for record, n in self._out_counts.items():
            if n:
                OUTPUTS.labels(self.name, record).inc(n)
                self._out_counts[record] = 0

    def _update_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        for p, ps in list(self.parts.items()):
            lag = 0
            for topic in self.inputs:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
                if high >= 0:
                    lag += max(high - ps.offsets.get(topic, 0), 0)
            LAG.labels(self.name, str(p)).set(lag)

    # -- checkpoints

    def write_checkpoints(self, partitions: list[int] | None = None) -> int:
        """Checkpoint the partitions whose state moved, and wait until they and every output before
        them are durable: a checkpoint never gets ahead of an output it covers, so a restart from it
        loses nothing (delivery across partitions is unordered). On the agent's thread only (between batches)."""
        started = time.perf_counter()
        written = []
        for p in partitions if partitions is not None else sorted(self.parts):
            ps = self.parts.get(p)
            if ps is None or not ps.changed or not (ps.offsets or ps.tables):
                continue
            self.producer.produce(self.state_topic, str(p), encode_checkpoint(ps.offsets, ps.logic.snapshot(), ps.tables), partition=p, expect=self._generation)
            ps.changed = False
            written.append(p)
        if not written:
            return 0
        self.producer.flush(expect=self._generation)
        CHECKPOINT_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        consumer = self._consumer
        if consumer is not None:
            # Committed offsets are for others to read the group's lag; restarts use the checkpoints.
            tps = [TopicPartition(t, p, o) for p in written if p in self.parts for t, o in self.parts[p].offsets.items()]
            try:
                consumer.commit(offsets=tps, asynchronous=True)
            except Exception as exc:  # noqa: BLE001 - informative only
                self._log.debug("offset commit failed", error=str(exc))
        self._flush_out_counts()
        return len(written)

    # -- views for the pipeline

    def positions(self) -> dict[tuple[str, int], int]:
        """Next offset per input partition, and per table partition the least any logic has read."""
        pos = {(t, p): o for p, ps in list(self.parts.items()) for t, o in list(ps.offsets.items())}
        for ps in list(self.parts.values()):
            for tp, o in list(ps.tables.items()):
                pos[tp] = min(pos.get(tp, o), o)
        return pos

    def caught_up(self, ends: dict[str, list[tuple[int, int, int]]]) -> bool:
        """True when every non-empty input partition, per ``ends`` (topic -> (partition, low, high)), is processed,
        and every partition's logic has read every table partition to its end."""
        pos = self.positions()
        for topic in self.inputs:
            for p, lo, hi in ends.get(topic, []):
                if hi > lo and pos.get((topic, p), -1) < hi:
                    return False
        for topic in self.tables:
            for p, lo, hi in ends.get(topic, []):
                if hi > lo and any(ps.tables.get((topic, p), -1) < hi for ps in list(self.parts.values())):
                    return False
        return True

    def finish(self) -> None:
        """End of a bounded input (``--until-drained``): every partition quiet forever, so timers
        finalize what they hold; then checkpoint. Runs on the agent's thread."""
        now = time.monotonic()
        for ps in list(self.parts.values()):
            outputs = list(ps.logic.on_timer(now, math.inf))
            if outputs:
                ps.changed = True
                self._emit(outputs, None, ps.receipt_us)
        self.write_checkpoints()


@dataclass
class Runtime:
    """Every configured agent of a worker process, each in its own thread."""

    runners: list[AgentRunner] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Runtime:
        for r in self.runners:
            r.start(self.stop)
        return self

    def check(self) -> None:
        for r in self.runners:
            if r.error is not None:
                raise RuntimeError(f"agent {r.name} stopped: {type(r.error).__name__}: {r.error}") from r.error

    def wait_assigned(self, timeout: float) -> bool:
        """True once every agent has been assigned its partitions (False after ``timeout``)."""
        deadline = time.monotonic() + timeout
        return all(r.assigned.wait(max(deadline - time.monotonic(), 0)) for r in self.runners)

    def close(self, timeout: float = 60.0) -> None:
        self.stop.set()
        for r in self.runners:
            r.join(timeout)

    def runner(self, name: str) -> AgentRunner:
        return next(r for r in self.runners if r.name == name)
