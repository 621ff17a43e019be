"""``make soak``'s driver, run for a few seconds at a low rate: every role starts as users run it,
and the report has every figure, table and plot the long soak publishes (its values are not judged
here; the soak itself is behind ``make soak``)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks.soak import bucket_quantile, growth, lag_bounded, weighted_quantile
from tests.conftest import REPO

ROLES = {"broker", "broker (tansu)", "ingest", "worker", "sink-clickhouse", "sink-postgres", "sink-redis", "gateway"}


def test_quantiles_growth_and_bounded_lag() -> None:
    assert weighted_quantile([30.0, 10.0, 20.0], [1, 1, 98], 0.5) == 20.0
    assert weighted_quantile([30.0, 10.0, 20.0], [1, 1, 98], 0.995) == 30.0
    assert math.isnan(weighted_quantile([], [], 0.5))
    cumulative = [(0.01, 50.0), (0.05, 90.0), (0.1, 100.0), (math.inf, 100.0)]  # Prometheus buckets
    assert bucket_quantile(cumulative, 0.5) == pytest.approx(0.01)
    assert bucket_quantile(cumulative, 0.7) == pytest.approx(0.03)
    assert math.isnan(bucket_quantile([(0.01, 0.0), (math.inf, 0.0)], 0.5))
    assert growth([100.0, 150.0, 104.0, 105.0, 103.0]) == pytest.approx(0.04)
    assert lag_bounded([0, 500, 900, 400, 800, 700, 600, 900, 500])
    assert not lag_bounded([0, 500, 1000, 2000, 4000, 8000, 16000, 32000, 64000])


@pytest.mark.integration
def test_soak_report_has_every_field(tmp_path) -> None:
    out = tmp_path / "soak"
    cmd = [sys.executable, "-m", "benchmarks.soak", "--seconds", "3", "--warmup-s", "1", "--sample-s", "1", "--rate", "400", "--symbols", "5", "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "LOG_LEVEL": "WARNING"}, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "soak.json").read_text())

    latency = report["latency_ms"]
    assert set(latency) == {"redis subscriber (in-progress 1m candle)", "clickhouse row (sink's histogram)", "postgres row (sink's histogram)"}
    redis = latency["redis subscriber (in-progress 1m candle)"]
    assert redis["batches"] > 0 and 0 < redis["p50_ms"] <= redis["p99_ms"], redis
    for path in ("clickhouse row (sink's histogram)", "postgres row (sink's histogram)"):
        assert latency[path]["batches"] > 0 and math.isfinite(latency[path]["p99_ms"]), (path, latency[path])

    breakdown = report["breakdown_ms"]
    assert len(breakdown) == 4 and all({"p50_ms", "p99_ms", "count"} <= set(v) for v in breakdown.values()), breakdown
    assert breakdown["receipt -> published on Redis (worker)"]["count"] > 0, breakdown  # a checkpoint may not land in 3 s

    assert {"tickflow-candles", "tickflow-sink-clickhouse", "tickflow-sink-postgres", "tickflow-sink-redis"} <= set(report["lag"])
    assert all({"median", "max", "end", "bounded"} <= set(v) for v in report["lag"].values())
    assert ROLES <= set(report["rss"]), sorted(report["rss"])
    assert all(v["start_mb"] > 0 and math.isfinite(v["growth"]) for v in report["rss"].values())
    assert set(report["targets"]) == {"redis_p99_le_50ms", "lag_bounded", "rss_growth_le_5pct", "rate_reached"}
    assert report["achieved_rate"] > 0
    assert len(report["series"]["t"]) >= 2

    table = (out / "soak.md").read_text()
    assert "| trade receipt to |" in table and "| where the time to Redis goes" in table and "| consumer group |" in table and "| process |" in table
    assert (out / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in (out / "logs").iterdir()} == {f"{r}.log" for r in ROLES - {"broker (tansu)"}}
