"""The Faust application: consumer group, agents and their timers, run inside our own event loop.

Faust is used for what it is good at here (group membership, partition assignment, fetching,
timers); state, checkpoints and outputs are tickflow's own (see agents.candle_agent).
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

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

    class Transport(faust_aiokafka.Transport):
        Consumer = LowWaitConsumer

    return Transport(app.conf.broker_consumer, app)


def create_app(settings: Settings) -> faust.App:
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
    )
    app.transport = _transport(app, settings.consumer_fetch_wait_ms)
    return app
