"""The backtest: the agents' logic over a replay, simulated fills, and the files it writes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from agents.strategy import parse_strategy
from schemas.models import TradeBatch
from streams.backtest import murmur2, partition_of, run_backtest
from streams.report import write_report
from streams.settings import Settings
from streams.sources.base import MicroBatcher
from streams.sources.synthetic import generate_trades
from tests.conftest import REPO, data_path

START_US = 1_704_067_200_000_000  # 2024-01-01 UTC
EQUITY = 10_000.0

# A strategy that trades often on 1m candles, so every path (entries, reversals, brackets,
# cooldowns) is exercised by a few thousand trades.
BUSY = {
    "name": "busy",
    "version": "1",
    "interval": "1m",
    "entry_threshold": 0.3,
    "rules": [
        {"kind": "rsi", "below": 45, "above": 55},
        {"kind": "macd_cross", "weight": 2},
        {"kind": "ma_cross", "fast": "ema12", "slow": "ema26", "trend": True},
        {"kind": "bollinger", "mode": "breakout"},
    ],
    "risk": {"equity": EQUITY, "risk_per_trade": 0.01, "atr_stop": 1.0, "take_profit_r": 1.5, "cooldown_minutes": 3,
             "max_symbol_exposure": 2.0, "max_total_exposure": 3.0, "max_daily_loss": 0.2, "max_drawdown": 0.5},
}


def batches(limit: int = 30_000, symbols: int = 2, seed: int = 3) -> list[TradeBatch]:
    """Seeded trades, ~6 h of event time, cut into batches the way the replay source cuts them."""
    batcher = MicroBatcher("synthetic", 500, 1000)
    out: list[TradeBatch] = []
    for symbol, trade in generate_trades(symbols, seed=seed, limit=limit, start_us=START_US, event_rate=1.5):
        out.extend(batcher.add(symbol, trade))
    return out + list(batcher.flush())


@pytest.fixture(scope="module")
def items() -> list[TradeBatch]:
    return batches()


@pytest.fixture(scope="module")
def result(items: list[TradeBatch]):  # noqa: ANN201
    return run_backtest(items, parse_strategy(BUSY), Settings(), fee_bps=4.0, slippage_bps=2.0, source="synthetic")


def tickflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real command in a subprocess (in-process, its logging setup would outlive the test)."""
    full = dict(os.environ) | {"METRICS_PORT": "0", "LOG_LEVEL": "WARNING"} | (env or {})
    return subprocess.run([sys.executable, "-m", "streams", *args], env=full, cwd=REPO, capture_output=True, text=True, timeout=120)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def ts_us(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1_000_000 + 0.5)


def test_kafka_murmur2_matches_the_java_client() -> None:
    # Vectors from Kafka's UtilsTest.testMurmur2 (signed 32-bit there).
    for text, want in [("21", -973932308), ("foobar", -790332482), ("a-little-bit-long-string", -985981536),
                       ("a-little-bit-longer-string", -1486304829), ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
                       ("abc", 479470107)]:  # fmt: skip
        assert murmur2(text.encode()) == want & 0xFFFFFFFF
    assert partition_of("binance:BTC/USDT", 8) == (murmur2(b"binance:BTC/USDT") & 0x7FFFFFFF) % 8


def test_the_busy_strategy_trades(result) -> None:  # noqa: ANN001
    assert len(result.trades) >= 10
    reasons = {t.reason for t in result.trades}
    assert {"stop", "signal"} <= reasons or {"take_profit", "signal"} <= reasons, reasons
    assert {s.direction for s in result.signals} == {"long", "short", "flat"}
    assert not result.dead_letters


