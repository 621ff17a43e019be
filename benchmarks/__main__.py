"""``make bench``: every tickflow benchmark, one compact report on stdout.

Numbers are medians of several runs, each framework number beside a baseline measured in the same
invocation. Nothing is asserted and nothing is written into the repository. The candle-core,
indicator and backtest benchmarks are their modules' own ``main()``, each run in a fresh process.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import time

from benchmarks import bench_gateway, bench_ingest, bench_pipeline
from benchmarks.common import broker, call_entry, console, in_fresh_process, quiet_logs, section

EXTERNAL = (
    "benchmarks.bench_candle_core",
    "benchmarks.bench_indicators",
    "benchmarks.bench_onchain",
    "benchmarks.bench_sentiment",
    "benchmarks.bench_backtest",
)


def external(module: str) -> None:
    """Run another benchmark module: its main()/run() in a fresh process, else ``python -m``."""
    if importlib.util.find_spec(module) is None:
        console.print(f"{module}: absent")
        return
    entry = next((name for name in ("main", "run") if callable(getattr(importlib.import_module(module), name, None))), None)
    if entry is not None:
        in_fresh_process(call_entry, module, entry)
    else:
        subprocess.run([sys.executable, "-m", module], check=True)


def main() -> None:
    quiet_logs()
    started = time.monotonic()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    console.rule(f"tickflow benchmarks: {os.cpu_count()} cores, load average {load} at start")
    for module in EXTERNAL:
        console.print(f"[bold]{module.rsplit('.', 1)[1]}[/]")
        section(external, module)
    with broker() as bootstrap:
        section(bench_ingest.run, bootstrap)
        section(bench_pipeline.run, bootstrap)
    section(bench_gateway.run)
    console.rule(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
