"""Backtest speed: trades/s and seconds to the written report, beside the live pipeline on the same file.

Two inputs: the shared BTCUSDT Tardis trades (../shared/data) and a 1M-trade synthetic replay
file (Tardis CSV, two symbols, ~14 h of event time: ~830 1m candles each), written to a
temporary directory. Per input: the backtest (`tickflow backtest`'s code path, report included,
median of several runs), the replay source alone (reading and batching the file: the floor), and
the live pipeline's replay of the same file (`tickflow run --until-drained` with the strategy's
agent, an embedded broker and the ClickHouse sink; PostgreSQL and Redis off), timed as a command.
"""

from __future__ import annotations

import asyncio
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import console, fmt_rate, median, quiet_logs, spread, table
from streams.broker import free_port
from streams.settings import PROJECT_ROOT, Settings

STRATEGY = PROJECT_ROOT / "infra" / "strategies" / "trend_momentum.toml"
SHARED = PROJECT_ROOT.parent / "shared" / "data" / "tardis_binance_futures_btcusdt" / "tardis_trades_binance-futures_BTCUSDT_2020-02-22.csv"
SYNTHETIC_TRADES = 1_000_000
START_US = 1_704_067_200_000_000  # 2024-01-01 UTC


def write_synthetic(path: Path, trades: int = SYNTHETIC_TRADES) -> Path:
    """A seeded synthetic market as a Tardis trades CSV (the format of the shared file)."""
    from streams.sources.synthetic import generate_trades

    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["exchange", "symbol", "timestamp", "local_timestamp", "id", "side", "price", "amount"])
        for symbol, t in generate_trades(["SYNA-USDT", "SYNB-USDT"], seed=11, limit=trades, start_us=START_US, event_rate=20.0):
            w.writerow(["synthetic", symbol, t.ts, t.ts, t.trade_id, t.side, repr(t.price), repr(t.amount)])
    return path


def _source(path: Path, settings: Settings):  # noqa: ANN202
    from streams.cli import open_source

    return open_source(f"replay:{path}", settings, symbols=[], fmt=None, speed="max", rate=None, limit=None, exchange=None)


def backtest_run(path: Path, report: Path) -> tuple[float, float, int]:
    """Seconds to the written report, seconds of those spent writing the files, trades."""
    from agents.strategy import load_strategy
    from streams.backtest import run_backtest_source
    from streams.report import write_report

    settings = Settings()
    started = time.perf_counter()
    result = run_backtest_source(_source(path, settings), load_strategy(STRATEGY), settings, fee_bps=4.0, slippage_bps=1.0, source=str(path))
    replayed = time.perf_counter()
    write_report(result, report)
    done = time.perf_counter()
    return done - started, done - replayed, result.trades_in


def source_run(path: Path) -> float:
    """Baseline: the replay source alone, every batch read and dropped."""
    settings = Settings()
    src = _source(path, settings)

    async def drain() -> None:
        async for _ in src.stream():
            pass

    started = time.perf_counter()
    asyncio.run(drain())
    return time.perf_counter() - started


def live_run(path: Path, tmp: Path) -> float:
    """`tickflow run --until-drained` on the file, with the signals agent: seconds as a command."""
    env = dict(os.environ) | {
        "BROKER_PORT": str(free_port()), "TICKFLOW_DATA_DIR": str(tmp / f"live-{time.monotonic_ns()}"),
        "DATABASE_URL": "", "REDIS_URL": "", "METRICS_PORT": "0", "LOG_LEVEL": "WARNING", "STRATEGY_FILE": str(STRATEGY),
    }  # fmt: skip
    env.pop("KAFKA_BOOTSTRAP", None)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "streams", "run", "--source", f"replay:{path}", "--until-drained", "--quiet"],
                   env=env, cwd=PROJECT_ROOT, check=True, capture_output=True, timeout=1800)
    return time.perf_counter() - started


def main(runs: int = 3, live_runs: int = 1) -> None:
    quiet_logs()
    with tempfile.TemporaryDirectory(prefix="tickflow-bench-backtest-") as tmp_name:
        tmp = Path(tmp_name)
        inputs = []
        if SHARED.exists():
            inputs.append(("BTCUSDT Tardis (shared)", SHARED))
        else:
            console.print(f"{SHARED}: absent, skipped")
        started = time.perf_counter()
        synthetic = write_synthetic(tmp / "synthetic_trades.csv")
        console.print(f"synthetic replay file: {SYNTHETIC_TRADES:,} trades written in {time.perf_counter() - started:.1f} s")
        inputs.append((f"synthetic {SYNTHETIC_TRADES // 1_000_000}M trades", synthetic))
        t = table("Backtest (trend_momentum, 1m): medians", "input", "trades", "backtest trades/s", "s to report", "of which files s",
                  "source alone s", "live run s", "live / backtest")
        for name, path in inputs:
            reports = [backtest_run(path, tmp / f"report-{i}") for i in range(runs)]
            to_report = [r[0] for r in reports]
            writing = [r[1] for r in reports]
            trades = reports[0][2]
            floor = [source_run(path) for _ in range(runs)]
            live = [live_run(path, tmp) for _ in range(live_runs)]
            t.add_row(name, f"{trades:,}", fmt_rate(trades / median(to_report)), f"{median(to_report):.2f} ({spread(to_report)})",
                      f"{median(writing):.2f}", f"{median(floor):.2f}", f"{median(live):.1f}", f"{median(live) / median(to_report):.1f}x")
        console.print(t)
        console.print("live run: the whole command (embedded broker start, agents, ClickHouse sink, drain settle of 2 s) on the same file")


if __name__ == "__main__":
    main()