def test_pnl_fees_and_equity_agree_to_the_cent(result, tmp_path: Path) -> None:  # noqa: ANN001
    write_report(result, tmp_path)
    trades = read_csv(tmp_path / "trades.csv")
    equity = read_csv(tmp_path / "equity.csv")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    fee_rate = 4.0 / 10_000
    total = 0.0
    for t in trades:
        qty, entry, exit_ = float(t["quantity"]), float(t["entry_price"]), float(t["exit_price"])
        sign = 1 if t["side"] == "long" else -1
        assert float(t["fee"]) == pytest.approx((entry + exit_) * qty * fee_rate, abs=0.005)
        assert float(t["pnl"]) == pytest.approx((exit_ - entry) * qty * sign - float(t["fee"]), abs=0.005)
        total += float(t["pnl"])
    final = float(equity[-1]["equity"])
    assert final == pytest.approx(EQUITY + total, abs=0.01)
    assert metrics["final_equity"] == pytest.approx(final, abs=0.01)
    assert metrics["net_pnl"] == pytest.approx(total, abs=0.01)
    assert metrics["fees"] == pytest.approx(sum(float(t["fee"]) for t in trades), abs=0.01)
    assert metrics["total_return"] == pytest.approx(final / EQUITY - 1, abs=1e-6)
    assert metrics["trades"] == len(trades)
    assert metrics["win_rate"] == pytest.approx(sum(float(t["pnl"]) > 0 for t in trades) / len(trades))
    peak = EQUITY
    for row in equity:
        peak = max(peak, float(row["equity"]))
        assert float(row["drawdown"]) == pytest.approx(1 - float(row["equity"]) / peak, abs=1e-8)
    assert metrics["max_drawdown"] == pytest.approx(max(float(r["drawdown"]) for r in equity), abs=1e-8)


def test_fills_are_at_the_first_trade_after_the_close_plus_slippage(result, items: list[TradeBatch]) -> None:  # noqa: ANN001
    first_after: dict[str, list] = {}
    for b in items:
        first_after.setdefault(b.key, []).extend(b.trades)
    opens = [i for i in result.intents if i.action == "open" and i.status != "rejected"]
    by_entry = {(t.symbol, t.entry_time): t for t in result.trades}
    checked = 0
    for intent in opens:
        sym = f"{intent.exchange}:{intent.symbol}"
        fill = next(t for t in first_after[sym] if t.ts >= intent.ts * 1000)
        trade = by_entry.get((sym, fill.ts))
        if trade is None:
            continue  # cancelled before it filled, or in the position it would have opened twice
        slip = 1 + 2 / 10_000 if intent.side == "buy" else 1 - 2 / 10_000
        assert trade.entry_price == pytest.approx(fill.price * slip, rel=1e-12)
        assert trade.quantity == intent.quantity
        checked += 1
    assert checked >= 10


