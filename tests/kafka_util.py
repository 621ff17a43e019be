"""Reading topics back in tests."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Message

from streams.settings import Settings
from streams.topics import end_offsets


def read_topic(settings: Settings, topic: str, *, timeout: float = 60.0) -> list[Message]:
    """Every record of ``topic`` from the beginning to its current end, in partition order."""
    ends = {p: hi for p, _, hi in end_offsets(settings)[topic]}
    want = sum(ends.values())
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": f"test-reader-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < want and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is None:
                    out.append(msg)
    finally:
        consumer.close()
    return sorted(out, key=lambda m: (m.partition(), m.offset()))
