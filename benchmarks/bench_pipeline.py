"""Pipeline benchmarks: candle agent throughput, end-to-end drain time, Redis latency, candle state size.

a. Candle worker trades/s beside Quix Streams: synthetic trades (100 symbols, ``generate_trades``
   at 20,000 trades/s of event time) as one trade per record, as records of 19 trades (what the
   live ``batch_max_ms`` gives at that rate) and of 220 (what ``unpaced_batch_max_ms`` gives),
   produced once per shape into a fresh ticks topic on a fresh broker. Per shape, tickflow's candle
   worker (``common.candle_worker_seconds``, a fresh process a run), a Quix Streams app doing the
   same 1m OHLCV (``benchmarks/quix_app.py`` in ``.venv-quix``) and a confluent-kafka consumer that
   only decodes the records, each timed from its first record to the last offset of every partition.
b. End to end: ``run_pipeline(until_drained=True)`` with an unpaced ``SyntheticSource``, fresh data
   dir (embedded ClickHouse), fresh PostgreSQL database and fresh topics; first trade pulled from the
   source to the moment every sink's group is committed to the end (last candle durable).
   Baseline: the same source through ``run_ingest`` alone (no worker, no sinks).
c. Latency from trade receipt to the in-progress 1m candle on Redis at 20,000 trades/s (see
   :func:`latencies` for the method), for the default ``candle_update_ms`` (also with the Redis
   sink alone, the store sinks off, and that way through the Redis sink) and for 100 ms, and at
   100 trades/s with 10 ms, where nothing queues (``--full`` adds
   100 ms with the Redis sink alone, and 1,000 trades/s). Also printed: the cores each part used while the source
   ran (broker, worker, ingest, each sink, PostgreSQL, Redis).
d. Memory per open (symbol, interval) window of a ``CandleBook`` (tracemalloc) and checkpoint size,
   with trade ids numbered consecutively per symbol as exchanges do, and with ids that are not numbers.

Run: ``.venv/bin/python -m benchmarks.bench_pipeline [--quick|--full] [--only abcd] [--broker tansu|mock]``;
``--broker mock`` runs on librdkafka's mock cluster instead of Tansu, to separate tickflow's share of
the latency from the broker's. On Tansu each run (each row of a.) gets a new broker
(``common.run_broker``): Tansu's cost grows with the topics it holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import tempfile
import threading
import time
import tracemalloc
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import (
    BROKERS,
    FETCH_QUEUE_BACKOFF_MS,
    broker,
    broker_name,
    candle_worker_seconds,
    console,
    cores_used,
    fmt_rate,
    fmt_ratio,
    fmt_s,
    fresh_pg_database,
    fresh_settings,
    median,
    process_cpu,
    produce_all,
    run_broker,
    quiet_logs,
    repeat,
    section,
    spread,
    table,
    tag,
    topic_ends,
)
from schemas.codec import AvroCodec
from schemas.models import Trade, TradeBatch
from streams.settings import AgentSettings, KafkaSettings, Settings, SourceSettings, StoreSettings
from streams.sources.base import MicroBatcher, Source, SourceItem
from streams.sources.synthetic import SyntheticSource, generate_trades

SYMBOLS = 100
EVENT_RATE = 20_000.0
CPU_SETTLE_S = 2.0  # the latency runs' CPU is read from this long after the source starts until it ends
FLOOR_RATE = 100.0  # trades/s low enough that nothing queues anywhere: the latency the layout itself adds
START_US = 1_700_000_000_000_000
DEFAULT_UPDATE_MS: int = AgentSettings.model_fields["candle_update_ms"].default
DEFAULT_BATCH_MS: int = SourceSettings.model_fields["batch_max_ms"].default
DEFAULT_BATCH_TRADES: int = SourceSettings.model_fields["batch_max_trades"].default
REPLAY_BATCH_MS: int = SourceSettings.model_fields["unpaced_batch_max_ms"].default
DEFAULT_PG = StoreSettings.model_fields["database_url"].default


# ------------------------------------------------------------------ a. candle agent throughput


def prepare_ticks(
    bootstrap: str, data_dir: Path, trades: int, batch_max_ms: int = DEFAULT_BATCH_MS, batch_max_trades: int = DEFAULT_BATCH_TRADES,
    start_us: int = START_US,
) -> tuple[Settings, dict[int, int], int, float]:
    """Produce ``trades`` synthetic trades as TradeBatch records; (settings, ends, records, prepare seconds)."""
    settings = fresh_settings(bootstrap, data_dir, batch_max_ms=batch_max_ms, batch_max_trades=batch_max_trades)
    started = time.perf_counter()
    batcher = MicroBatcher("bench", settings.sources.batch_max_trades, settings.sources.batch_max_ms)
    codec = AvroCodec("tickflow.TradeBatch")
    records = []
    for symbol, trade in generate_trades(SYMBOLS, limit=trades, start_us=start_us, event_rate=EVENT_RATE):
        for batch in batcher.add(symbol, trade):
            records.append((batch.key, codec.encode(batch.to_avro())))
    records.extend((b.key, codec.encode(b.to_avro())) for b in batcher.flush())
    prepare_s = time.perf_counter() - started
    produce_all(settings, records)
    ends = topic_ends(settings, settings.kafka.topic_ticks)
    if sum(ends.values()) != len(records):
        raise RuntimeError(f"ticks topic has {sum(ends.values())} records, produced {len(records)}")
    return settings, ends, len(records), prepare_s


def decode_run(bootstrap: str, ticks: str, ends: dict[int, int], timeout_s: float) -> float:
    """Baseline: a plain confluent-kafka consumer loop that only decodes the records (AvroCodec + TradeBatch)."""
    from confluent_kafka import Consumer

    codec = AvroCodec("tickflow.TradeBatch")
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"tickflow-bench-decode-{tag()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 8000,
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        }
    )
    consumer.subscribe([ticks])
    last = {p: hi - 1 for p, hi in ends.items() if hi > 0}
    remaining = set(last)
    first = None
    deadline = time.monotonic() + timeout_s
    try:
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.5):
                if msg.error() is not None:
                    continue
                if first is None:
                    first = time.perf_counter()
                TradeBatch.from_avro(codec.decode(msg.value()))
                if msg.offset() >= last.get(msg.partition(), math.inf):
                    remaining.discard(msg.partition())
        if remaining:
            raise TimeoutError(f"decode baseline did not reach the end of partitions {sorted(remaining)}")
        return time.perf_counter() - first
    finally:
        consumer.close()


@dataclass(frozen=True)
class Shape:
    """How many trades a ``ticks`` record carries. Records close on the count alone (their event-time
    limit is never reached), so every run of a shape has the same records."""

    name: str
    trades_per_record: int
    trades: int


SHAPES = (
    Shape("one trade per record (as most exchange bridges publish)", 1, 60_000),
    # What batch_max_ms=50 and unpaced_batch_max_ms=1000 give at 20,000 trades/s over 100 symbols.
    Shape(f"live-sized batches (batch_max_ms={DEFAULT_BATCH_MS})", 19, 150_000),
    Shape(f"replay-sized batches (unpaced_batch_max_ms={REPLAY_BATCH_MS})", 220, 150_000),
)
NEVER_MS = 3_600_000  # an event-time limit no shape's run reaches
# The trades start half a second before a minute boundary and span 3 s or more of event time, so
# every run closes a minute of every symbol (lateness and grace: 2 s) and emits its candles: the
# window close is part of the work measured.
SHAPE_START_US = START_US - START_US % 60_000_000 + 59_500_000


def candle_worker_1m(bootstrap: str, ticks: str, ends: dict[int, int], timeout_s: float) -> float:
    """The candle worker building 1m candles only, as the Quix app does."""
    return candle_worker_seconds(bootstrap, ticks, ends, timeout_s, candle_intervals="1m")


def bench_agent(bootstrap: str, shapes: tuple[Shape, ...], runs: int) -> None:
    """The candle worker beside Quix Streams and a decode-only consumer, per shape of record, on the
    same topic of the same broker (a new broker per shape)."""
    from benchmarks.quix import quix_run, quix_version

    t = table(
        f"a. 1m OHLCV candles, one worker/app: synthetic trades, {SYMBOLS} symbols, {EVENT_RATE:,.0f} trades/s of event time, "
        f"TradeBatch records on {broker_name(bootstrap)} (input built and produced once per shape, not timed); tickflow with candle_intervals=1m; "
        f"Quix Streams {quix_version()}: decode, expand to trades, tumbling 1m window per key (open, high, low, close, volume, count), closed windows emitted",
        "shape",
        "trades",
        "records",
        "trades/record",
        "consumer",
        "trades/s (median)",
        "runs",
        "min-max",
        "vs Quix",
        "vs decode-only",
    )
    notes: list[str] = []
    closed: list[str] = []  # closed 1m candles the Quix app emitted, per shape
    for shape in shapes:
        with tempfile.TemporaryDirectory(prefix="tickflow-bench-ticks-") as tmp, run_broker(bootstrap) as row_broker:
            settings, ends, records, _ = prepare_ticks(row_broker, Path(tmp), shape.trades, NEVER_MS, shape.trades_per_record, SHAPE_START_US)
            timeout = max(120.0, shape.trades / 2_000)
            ticks = settings.kafka.topic_ticks
            tickflow = repeat(runs, candle_worker_1m, row_broker, ticks, ends, timeout, timeout_s=timeout + 60)
            quix = repeat(runs, quix_run, row_broker, ticks, ends, timeout, fresh=False)
            baseline = repeat(runs, decode_run, row_broker, ticks, ends, timeout, fresh=False)
        rates = {"tickflow": [shape.trades / s for s in tickflow.ok], "quix": [shape.trades / s for s, _ in quix.ok], "decode": [shape.trades / s for s in baseline.ok]}
        closed.append(f"{shape.trades_per_record}: {median([n for _, n in quix.ok]):,.0f}" if quix.ok else f"{shape.trades_per_record}: -")
        q, d = median(rates["quix"]), median(rates["decode"])
        per = f"{shape.trades / records:.1f}"
        for label, name in (("tickflow candle worker", "tickflow"), ("Quix Streams", "quix"), ("confluent-kafka, decode only", "decode")):
            r = rates[name]
            t.add_row(
                shape.name if name == "tickflow" else "", f"{shape.trades:,}", f"{records:,}", per, label,
                fmt_rate(median(r)), str(len(r)), spread(r), fmt_ratio(median(r), q), fmt_ratio(median(r), d),
            )  # fmt: skip
        notes += [n for n in (tickflow.note(f"tickflow ({shape.name})"), quix.note(f"Quix ({shape.name})"), baseline.note(f"decode ({shape.name})")) if n]
    console.print(t)
    for note in notes:
        console.print(note)
    console.print(
        "   each run is a new process (tickflow) or a new app and consumer group (Quix), timed from its first record to the last offset of every "
        "partition; both consumers' librdkafka fetch.queue.backoff.ms is 1 (its 1000 ms default throttles a consumer of small records). "
        "tickflow's worker also deduplicates trade ids, keeps VWAP and taker volume, checkpoints and publishes in-progress candles. "
        f"Closed 1m candles the Quix app emitted a run, by trades/record: {', '.join(closed)} (the input crosses a minute boundary). "
        f"Targets: one trade per record >= 1.5x Quix; live batches >= 300,000 trades/s; replay batches >= 10x Quix."
    )


# ------------------------------------------------------------------ b. end to end


class TimedSource(Source):
    """Wraps a source: notes when the first item was pulled and each batch's receipt, and stops it
    after ``seconds`` (the wrapped source's ``aclose`` ends its stream after flushing)."""

    def __init__(self, inner: Source, on_batch: Callable[[TradeBatch, float], None] | None = None, seconds: float | None = None) -> None:
        self.inner = inner
        self.on_batch = on_batch
        self.seconds = seconds
        self.first: float | None = None
        self.finished: float | None = None

    async def stream(self) -> AsyncIterator[SourceItem]:
        self.first = time.monotonic()
        stop_at = math.inf if self.seconds is None else self.first + self.seconds
        stopping = False
        async for item in self.inner.stream():
            now = time.monotonic()
            if not stopping and now >= stop_at:
                stopping = True
                await self.inner.aclose()
            if self.on_batch is not None and isinstance(item, TradeBatch):
                self.on_batch(item, now)
            yield item
        self.finished = time.monotonic()

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class PipelineRun:
    """Seconds from the first trade pulled from the source to each milestone, and what the stores hold."""

    source_done: float
    agent_caught_up: float  # the candle agent has processed every ticks record
    drained: float  # every sink's group committed to the end: the last candle is durable
    startup: float  # run_pipeline called -> first trade pulled (sinks, migrations, consumer-group join)
    trades: int
    rows: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _synthetic(settings: Settings, *, limit: int | None, rate: float | None, exchange: str) -> SyntheticSource:
    return SyntheticSource(
        symbols=SYMBOLS, rate=rate, limit=limit, exchange=exchange, start_us=START_US, max_trades=settings.sources.batch_max_trades, max_ms=settings.sources.batch_max_ms
    )


def _run_drained(settings: Settings, source: TimedSource, notes: list[str]) -> PipelineRun:
    """run_pipeline until drained, timing its milestones through the module's own drain helpers.

    Drained is the first poll of the final run of polls in which every sink's lag was 0 (the
    pipeline then waits ``DRAIN_SETTLE_S`` more to be sure, which is not counted).
    """
    import streams.pipeline as pipeline

    marks: dict[str, float] = {}
    caught_up, lags = pipeline._wait_caught_up, pipeline.SinkProcesses.lags  # noqa: SLF001 - the only hooks on those moments

    async def timed_caught_up(settings: Settings, runner: Any, *args: Any) -> None:
        await caught_up(settings, runner, *args)
        if runner.name == "candles":
            marks.setdefault("caught_up", time.monotonic())

    def timed_lags(threads: Any) -> dict[str, int | None]:
        out = lags(threads)
        if all(v == 0 for v in out.values()):
            marks.setdefault("drained", time.monotonic())
        else:
            marks.pop("drained", None)
        return out

    pipeline._wait_caught_up, pipeline.SinkProcesses.lags = timed_caught_up, timed_lags  # type: ignore[method-assign]  # noqa: SLF001
    called = time.monotonic()
    try:
        status = asyncio.run(pipeline.run_pipeline(settings, source=source, source_name="synthetic", until_drained=True, say=notes.append))
    finally:
        pipeline._wait_caught_up, pipeline.SinkProcesses.lags = caught_up, lags  # type: ignore[method-assign]  # noqa: SLF001
    if source.first is None or source.finished is None or "drained" not in marks or status.ingest is None:
        raise RuntimeError(f"pipeline did not drain: {notes}")
    start = source.first
    return PipelineRun(
        source.finished - start,
        marks.get("caught_up", marks["drained"]) - start,
        marks["drained"] - start,
        start - called,
        status.ingest.trades,
        notes=notes,
    )


def e2e_run(bootstrap: str, trades: int) -> PipelineRun:
    """One drained pipeline run with fresh data dir, database and topics (fresh process: chdb)."""
    import psycopg

    from sinks.clickhouse import connect

    quiet_logs()
    with tempfile.TemporaryDirectory(prefix="tickflow-bench-e2e-") as tmp, fresh_pg_database(DEFAULT_PG) as db, run_broker(bootstrap) as own:
        settings = fresh_settings(own, Path(tmp), database_url=db or "")
        notes: list[str] = [] if db else ["PostgreSQL unreachable: postgres sink off"]
        source = TimedSource(_synthetic(settings, limit=trades, rate=None, exchange=f"bench{tag()}"))
        result = _run_drained(settings, source, notes)
        client = connect(settings.stores.clickhouse_dsn)
        try:
            result.rows["clickhouse trades"] = int(client.command("SELECT count() FROM trades"))
            result.rows["clickhouse candles"] = int(client.command("SELECT count() FROM candles FINAL"))
        finally:
            client.close()
        if db:
            with psycopg.connect(db) as conn:
                result.rows["postgres trades"] = conn.execute("SELECT count(*) FROM trades").fetchone()[0]
                result.rows["postgres candles"] = conn.execute("SELECT count(*) FROM candles").fetchone()[0]
        return result


def ingest_only_run(bootstrap: str, trades: int) -> float:
    """Baseline: the same unpaced source through run_ingest only; first pull -> every record acknowledged."""
    from streams.ingest import run_ingest
    from streams.producer import RecordProducer

    quiet_logs()
    with tempfile.TemporaryDirectory(prefix="tickflow-bench-ingest-only-") as tmp, run_broker(bootstrap) as own:
        settings = fresh_settings(own, Path(tmp))
        source = TimedSource(_synthetic(settings, limit=trades, rate=None, exchange=f"bench{tag()}"))
        asyncio.run(run_ingest(source, RecordProducer(settings), settings, source_name="synthetic"))
        assert source.first is not None
        return time.monotonic() - source.first


def bench_e2e(bootstrap: str, trades: int, runs: int) -> None:
    attempt = repeat(runs, e2e_run, bootstrap, trades, timeout_s=max(180.0, trades / 200))
    baseline = repeat(runs, ingest_only_run, bootstrap, trades, fresh=False)
    results = attempt.ok
    rates = [trades / r.drained for r in results]
    b_rates = [trades / s for s in baseline.ok]
    rows = results[-1].rows if results else {}
    lost = [f"run {i + 1}: {k} {v:,} of {r.trades:,} ingested" for i, r in enumerate(results) for k, v in r.rows.items() if k.endswith("trades") and v != r.trades]
    t = table(
        f"b. End to end: {trades:,} unpaced synthetic trades, {SYMBOLS} symbols -> Tansu -> candle agent -> ClickHouse (chdb), PostgreSQL, Redis",
        "measure",
        "seconds (median)",
        "trades/s (median)",
        "runs",
        "min-max trades/s",
        "e2e / it",
    )
    t.add_row("first trade pulled -> last candle durable in every sink", fmt_s(median([r.drained for r in results])), fmt_rate(median(rates)), str(len(rates)), spread(rates), "1.00x")
    t.add_row("baseline: same source through run_ingest only", fmt_s(median(baseline.ok)), fmt_rate(median(b_rates)), str(len(b_rates)), spread(b_rates), fmt_ratio(median(rates), median(b_rates)))
    console.print(t)
    for note in (attempt.note("end-to-end"), baseline.note("ingest-only")):
        if note:
            console.print(note)
    if not results:
        return
    console.print(
        f"   milestones (median s after the first trade): source done {median([r.source_done for r in results]):.1f}, "
        f"candle agent caught up {median([r.agent_caught_up for r in results]):.1f}, sinks drained {median([r.drained for r in results]):.1f}; "
        f"startup before the first trade (sinks, migrations, consumer-group join) {median([r.startup for r in results]):.1f} s, not counted. "
        f"Last run's stores: {', '.join(f'{k} {v:,}' for k, v in rows.items())}"
        + (f"; [red]MISMATCH[/] {', '.join(lost)}" if lost else "")
        + (f"; notes: {'; '.join(sorted({n for r in results for n in r.notes}))}" if any(r.notes for r in results) else "")
    )


# ------------------------------------------------------------------ c. latency to Redis


@dataclass
class LatencyRun:
    p50_ms: float
    p99_ms: float
    batches: int  # measured (after warm-up)
    covered: float  # share of post-warm-up batches a Redis update was seen for
    achieved_rate: float  # trades/s the source actually delivered
    cores: dict[str, float]  # cores each part used while the source ran (after CPU_SETTLE_S)


def latencies(batches: dict[str, list[tuple[int, float, int]]], messages: dict[str, list[tuple[float, int]]], since: float) -> tuple[list[tuple[float, int]], int, int]:
    """Per batch: time from its receipt to the first in-progress 1m update on Redis that includes it.

    ``batches[symbol]`` holds (last trade id, receipt time, trades) in receipt order and
    ``messages[symbol]`` (arrival time, last_trade_id) in arrival order. Synthetic trade ids rise
    per symbol and trades arrive in order, so a candle includes a batch once its ``last_trade_id``
    is at or past the batch's last trade; an update that coalesced several batches counts for each
    of them, from its own receipt. Batches received before ``since`` (warm-up) are left out.
    Returns (latency seconds, trades) samples, measured batches and batches without an update.
    """
    samples: list[tuple[float, int]] = []
    measured = uncovered = 0
    for symbol, todo in batches.items():
        msgs = messages.get(symbol, [])
        j = 0
        for arrived, last_id in msgs:
            while j < len(todo) and todo[j][0] <= last_id:
                _, received, n = todo[j]
                if received >= since:
                    samples.append((arrived - received, n))
                    measured += 1
                j += 1
        uncovered += sum(1 for _, received, _ in todo[j:] if received >= since)
    return samples, measured, uncovered


def weighted_percentile(samples: list[tuple[float, int]], q: float) -> float:
    ordered = sorted(samples)
    total = sum(w for _, w in ordered)
    acc = 0
    for value, w in ordered:
        acc += w
        if acc >= q * total:
            return value
    return ordered[-1][0]


def _listen(url: str, pattern: str, ready: Any, stop: Any, conn: Connection) -> None:
    """The Redis subscriber, in its own process so that it does not take interpreter time from the
    pipeline it measures: notes (arrival, last_trade_id) of each in-progress update per symbol,
    reports each symbol's newest last_trade_id a few times a second and everything at the end."""
    import redis

    pubsub = redis.Redis.from_url(url).pubsub()
    pubsub.psubscribe(pattern)
    while (pubsub.get_message(timeout=1.0) or {}).get("type") != "psubscribe":
        pass
    ready.set()
    messages: dict[str, list[tuple[float, int]]] = defaultdict(list)
    reported = 0.0
    while not stop.is_set():
        msg = pubsub.get_message(timeout=0.05)
        if msg is not None and msg["type"] == "pmessage":
            arrived = time.monotonic()  # CLOCK_MONOTONIC: the same clock in every process
            doc = orjson.loads(msg["data"])
            if not doc["is_final"] and doc["last_trade_id"] is not None:
                messages[doc["symbol"]].append((arrived, int(doc["last_trade_id"])))
        if time.monotonic() - reported > 0.2:
            reported = time.monotonic()
            conn.send(("progress", {symbol: m[-1][1] for symbol, m in messages.items()}))
    pubsub.close()
    conn.send(("done", dict(messages)))


def _ingest(settings: Settings, rate: float, seconds: float, exchange: str, start: Any, conn: Connection) -> None:
    """The paced source in a process of its own, as ``tickflow ingest`` runs in production: returns
    each batch's (symbol, last trade id, receipt time, trades) and the source's first and last moments."""
    from streams.ingest import run_ingest
    from streams.producer import RecordProducer

    quiet_logs()
    batches: list[tuple[str, int, float, int]] = []

    def on_batch(batch: TradeBatch, at: float) -> None:
        batches.append((batch.symbol, int(batch.trades[-1].trade_id), at, len(batch.trades)))

    producer = RecordProducer(settings)
    start.wait()
    source = TimedSource(_synthetic(settings, limit=None, rate=rate, exchange=exchange), on_batch, seconds)
    asyncio.run(run_ingest(source, producer, settings, source_name="synthetic"))
    producer.close()
    conn.send((batches, source.first, source.finished))


def latency_run(
    bootstrap: str, rate: float, seconds: float, update_ms: int, warmup_s: float, stores: bool = True, updates: str = "redis", settle_s: float = 120.0
) -> LatencyRun:
    """One run in the production layout: the paced source in its own process (``tickflow ingest``),
    the worker (agents) in this one and each sink in its own (``run_pipeline`` without a source), a
    Redis subscriber on the 1m channels in another. Without ``stores`` only the Redis sink runs: the
    realtime path alone, as when ClickHouse and PostgreSQL are written from other hosts.

    The run ends once every symbol's last batch has reached Redis, or ``settle_s`` after the source
    stopped; the other sinks' backlog is not waited for.
    """
    quiet_logs()
    if not stores:
        import streams.pipeline as pipeline

        pipeline.configured_sinks = lambda settings: ["redis"]  # this process only: the run's own
    batches: dict[str, list[tuple[int, float, int]]] = defaultdict(list)
    newest: dict[str, int] = {}

    def all_seen() -> bool:
        return all(newest.get(s, -1) >= todo[-1][0] for s, todo in list(batches.items()))

    with (
        tempfile.TemporaryDirectory(prefix="tickflow-bench-latency-") as tmp,
        fresh_pg_database(DEFAULT_PG if stores else "") as db,
        run_broker(bootstrap) as own,
    ):
        settings = fresh_settings(own, Path(tmp), database_url=db or "", candle_update_ms=update_ms, candle_updates=updates)
        if not settings.stores.redis_url:
            raise RuntimeError("REDIS_URL is empty: the latency benchmark needs Redis")
        exchange = f"bench{tag()}"
        ctx = get_context("spawn")
        ready, stop, start = ctx.Event(), ctx.Event(), ctx.Event()
        mine, theirs = ctx.Pipe(duplex=False)
        listener = ctx.Process(target=_listen, args=(settings.stores.redis_url, f"candles:{exchange}:*:1m", ready, stop, theirs), name="bench-redis")
        listener.start()
        from_ingest, to_main = ctx.Pipe(duplex=False)
        ingest = ctx.Process(target=_ingest, args=(settings, rate, seconds, exchange, start, to_main), name="bench-ingest")
        ingest.start()
        if not ready.wait(30):
            raise RuntimeError("the Redis subscriber did not start")
        final: dict[str, list[tuple[float, int]]] = {}

        def receive() -> None:
            while True:
                kind, data = mine.recv()
                if kind == "done":
                    final.update(data)
                    return
                newest.update(data)

        receiver = threading.Thread(target=receive, name="bench-redis-progress", daemon=True)
        receiver.start()
        ingested: list[Any] = []
        cores: dict[str, float] = {}
        labels = {os.getpid(): "worker", ingest.pid: "ingest", listener.pid: "subscriber (benchmark)"}
        try:
            asyncio.run(_run_until(settings, start, from_ingest, ingested, all_seen, batches, settle_s, labels, cores))
        finally:
            stop.set()
            receiver.join(30)
            listener.join(10)
            ingest.join(10)
    if not ingested:
        raise RuntimeError("the ingest process ended without a report")
    _, first, finished = ingested[0]
    messages = final
    first_update = min((m[0][0] for m in messages.values() if m), default=math.inf)
    samples, measured, uncovered = latencies(batches, messages, first_update + warmup_s)
    if not samples:
        raise RuntimeError("no in-progress candle reached Redis")
    trades = sum(n for todo in batches.values() for _, _, n in todo)
    return LatencyRun(
        weighted_percentile(samples, 0.50) * 1000,
        weighted_percentile(samples, 0.99) * 1000,
        measured,
        measured / (measured + uncovered),
        trades / (finished - first),
        cores,
    )


async def _run_until(
    settings: Settings, start: Any, from_ingest: Connection, ingested: list[Any], done: Callable[[], bool],
    batches: dict[str, list[tuple[int, float, int]]], settle_s: float, labels: dict[int, str], cores: dict[str, float],
) -> None:
    """run_pipeline without a source; the ingest process starts once the worker holds partitions.
    Stops the pipeline when ingest has reported and ``done()`` holds (or ``settle_s`` passed).
    ``cores`` gets what each process used from ``CPU_SETTLE_S`` after the start to the source's end."""
    from streams.pipeline import RunStatus, run_pipeline

    status = RunStatus()
    task = asyncio.create_task(run_pipeline(settings, source=None, source_name="-", until_drained=False, say=lambda _: None, status=status))
    loop = asyncio.get_running_loop()
    # Every ticks partition gets its state (loaded one at a time) within a few seconds of the group
    # join; a source started before then queued its first records behind those loads, and at this
    # rate the worker took many seconds to work off that backlog, which counted as latency.
    joined = time.monotonic() + 60
    while not task.done() and (status.worker is None or len(status.worker.parts) < settings.kafka.ticks_partitions) and time.monotonic() < joined:
        await asyncio.sleep(0.1)
    start.set()
    if status.sinks is not None:
        labels.update({proc.pid: f"{name} sink" for name, proc in status.sinks.procs.items() if proc.pid is not None})

    async def reading() -> tuple[float, dict[int, tuple[str, float]]]:
        await asyncio.sleep(CPU_SETTLE_S)
        return time.monotonic(), await loop.run_in_executor(None, process_cpu)

    first_reading = asyncio.create_task(reading())
    report = await loop.run_in_executor(None, from_ingest.recv)
    if first_reading.done():
        since, before = first_reading.result()
        cores.update(cores_used(before, await loop.run_in_executor(None, process_cpu), time.monotonic() - since, labels))
    else:
        first_reading.cancel()
    ingested.append(report)
    for symbol, last_id, at, n in report[0]:
        batches[symbol].append((last_id, at, n))
    deadline = time.monotonic() + settle_s
    while not task.done() and not done() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def bench_latency(bootstrap: str, scenarios: list[tuple[float, int, int, bool, str]], seconds: float, warmup_s: float = 2.0) -> None:
    """``scenarios``: (trades/s, candle_update_ms, runs, store sinks on, candle_updates)."""
    t = table(
        f"c. Trade receipt -> its in-progress 1m candle on Redis: paced synthetic source, {SYMBOLS} symbols, {seconds:.0f} s of input per run, "
        f"broker: {broker_name(bootstrap)}, "
        f"production layout: the source in its own process (tickflow ingest), the worker in another, each sink in its own (candle_updates={AgentSettings.model_fields['candle_updates'].default}, "
        f"consumer_fetch_wait_ms={KafkaSettings.model_fields['consumer_fetch_wait_ms'].default}; target p99 <= 50 ms at 20,000 trades/s)",
        "trades/s asked",
        "candle_update_ms",
        "sinks",
        "candle_updates",
        "p50 ms (median)",
        "p99 ms (median)",
        "runs",
        "p99 min-max",
        "achieved trades/s",
        "batches measured",
    )
    failures: list[str] = []
    cpu: list[list[dict[str, float]]] = []
    for rate, update_ms, runs, stores, updates in scenarios:
        attempt = repeat(runs, latency_run, bootstrap, rate, seconds, update_ms, warmup_s, stores, updates, timeout_s=seconds + 180)
        results = attempt.ok
        cpu.append([r.cores for r in results if r.cores])
        achieved = median([r.achieved_rate for r in results])
        failures.append(attempt.note(f"{fmt_rate(rate)} trades/s, {update_ms} ms"))
        t.add_row(
            fmt_rate(rate),
            f"{update_ms} (default)" if update_ms == DEFAULT_UPDATE_MS else str(update_ms),
            "all" if stores else "Redis only",
            updates + (" (worker)" if updates != "kafka" else " (Redis sink)"),
            fmt_rate(median([r.p50_ms for r in results])),
            fmt_rate(median([r.p99_ms for r in results])),
            str(len(results)),
            spread([r.p99_ms for r in results]),
            fmt_rate(achieved) + (" [red](source starved)[/]" if achieved < 0.9 * rate else ""),
            f"{median([r.batches for r in results]):,.0f} ({min(r.covered for r in results):.1%} seen)" if results else "-",
        )
    console.print(t)
    for note in failures:
        if note:
            console.print(note)
    for (rate, update_ms, _, stores, updates), runs_cores in zip(scenarios, cpu, strict=True):
        if runs_cores:
            labels = sorted({label for c in runs_cores for label in c}, key=lambda k: -median([c.get(k, 0.0) for c in runs_cores]))
            used = " · ".join(f"{label} {median([c.get(label, 0.0) for c in runs_cores]):.2f}" for label in labels)
            which = ("" if stores else ", Redis sink only") + f", candle_updates={updates}"
            console.print(f"   cores used at {fmt_rate(rate)} trades/s, {update_ms} ms{which} (median of runs, while the source ran): {used}")
    console.print(
        "   method: a source wrapper in the ingest process notes each batch's receipt (time.monotonic when the ingest loop gets it) and last trade id; "
        "a Redis subscriber in a process of its own notes each in-progress 1m message's arrival and last_trade_id; a batch's "
        "latency is the arrival of the first message of its symbol whose last_trade_id reaches the batch's last trade, weighted by "
        f"the batch's trades; batches received before the first update + {warmup_s:.0f} s (consumer-group join) are left out. There is no "
        "separate baseline: candle_update_ms (throttle) is the floor the pipeline adds on purpose. "
        f"A busy symbol's update waits for its throttle, so the p99 of a steady stream cannot be below about candle_update_ms, whatever the "
        f"pipeline does: 100 ms is measured beside the default {DEFAULT_UPDATE_MS} ms. At 20,000 trades/s the source "
        "sends a record per symbol about every 50 ms, so at 25 ms every record's update goes out at once. "
        f"At {FLOOR_RATE:,.0f} trades/s nothing queues: that row is what the layout itself adds (the broker hop from ingest to the worker, "
        "about one consumer_fetch_wait_ms on Tansu, which holds every fetch for its full wait; the worker's call to Redis; the processes). "
        "With candle_updates=kafka updates take a second hop, through candles-live and the Redis sink and its batch window. "
        "\"Redis only\" runs the realtime path without the ClickHouse and PostgreSQL sinks (and PostgreSQL idle), as when the "
        "stores are written from other hosts: what the store writers' CPU adds on this machine."
    )


# ------------------------------------------------------------------ d. memory per open window


def _two_minutes(symbols: int, per_minute: int, numbered: bool) -> Any:
    from agents.candles import CandleBook, CandleConfig

    day = START_US - START_US % 86_400_000_000
    step = 50_000_000 // per_minute  # trades within seconds 5..55 of their minute
    book = CandleBook(CandleConfig())
    for minute in (0, 1):
        for s in range(symbols):
            base = day + minute * 60_000_000 + 5_000_000  # minute 1 moves the watermark past minute 0's end
            first = 10**9 * (s + 1) + minute * per_minute
            trades = [
                Trade(str(first + i) if numbered else f"{s}-{minute}-{i}", base + i * step, 100.0 + i % 7, 0.5, "buy" if i % 2 else "sell")
                for i in range(per_minute)
            ]
            book.add("bench", f"SYM{s}", trades)
            del trades
    return book


def book_memory(symbols: int, per_minute: int) -> tuple[float, float, int, float, float, float]:
    """(bytes per open window, bytes per symbol, open windows, checkpoint bytes per symbol zlib and
    raw with trade ids numbered as exchanges do, zlib with ids that are not numbers).

    Every symbol gets ``per_minute`` trades in each of two minutes; the first minute is then final,
    so each symbol has its live 1m window and five open higher windows (5m..1d), plus what the book
    keeps for late trades (the final minute and its trade ids, for the grace period). Memory is
    what stays allocated after the input is dropped: the book, its aggregates and the trade ids.
    """
    from streams.checkpoint import encode_checkpoint

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    book = _two_minutes(symbols, per_minute, numbered=True)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    windows = book.open_windows()
    snap = book.snapshot()
    packed = len(encode_checkpoint({"ticks": 0}, orjson.dumps(snap)))
    raw = len(orjson.dumps(snap))
    labelled = len(encode_checkpoint({"ticks": 0}, orjson.dumps(_two_minutes(symbols, per_minute, numbered=False).snapshot())))
    return used / windows, used / symbols, windows, packed / symbols, raw / symbols, labelled / symbols


def bench_memory(runs: int) -> None:
    t = table(
        "d. CandleBook state: 6 intervals (1m..1d) open per symbol, two traded minutes, tracemalloc (deterministic, so 3 runs)",
        "case",
        "bytes / open window (median)",
        "bytes / symbol",
        "runs",
        "open windows",
        "checkpoint B / symbol (zlib)",
        "uncompressed",
        "zlib, ids not numbers",
    )
    for symbols, per_minute in ((1000, 1), (200, 60), (100, 600)):
        results = [book_memory(symbols, per_minute) for _ in range(runs)]
        t.add_row(
            f"{symbols:,} symbols, {per_minute:,} trade{'s' if per_minute > 1 else ''}/min each",
            fmt_rate(median([r[0] for r in results])),
            fmt_rate(median([r[1] for r in results])),
            str(runs),
            f"{results[0][2]:,}",
            fmt_rate(median([r[3] for r in results])),
            fmt_rate(median([r[4] for r in results])),
            fmt_rate(median([r[5] for r in results])),
        )
    console.print(t)


# ------------------------------------------------------------------ entry points


@dataclass(frozen=True)
class Plan:
    """Sizes of the pipeline benchmarks. The defaults keep ``make bench`` near ten minutes on two
    cores: each pipeline run costs a fresh process, about 6 s of startup (consumer-group join) and a drain
    tail, whatever its size; a Quix Streams run about 5 s of its own (topic creation, group join).
    Latency is measured at the target's 20,000 trades/s (the Redis sink alone, first, then all sinks) and at
    ``FLOOR_RATE``, where nothing queues; the realtime path alone and the floor also with updates through the Redis sink
    (``CANDLE_UPDATES=kafka``). ``--full`` uses 5 throughput runs, 200k trades end to end, 15 s latency
    runs, and adds latency at 1,000 trades/s."""

    shapes: tuple[Shape, ...] = SHAPES
    agent_runs: int = 3
    e2e_trades: int = 20_000
    e2e_runs: int = 3
    latency_s: float = 8.0
    latency: tuple[tuple[float, int, int, bool, str], ...] = (
        (EVENT_RATE, DEFAULT_UPDATE_MS, 3, False, "redis"), (EVENT_RATE, DEFAULT_UPDATE_MS, 3, True, "redis"), (EVENT_RATE, DEFAULT_UPDATE_MS, 3, False, "kafka"),
        (EVENT_RATE, 100, 3, True, "redis"), (FLOOR_RATE, 10, 3, True, "redis"), (FLOOR_RATE, 10, 3, True, "kafka"),
    )
    memory_runs: int = 3


FULL = Plan(
    agent_runs=5,
    e2e_trades=200_000,
    latency_s=15.0,
    latency=(
        (EVENT_RATE, DEFAULT_UPDATE_MS, 3, False, "redis"), (EVENT_RATE, DEFAULT_UPDATE_MS, 3, False, "kafka"), (EVENT_RATE, DEFAULT_UPDATE_MS, 3, True, "redis"),
        (EVENT_RATE, DEFAULT_UPDATE_MS, 3, True, "kafka"), (EVENT_RATE, 100, 3, True, "redis"), (EVENT_RATE, 100, 3, False, "redis"),
        (1_000.0, DEFAULT_UPDATE_MS, 3, True, "redis"), (1_000.0, 100, 3, True, "redis"), (FLOOR_RATE, 10, 3, True, "redis"), (FLOOR_RATE, 10, 3, True, "kafka"),
    ),
)


# One run of everything, same sizes: for iterating on a change, not for reporting.
QUICK = Plan(
    agent_runs=1,
    e2e_runs=1,
    latency=(
        (EVENT_RATE, DEFAULT_UPDATE_MS, 1, False, "redis"), (EVENT_RATE, DEFAULT_UPDATE_MS, 1, True, "redis"), (EVENT_RATE, DEFAULT_UPDATE_MS, 1, False, "kafka"),
        (EVENT_RATE, 100, 1, True, "redis"), (FLOOR_RATE, 10, 1, True, "redis"), (FLOOR_RATE, 10, 1, True, "kafka"),
    ),
    memory_runs=1,
)


def run(bootstrap: str, plan: Plan = Plan(), only: str = "abcd") -> None:
    if "a" in only:
        section(bench_agent, bootstrap, plan.shapes, plan.agent_runs)
    if "b" in only:
        section(bench_e2e, bootstrap, plan.e2e_trades, plan.e2e_runs)
    if "c" in only:
        section(bench_latency, bootstrap, list(plan.latency), plan.latency_s)
    if "d" in only:
        section(bench_memory, plan.memory_runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="larger sizes (see Plan): about 20 minutes")
    size.add_argument("--quick", action="store_true", help="one run of each measurement, to iterate on a change")
    ap.add_argument("--only", default="abcd", help="which parts: a agent, b end to end, c latency, d memory (e.g. --only ac)")
    ap.add_argument(
        "--broker", choices=BROKERS, default="tansu",
        help="embedded Tansu (as tickflow run) or librdkafka's mock cluster, a broker that costs next to nothing (KAFKA_BOOTSTRAP overrides both)",
    )
    args = ap.parse_args()
    quiet_logs()
    with broker(args.broker) as bootstrap:
        run(bootstrap, FULL if args.full else QUICK if args.quick else Plan(), args.only)


if __name__ == "__main__":
    main()
