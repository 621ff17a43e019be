"""Agent checkpoints in a Kafka topic: partition p of an agent's state topic holds the checkpoints
of its input partition p, the newest last.

A checkpoint is (next offset of each input topic, the logic's snapshot) in one record, so state and
position never disagree, whatever the consumer group committed. An agent with table inputs
(``AgentSpec.tables``, read whole by every partition) also records the next offset of each table
partition it has read, under ``"tables"``. The record is zlib-compressed
``MAGIC`` + a JSON header line + the snapshot's bytes. Checkpoints written before the agent
runtime (``{"offset": n, "state": {...}}``, one input topic) restore too: their state becomes the
snapshot's JSON.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

import orjson
import structlog
from confluent_kafka import Consumer, KafkaException, TopicPartition

from streams.topics import high_watermarks

log = structlog.get_logger(__name__)

MAGIC = b"TFCK2\n"


TableOffsets = dict[tuple[str, int], int]  # (table topic, partition) -> next offset


def encode_checkpoint(offsets: dict[str, int], snapshot: bytes, tables: TableOffsets | None = None) -> bytes:
    """Level 1: checkpoints go out every few seconds, and level 3 took twice the CPU for about the same size."""
    header: dict[str, object] = {"offsets": offsets}
    if tables:
        header["tables"] = [[t, p, o] for (t, p), o in sorted(tables.items())]
    return zlib.compress(b"".join((MAGIC, orjson.dumps(header), b"\n", snapshot)), 1)


def decode_tables(data: bytes) -> TableOffsets:
    """The table offsets of a checkpoint (none in checkpoints of agents without tables, or older ones)."""
    raw = zlib.decompress(data)
    if not raw.startswith(MAGIC):
        return {}
    header = orjson.loads(raw[len(MAGIC):].partition(b"\n")[0])
    return {(t, int(p)): int(o) for t, p, o in header.get("tables", [])}


def decode_checkpoint(data: bytes, inputs: list[str]) -> tuple[dict[str, int], bytes]:
    """(next offset per input topic, snapshot); ``inputs`` names the topic of a single-input
    checkpoint of the first format, which did not record it."""
    raw = zlib.decompress(data)
    if raw.startswith(MAGIC):
        header, _, snapshot = raw[len(MAGIC):].partition(b"\n")
        return {t: int(o) for t, o in orjson.loads(header)["offsets"].items()}, snapshot
    doc = orjson.loads(raw)
    state = doc["state"]
    topic = state.get("input") if isinstance(state, dict) else None
    if topic is None and len(inputs) == 1:
        topic = inputs[0]
    return ({topic: int(doc["offset"])} if topic else {}), orjson.dumps(state)


class CheckpointStore:
    """Reads an agent's newest checkpoints from its state topic (writes go through the agent's producer)."""

    def __init__(self, settings: Any, topic: str, inputs: list[str] | None = None) -> None:
        self.settings = settings
        self.topic = topic
        self.inputs = inputs or []

    def decode(self, partition: int, data: bytes) -> tuple[dict[str, int], bytes, TableOffsets]:
        """(input offsets, snapshot, table offsets) of a checkpoint record; zlib.error, ValueError or KeyError when damaged."""
        offsets, snapshot = decode_checkpoint(data, self.inputs)
        log.info("checkpoint loaded", topic=self.topic, partition=partition, offsets=offsets, bytes=len(data))
        return offsets, snapshot, decode_tables(data)

    def _within_inputs(self, consumer: Consumer, found: dict[int, bytes], timeout: float) -> dict[int, bytes]:
        """``found`` without the checkpoints whose offsets lie beyond their input's end: the input log
        restarted below them (a broker that lost its log, a topic recreated), so they name records
        that are gone; those partitions rebuild from the input instead. A damaged record is left for
        the caller's decode to refuse."""
        offsets: dict[int, dict[str, int]] = {}
        for p, data in found.items():
            try:
                offsets[p] = decode_checkpoint(data, self.inputs)[0]
            except (zlib.error, ValueError, KeyError):
                continue
        tps = [TopicPartition(t, p) for p, saved in offsets.items() for t in saved]
        try:
            ends = high_watermarks(consumer, tps, timeout) if tps else {}
        except KafkaException as exc:  # an input topic gone or not there yet: nothing to compare with
            log.warning("input ends of the checkpoints unknown", topic=self.topic, error=str(exc))
            return found
        for p, saved in offsets.items():
            beyond = {t: (o, ends[(t, p)][1]) for t, o in saved.items() if (t, p) in ends and o > ends[(t, p)][1]}
            if beyond:
                log.error("checkpoint refers to offsets beyond its input's end: ignored, state rebuilt from the input", topic=self.topic, partition=p, offset_and_end=beyond)
                del found[p]
        return found

    def newest(self, partitions: list[int], timeout: float = 10.0) -> dict[int, bytes]:
        """The newest checkpoint record of each of ``partitions`` that has one, read with one
        consumer for all of them: a restart or rebalance restores every partition it gets at once,
        and each read ends as soon as the last record arrived."""
        if not partitions:
            return {}
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.kafka.bootstrap,
                "group.id": f"{self.settings.kafka.app_id}-checkpoint-reader",
                "enable.auto.commit": False,
                "fetch.message.max.bytes": 64 * 1024 * 1024,
                "fetch.wait.max.ms": 10,
            }
        )
        try:
            marks = high_watermarks(consumer, [TopicPartition(self.topic, p) for p in partitions], timeout)
            last_offset = {p: hi - 1 for (_, p), (lo, hi) in marks.items() if hi > lo}
            if not last_offset:
                return {}
            consumer.assign([TopicPartition(self.topic, p, o) for p, o in last_offset.items()])
            found: dict[int, bytes] = {}
            waiting = set(last_offset)
            deadline = time.monotonic() + timeout
            while waiting and time.monotonic() < deadline:
                msg = consumer.poll(0.1)
                if msg is None or msg.error() is not None:
                    continue
                p = msg.partition()
                found[p] = msg.value()
                if msg.offset() >= last_offset[p]:
                    waiting.discard(p)
            if waiting:
                log.error("newest checkpoints not read in time", topic=self.topic, partitions=sorted(waiting), timeout_s=timeout)
            return self._within_inputs(consumer, found, timeout)
        finally:
            consumer.close()
