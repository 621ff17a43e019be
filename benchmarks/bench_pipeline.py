"""Pipeline benchmarks: candle agent throughput, end-to-end drain time, Redis latency, candle state size.

a. Candle agent trades/s on one worker: 1M synthetic trades (100 symbols, ``generate_trades`` at
   20,000 trades/s of event time, cut by ``MicroBatcher`` with the default 500 trades / 50 ms) are
   produced once into a fresh ticks topic; each run starts a Faust app with the candle agent in a
   fresh process and times first record to the last offset of every partition processed.
   Baseline: a confluent-kafka consumer that only decodes the same records (own group).
b. End to end: ``run_pipeline(until_drained=True)`` with an unpaced ``SyntheticSource``, fresh data
   dir (embedded ClickHouse), fresh PostgreSQL database and fresh topics; first trade pulled from the
   source to the moment every sink's group is committed to the end (last candle durable).
   Baseline: the same source through ``run_ingest`` alone (no worker, no sinks).
c. Latency from trade receipt to the in-progress 1m candle on Redis at 20,000 trades/s (see
   :func:`latencies` for the method), for the default ``candle_update_ms`` and for 10 ms.
d. Memory per open (symbol, interval) window of a ``CandleBook`` (tracemalloc) and checkpoint size.

Run: ``.venv/bin/python -m benchmarks.bench_pipeline``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import tempfile
import threading
import time
import tracemalloc
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import (
    broker,
    console,
    fmt_rate,
    fmt_ratio,
    fresh_pg_database,
    fresh_settings,
    in_fresh_process,
    median,
    produce_all,
    quiet_logs,
    spread,
    table,
    tag,
    topic_ends,
)
from schemas.codec import AvroCodec
from schemas.models import Trade, TradeBatch
from streams.settings import Settings
from streams.sources.base import MicroBatcher, Source, SourceItem
from streams.sources.synthetic import SyntheticSource, generate_trades

SYMBOLS = 100
EVENT_RATE = 20_000.0
START_US = 1_700_000_000_000_000
DEFAULT_UPDATE_MS: int = Settings.model_fields["candle_update_ms"].default
DEFAULT_PG = Settings.model_fields["database_url"].default


# ------------------------------------------------------------------ a. candle agent throughput


def prepare_ticks(bootstrap: str, data_dir: Path, trades: int) -> tuple[Settings, dict[int, int], int, float]:
    """Produce ``trades`` synthetic trades as TradeBatch records; (settings, ends, records, prepare seconds)."""
    settings = fresh_settings(bootstrap, data_dir)
    started = time.perf_counter()
    batcher = MicroBatcher("bench", settings.batch_max_trades, settings.batch_max_ms)
    codec = AvroCodec("tickflow.TradeBatch")
    records = []
    for symbol, trade in generate_trades(SYMBOLS, limit=trades, start_us=START_US, event_rate=EVENT_RATE):
        for batch in batcher.add(symbol, trade):
            records.append((batch.key, codec.encode(batch.to_avro())))
    records.extend((b.key, codec.encode(b.to_avro())) for b in batcher.flush())
    prepare_s = time.perf_counter() - started
    produce_all(settings, records)
    ends = topic_ends(settings, settings.topic_ticks)
    if sum(ends.values()) != len(records):
        raise RuntimeError(f"ticks topic has {sum(ends.values())} records, produced {len(records)}")
    return settings, ends, len(records), prepare_s


def agent_run(bootstrap: str, ticks: str, ends: dict[int, int], timeout_s: float) -> float:
    """Seconds from the candle agent's first record to its last offset of every partition (fresh process)."""
    quiet_logs()
    with tempfile.TemporaryDirectory(prefix="tickflow-bench-agent-") as tmp:
        settings = fresh_settings(bootstrap, Path(tmp), ticks=ticks)
        return asyncio.run(_agent(settings, ends, timeout_s))


