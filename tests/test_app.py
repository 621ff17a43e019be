"""The Faust app's consumer: tickflow's fetch wait instead of Faust's hardcoded 1500 ms, seeks run
on the consumer's thread, and a message's delivery runs inline unless it has to wait."""

from __future__ import annotations

import asyncio
import threading
import warnings
from typing import Any

import pytest

from faust.events import Event
from faust.types import TP, Message

from streams.app import create_app, queued_events
from streams.settings import Settings


async def test_worker_consumer_uses_the_fetch_wait_setting() -> None:
    app = create_app(Settings(consumer_fetch_wait_ms=7, metrics_port=0))
    consumer = app.consumer._thread._create_worker_consumer(app.transport)  # noqa: SLF001 - no public hook in Faust
    try:
        assert consumer._fetch_max_wait_ms == 7  # noqa: SLF001
    finally:
        await consumer.stop()


async def test_seek_runs_on_the_consumer_thread_not_the_agents() -> None:
    """Faust's own seek touched aiokafka's fetch buffers from the agents' thread (a race that
    crashed the app); ours hands the call to the consumer thread's method queue."""
    app = create_app(Settings(metrics_port=0))
    calls: list[tuple[Any, tuple[Any, ...]]] = []
    ran_on: list[str] = []

    class Thread:
        def seek(self, partition: TP, offset: int) -> None:
            ran_on.append(threading.current_thread().name)

        async def call_thread(self, method: Any, *args: Any) -> Any:
            calls.append((method, args))
            worker = threading.Thread(target=method, args=args, name="consumer-thread")
            worker.start()
            worker.join()

    app.consumer._thread = Thread()  # noqa: SLF001 - Faust's consumer thread, replaced by a stand-in
    tp = TP("ticks", 3)
    await app.consumer.seek(tp, 42)
    assert [(m.__name__, a) for m, a in calls] == [("seek", (tp, 42))]
    assert ran_on == ["consumer-thread"]
    assert app.consumer._read_offset[tp] == 42  # noqa: SLF001 - Faust's own bookkeeping still follows


async def test_a_delivery_that_need_not_wait_runs_inline() -> None:
    consumer = create_app(Settings(metrics_port=0)).consumer
    order: list[str] = []

    async def deliver() -> str:
        order.append("delivered")
        return "put"

    asyncio.get_running_loop().call_soon(order.append, "next loop turn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the unused suspend_flow.wait() must be closed, not left unawaited
        first = deliver()
        result = await consumer.wait_first(first, consumer.suspend_flow.wait())
    assert order == ["delivered"]  # Faust's tasks would only have started after the next loop turn
    assert (result.done, result.results, result.stopped) == ([first], ["put"], False)


async def test_a_delivery_that_waits_still_finishes() -> None:
    consumer = create_app(Settings(metrics_port=0)).consumer
    room: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def deliver() -> str:
        await asyncio.sleep(0)  # a bare yield first, then a real wait
        return await room

    asyncio.get_running_loop().call_later(0.01, room.set_result, "put")
    result = await consumer.wait_first(deliver(), consumer.suspend_flow.wait())
    assert result.results == ["put"]
    assert not result.stopped


async def test_a_waiting_delivery_is_abandoned_when_the_flow_is_suspended() -> None:
    """As in Faust: a rebalance suspends the flow, and a delivery blocked on a full buffer gives up
    (its clean-up runs), so the drain loop can go on."""
    consumer = create_app(Settings(metrics_port=0)).consumer
    cleaned_up = asyncio.Event()

    async def deliver() -> None:
        try:
            await asyncio.get_running_loop().create_future()  # a buffer that never drains
        except asyncio.CancelledError:
            cleaned_up.set()
            raise

    asyncio.get_running_loop().call_later(0.01, consumer.suspend_flow.set)
    suspended = consumer.suspend_flow.wait()
    result = await consumer.wait_first(deliver(), suspended)
    assert result.done == [suspended]
    await asyncio.sleep(0)
    assert cleaned_up.is_set()


async def test_a_failing_delivery_raises_in_the_drain_loop() -> None:
    consumer = create_app(Settings(metrics_port=0)).consumer

    async def deliver() -> None:
        raise ValueError("bad message")

    with pytest.raises(ValueError, match="bad message"):
        await consumer.wait_first(deliver(), consumer.suspend_flow.wait())


def test_the_monitor_skips_per_message_bookkeeping_but_keeps_what_the_consumer_reads() -> None:
    app = create_app(Settings(metrics_port=0))
    monitor = app.monitor
    tp = TP("ticks", 0)
    message = Message("ticks", 0, 0, 0.0, 0, [], b"k", b"v", None)
    monitor.on_message_in(tp, 0, message)
    assert monitor.messages_received_total == 0
    assert message.time_in is None
    monitor.track_tp_end_offset(tp, 10)
    assert monitor.tp_end_offsets[tp] == 10


async def test_an_agent_takes_the_queued_events_in_one_turn_with_the_iterators_bookkeeping() -> None:
    """Faust's iterator yields to the event loop before every event; ``queued_events`` takes what
    is already queued without a loop turn each, acks each after its use, skips (and acks) an event
    fetched before a rebalance and tracks new messages as unacked, as the iterator does."""
    app = create_app(Settings(metrics_port=0))
    app.flow_control.resume()
    app.consumer_generation_id = 3
    app.topics.acking_topics.add("ticks")
    channel = app.channel()
    acked: list[int] = []

    async def ack(event: Any) -> bool:
        acked.append(event.message.offset)
        return True

    stream = type("Stream", (), {"channel": channel, "app": app, "ack": staticmethod(ack)})()

    def event(offset: int, generation: int) -> Event:
        message = Message("ticks", 0, offset, 0.0, 0, {}, b"k", b"v", None, generation_id=generation)
        message.tracked = offset != 13  # the conductor tracks messages as it delivers them; 13 it did not
        return Event(app, b"k", b"v", {}, message)

    events = [event(offset, generation) for offset, generation in [(10, 3), (11, 2), (12, 3), (13, 3), (14, 3)]]
    for e in events:  # the consumer's unacked set holds its messages weakly: ``events`` keeps them
        channel.queue.put_nowait(e)
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_turns())
    await asyncio.sleep(0)
    turns_before = turns
    seen: list[tuple[int, list[int]]] = []
    async for taken in queued_events(stream, limit=4):
        seen.append((taken.message.offset, list(acked)))
    assert turns == turns_before  # no other task ran in between: one loop turn for all four
    counter.cancel()
    # 11 is of an older generation: acked, never handed out; each event is acked after its use
    assert seen == [(10, []), (12, [10, 11]), (13, [10, 11, 12])]
    assert acked == [10, 11, 12, 13]
    assert {m.offset for m in app.consumer.unacked} == {13}
    assert channel.queue.qsize() == 1  # the limit: the rest waits for the next turn
    assert [e.message.offset async for e in queued_events(stream)] == [14]
    assert [e async for e in queued_events(stream)] == []
