"""The Faust app's consumer: tickflow's fetch wait instead of Faust's hardcoded 1500 ms, and seeks
run on the consumer's thread."""

from __future__ import annotations

import threading
from typing import Any

from faust.types import TP

from streams.app import create_app
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