async def _agent(settings: Settings, ends: dict[int, int], timeout_s: float) -> float:
    from agents.candle_agent import register_candle_agent
    from streams.app import create_app
    from streams.producer import TickProducer

    producer = TickProducer(settings)
    app = create_app(settings)
    worker = register_candle_agent(app, settings, producer)
    last = {p: hi - 1 for p, hi in ends.items() if hi > 0}
    remaining = set(last)
    done = asyncio.Event()
    marks: dict[str, float] = {}
    handle = worker.handle

    def timed_handle(partition: int, offset: int, key: bytes | None, value: bytes | None) -> int | None:
        marks.setdefault("first", time.perf_counter())
        target = handle(partition, offset, key, value)
        if partition in remaining and offset >= last[partition]:
            remaining.discard(partition)
            if not remaining:
                marks["last"] = time.perf_counter()
                done.set()
        return target

    worker.handle = timed_handle  # type: ignore[method-assign]
    await app.start()
    try:
        await asyncio.wait_for(done.wait(), timeout_s)
    finally:
        await app.stop()
        await asyncio.get_running_loop().run_in_executor(None, producer.flush)
    return marks["last"] - marks["first"]


def decode_run(bootstrap: str, ticks: str, ends: dict[int, int], timeout_s: float) -> float:
    """Baseline: a plain consumer loop that only decodes the records (AvroCodec + TradeBatch)."""
    from confluent_kafka import Consumer

    codec = AvroCodec("tickflow.TradeBatch")
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"tickflow-bench-decode-{tag()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 8000,
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


def bench_agent(bootstrap: str, trades: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="tickflow-bench-ticks-") as tmp:
        settings, ends, records, prepare_s = prepare_ticks(bootstrap, Path(tmp), trades)
        timeout = max(120.0, trades / 5_000)
        framework = [in_fresh_process(agent_run, bootstrap, settings.topic_ticks, ends, timeout) for _ in range(runs)]
        baseline = [decode_run(bootstrap, settings.topic_ticks, ends, timeout) for _ in range(runs)]
    f_rates = [trades / s for s in framework]
    b_rates = [trades / s for s in baseline]
    t = table(
        f"a. Candle agent, one worker: {trades:,} trades, {SYMBOLS} symbols, {records:,} records ({trades / records:.1f} trades/record), "
        f"{len(ends)} partitions (input generated + batched in {prepare_s:.1f} s = {fmt_rate(trades / prepare_s)} trades/s)",
        "measure",
        "trades/s (median)",
        "runs",
        "min-max",
        "agent / it",
    )
    t.add_row("Faust candle agent (decode, CandleBook, outputs, checkpoints)", fmt_rate(median(f_rates)), str(runs), spread(f_rates), "1.00x")
    t.add_row("baseline: confluent-kafka consumer, decode only", fmt_rate(median(b_rates)), str(runs), spread(b_rates), fmt_ratio(median(f_rates), median(b_rates)))
    console.print(t)


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
        self.first = time.perf_counter()
        stop_at = math.inf if self.seconds is None else self.first + self.seconds
        stopping = False
        async for item in self.inner.stream():
            now = time.perf_counter()
            if not stopping and now >= stop_at:
                stopping = True
                await self.inner.aclose()
            if self.on_batch is not None and isinstance(item, TradeBatch):
                self.on_batch(item, now)
            yield item
        self.finished = time.perf_counter()

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class PipelineRun:
    seconds: float  # first trade pulled -> drained (or source finished, for ingest only)
    startup_s: float  # run_pipeline called -> first trade pulled
    trades: int
    rows: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _synthetic(settings: Settings, *, limit: int | None, rate: float | None, exchange: str) -> SyntheticSource:
    return SyntheticSource(symbols=SYMBOLS, rate=rate, limit=limit, exchange=exchange, max_trades=settings.batch_max_trades, max_ms=settings.batch_max_ms)


def _run_drained(settings: Settings, source: TimedSource, notes: list[str]) -> tuple[float, float, int]:
    """run_pipeline until drained; (first pull -> drained, call -> first pull, trades ingested)."""
    import streams.pipeline as pipeline

    drained: dict[str, float] = {}
    original = pipeline._drain  # noqa: SLF001 - the only hook on "every sink committed to the end"

    async def timed_drain(*args: Any) -> None:
        await original(*args)
        drained["at"] = time.perf_counter()

    pipeline._drain = timed_drain  # noqa: SLF001
    called = time.perf_counter()
    status = asyncio.run(pipeline.run_pipeline(settings, source=source, source_name="synthetic", until_drained=True, say=notes.append))
    if source.first is None or "at" not in drained or status.ingest is None:
        raise RuntimeError(f"pipeline did not drain: {notes}")
    return drained["at"] - source.first, source.first - called, status.ingest.trades


