"""The Faust app's consumer: tickflow's fetch wait instead of Faust's hardcoded 1500 ms."""

from __future__ import annotations

from streams.app import create_app
from streams.settings import Settings


async def test_worker_consumer_uses_the_fetch_wait_setting() -> None:
    app = create_app(Settings(consumer_fetch_wait_ms=7, metrics_port=0))
    consumer = app.consumer._thread._create_worker_consumer(app.transport)  # noqa: SLF001 - no public hook in Faust
    try:
        assert consumer._fetch_max_wait_ms == 7  # noqa: SLF001
    finally:
        await consumer.stop()
