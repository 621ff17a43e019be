"""Running tickflow's parts in one process: broker, topics, sinks, the agents and a source.

``tickflow run`` uses all of them; ``worker``, ``sink`` and ``ingest`` use one part each. Each sink
runs in its own process, as ``tickflow sink`` would in production; each agent runs in a thread of
the main process, whose asyncio loop runs the source.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventT
from dataclasses import dataclass

import psycopg
import redis
import structlog
from confluent_kafka import KafkaException

from agents.registry import AGENTS
from agents.spec import CandleHistory
from sinks.clickhouse import ClickHouseCandleHistory
from sinks.postgres import PostgresCandleHistory
from sinks.redis import LiveFanout
from sinks.runner import SinkRunner, StoppedWaiting, configured_sinks, open_sinks, sink_lag, yield_cores
from streams.broker import EmbeddedBroker
from streams.ingest import IngestStats, run_ingest
from streams.observability import MetricsPortInUse, configure_logging, metrics_port, role_port_offset, serve_metrics
from streams.producer import RecordProducer
from streams.runtime import AgentRunner, LiveRoute, Runtime
from streams.settings import Settings
from streams.shutdown import STOP_SIGNALS, stop_on_signals
from streams.sources.base import Source
from streams.topics import ensure_topics, end_offsets

log = structlog.get_logger(__name__)

DRAIN_SETTLE_S = 2.0


@contextlib.contextmanager
def kafka(settings: Settings) -> Iterator[Settings]:
    """Yield settings pointing at a broker: the configured one, or an embedded Tansu for the duration."""
    if settings.kafka.kafka_bootstrap:
        ensure_topics(settings)
        yield settings
        return
    broker = EmbeddedBroker(settings.kafka.broker_port, log_file=_data_dir(settings) / "tansu.log")
    with broker:
        embedded = settings.updated(kafka_bootstrap=broker.bootstrap)
        ensure_topics(embedded)
        yield embedded


def _data_dir(settings: Settings):
    settings.stores.tickflow_data_dir.mkdir(parents=True, exist_ok=True)
    return settings.stores.tickflow_data_dir


def reachable_services(settings: Settings, say: Callable[[str], None]) -> Settings:
    """Turn off the PostgreSQL and Redis sinks, saying so once, when their store cannot be reached."""
    update: dict[str, object] = {}
    if settings.stores.database_url:
        try:
            psycopg.connect(settings.stores.database_url, connect_timeout=3).close()
        except psycopg.Error as exc:
            say(f"PostgreSQL at {settings.stores.database_url} not reachable ({exc.__class__.__name__}): postgres sink off")
            update["database_url"] = None
    else:
        say("DATABASE_URL empty: postgres sink off")
    if settings.stores.redis_url:
        try:
            redis.Redis.from_url(settings.stores.redis_url, socket_connect_timeout=3).ping()
        except redis.RedisError as exc:
            say(f"Redis at {settings.stores.redis_url} not reachable ({exc.__class__.__name__}): redis sink off")
            update["redis_url"] = None
    else:
        say("REDIS_URL empty: redis sink off")
    return settings.updated(**update) if update else settings


class SinkFailed(RuntimeError):
    """A sink process ended on its own: its store could not be opened or migrated, or it crashed."""


def _sink_process(settings: Settings, name: str, ready: EventT, parent: int, metrics_port: int, wait_for_store: bool) -> None:
    """Entry of one sink's process: open and migrate its store, then consume until SIGTERM (from the
    parent's ``close`` or anyone else); its last batch is then written and committed."""
    configure_logging(settings.ops.log_level, settings.ops.log_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the parent, which stops the sinks
    stop = threading.Event()
    stop_on_signals(stop.set, (signal.SIGTERM,))
    try:
        url = serve_metrics(metrics_port, role=f"the {name} sink of tickflow run")
    except MetricsPortInUse as exc:
        log.error(str(exc), sink=name)
        raise SystemExit(1) from None
    if url:
        log.info("sink metrics", sink=name, url=url)
    yield_cores(name)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True).start()
    try:
        # A long run waits for a store that is down, as `tickflow sink` does; a run --until-drained
        # is a one-off job, which fails at once with the store's name.
        (sink,) = open_sinks(settings, only=name, stop=stop if wait_for_store else None)
    except StoppedWaiting:
        return
    producer = RecordProducer(settings, component=f"sink-{name}")
    runner = SinkRunner(sink, settings, dead_letter=producer.dead_letter_durably)
    ready.set()
    try:
        runner.run(stop)
    finally:
        runner.close()
        sink.close()
        producer.close()