def e2e_run(bootstrap: str, trades: int) -> PipelineRun:
    """One drained pipeline run with fresh data dir, database and topics (fresh process: chdb)."""
    import psycopg

    from sinks.clickhouse import connect

    quiet_logs()
    with tempfile.TemporaryDirectory(prefix="tickflow-bench-e2e-") as tmp, fresh_pg_database(DEFAULT_PG) as db:
        settings = fresh_settings(bootstrap, Path(tmp), database_url=db or "")
        notes: list[str] = [] if db else ["PostgreSQL unreachable: postgres sink off"]
        source = TimedSource(_synthetic(settings, limit=trades, rate=None, exchange=f"bench{tag()}"))
        seconds, startup, ingested = _run_drained(settings, source, notes)
        rows = {}
        client = connect(settings.clickhouse_dsn)
        try:
            rows["clickhouse trades"] = int(client.command("SELECT count() FROM trades"))
            rows["clickhouse candles"] = int(client.command("SELECT count() FROM candles FINAL"))
        finally:
            client.close()
        if db:
            with psycopg.connect(db) as conn:
                rows["postgres trades"] = conn.execute("SELECT count(*) FROM trades").fetchone()[0]
                rows["postgres candles"] = conn.execute("SELECT count(*) FROM candles").fetchone()[0]
        return PipelineRun(seconds, startup, ingested, rows, notes)


def ingest_only_run(bootstrap: str, trades: int) -> float:
    """Baseline: the same unpaced source through run_ingest only; first pull -> every record acknowledged."""
    from streams.ingest import run_ingest
    from streams.producer import TickProducer

    quiet_logs()
    with tempfile.TemporaryDirectory(prefix="tickflow-bench-ingest-only-") as tmp:
        settings = fresh_settings(bootstrap, Path(tmp))
        source = TimedSource(_synthetic(settings, limit=trades, rate=None, exchange=f"bench{tag()}"))
        asyncio.run(run_ingest(source, TickProducer(settings), settings, source_name="synthetic"))
        assert source.first is not None
        return time.perf_counter() - source.first


def bench_e2e(bootstrap: str, trades: int, runs: int) -> None:
    results = [in_fresh_process(e2e_run, bootstrap, trades) for _ in range(runs)]
    baseline = [in_fresh_process(ingest_only_run, bootstrap, trades) for _ in range(runs)]
    seconds = [r.seconds for r in results]
    rates = [trades / s for s in seconds]
    b_rates = [trades / s for s in baseline]
    rows = results[-1].rows
    lost = [f"{k} {v:,}" for k, v in rows.items() if k.endswith("trades") and v != trades]
    t = table(
        f"b. End to end: {trades:,} unpaced synthetic trades, {SYMBOLS} symbols -> Tansu -> candle agent -> ClickHouse (chdb), PostgreSQL, Redis",
        "measure",
        "seconds (median)",
        "trades/s (median)",
        "runs",
        "min-max trades/s",
        "e2e / it",
    )
    t.add_row("first trade pulled -> last candle durable in every sink", f"{median(seconds):.1f}", fmt_rate(median(rates)), str(runs), spread(rates), "1.00x")
    t.add_row("baseline: same source through run_ingest only", f"{median(baseline):.1f}", fmt_rate(median(b_rates)), str(runs), spread(b_rates), fmt_ratio(median(rates), median(b_rates)))
    console.print(t)
    console.print(
        f"   startup before the first trade (sinks, migrations, Faust join): median {median([r.startup_s for r in results]):.1f} s, not counted; "
        f"rows in the last run: {', '.join(f'{k} {v:,}' for k, v in rows.items())}"
        + (f"; [red]MISMATCH[/] vs {trades:,} trades: {', '.join(lost)}" if lost else "")
        + (f"; notes: {'; '.join(sorted(set(n for r in results for n in r.notes)))}" if any(r.notes for r in results) else "")
    )


