"""Shared benchmark helpers: medians, a broker, fresh topics and databases, fresh processes, tables.

Benchmarks print; they never assert timings and write nothing into the repository (scratch data
goes to a temporary directory that is removed afterwards).
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Generic, TypeVar

import structlog
from confluent_kafka import Producer
from rich.console import Console
from rich.table import Table

from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from streams.topics import end_offsets, ensure_topics, isolated, topic_specs

T = TypeVar("T")
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def quiet_logs() -> None:
    """Warnings and errors only: the report is the output."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    # mode warns on every timer run longer than its interval, which is routine under benchmark load.
    logging.getLogger("mode.timers").setLevel(logging.ERROR)


_BY_COMMAND = {"tansu": "Tansu", "postgres": "PostgreSQL", "redis-server": "Redis"}


def process_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) and command name of every process in /proc (Linux; else empty)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                head, rest = (entry / "stat").read_text().rsplit(")", 1)
                fields = rest.split()  # after the command: state, ppid, ... utime and stime are the 12th and 13th
                out[int(entry.name)] = (head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / tick)
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile, or not ours to read
    return out


def cores_used(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], seconds: float, labels: dict[int, str]) -> dict[str, float]:
    """Cores each part used between two :func:`process_cpu` readings: ``labels`` names processes by
    pid; the broker, PostgreSQL and Redis are found by command name; the rest is "other"."""
    used: dict[str, float] = {}
    for pid, (command, cpu) in after.items():
        spent = cpu - before.get(pid, (command, 0.0))[1]
        if spent > 0:
            label = labels.get(pid) or _BY_COMMAND.get(command, "other")
            used[label] = used.get(label, 0.0) + spent / seconds
    return used


def median(values: Sequence[float]) -> float:
    """Median, NaN when every run failed (printed as "failed")."""
    return statistics.median(values) if values else math.nan


def spread(values: Sequence[float]) -> str:
    """``min-max`` of the runs, so a reader sees how noisy a median is."""
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{fmt_rate(lo)}-{fmt_rate(hi)}" if hi >= 100 else f"{lo:.3g}-{hi:.3g}"


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def fmt_rate(value: float) -> str:
    return "failed" if math.isnan(value) else f"{value:,.0f}"


def fmt_s(value: float) -> str:
    return "failed" if math.isnan(value) else f"{value:.1f}"


def fmt_ratio(framework: float, baseline: float) -> str:
    return "-" if math.isnan(framework) or math.isnan(baseline) or not baseline else f"{framework / baseline:.2f}x"


def table(title: str, *columns: str) -> Table:
    t = Table(title=title, title_justify="left", expand=False, pad_edge=False)
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right", overflow="fold")
    return t


BROKERS = ("tansu", "mock")
# librdkafka waits this long before fetching again for a partition whose queue it just filled; its
# 1000 ms default throttles a consumer of many small records. Every benchmark consumer sets it.
FETCH_QUEUE_BACKOFF_MS = 1
MOCK_PARTITIONS = 4  # the partitions librdkafka's mock cluster gives a topic it creates on first use
_MOCK_ENV = "TICKFLOW_BENCH_MOCK_CLUSTER"  # its address, inherited by the benchmark's fresh processes
_TANSU_ENV = "TICKFLOW_BENCH_TANSU"  # the address of broker()'s own Tansu: runs then start one each


def _is_mock(bootstrap: str) -> bool:
    return bool(bootstrap) and os.environ.get(_MOCK_ENV) == bootstrap


@contextlib.contextmanager
def broker(kind: str = "tansu") -> Iterator[str]:
    """A bootstrap address: KAFKA_BOOTSTRAP if set, else for the duration an embedded Tansu or
    (``mock``) librdkafka's mock cluster.

    The mock cluster is a broker that costs next to nothing (C threads in a process of its own,
    about 0.07 cores during a 10,000 trades/s latency run), where Tansu holds every fetch for its
    full wait and polls. Measuring on both separates tickflow's share from the broker's.
    """
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    if kind == "mock":
        with _mock_cluster() as bootstrap:
            yield bootstrap
        return
    with _tansu() as bootstrap:
        os.environ[_TANSU_ENV] = bootstrap
        try:
            yield bootstrap
        finally:
            os.environ.pop(_TANSU_ENV, None)


@contextlib.contextmanager
def _tansu() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="tickflow-bench-broker-") as tmp:
        with EmbeddedBroker(free_port(), log_file=Path(tmp) / "tansu.log") as b:
            yield b.bootstrap