def _exit_with_parent(parent: int) -> None:
    """A sink must not outlive a killed worker: as an orphan it would keep its consumer-group
    membership and the embedded ClickHouse path. Its uncommitted batch is simply consumed again."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


class SinkProcesses:
    """Each sink in its own process, stopped together by SIGTERM.

    Not by a shared multiprocessing event: a child that died while waiting on one leaves the
    parent's ``set`` waiting forever for it to wake.

    Decoding every record and the stores' client libraries would otherwise share one interpreter
    lock with the agents and the source, which is what the realtime path's latency pays for.
    The parent watches each sink's consumer-group lag through an admin client. Sink metrics are
    served on each sink role's port (ClickHouse 9110, PostgreSQL 9111, Redis 9112), shifted as far as
    ``METRICS_PORT`` shifts the main process from 9108.
    """

    def __init__(self, settings: Settings, names: list[str], *, wait_for_stores: bool = True) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._closing = False
        self.procs: dict[str, BaseProcess] = {}
        self._ready: dict[str, EventT] = {}
        base = metrics_port("worker", settings.ops.metrics_port)
        for name in names:
            ready = ctx.Event()
            port = base + role_port_offset(f"sink-{name}") if base else 0
            proc = ctx.Process(target=_sink_process, args=(settings, name, ready, os.getpid(), port, wait_for_stores), name=f"tickflow-sink-{name}", daemon=True)
            proc.start()
            self.procs[name] = proc
            self._ready[name] = ready
        self._lag = {name: sink_lag(settings, name) for name in names}

    def wait_ready(self, timeout: float = 120.0, stop: threading.Event | None = None) -> None:
        """Block until every sink has opened and migrated its store (SinkFailed if one ends first),
        or until ``stop`` is set."""
        deadline = time.monotonic() + timeout
        for name, ready in self._ready.items():
            while not ready.wait(0.2):
                if self.check() or (stop is not None and stop.is_set()):
                    return
                if time.monotonic() > deadline:
                    raise SinkFailed(f"sink {name} not ready within {timeout:.0f} s")

    def check(self) -> str | None:
        """The name of a sink stopped on request (SIGTERM to its process, exit code 0), if any;
        SinkFailed when one ended any other way. Exits after ``close`` are expected."""
        for name, proc in self.procs.items():
            if proc.exitcode is not None and not self._closing:
                if proc.exitcode == 0:
                    return name
                raise SinkFailed(f"sink {name} exited with code {proc.exitcode} (its log above says why)")
        return None

    def lags(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for name, lag in self._lag.items():
            try:
                out[name] = lag.total() if self.procs[name].exitcode is None else None
            except KafkaException:  # lag is informative; the drain treats None as not drained
                out[name] = None
        return out

    def close(self) -> None:
        self._closing = True
        for proc in self.procs.values():
            if proc.exitcode is None:
                proc.terminate()  # SIGTERM: the sink writes and commits its batch, then exits 0
        for proc in self.procs.values():
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        self._lag.clear()  # their admin clients disconnect now, before an embedded broker stops


@dataclass
class RunStatus:
    """What the live summary shows."""

    ingest: IngestStats | None = None
    runtime: Runtime | None = None
    sinks: SinkProcesses | None = None


class DrainStalled(RuntimeError):
    """An ``--until-drained`` run stopped making progress before everything was processed."""


def open_history(settings: Settings) -> CandleHistory | None:
    """The candle store warm starts read: PostgreSQL/TimescaleDB when configured, else a ClickHouse
    server (embedded chdb is open in the ClickHouse sink's process, so it cannot serve them)."""
    if settings.agents.indicator_warm_start_bars <= 0:
        return None
    if settings.stores.database_url:
        return PostgresCandleHistory(settings.stores.database_url)
    if settings.stores.clickhouse_url and not settings.stores.clickhouse_url.startswith("chdb:"):
        return ClickHouseCandleHistory(settings.stores.clickhouse_url)
    log.info("no candle store for warm starts (PostgreSQL off, ClickHouse embedded): new series start cold")
    return None


def build_runtime(settings: Settings, producer: RecordProducer, *, agents: list[str] | None = None) -> tuple[Runtime, LiveFanout | None]:
    """Every registered agent (or those named) on the runtime, with the stores and the fan-out they use."""
    fanout = LiveFanout(settings.stores.redis_url) if settings.stores.redis_url and settings.agents.candle_updates != "kafka" else None
    live = LiveRoute(publish=fanout.publish if fanout is not None else None, to_topic=settings.agents.candle_updates != "redis" or fanout is None)
    runtime = Runtime()
    for spec in AGENTS:
        if agents is not None and spec.name not in agents:
            continue
        if spec.enabled is not None and not spec.enabled(settings):
            continue
        history = open_history(settings) if spec.needs_history else None
        runtime.runners.append(AgentRunner(spec, settings, producer, history=history, live=live))
    return runtime, fanout


async def _wait_caught_up(settings: Settings, runner: AgentRunner, stop: asyncio.Event) -> None:
    """Wait until an agent's state has every record of its input topics.

    Raises :class:`DrainStalled`, with positions and input ends, when its position has not moved
    for ``drain_stall_s``: a stuck run then fails with the facts rather than hanging.
    """
    loop = asyncio.get_running_loop()
    last: dict[tuple[str, int], int] = {}
    since = time.monotonic()
    while not stop.is_set():
        if runner.error is not None:
            raise RuntimeError(f"agent {runner.name} stopped: {runner.error}")
        ends = await loop.run_in_executor(None, end_offsets, settings)
        if runner.caught_up(ends):
            return
        position = runner.positions()
        if position != last:
            last, since = position, time.monotonic()
        elif time.monotonic() - since > settings.agents.drain_stall_s:
            inputs = {t: ends.get(t) for t in runner.inputs}
            raise DrainStalled(f"agent {runner.name} made no progress for {settings.agents.drain_stall_s:.0f} s: next offsets {position}, inputs (partition, low, high) {inputs}")
        await asyncio.sleep(0.2)


async def run_pipeline(
    settings: Settings,
    *,
    source: Source | None,
    source_name: str,
    until_drained: bool,
    sinks_enabled: bool = True,
    say: Callable[[str], None] = print,
    status: RunStatus | None = None,
) -> RunStatus:
    """Run the agents, the sinks and optionally a source until stopped (SIGTERM, SIGINT, or a sink's
    process stopped with SIGTERM), or until drained. A stop lets every part finish and commit its work."""
    status = status or RunStatus()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def requested(sig: signal.Signals) -> None:
        log.info("stop requested", signal=sig.name)
        stop.set()

    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread: the caller stops it
            loop.add_signal_handler(sig, requested, sig)
    producer = RecordProducer(settings, component="worker")
    sink_processes = None
    if sinks_enabled:
        settings = reachable_services(settings, say)
        sink_processes = SinkProcesses(settings, configured_sinks(settings), wait_for_stores=not until_drained)
        status.sinks = sink_processes
        stopping = threading.Event()
        waiting = asyncio.create_task(stop.wait())
        waiting.add_done_callback(lambda _: stopping.set())
        try:
            # The stores are migrated before any agent runs: warm starts read the candle store.
            await loop.run_in_executor(None, sink_processes.wait_ready, 120.0, stopping)
        except BaseException:
            sink_processes.close()
            raise
        finally:
            waiting.cancel()
        if stop.is_set() or sink_processes.check():
            await loop.run_in_executor(None, sink_processes.close)
            await loop.run_in_executor(None, producer.close)
            return status
    runtime, fanout = build_runtime(settings, producer)
    status.runtime = runtime
    runtime.start()
    try:
        # The source starts once the agents have their partitions: a live source's first seconds
        # would otherwise queue behind the consumer groups' first join.
        joined = time.monotonic()
        await loop.run_in_executor(None, runtime.wait_assigned, 30.0)
        log.info("agents have their partitions", seconds=round(time.monotonic() - joined, 2))
        ingest_task = None
        if source is not None:
            def progress(stats: IngestStats) -> None:
                status.ingest = stats

            ingest_task = asyncio.create_task(run_ingest(source, producer, settings, source_name=source_name, on_progress=progress))
        if until_drained:
            if ingest_task is not None:
                status.ingest = await ingest_task
            await _drain(settings, runtime, sink_processes, stop)
        else:
            stopped = asyncio.create_task(stop.wait())
            watch = asyncio.create_task(_watch(sink_processes, runtime))
            try:
                done, _ = await asyncio.wait([stopped, watch, *([ingest_task] if ingest_task else [])], return_when=asyncio.FIRST_COMPLETED)
                if ingest_task in done:
                    status.ingest = ingest_task.result()
                    done, _ = await asyncio.wait([stopped, watch], return_when=asyncio.FIRST_COMPLETED)
                if watch in done:
                    name = watch.result()  # raises SinkFailed or the agent's error
                    log.info("a sink process was stopped: stopping the run", sink=name)
            finally:
                for task in (stopped, watch, ingest_task):
                    if task is not None and not task.done():
                        task.cancel()
    finally:
        await loop.run_in_executor(None, runtime.close)
        if fanout is not None:
            await loop.run_in_executor(None, fanout.close)
        if sink_processes is not None:
            await loop.run_in_executor(None, sink_processes.close)
        await loop.run_in_executor(None, producer.close)
    return status


async def _watch(sinks: SinkProcesses | None, runtime: Runtime) -> str:
    """Return the name of a sink process stopped on request; raise SinkFailed when one ends any
    other way, or the error of an agent that stopped on one; else run forever."""
    while True:
        if sinks is not None and (name := sinks.check()):
            return name
        runtime.check()
        await asyncio.sleep(1.0)


async def _drain(settings: Settings, runtime: Runtime, sinks: SinkProcesses | None, stop: asyncio.Event) -> None:
    """Agent by agent in pipeline order: wait until it has every input record, then let it finish
    (timers finalize what it holds, e.g. open candle windows) and checkpoint; then wait until the
    sinks have every record."""
    for runner in runtime.runners:
        await _wait_caught_up(settings, runner, stop)
        await asyncio.wrap_future(runner.call(runner.finish))
        log.info("agent drained", agent=runner.name)
    log.info("agents drained; waiting for sinks")
    if sinks is None:
        return
    loop = asyncio.get_running_loop()
    # Lag must stay 0 for a while: a broker's end offsets can trail the last produced batch
    # (Tansu reports the last batch's base offset), and fetches only then show the true end.
    settled_since = None
    last: dict[str, int | None] = {}
    since = time.monotonic()
    while not stop.is_set():
        if name := sinks.check():
            raise SinkFailed(f"sink {name} was stopped before the run drained")
        lags = await loop.run_in_executor(None, sinks.lags)
        if all(v == 0 for v in lags.values()):
            settled_since = settled_since or time.monotonic()
            if time.monotonic() - settled_since >= DRAIN_SETTLE_S:
                return
        else:
            settled_since = None
        if lags != last:
            last, since = lags, time.monotonic()
        elif time.monotonic() - since > settings.agents.drain_stall_s:
            raise DrainStalled(f"sinks made no progress for {settings.agents.drain_stall_s:.0f} s: lag {lags}")
        await asyncio.sleep(0.3)
