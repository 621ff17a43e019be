"""Agent state checkpoints in a Kafka topic, one state partition per input partition.

A checkpoint is (next input offset, state) written atomically in one record, so state and
position can never disagree, whatever Faust commits or replays on recovery. Restoring reads the
last record of the matching state partition; the agent then skips input below the offset and
seeks back when the consumer resumes past it.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
import structlog
from confluent_kafka import Consumer, TopicPartition

from streams.settings import Settings
from streams.topics import high_watermarks

log = structlog.get_logger(__name__)


def encode_checkpoint(offset: int, state: dict[str, Any]) -> bytes:
    return zlib.compress(orjson.dumps({"offset": offset, "state": state}), 3)


def decode_checkpoint(data: bytes) -> tuple[int, dict[str, Any]]:
    doc = orjson.loads(zlib.decompress(data))
    return int(doc["offset"]), doc["state"]


def load_checkpoint(settings: Settings, topic: str, partition: int, timeout: float = 10.0) -> tuple[int, dict[str, Any]] | None:
    """The newest checkpoint of ``partition``, or None when there is none."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap,
            "group.id": f"{settings.app_id}-checkpoint-reader",
            "enable.auto.commit": False,
            "fetch.message.max.bytes": 64 * 1024 * 1024,
        }
    )
    try:
        tp = TopicPartition(topic, partition)
        lo, hi = high_watermarks(consumer, [tp], timeout)[(topic, partition)]
        if hi <= lo:
            return None
        consumer.assign([TopicPartition(topic, partition, max(lo, hi - 1))])
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
        offset, state = decode_checkpoint(last.value())
        log.info("checkpoint loaded", topic=topic, partition=partition, offset=offset, bytes=len(last.value()))
        return offset, state
    finally:
        consumer.close()
