"""Shared benchmark helpers: medians, a broker, fresh topics and databases, fresh processes, tables.

Benchmarks print; they never assert timings and write nothing into the repository (scratch data
goes to a temporary directory that is removed afterwards).
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeVar

import structlog
from confluent_kafka import Producer
from rich.console import Console
from rich.table import Table

from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from streams.topics import end_offsets, ensure_topics

T = TypeVar("T")
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def quiet_logs() -> None:
    """Warnings and errors only: the report is the output."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """``min-max`` of the runs, so a reader sees how noisy a median is."""
    lo, hi = min(values), max(values)
    return f"{fmt_rate(lo)}-{fmt_rate(hi)}" if hi >= 100 else f"{lo:.3g}-{hi:.3g}"


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def fmt_ratio(framework: float, baseline: float) -> str:
    return f"{framework / baseline:.2f}x" if baseline else "-"


def table(title: str, *columns: str) -> Table:
    t = Table(title=title, title_justify="left", expand=False, pad_edge=False)
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right", overflow="fold")
    return t


@contextlib.contextmanager
def broker() -> Iterator[str]:
    """A bootstrap address: KAFKA_BOOTSTRAP if set, else an embedded Tansu for the duration."""
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    with tempfile.TemporaryDirectory(prefix="tickflow-bench-broker-") as tmp:
        with EmbeddedBroker(free_port(), log_file=Path(tmp) / "tansu.log") as b:
            yield b.bootstrap


def tag() -> str:
    return uuid.uuid4().hex[:8]


def fresh_settings(bootstrap: str, data_dir: Path, *, ticks: str | None = None, **overrides: Any) -> Settings:
    """Settings with unique topics (created) and app id; ``ticks`` reuses an existing ticks topic."""
    t = tag()
    settings = Settings(
        kafka_bootstrap=bootstrap,
        topic_ticks=ticks or f"bench-ticks-{t}",
        topic_candles=f"bench-candles-{t}",
        topic_indicators=f"bench-indicators-{t}",
        topic_dlq=f"bench-dlq-{t}",
        topic_late_trades=f"bench-late-{t}",
        topic_candle_state=f"bench-candles-state-{t}",
        app_id=f"tickflow-bench-{t}",
        tickflow_data_dir=data_dir,
        metrics_port=0,
        **overrides,
    )
    ensure_topics(settings)
    return settings


def produce_all(settings: Settings, records: Sequence[tuple[str, bytes]]) -> None:
    """Produce pre-encoded (key, value) records to ``ticks`` and wait until all are acknowledged."""
    producer = Producer({"bootstrap.servers": settings.bootstrap, "linger.ms": 20, "compression.type": "lz4", "queue.buffering.max.kbytes": 512_000})
    for key, value in records:
        while True:
            try:
                producer.produce(settings.topic_ticks, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("benchmark input not delivered")


def topic_ends(settings: Settings, topic: str) -> dict[int, int]:
    """True end offset per partition (Tansu's ListOffsets undercounts, see streams.topics)."""
    return {p: hi for p, _, hi in end_offsets(settings)[topic]}


@contextlib.contextmanager
def fresh_pg_database(admin_url: str | None) -> Iterator[str | None]:
    """A new, empty database ``tickflow_bench_<rand>`` on the server of ``admin_url``, dropped afterwards.

    Yields None when PostgreSQL is not configured or not reachable (the postgres sink is then off).
    """
    import psycopg
    from psycopg.conninfo import make_conninfo

    if not admin_url:
        yield None
        return
    name = f"tickflow_bench_{tag()}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error:
        yield None
        return
    try:
        yield make_conninfo(admin_url, dbname=name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def in_fresh_process(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a new interpreter: embedded chdb allows one data path per process, and
    Faust, prometheus-client and librdkafka keep process-wide state between runs otherwise."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()