@contextlib.contextmanager
def run_broker(bootstrap: str) -> Iterator[str]:
    """The broker for one run: a new Tansu when ``bootstrap`` is :func:`broker`'s own, else ``bootstrap``.

    Every run creates topics of its own, and Tansu's work per request grows with the topics it
    holds: 20 runs' worth more (about 180 topics) took it from 0.55 to 0.77 cores at 20,000
    trades/s and the latency p99 from 27 to 47 ms on two cores. Runs on one long-lived Tansu
    measured the broker's history, not the pipeline; ``tickflow run`` starts a new broker
    every time. KAFKA_BOOTSTRAP and the mock cluster are used as they are.
    """
    if os.environ.get(_TANSU_ENV) != bootstrap:
        yield bootstrap
        return
    with _tansu() as fresh:
        yield fresh


@contextlib.contextmanager
def _mock_cluster() -> Iterator[str]:
    ctx = get_context("spawn")
    mine, theirs = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    proc = ctx.Process(target=_run_mock_cluster, args=(theirs, stop), name="bench-mock-cluster", daemon=True)
    proc.start()
    try:
        if not mine.poll(30):
            raise RuntimeError("librdkafka's mock cluster did not start")
        bootstrap = mine.recv()
        if not bootstrap:
            raise RuntimeError("librdkafka's mock cluster did not say its address")
        os.environ[_MOCK_ENV] = bootstrap
        yield bootstrap
    finally:
        os.environ.pop(_MOCK_ENV, None)
        stop.set()
        proc.join(10)


def _run_mock_cluster(conn: Connection, stop: Any) -> None:
    """Keep a client with ``test.mock.num.brokers`` alive: its mock cluster lives as long as it does.
    librdkafka says the cluster's address only in a log line, so a handler picks it out."""
    import re

    found: list[str] = []

    class Address(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            m = re.search(r"replaced with (\S+)", record.getMessage())
            if m:
                found.append(m.group(1))

    logger = logging.getLogger("tickflow.bench.mock-cluster")
    logger.addHandler(Address())
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    holder = Producer({"bootstrap.servers": "mock:0", "test.mock.num.brokers": 1, "logger": logger, "debug": "conf"})
    deadline = time.monotonic() + 20
    while not found and time.monotonic() < deadline:
        holder.poll(0.1)
    conn.send(found[0] if found else None)
    while not stop.is_set():
        holder.poll(0.5)


def _create_on_first_use(settings: Settings) -> None:
    """The mock cluster has no controller for CreateTopics; it creates a topic when a producer asks
    for its metadata, with ``MOCK_PARTITIONS`` partitions."""
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap})
    for spec in topic_specs(settings):
        producer.list_topics(topic=spec.name, timeout=30)


def tag() -> str:
    return uuid.uuid4().hex[:8]


def fresh_settings(bootstrap: str, data_dir: Path, *, ticks: str | None = None, **overrides: Any) -> Settings:
    """Settings with unique topics (created) and app id; ``ticks`` reuses an existing ticks topic."""
    base = Settings(
        kafka_bootstrap=bootstrap,
        tickflow_data_dir=data_dir,
        metrics_port=0,
        **{"log_level": "WARNING", **overrides},  # sink processes log at this level: the report stays readable
    )
    settings = isolated(base, f"bench-{tag()}")
    if ticks:
        settings = settings.updated(topic_ticks=ticks)
    if _is_mock(bootstrap):
        settings = settings.updated(ticks_partitions=MOCK_PARTITIONS)
        _create_on_first_use(settings)  # then the pipeline's ensure_topics finds them all
    else:
        ensure_topics(settings)
    return settings


def broker_name(bootstrap: str) -> str:
    if _is_mock(bootstrap):
        return f"librdkafka's mock cluster ({MOCK_PARTITIONS} partitions a topic)"
    return "KAFKA_BOOTSTRAP" if os.environ.get("KAFKA_BOOTSTRAP") else "embedded Tansu"


def produce_all(settings: Settings, records: Sequence[tuple[str, bytes]]) -> None:
    """Produce pre-encoded (key, value) records to ``ticks`` and wait until all are acknowledged."""
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap, "linger.ms": 20, "compression.type": "lz4", "queue.buffering.max.kbytes": 512_000})
    for key, value in records:
        while True:
            try:
                producer.produce(settings.kafka.topic_ticks, value, key)
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


def candle_worker_seconds(bootstrap: str, ticks: str, ends: dict[int, int], timeout_s: float, **overrides: Any) -> float:
    """Seconds from tickflow's candle worker's first ``ticks`` record to the last offset of every
    partition, on fresh output topics and app id (``overrides``: Settings fields). Call it in a fresh
    process (:func:`repeat`): the worker keeps process-wide state.

    Every throughput benchmark starts the candle worker here and nowhere else: when the worker's
    consumer path changes, this one function follows it.
    """
    quiet_logs()
    with tempfile.TemporaryDirectory(prefix="tickflow-bench-worker-") as tmp:
        settings = fresh_settings(bootstrap, Path(tmp), ticks=ticks, **overrides)
        return _candle_worker(settings, ends, timeout_s)


