"""Ingest throughput: synthetic trades validated, Avro-encoded and produced into Kafka (Tansu).

The framework number is ``streams.ingest.run_ingest`` with a ``RecordProducer``, fed from memory (a
source that yields pre-built batches, so generating trades is not timed), up to the final flush
(every record acknowledged). Baselines measured in the same run split its cost: validation alone
(``split_batch``), encoding alone (``TradeBatchWriter``, what ingest uses, and fastavro's generic
``AvroCodec.encode`` it replaced), and producing the pre-encoded bytes with the same ``RecordProducer``
settings. ``encode + produce`` is the writer and produce baselines back to back, i.e. what ingest
would cost with nothing else.

Run: ``.venv/bin/python -m benchmarks.bench_ingest``.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from benchmarks.common import broker, console, fmt_rate, fmt_ratio, fresh_settings, median, quiet_logs, run_broker, spread, table, timed
from schemas.codec import AvroCodec
from schemas.models import Trade, TradeBatch
from schemas.wire import TradeBatchWriter
from streams.ingest import run_ingest, split_batch
from streams.producer import RecordProducer
from streams.sources.base import Source, SourceItem, now_us
from streams.sources.synthetic import generate_trades

SYMBOLS = 100
BATCH = 500
TRADES = 200_000
START_US = 1_700_000_000_000_000  # 2023-11-14: inside the sane range trade_problem accepts


class MemorySource(Source):
    """Yields batches built beforehand, so the benchmark times ingest and not trade generation."""

    def __init__(self, batches: list[TradeBatch]) -> None:
        self.batches = batches

    async def stream(self) -> AsyncIterator[SourceItem]:
        for batch in self.batches:
            yield batch


def make_batches(trades: int = TRADES, symbols: int = SYMBOLS, size: int = BATCH) -> list[TradeBatch]:
    """Full ``size``-trade batches per symbol, in arrival order (a symbol's batch closes when full)."""
    open_: dict[str, list[Trade]] = {}
    out = []
    for symbol, trade in generate_trades(symbols, limit=trades, start_us=START_US):
        buf = open_.setdefault(symbol, [])
        buf.append(trade)
        if len(buf) == size:
            out.append(TradeBatch("bench", symbol, now_us(), open_.pop(symbol)))
    out.extend(TradeBatch("bench", s, now_us(), b) for s, b in open_.items())
    return out


def run(bootstrap: str, runs: int = 3, cheap_runs: int = 5) -> None:
    batches = make_batches()
    n = sum(len(b.trades) for b in batches)
    codec = AvroCodec("tickflow.TradeBatch")
    writer = TradeBatchWriter(codec)
    encoded = [(b.key, writer.encode(b)) for b in batches]
    now = now_us()

    def validate() -> None:
        for b in batches:
            split_batch(b, now)

    def encode() -> None:
        for b in batches:
            writer.encode(b)

    def encode_fastavro() -> None:
        for b in batches:
            codec.encode(b.to_avro())

    with tempfile.TemporaryDirectory(prefix="tickflow-bench-ingest-") as tmp:
        data_dir = Path(tmp)

        def produce() -> float:
            with run_broker(bootstrap) as own:
                settings = fresh_settings(own, data_dir)
                producer = RecordProducer(settings)

                def go() -> None:
                    for key, value in encoded:
                        producer.produce(settings.kafka.topic_ticks, key, value)
                    producer.flush()

                try:
                    return timed(go)
                finally:
                    producer.close()

        def ingest() -> float:
            with run_broker(bootstrap) as own:
                settings = fresh_settings(own, data_dir)
                producer = RecordProducer(settings)
                try:
                    return timed(lambda: asyncio.run(run_ingest(MemorySource(batches), producer, settings, codec=codec, source_name="bench")))
                finally:
                    producer.close()

        validate_s = [timed(validate) for _ in range(cheap_runs)]
        encode_s = [timed(encode) for _ in range(cheap_runs)]
        fastavro_s = [timed(encode_fastavro) for _ in range(cheap_runs)]
        produce_s = [produce() for _ in range(runs)]
        ingest_s = [ingest() for _ in range(runs)]

    rate = {k: [n / s for s in v] for k, v in {"validate": validate_s, "encode": encode_s, "fastavro": fastavro_s, "produce": produce_s, "ingest": ingest_s}.items()}
    serial = n / (median(encode_s) + median(produce_s))
    ingest_rate = median(rate["ingest"])
    t = table(
        f"Ingest: {n:,} synthetic trades, {SYMBOLS} symbols, {BATCH}-trade batches ({len(batches):,} records, "
        f"{sum(len(v) for _, v in encoded) / len(encoded):,.0f} B each), into Tansu",
        "measure",
        "trades/s (median)",
        "runs",
        "min-max",
        "run_ingest vs it",
    )
    t.add_row("run_ingest + RecordProducer (framework)", fmt_rate(ingest_rate), str(runs), spread(rate["ingest"]), "1.00x")
    t.add_row("baseline: validate only (split_batch)", fmt_rate(median(rate["validate"])), str(cheap_runs), spread(rate["validate"]), fmt_ratio(ingest_rate, median(rate["validate"])))
    t.add_row("baseline: encode only (TradeBatchWriter)", fmt_rate(median(rate["encode"])), str(cheap_runs), spread(rate["encode"]), fmt_ratio(ingest_rate, median(rate["encode"])))
    t.add_row("  for comparison: fastavro (AvroCodec.encode)", fmt_rate(median(rate["fastavro"])), str(cheap_runs), spread(rate["fastavro"]), fmt_ratio(ingest_rate, median(rate["fastavro"])))
    t.add_row("baseline: produce pre-encoded bytes", fmt_rate(median(rate["produce"])), str(runs), spread(rate["produce"]), fmt_ratio(ingest_rate, median(rate["produce"])))
    t.add_row("baseline: encode + produce back to back", fmt_rate(serial), "-", "-", fmt_ratio(ingest_rate, serial))
    console.print(t)


def main() -> None:
    quiet_logs()
    with broker() as bootstrap:
        run(bootstrap)


if __name__ == "__main__":
    main()
