"""Agent state checkpoints in a Kafka topic, one state partition per input partition.

A checkpoint is (next input offset, state) written atomically in one record, so state and
position can never disagree, whatever Faust commits or replays on recovery. Restoring reads the
last record of the matching state partition; the agent then skips input below the offset and
seeks back when the consumer resumes past it.
"""

from __future__ import annotations

import asyncio
import gc
import time
import zlib
from dataclasses import dataclass
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import faust
import orjson
import structlog
from confluent_kafka import Consumer, TopicPartition
from faust.types import TP, EventT

from streams.app import queued_events
from streams.settings import Settings
from streams.topics import high_watermarks

log = structlog.get_logger(__name__)

RESEEK_S = 2.0  # a seek back with no record at its offset after this long is asked for again


def serialize_checkpoint(offset: int, state: dict[str, Any]) -> bytes:
    """The uncompressed checkpoint: taking it is what must not overlap a change of the state."""
    return orjson.dumps({"offset": offset, "state": state})


def compress_checkpoint(raw: bytes) -> bytes:
    """Level 1: checkpoints go out every few seconds, and level 3 took twice the CPU for about the
    same size (measured when candle checkpoints still held every trade id in full, 20 MB of JSON)."""
    return zlib.compress(raw, 1)


def encode_checkpoint(offset: int, state: dict[str, Any]) -> bytes:
    return compress_checkpoint(serialize_checkpoint(offset, state))


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


@dataclass(kw_only=True)
class Position:
    """Where a partition's state stands in its input: the next offset it expects, a pending seek,
    and whether the state changed since its last checkpoint. Each worker's partition state extends it."""

    next_offset: int | None = None  # None: take what comes
    seeking: bool = False
    seek_at: float = 0.0  # monotonic time of the last seek asked for
    changed: bool = False


def admit(pos: Position, partition: int, offset: int) -> tuple[bool, int | None]:
    """(process this record?, offset to seek back to); a taken record advances ``pos`` and marks
    it changed (its checkpoint now differs, whatever the record does to the state).

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
            pos.seek_at = time.monotonic()
            log.warning("input resumed past the checkpoint, seeking back", partition=partition, offset=offset, expected=pos.next_offset)
            return False, pos.next_offset
    pos.seeking = False
    pos.next_offset = offset + 1
    pos.changed = True
    return True, None


class CheckpointedWorker(Protocol):
    """A per-partition worker: state loaded on first sight of a partition, checkpointed on demand."""

    parts: dict[int, Any]
    # Optional: awaited before ``handle`` with its arguments, so that blocking reads a record needs
    # go to a thread and only this agent's stream waits for them.
    prepare: Callable[[int, int, bytes | None, bytes | None], Awaitable[None]] | None

    def load(self, partition: int) -> Any: ...

    def handle(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> int | None: ...

    def snapshots(self, partitions: list[int] | None = None) -> list[tuple[int, bytes]]: ...

    def write_snapshots(self, snapshots: list[tuple[int, bytes]]) -> int: ...


class CheckpointWriter:
    """Checkpoint writing shared by the agents' workers: one record per changed partition state,
    with the next input offset, in partition p of ``state_topic``."""

    parts: dict[int, Any]
    producer: Any  # streams.producer.TickProducer
    state_topic: str
    prepare: Callable[[int, int, bytes | None, bytes | None], Awaitable[None]] | None = None

    def state(self, ps: Any) -> dict[str, Any]:
        """The checkpointed form of one partition's state."""
        raise NotImplementedError

    def snapshots(self, partitions: list[int] | None = None) -> list[tuple[int, bytes]]:
        """Serialized (next offset, state) of the partitions whose state changed since their last
        checkpoint. Called where records are handled (the event loop), never beside it: state and
        offset must come from between two records."""
        out = []
        for p in partitions if partitions is not None else list(self.parts):
            ps = self.parts.get(p)
            if ps is not None and ps.changed and ps.next_offset is not None:
                out.append((p, serialize_checkpoint(ps.next_offset, self.state(ps))))
                ps.changed = False
        return out

    def write_snapshots(self, snapshots: list[tuple[int, bytes]]) -> int:
        """Compress and write snapshots, and wait until they and every output before them are
        durable (blocking: run in an executor)."""
        for p, raw in snapshots:
            self.producer.produce(self.state_topic, str(p), compress_checkpoint(raw), partition=p)
        self.producer.flush()
        return len(snapshots)

    def write_checkpoints(self, partitions: list[int] | None = None) -> int:
        """Snapshot and write in one blocking call, for callers outside the agent's event loop."""
        return self.write_snapshots(self.snapshots(partitions))