def test_two_runs_write_identical_files(items: list[TradeBatch], tmp_path: Path) -> None:
    for run in ("a", "b"):
        r = run_backtest(items, parse_strategy(BUSY), Settings(), fee_bps=4.0, slippage_bps=2.0, source="synthetic")
        write_report(r, tmp_path / run)
    for name in ("trades.csv", "equity.csv", "metrics.json", "report.html"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_no_look_ahead_truncating_the_input_keeps_every_earlier_intent(result, items: list[TradeBatch]) -> None:  # noqa: ANN001
    """Cut the replay at t: every signal and intent decided before t is the same (freqtrade's
    lookahead-analysis, on the records themselves)."""
    last_us = max(t.ts for b in items for t in b.trades)
    for fraction in (0.35, 0.7):
        cut_us = START_US + int((last_us - START_US) * fraction)
        cut_ms = cut_us // 1000
        truncated = [TradeBatch(b.exchange, b.symbol, b.received_at, [t for t in b.trades if t.ts < cut_us]) for b in items]
        short = run_backtest([b for b in truncated if b.trades], parse_strategy(BUSY), Settings(), fee_bps=4.0, slippage_bps=2.0)
        before = [i for i in result.intents if i.ts <= cut_ms - 60_000]
        assert before, "the cut leaves intents to compare"
        assert [i for i in short.intents if i.ts <= cut_ms - 60_000] == before
        assert [s for s in short.signals if s.close_time < cut_ms - 60_000] == [s for s in result.signals if s.close_time < cut_ms - 60_000]
    for s in result.signals:
        assert s.indicators_time == s.open_time and (s.prev_indicators_time or 0) < s.open_time


def test_backtest_of_the_real_btcusdt_trades_through_the_cli(tmp_path: Path) -> None:
    path = data_path("tardis_binance_futures_btcusdt", "tardis_trades_binance-futures_BTCUSDT_2020-02-22.csv")
    strategy = Path(__file__).resolve().parents[1] / "infra" / "strategies" / "trend_momentum.toml"
    out = tickflow("backtest", "--source", f"replay:{path}", "--strategy", str(strategy), "--report", str(tmp_path), "--fee-bps", "4", "--slippage-bps", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["data"]["trades"] == 9999 and metrics["data"]["candles"] >= 120
    assert metrics["strategy"] == {"name": "trend_momentum", "version": "1.0", "interval": "1m"}
    assert metrics["costs"] == {"fee_bps": 4.0, "slippage_bps": 1.0}
    html = (tmp_path / "report.html").read_text()
    assert html.count("<svg") == 3 and "<script" not in html and "http" not in html.replace(path.as_posix(), "")


def test_cli_refuses_a_bad_strategy_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nversion = "1"\n[[rules]]\nkind = "rsi"\n[risk]\nmax_drawdown = 0.005\n')
    out = tickflow("backtest", "--source", "replay:/nonexistent", "--strategy", str(bad), "--report", str(tmp_path / "r"))
    assert out.returncode == 2
    assert "bad.toml: risk.risk_per_trade: risk_per_trade (0.01) must be below max_drawdown (0.005)" in out.stderr


def test_run_refuses_a_bad_strategy_file_before_starting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nversion = "1"\n[[rules]]\nkind = "rsi"\nbelow = 90\n')
    out = tickflow("run", "--no-source", "--quiet", env={"STRATEGY_FILE": str(bad), "TICKFLOW_DATA_DIR": str(tmp_path / "data")})
    assert out.returncode == 2, out.stderr[-2000:]
    assert "rules[0].below: below (90.0) must be lower than above (70.0)" in out.stderr


def test_exposure_is_the_time_with_any_position_open() -> None:
    from agents.execution import ClosedTrade, metrics

    s = 1_000_000  # µs
    trades = [ClosedTrade("a", "long", 0, 1.0, 40 * s, 1.0, 1.0, 0.0, 0.0, "x"), ClosedTrade("b", "long", 20 * s, 1.0, 60 * s, 1.0, 1.0, 0.0, 0.0, "x")]
    assert metrics(100.0, trades, [(100_000, 100.0)], 0, 100_000, 60_000)["exposure"] == pytest.approx(0.6)


def test_backtest_refuses_a_strategy_interval_the_candle_agent_does_not_build(tmp_path: Path) -> None:
    two_hours = tmp_path / "two_hours.toml"
    two_hours.write_text('name = "x"\nversion = "1"\ninterval = "2h"\n[[rules]]\nkind = "rsi"\n')
    out = tickflow("backtest", "--source", "replay:/nonexistent", "--strategy", str(two_hours), "--report", str(tmp_path / "r"), env={"CANDLE_INTERVALS": "1m,5m,1h"})
    assert out.returncode == 2
    assert "interval '2h' of strategy 'x' is not built: CANDLE_INTERVALS is '1m,5m,1h'" in out.stderr


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(result, tmp_path: Path) -> None:  # noqa: ANN001
    paths = write_report(result, tmp_path / "report")
    shot = tmp_path / "shot.png"
    run = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1100,1400",
                          paths["report.html"].as_uri()], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    # A blank page is a few kB of PNG; three charts of lines, bars and markers are far more.
    assert shot.stat().st_size > 40_000
