"""Throughput of the indicator engine and of the agent's work per record, full indicator set.

Every update computes all 25 values (SMA x2, EMA x4, RSI, MACD x3, Bollinger x3, ATR, STOCH x2, OBV,
WMA, ADX, +DI, -DI, CCI, WILLR, MFI, ROC), keeps the revision history and builds the
``Indicators`` record. The agent figure adds what the runtime does around the logic for each
``candles`` record (Avro decode into the model, the logic's batch call, Avro encode of the
outputs), beside a baseline that only decodes the same records; the consumer's own cost per record
(see bench_pipeline) comes on top of both.
Candles are generated and encoded before timing; figures are medians of the runs.

    .venv/bin/python -m benchmarks.bench_indicators [--candles 100000] [--runs 5]
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import statistics
import time

from agents.indicator_agent import IndicatorLogic
from agents.indicators import IndicatorEngine
from agents.spec import AgentContext, Inbound
from schemas.codec import AvroCodec
from schemas.models import Candle
from schemas.wire import encoder_for
from streams.settings import Settings


def synthetic_candles(n: int, seed: int = 42) -> list[Candle]:
    """A 1-minute random walk around 30,000 with realistic wicks and volumes."""
    rnd = random.Random(seed)
    price = 30_000.0
    out = []
    for i in range(n):
        o = price
        price *= math.exp(rnd.gauss(0.0, 0.001))
        high = max(o, price) * (1 + rnd.random() * 0.0005)
        low = min(o, price) * (1 - rnd.random() * 0.0005)
        volume = rnd.expovariate(1 / 25)
        start = 1_700_000_000_000 + i * 60_000
        out.append(
            Candle("binance", "BTC/USDT", "1m", start, start + 59_999, o, high, low, price, volume, volume * price,
                   rnd.randint(50, 500), is_final=True)  # fmt: skip
        )
    return out


def updates_per_second(candles: list[Candle]) -> float:
    engine = IndicatorEngine()
    update = engine.update
    start = time.perf_counter()
    for candle in candles:
        update(candle)
    return len(candles) / (time.perf_counter() - start)


def agent_records_per_second(records: list[bytes]) -> float:
    """Decode and the indicator logic, as the runtime runs them on a batch, records of 500."""
    logic = IndicatorLogic(AgentContext(Settings(indicator_warm_start_bars=0), 0))
    decode = AvroCodec("tickflow.Candle").decode
    encode = encoder_for(AvroCodec("tickflow.Indicators"))
    start = time.perf_counter()
    for at in range(0, len(records), 500):
        batch = [Inbound("candle", None, Candle.from_avro(decode(v)), at + i) for i, v in enumerate(records[at : at + 500])]
        for out in logic.on_batch(batch):
            encode(out.value)  # type: ignore[union-attr]
    return len(records) / (time.perf_counter() - start)


def decode_records_per_second(records: list[bytes]) -> float:
    decode = AvroCodec("tickflow.Candle").decode
    start = time.perf_counter()
    for value in records:
        Candle.from_avro(decode(value))
    return len(records) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candles", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    candles = synthetic_candles(args.candles)
    # The pre-built input is not the engine's garbage: keep the cyclic GC from rescanning it.
    gc.collect()
    gc.freeze()
    codec = AvroCodec("tickflow.Candle")
    records = [codec.encode(c.to_avro()) for c in candles]
    gc.collect()
    gc.freeze()
    rates = [updates_per_second(candles) for _ in range(args.runs)]
    print(
        f"indicators: {statistics.median(rates):,.0f} candle updates/s per core "
        f"(median of {args.runs} runs over {args.candles:,} candles; min {min(rates):,.0f}, max {max(rates):,.0f})"
    )
    agent = statistics.median(agent_records_per_second(records) for _ in range(args.runs))
    baseline = statistics.median(decode_records_per_second(records) for _ in range(args.runs))
    print(
        f"indicator agent work per candles record: {agent:,.0f} records/s per core; "
        f"baseline Avro decode only: {baseline:,.0f} records/s (agent at {agent / baseline:.0%} of the baseline)"
    )


if __name__ == "__main__":
    main()
