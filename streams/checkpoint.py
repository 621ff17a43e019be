"""Agent checkpoints in a Kafka topic: partition p of an agent's state topic holds the checkpoints
of its input partition p, the newest last.

A checkpoint is (next offset of each input topic, the logic's snapshot) in one record, so state and
position never disagree, whatever the consumer group committed. The record is zlib-compressed
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


def encode_checkpoint(offsets: dict[str, int], snapshot: bytes) -> bytes:
    """Level 1: checkpoints go out every few seconds, and level 3 took twice the CPU for about the same size."""
    return zlib.compress(b"".join((MAGIC, orjson.dumps({"offsets": offsets}), b"\n", snapshot)), 1)


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

    def load(self, partition: int, timeout: float = 10.0) -> tuple[dict[str, int], bytes] | None:
        """The newest checkpoint of ``partition``, or None when there is none."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap,
                "group.id": f"{self.settings.app_id}-checkpoint-reader",
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
            ends = high_watermarks(consumer, [TopicPartition(t, partition) for t in offsets], timeout)
            beyond = {t: (o, ends[(t, partition)][1]) for t, o in offsets.items() if o > ends[(t, partition)][1]}
            if beyond:
                # The input log restarted below the checkpoint (a broker that lost its log, a topic
                # recreated): its offsets name records that are gone. Rebuild from the input instead.
                log.error("checkpoint refers to offsets beyond its input's end: ignored, state rebuilt from the input", topic=self.topic, partition=partition, offset_and_end=beyond)
                return None
            log.info("checkpoint loaded", topic=self.topic, partition=partition, offsets=offsets, bytes=len(last.value()))
            return offsets, snapshot
        finally:
            consumer.close()
