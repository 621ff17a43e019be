"""Checkpoint writing as the agents' Faust side does it (``register_checkpointed_agent``)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from streams.checkpoint import compress_checkpoint, decode_checkpoint, register_checkpointed_agent, serialize_checkpoint


class StubApp:
    """The parts of a Faust app the registration uses; the agent, timers and hooks are not run."""

    on_partitions_revoked = SimpleNamespace(connect=lambda fn: None)

    def topic(self, *args: Any, **kwargs: Any) -> object:
        return object()

    def agent(self, source: object, name: str) -> Any:
        return lambda fn: fn

    def timer(self, interval: float, name: str) -> Any:
        return lambda fn: fn


class Worker:
    def __init__(self, events: list[str]) -> None:
        self.parts: dict[int, object] = {0: object(), 1: object(), 2: object()}
        self.events = events
        self.written: list[tuple[int, bytes]] = []

    def snapshots(self, partitions: list[int] | None = None) -> list[tuple[int, bytes]]:
        self.events += [f"snapshot {p}" for p in partitions or []]
        return [(p, serialize_checkpoint(10 + p, {"p": p})) for p in partitions or []]

    def write_snapshots(self, snapshots: list[tuple[int, bytes]]) -> int:
        self.written += snapshots
        return len(snapshots)


async def test_records_get_through_between_partitions_of_one_checkpoint() -> None:
    """A big book's snapshot holds the event loop: taking all partitions in one go stalled every
    record for its whole length, so each partition is taken on its own loop turn."""
    events: list[str] = []
    worker = Worker(events)
    agent = register_checkpointed_agent(StubApp(), worker, topic="ticks", name="candles", every_s=1.0)  # type: ignore[arg-type]

    async def records() -> None:
        for _ in range(3):
            events.append("record")
            await asyncio.sleep(0)

    flowing = asyncio.create_task(records())
    await asyncio.sleep(0)
    await agent.write_checkpoints(None)
    await flowing
    taken = [i for i, e in enumerate(events) if e.startswith("snapshot")]
    assert [events[i] for i in taken] == ["snapshot 0", "snapshot 1", "snapshot 2"]
    assert all("record" in events[a:b] for a, b in zip(taken, taken[1:]))
    assert [p for p, _ in worker.written] == [0, 1, 2]


def test_a_checkpoint_round_trips() -> None:
    offset, state = decode_checkpoint(compress_checkpoint(serialize_checkpoint(42, {"symbols": [{"ids": ["1", "2"]}]})))
    assert (offset, state) == (42, {"symbols": [{"ids": ["1", "2"]}]})
