"""The Faust application: consumer group, agents and their timers, run inside our own event loop.

Faust is used for what it is good at here (group membership, partition assignment, fetching,
timers); state, checkpoints and outputs are tickflow's own (see agents.candle_agent).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import faust
from faust.sensors import Monitor
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, ChannelT, EventT, Message, StreamT
from mode.services import WaitArgT, WaitResults
from mode.utils.times import Seconds

from streams.settings import Settings


def _transport(app: faust.App, fetch_wait_ms: int) -> faust_aiokafka.Transport:
    """Faust's aiokafka transport with our fetch wait: Faust hardcodes ``fetch_max_wait_ms=1500``,
    which is how long a record can sit at the broker before a quiet partition's fetch returns."""

    class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_wait_ms  # read by aiokafka's Fetcher at start()
            return consumer

    class LowWaitConsumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> ConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

        async def _seek(self, partition: TP, offset: int) -> None:
            """On the consumer's own thread. Faust calls aiokafka's ``seek`` from the agents' thread
            while the consumer thread reads aiokafka's fetched records; the seek then removed a
            partition's buffer in the middle of that read and aiokafka raised ``KeyError`` there,
            which crashed the app (seen in a benchmark run, right after the startup seek to the
            checkpoint)."""
            await self._thread.call_thread(self._thread.seek, partition, offset)

        async def wait_first(self, *coros: WaitArgT, timeout: Seconds | None = None) -> WaitResults:
            """Faust's drain loop hands every message to the agents with
            ``wait_first(deliver(message), suspend_flow.wait())``: four tasks and an
            ``asyncio.wait`` per message, a third of the paced candle agent's cost per record. Delivery
            only waits when an agent's buffer is full, so the delivery is first run inline; only
            when it has to wait does it race the flow's suspension (a rebalance) as before."""
            first = coros[0] if len(coros) == 2 and timeout is None else None
            if not asyncio.iscoroutine(first) or self.suspend_flow.is_set() or self._stopped.is_set() or self._crashed.is_set():
                return await super().wait_first(*coros, timeout=timeout)
            try:
                waiting_on = first.send(None)
            except StopIteration as done:
                _close(coros[1])
                return WaitResults([first], [done.value], False)
            except BaseException:
                _close(coros[1])
                raise
            return await super().wait_first(_resume(first, waiting_on), coros[1])

    class Transport(faust_aiokafka.Transport):
        Consumer = LowWaitConsumer

    return Transport(app.conf.broker_consumer, app)


class EventlessMonitor(Monitor):
    """Faust's monitor without its per-message and per-event bookkeeping (about 3% of the worker):
    those statistics feed only Faust's web views, which tickflow does not run; its metrics are
    Prometheus'. What the consumer asks of the monitor directly (end offsets, commits) stays."""

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        pass

    def on_stream_event_in(self, tp: TP, offset: int, stream: StreamT, event: EventT) -> dict[str, Any] | None:
        return None

    def on_stream_event_out(self, tp: TP, offset: int, stream: StreamT, event: EventT, state: dict[str, Any] | None = None) -> None:
        pass

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        pass


QUEUED_EVENTS_PER_TURN = 16  # events an agent takes from its queue in one event-loop turn


async def queued_events(stream: StreamT, limit: int = QUEUED_EVENTS_PER_TURN) -> AsyncIterator[EventT]:
    """The events already waiting in ``stream``'s channel, each acked after the caller is done with it.

    Faust's stream iterator yields to the event loop before every event (``asyncio.sleep(0)``), so
    an agent takes one event per loop turn, and a turn costs an epoll call that gives up the GIL to
    Faust's consumer thread. On two busy cores a turn took about 2 ms: the candle agent handled
    350 records/s of the 2,000 arriving, with the event loop half idle. This takes what is queued
    in the same turn, with the iterator's own bookkeeping: an event of an old consumer generation
    (a rebalance since it was fetched) is acked and skipped, a new one is tracked as unacked.
    """
    channel = stream.channel
    if not isinstance(channel, ChannelT):
        return
    queue = channel.queue
    app = stream.app
    consumer = app.consumer
    acking = app.topics.acking_topics
    for _ in range(limit):
        if queue.empty():
            return
        event = queue.get_nowait()  # raises what the channel was thrown, as the iterator does
        message = event.message
        if not app.flow_control.is_active() or message.generation_id != app.consumer_generation_id:
            await stream.ack(event)
            continue
        if message.topic in acking and not message.tracked:
            message.tracked = True
            consumer.unacked.add(message)
            app.sensors.on_message_in(message.tp, message.offset, message)
        try:
            yield event
        finally:
            await stream.ack(event)


def _close(awaitable: Any) -> None:
    """Close a coroutine that will not be awaited (no "never awaited" warning)."""
    if asyncio.iscoroutine(awaitable):
        awaitable.close()


async def _resume(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Any:
    """Drive ``coro`` on from a suspension, as an asyncio Task would: it yielded ``waiting_on``
    (a future, or None to be resumed on the next loop turn). A cancellation of this coroutine
    (which also cancels the future it waits on) is thrown into ``coro`` for its clean-up."""
    while True:
        error: BaseException | None = None
        try:
            if waiting_on is None:
                await asyncio.sleep(0)
            else:
                waiting_on._asyncio_future_blocking = False  # noqa: SLF001 - asyncio's own protocol, reset as Task does
                await waiting_on
        except BaseException as exc:  # noqa: BLE001 - passed on into the coroutine, which decides
            error = exc
        try:
            waiting_on = coro.send(None) if error is None else coro.throw(error)
        except StopIteration as done:
            return done.value


# The worker runs Python in two threads, the event loop and Faust's consumer thread (aiokafka), and
# each blocking call (a socket send, epoll) gives up the GIL. Taking it back waits for the other
# thread's switch interval, 5 ms by default, so records waited behind that convoy at every hand-over.
GIL_SWITCH_S = 0.0005


def create_app(settings: Settings) -> faust.App:
    sys.setswitchinterval(GIL_SWITCH_S)
    for noisy in ("faust", "mode", "aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap}",
        autodiscover=False,
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        topic_partitions=settings.ticks_partitions,
        store="memory://",
        datadir=str(settings.tickflow_data_dir / "faust"),
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=4096,
        producer_acks=-1,
        key_serializer="raw",
        value_serializer="raw",
        Monitor=EventlessMonitor,
    )
    app.transport = _transport(app, settings.consumer_fetch_wait_ms)
    return app
