"""Agent state checkpoints in a Kafka topic, one state partition per input partition.

A checkpoint is (next input offset, state) written atomically in one record, so state and
position can never disagree, whatever Faust commits or replays on recovery. Restoring reads the
last record of the matching state partition; the agent then skips input below the offset and
seeks back when the consumer resumes past it.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import faust
import orjson
import structlog
from confluent_kafka import Consumer, TopicPartition
from faust.types import TP

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


class Position(Protocol):
    """Where a partition's state stands in its input: the next offset it expects, and a pending seek."""

    next_offset: int | None  # None: no checkpoint yet, take what comes
    seeking: bool


def admit(pos: Position, partition: int, offset: int) -> tuple[bool, int | None]:
    """(process this record?, offset to seek back to); a taken record advances ``pos``.

    Input below the checkpointed offset is already in the state (a redelivery); input past it
    means the consumer resumed too far, so the agent seeks back once and drops records until
    the expected one arrives.
    """
    if pos.next_offset is not None:
        if offset < pos.next_offset:
            return False, None
        if offset > pos.next_offset:
            if pos.seeking:
                return False, None
            pos.seeking = True
            log.warning("input resumed past the checkpoint, seeking back", partition=partition, offset=offset, expected=pos.next_offset)
            return False, pos.next_offset
    pos.seeking = False
    pos.next_offset = offset + 1
    return True, None


class CheckpointedWorker(Protocol):
    """A per-partition worker: state loaded on first sight of a partition, checkpointed on demand."""

    parts: dict[int, Any]

    def load(self, partition: int) -> Any: ...

    def handle(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> int | None: ...

    def write_checkpoints(self, partitions: list[int] | None = None) -> int: ...


def register_checkpointed_agent(
    app: faust.App, worker: CheckpointedWorker, *, topic: str, name: str, every_s: float
) -> Callable[[list[int] | None], Awaitable[None]]:
    """The Faust side of a checkpointed worker on raw-bytes ``topic``; returns its checkpoint writer.

    Records go to ``worker.handle`` (seeking when it asks), checkpoints are written every
    ``every_s`` and for partitions being revoked, whose state is then dropped.
    """
    source = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    lock = asyncio.Lock()

    async def write_checkpoints(partitions: list[int] | None = None) -> None:
        async with lock:
            await asyncio.get_running_loop().run_in_executor(None, worker.write_checkpoints, partitions)

    async def agent(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        async for event in stream.events():
            msg = event.message
            if msg.partition not in worker.parts:
                await loop.run_in_executor(None, worker.load, msg.partition)
            with structlog.contextvars.bound_contextvars(partition=msg.partition, offset=msg.offset):
                target = worker.handle(msg.partition, msg.offset, event.key, event.value)
            if target is not None:
                await app.consumer.seek(TP(msg.topic, msg.partition), target)

    async def checkpoint() -> None:
        await write_checkpoints()

    async def on_revoked(app: faust.App, revoked: set[TP], **kwargs: object) -> None:
        mine = [tp.partition for tp in revoked if tp.topic == topic and tp.partition in worker.parts]
        if mine:
            await write_checkpoints(mine)
            for p in mine:
                worker.parts.pop(p, None)

    app.agent(source, name=name)(agent)
    app.timer(interval=every_s, name=f"{name}_checkpoint")(checkpoint)
    app.on_partitions_revoked.connect(on_revoked)
    return write_checkpoints
