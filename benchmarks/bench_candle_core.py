"""Throughput of the pure candle core: trades/s through ``CandleBook.add`` on one core.

Two scenarios, 100 symbols in one book (one partition), 500-trade batches, intervals
1m+5m+15m+1h+4h+1d, trades from a small seeded generator (random walk prices, mixed sides, a few
trades out of order within the lateness):

* busy:  500 trades per symbol in 200 ms of event time (2,500 trades/s per symbol), default
  lateness; the run crosses midnight, so every interval finalizes once for every symbol.
* quiet: 500 trades per symbol in 40 s of event time with a 45 s lateness, so every symbol
  finalizes a minute (and its roll-ups) about every other batch: the per-minute overhead.

Prints trades/s as the median of 5 runs. Run: ``.venv/bin/python -m benchmarks.bench_candle_core``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from agents.candles import CandleBook, CandleConfig
from schemas.models import Trade

SIDES = ("buy", "sell", "buy", "sell", "unknown")
START_US = 1_723_161_595_000_000  # 2024-08-08 23:59:55 UTC: both scenarios cross a day boundary


def generate(n_symbols: int, batch: int, rounds: int, span_ms: int, seed: int = 7) -> list[tuple[str, list[Trade]]]:
    """Round-robin batches: each round every symbol gets ``batch`` trades spread over ``span_ms``."""
    rng = random.Random(seed)
    prices = [100.0 + i for i in range(n_symbols)]
    next_id = [0] * n_symbols
    step_us = span_ms * 1000 // batch
    out = []
    for r in range(rounds):
        base = START_US + r * span_ms * 1000
        for s in range(n_symbols):
            trades = []
            p = prices[s]
            for i in range(batch):
                p = round(p * (1.0 + rng.gauss(0.0, 0.0005)), 4)
                jitter = rng.randrange(-step_us, step_us) if rng.random() < 0.02 else 0
                ts = base + i * step_us + max(jitter, -i * step_us)
                trades.append(Trade(str(next_id[s]), ts, p, round(rng.uniform(0.001, 2.0), 3), SIDES[rng.randrange(5)]))
                next_id[s] += 1
            prices[s] = p
            out.append((f"SYM{s}", trades))
    return out


def run(batches: list[tuple[str, list[Trade]]], config: CandleConfig) -> tuple[float, int, int]:
    book = CandleBook(config)
    add = book.add
    candles = 0
    t0 = time.perf_counter()
    for symbol, trades in batches:
        candles += len(add("bench", symbol, trades).candles)
    elapsed = time.perf_counter() - t0
    return elapsed, candles, book.open_windows()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=40, help="rounds per scenario (trades = symbols * batch * rounds)")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    scenarios = {
        "busy": (200, CandleConfig()),
        "quiet": (40_000, CandleConfig(lateness_ms=45_000)),
    }
    for name, (span_ms, config) in scenarios.items():
        batches = generate(args.symbols, args.batch, args.rounds, span_ms)
        n = sum(len(t) for _, t in batches)
        results = [run(batches, config) for _ in range(args.runs)]
        rate = statistics.median(n / e for e, _, _ in results)
        _, candles, open_windows = results[0]
        print(
            f"{name:5s}: {rate:,.0f} trades/s (median of {args.runs}; {n:,} trades, {args.symbols} symbols, "
            f"{args.batch}-trade batches, {span_ms} ms per batch, {candles:,} final candles, {open_windows} open windows)"
        )


if __name__ == "__main__":
    main()