def input_start(settings: Settings, topic: str, partition: int, timeout: float = 10.0) -> int:
    """The first offset still in ``topic``'s ``partition``: where state with no checkpoint starts."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": f"{settings.app_id}-checkpoint-reader", "enable.auto.commit": False})
    try:
        lo, _ = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        return max(lo, 0)
    finally:
        consumer.close()


@dataclass
class CheckpointedAgent:
    """The Faust side of a checkpointed worker, as :func:`register_checkpointed_agent` wired it."""

    worker: CheckpointedWorker
    topic: str
    write_checkpoints: Callable[[list[int] | None], Awaitable[None]]

    def caught_up(self, ends: list[tuple[int, int, int]]) -> bool:
        """True when the state of every non-empty input partition, ``(partition, low, high)``, has
        reached its high watermark."""
        for p, lo, hi in ends:
            if hi <= lo:
                continue
            ps = self.worker.parts.get(p)
            if ps is None or ps.next_offset is None or ps.next_offset < hi:
                return False
        return True


def register_checkpointed_agent(
    app: faust.App, worker: CheckpointedWorker, *, topic: str, name: str, every_s: float
) -> CheckpointedAgent:
    """The Faust side of a checkpointed worker on raw-bytes ``topic``.

    A partition's state is loaded when its first record arrives or, at the latest, about a second
    after it is assigned; the consumer then seeks to the state's next offset, so a partition whose
    committed offset ran past the checkpoint is replayed even when no new input arrives. Records go
    to ``worker.handle`` (seeking when it asks), checkpoints are written every ``every_s`` and for
    partitions being revoked, whose state is then dropped.
    """
    source = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    checkpoint_lock = asyncio.Lock()
    load_lock = asyncio.Lock()

    async def write_checkpoints(partitions: list[int] | None = None) -> None:
        async with checkpoint_lock:
            # Taken here, between records (a thread would read state being changed), one partition
            # at a time with records let through in between, so the event loop is held for one
            # partition's state at most: when candle checkpoints still held every trade id in full,
            # all partitions in one go held it for tens of milliseconds at 20,000 trades/s, which
            # went straight into the in-progress updates' p99.
            snapshots: list[tuple[int, bytes]] = []
            for p in partitions if partitions is not None else list(worker.parts):
                snapshots += worker.snapshots([p])
                await asyncio.sleep(0)
            await asyncio.get_running_loop().run_in_executor(None, worker.write_snapshots, snapshots)

    async def loaded(partition: int) -> bool:
        """Make sure ``partition`` has state; True when it was loaded just now."""
        if partition in worker.parts:
            return False
        async with load_lock:
            if partition in worker.parts:
                return False
            # Loaded in a thread, published here: other tasks iterate ``parts`` on the event loop.
            worker.parts[partition] = await asyncio.get_running_loop().run_in_executor(None, worker.load, partition)
            # What exists now (Faust, the libraries, the loaded state) lives as long as the worker:
            # out of the collector's way, a full collection took 15-38 ms instead of 70-140 ms, a
            # stall of every partition's records every few seconds at 20,000 trades/s.
            gc.freeze()
            return True

    prepare = getattr(worker, "prepare", None)  # optional: a worker without reads to make has none

    async def process(event: EventT) -> None:
        msg = event.message
        await loaded(msg.partition)
        # The record in hand, for every log line of this task until the next one (bound, not
        # scoped: a scope cost 4 µs a record, binding 0.5).
        structlog.contextvars.bind_contextvars(partition=msg.partition, offset=msg.offset)
        if prepare is not None:
            await prepare(msg.partition, msg.offset, event.key, event.value)
        target = worker.handle(msg.partition, msg.offset, event.key, event.value)
        if target is not None:
            await app.consumer.seek(TP(msg.topic, msg.partition), target)

    async def agent(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await process(event)
            async for queued in queued_events(stream):
                await process(queued)

    async def adopt() -> None:
        for tp in list(app.consumer.assignment()):
            if tp.topic != topic:
                continue
            if await loaded(tp.partition):
                start = worker.parts[tp.partition].next_offset
                if start is not None:
                    await app.consumer.seek(tp, start)
                continue
            ps = worker.parts.get(tp.partition)
            if ps is not None and ps.seeking and ps.next_offset is not None and time.monotonic() - ps.seek_at >= RESEEK_S:
                # Faust drops records below the highest offset it has delivered: records it had
                # fetched before the seek can raise that mark again, and then the re-read is dropped.
                log.warning("seek back did not take, seeking again", partition=tp.partition, expected=ps.next_offset)
                ps.seek_at = time.monotonic()
                await app.consumer.seek(tp, ps.next_offset)

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
    app.timer(interval=1.0, name=f"{name}_adopt")(adopt)
    app.on_partitions_revoked.connect(on_revoked)
    return CheckpointedAgent(worker, topic, write_checkpoints)
