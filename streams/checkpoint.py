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

import zlib
from typing import Any

import orjson
import structlog
from confluent_kafka import Consumer, TopicPartition

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

    def load(self, partition: int, timeout: float = 10.0) -> tuple[dict[str, int], bytes, TableOffsets] | None:
        """The newest checkpoint of ``partition`` (input offsets, snapshot, table offsets), or None when there is none."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.kafka.bootstrap,
                "group.id": f"{self.settings.kafka.app_id}-checkpoint-reader",
                "enable.auto.commit": False,
                "fetch.message.max.bytes": 64 * 1024 * 1024,
            }
        )
        try:
            tp = TopicPartition(self.topic, partition)
            lo, hi = high_watermarks(consumer, [tp], timeout)[(self.topic, partition)]
            if hi <= lo:
                return None
            consumer.assign([TopicPartition(self.topic, partition, max(lo, hi - 1))])
            last = None
            while True:
                msgs = consumer.consume(100, 1.0)
                if not msgs:
                    break
                for msg in msgs:
                    if msg.error() is None:
                        last = msg
                if last is not None and last.offset() >= hi - 1:
                    break
            if last is None:
                return None
            offsets, snapshot = decode_checkpoint(last.value(), self.inputs)
            log.info("checkpoint loaded", topic=self.topic, partition=partition, offsets=offsets, bytes=len(last.value()))
            return offsets, snapshot, decode_tables(last.value())
        finally:
            consumer.close()