# ------------------------------------------------------------------ c. latency to Redis


@dataclass
class LatencyRun:
    p50_ms: float
    p99_ms: float
    batches: int  # measured (after warm-up)
    covered: float  # share of post-warm-up batches a Redis update was seen for
    achieved_rate: float  # trades/s the source actually delivered
    messages: int


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
                tid, received, n = todo[j]
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


def latency_run(bootstrap: str, rate: float, seconds: float, update_ms: int, warmup_s: float) -> LatencyRun:
    """One pipeline run, source paced at ``rate`` for ``seconds``, Redis subscriber on its 1m channels (fresh process)."""
    import redis

    quiet_logs()
    with tempfile.TemporaryDirectory(prefix="tickflow-bench-latency-") as tmp, fresh_pg_database(DEFAULT_PG) as db:
        settings = fresh_settings(bootstrap, Path(tmp), database_url=db or "", candle_update_ms=update_ms)
        if not settings.redis_url:
            raise RuntimeError("REDIS_URL is empty: the latency benchmark needs Redis")
        exchange = f"bench{tag()}"
        batches: dict[str, list[tuple[int, float, int]]] = defaultdict(list)

        def on_batch(batch: TradeBatch, at: float) -> None:
            batches[batch.symbol].append((int(batch.trades[-1].trade_id), at, len(batch.trades)))

        raw: list[tuple[float, bytes]] = []
        stop = threading.Event()
        pubsub = redis.Redis.from_url(settings.redis_url).pubsub()
        pubsub.psubscribe(f"candles:{exchange}:*:1m")
        while (pubsub.get_message(timeout=1.0) or {}).get("type") != "psubscribe":
            pass

        def listen() -> None:
            while not stop.is_set():
                msg = pubsub.get_message(timeout=0.05)
                if msg is not None and msg["type"] == "pmessage":
                    raw.append((time.perf_counter(), msg["data"]))

        listener = threading.Thread(target=listen, name="bench-redis", daemon=True)
        listener.start()
        source = TimedSource(_synthetic(settings, limit=None, rate=rate, exchange=exchange), on_batch, seconds)
        try:
            _run_drained(settings, source, [])
        finally:
            stop.set()
            listener.join(5)
            pubsub.close()
    messages: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for arrived, data in raw:
        doc = orjson.loads(data)
        if not doc["is_final"] and doc["last_trade_id"] is not None:
            messages[doc["symbol"]].append((arrived, int(doc["last_trade_id"])))
    first_update = min((m[0][0] for m in messages.values() if m), default=math.inf)
    samples, measured, uncovered = latencies(batches, messages, first_update + warmup_s)
    if not samples:
        raise RuntimeError("no in-progress candle reached Redis")
    assert source.first is not None and source.finished is not None
    trades = sum(n for todo in batches.values() for _, _, n in todo)
    return LatencyRun(
        weighted_percentile(samples, 0.50) * 1000,
        weighted_percentile(samples, 0.99) * 1000,
        measured,
        measured / (measured + uncovered),
        trades / (source.finished - source.first),
        len(raw),
    )


def bench_latency(bootstrap: str, scenarios: list[tuple[float, int, int]], seconds: float, warmup_s: float = 2.0) -> None:
    """``scenarios``: (trades/s, candle_update_ms, runs)."""
    sink_ms = Settings.model_fields["sink_batch_ms"].default
    t = table(
        f"c. Trade receipt -> its in-progress 1m candle on Redis: paced synthetic source, {SYMBOLS} symbols, {seconds:.0f} s of input per run, "
        f"whole pipeline in one process (all sinks on, sink_batch_ms={sink_ms})",
        "trades/s asked",
        "candle_update_ms",
        "p50 ms (median)",
        "p99 ms (median)",
        "runs",
        "p99 min-max",
        "achieved trades/s",
        "batches measured",
    )
    for rate, update_ms, runs in scenarios:
        results = [in_fresh_process(latency_run, bootstrap, rate, seconds, update_ms, warmup_s) for _ in range(runs)]
        achieved = median([r.achieved_rate for r in results])
        t.add_row(
            fmt_rate(rate),
            f"{update_ms} (default)" if update_ms == DEFAULT_UPDATE_MS else str(update_ms),
            f"{median([r.p50_ms for r in results]):,.0f}",
            f"{median([r.p99_ms for r in results]):,.0f}",
            str(runs),
            spread([r.p99_ms for r in results]),
            fmt_rate(achieved) + (" [red](source starved)[/]" if achieved < 0.9 * rate else ""),
            f"{median([r.batches for r in results]):,.0f} ({min(r.covered for r in results):.1%} seen)",
        )
    console.print(t)
    console.print(
        "   method: a source wrapper notes each batch's receipt (perf_counter when the ingest loop gets it) and last trade id; "
        "a Redis subscriber thread in the same process notes each in-progress 1m message's arrival and last_trade_id; a batch's "
        "latency is the arrival of the first message of its symbol whose last_trade_id reaches the batch's last trade, weighted by "
        f"the batch's trades; batches received before the first update + {warmup_s:.0f} s (Faust join) are left out. There is no "
        "separate baseline: candle_update_ms (throttle) and sink_batch_ms (sink batching) are the floors the pipeline adds on purpose."
    )