def _candle_worker(settings: Settings, ends: dict[int, int], timeout_s: float) -> float:
    """The candle agent on the runtime (streams.runtime.AgentRunner), as ``tickflow worker`` runs it,
    timed from its first batch to the batch that reaches the end of every ``ends`` partition."""
    import threading

    from agents.candle_agent import CANDLES
    from streams.producer import RecordProducer
    from streams.runtime import AgentRunner, LiveRoute

    producer = RecordProducer(settings)
    runner = AgentRunner(CANDLES, settings, producer, live=LiveRoute(to_topic=False))
    want = {(settings.kafka.topic_ticks, p): hi for p, hi in ends.items() if hi > 0}
    marks: dict[str, float] = {}
    done = threading.Event()
    handle = runner._handle  # noqa: SLF001 - the one hook on each batch

    def timed_handle(msgs: list[Any]) -> None:
        marks.setdefault("first", time.perf_counter())
        handle(msgs)
        pos = runner.positions()
        if all(pos.get(tp, 0) >= hi for tp, hi in want.items()):
            marks.setdefault("last", time.perf_counter())
            done.set()

    runner._handle = timed_handle  # type: ignore[method-assign]  # noqa: SLF001
    stop = threading.Event()
    runner.start(stop)
    try:
        if not done.wait(timeout_s):
            raise TimeoutError(f"candle worker did not reach the end within {timeout_s:.0f} s")
        if runner.error is not None:
            raise RuntimeError(f"candle worker failed: {runner.error!r}")
    finally:
        stop.set()
        runner.join(60)
        producer.close()
    return marks["last"] - marks["first"]


def call_entry(module: str, entry: str) -> None:
    """``module.entry()`` with an empty command line (for another benchmark's argparse main)."""
    sys.argv = [module]
    getattr(importlib.import_module(module), entry)()
    sys.stdout.flush()


def section(fn: Callable[..., None], *args: Any) -> None:
    """Run one benchmark; a failure is reported and the next benchmark still runs."""
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - the report says what failed
        console.print(f"[red]{fn.__module__}.{fn.__name__} failed: {type(exc).__name__}: {_reason(exc)}[/]")


@dataclass
class Runs(Generic[T]):
    """Results of repeated runs; a failed run is kept as its reason, so the report says it failed."""

    ok: list[T] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def note(self, what: str) -> str:
        if not self.failed:
            return ""
        return f"   [red]{len(self.failed)} of {len(self.ok) + len(self.failed)} {what} runs failed[/]: " + "; ".join(sorted(set(self.failed)))


def repeat(runs: int, fn: Callable[..., T], *args: Any, fresh: bool = True, timeout_s: float = 600.0) -> Runs[T]:
    """``runs`` runs of ``fn(*args)``, each in a fresh process unless ``fresh`` is False."""
    out: Runs[T] = Runs()
    for _ in range(runs):
        try:
            out.ok.append(in_fresh_process(fn, *args, timeout_s=timeout_s) if fresh else fn(*args))
        except Exception as exc:  # noqa: BLE001 - reported in the table's note
            out.failed.append(_reason(exc))
    return out


def _reason(exc: BaseException) -> str:
    """The innermost error line (a child's traceback ends with it)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:160]


def in_fresh_process(fn: Callable[..., T], *args: Any, timeout_s: float = 600.0) -> T:
    """Run ``fn(*args)`` in a new interpreter and return its result.

    Embedded chdb allows one data path per process, and prometheus-client and librdkafka keep
    process-wide state, so every pipeline run gets its own process. A run longer than ``timeout_s``
    is killed (TimeoutError) after its stacks went to stderr.
    """
    ctx = get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args, max(timeout_s - 5, 1)), daemon=False)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout_s):
            raise TimeoutError(f"{fn.__name__} did not finish within {timeout_s:.0f} s")
        try:
            status, value = parent.recv()
        except EOFError as exc:
            proc.join()
            raise RuntimeError(f"{fn.__name__} died (exit code {proc.exitcode})") from exc
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        parent.close()
    if status == "error":
        raise RuntimeError(f"{fn.__name__} failed in its process:\n{value}")
    return value


def _child(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...], dump_after_s: float) -> None:
    # A run that hangs prints every thread's stack before the parent kills it: the report then
    # says where, instead of `make bench` waiting forever.
    faulthandler.dump_traceback_later(dump_after_s, exit=False)
    try:
        conn.send(("ok", fn(*args)))
    except BaseException:  # noqa: BLE001 - handed to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()