# ------------------------------------------------------------------ d. memory per open window


def book_memory(symbols: int, per_minute: int) -> tuple[float, float, int, float, float]:
    """(bytes per open window, bytes per symbol, open windows, checkpoint bytes per symbol zlib, raw).

    Every symbol gets ``per_minute`` trades in each of two minutes; the first minute is then final,
    so each symbol has its live 1m window and five open higher windows (5m..1d), plus what the book
    keeps for late trades (the final minute and its trade ids, for the grace period). Memory is
    what stays allocated after the input is dropped: the book, its aggregates and the trade ids.
    """
    from agents.candles import CandleBook, CandleConfig
    from streams.checkpoint import encode_checkpoint

    day = START_US - START_US % 86_400_000_000
    step = 50_000_000 // per_minute  # trades within seconds 5..55 of their minute
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    book = CandleBook(CandleConfig())
    for minute in (0, 1):
        for s in range(symbols):
            base = day + minute * 60_000_000 + 5_000_000  # minute 1 moves the watermark past minute 0's end
            trades = [Trade(f"{s}-{minute}-{i}", base + i * step, 100.0 + i % 7, 0.5, "buy" if i % 2 else "sell") for i in range(per_minute)]
            book.add("bench", f"SYM{s}", trades)
            del trades
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    windows = book.open_windows()
    snap = book.snapshot()
    packed = len(encode_checkpoint(0, snap))
    raw = len(orjson.dumps({"offset": 0, "state": snap}))
    return used / windows, used / symbols, windows, packed / symbols, raw / symbols


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
    )
    for symbols, per_minute in ((1000, 1), (1000, 60), (100, 600)):
        results = [book_memory(symbols, per_minute) for _ in range(runs)]
        t.add_row(
            f"{symbols:,} symbols, {per_minute:,} trades/min each",
            fmt_rate(median([r[0] for r in results])),
            fmt_rate(median([r[1] for r in results])),
            str(runs),
            f"{results[0][2]:,}",
            fmt_rate(median([r[3] for r in results])),
            fmt_rate(median([r[4] for r in results])),
        )
    console.print(t)


# ------------------------------------------------------------------ entry points


def run(bootstrap: str, *, trades: int = 1_000_000, e2e_trades: int = 200_000, latency_s: float = 15.0, runs: int = 3, latency_runs: int = 3) -> None:
    bench_memory(runs=3)
    bench_agent(bootstrap, trades, runs)
    bench_e2e(bootstrap, e2e_trades, runs)
    bench_latency(bootstrap, EVENT_RATE, latency_s, latency_runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trades", type=int, default=1_000_000, help="trades for the candle agent benchmark")
    ap.add_argument("--e2e-trades", type=int, default=200_000)
    ap.add_argument("--latency-seconds", type=float, default=15.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latency-runs", type=int, default=3)
    args = ap.parse_args()
    quiet_logs()
    with broker() as bootstrap:
        run(bootstrap, trades=args.trades, e2e_trades=args.e2e_trades, latency_s=args.latency_seconds, runs=args.runs, latency_runs=args.latency_runs)


if __name__ == "__main__":
    main()
