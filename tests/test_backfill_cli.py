"""``tickflow backfill`` against the fake Binance: both stores and the candles topic, re-runs, bad input.

The fake serves the recorded XRPETH 1m klines re-spaced one day apart as 1d klines (real prices
and volumes, made-up dates), XRP/ETH long ago and ETH/USDT ending with today's still-open window.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agents.indicators import IndicatorEngine
from schemas.codec import AvroCodec
from schemas.models import Candle, DeadLetter
from streams.backfill import backfill, open_exchange, parse_time
from sinks.base import columns_of
from streams.settings import Settings
from tests.conftest import REPO
from tests.fake_exchange import FakeBinance, xrpeth_klines_1m
from tests.kafka_util import read_topic
from tests.test_candles_e2e import CANDLE_COLS, drop_database, env_for, fresh_database, pg_indicators, tickflow

INDICATOR_COLUMNS = columns_of("indicators")

DAY_MS = 86_400_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SPOT = {"fetchMarkets": {"types": ["spot"]}}


def daily(rows: list[list[Any]], first_open: int) -> list[list[Any]]:
    """Binance kline rows re-timed to consecutive days from ``first_open``."""
    out = []
    for i, r in enumerate(rows):
        t = first_open + i * DAY_MS
        out.append([t, *r[1:6], t + DAY_MS - 1, *r[7:]])
    return out


def as_candle(symbol: str, row: list[Any]) -> Candle:
    """What backfill must make of a kline row: OHLCV, no trade data, final, revision 0."""
    return Candle(
        "binance", symbol, "1d", row[0], row[6], float(row[1]), float(row[2]), float(row[3]), float(row[4]),
        float(row[5]), quote_volume=0.0, trade_count=0, is_final=True, revision=0,
    )


def ms(moment: datetime | str) -> int:
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(milliseconds=1)


def stored(row: tuple[Any, ...]) -> Candle:
    return Candle(*row[:3], ms(row[3]), ms(row[4]), *row[5:])


def pg_rows(database: str) -> list[Candle]:
    with psycopg.connect(f"postgresql://127.0.0.1:5432/{database}") as conn:
        rows = conn.execute(f"SELECT {CANDLE_COLS}, revision FROM candles ORDER BY symbol, open_time").fetchall()
    return [stored(r) for r in rows]


def ch_rows(env: dict[str, str]) -> list[Candle]:
    out = tickflow("sql", f"SELECT {CANDLE_COLS}, revision FROM candles FINAL ORDER BY symbol, open_time", "--format", "json", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return [stored(tuple(json.loads(line).values())) for line in out.stdout.splitlines() if line.strip()]


def topic_candles(settings: Settings) -> list[tuple[bytes, int, Candle]]:
    codec = AvroCodec("tickflow.Candle")
    return [(m.key(), m.partition(), Candle.from_avro(codec.decode(m.value()))) for m in read_topic(settings, settings.kafka.topic_candles)]


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeBinance, list[list[Any]], list[list[Any]]]]:
    left = DAY_MS - int(time.time() * 1000) % DAY_MS
    if left < 300_000:
        await asyncio.sleep(left / 1000 + 1)  # today's window must stay open for the whole test
    recorded = xrpeth_klines_1m()
    today = int(time.time() * 1000) // DAY_MS * DAY_MS
    xrp = daily(recorded[:1200], parse_time("2020-01-01"))
    eth = daily(recorded[-30:], today - 29 * DAY_MS)
    async with FakeBinance(klines={("XRPETH", "1d"): xrp, ("ETHUSDT", "1d"): eth}) as served:
        yield served, xrp, eth


@pytest.mark.integration
@pytest.mark.timeout(900)
async def test_backfill_fills_both_stores_and_the_topic_once(fake: Any, topics: Settings, tmp_path: Path) -> None:
    served, xrp, eth = fake
    since = datetime.fromtimestamp(xrp[100][0] / 1000, UTC).date().isoformat()
    want = [as_candle("ETH/USDT", r) for r in eth[:-1]] + [as_candle("XRP/ETH", r) for r in xrp[100:]]
    db = fresh_database()
    try:
        env = env_for(topics, data_dir=tmp_path / "data", database=db)
        env.update(CCXT_URL_OVERRIDES=json.dumps(served.url_overrides()), CCXT_OPTIONS=json.dumps(SPOT))
        args = ("backfill", "--exchange", "binance", "--symbols", "DOGE/USDT,XRP/ETH,ETH/USDT", "--interval", "1d", "--since", since)

        first = await asyncio.to_thread(tickflow, *args, env=env)
        assert first.returncode == 1, first.stderr[-3000:]  # DOGE/USDT failed, the others are done
        assert "binance has no market 'DOGE/USDT'" in first.stderr
        assert "Traceback" not in first.stderr
        pg, ch = pg_rows(db), ch_rows(env)
        assert pg == want  # the open window of today (eth[-1]) is not there
        assert ch == want
        records = topic_candles(topics)
        assert sorted((c for _, _, c in records), key=lambda c: (c.symbol, c.open_time)) == want
        assert all(key == c.key.encode() for key, _, c in records)
        assert len({(key, p) for key, p, _ in records}) == 2  # each series on one partition, in order

        # The indicator agent takes backfilled candles like live ones: MA200 on 1d from the history.
        run = await asyncio.to_thread(tickflow, "run", "--no-source", "--until-drained", "--quiet", env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        engine = IndicatorEngine()
        expected = {(c.symbol, c.open_time): engine.process(c)[0] for c in want}
        metrics = pg_indicators(db)
        assert len(metrics) == len(want)
        for row in metrics:
            ref = expected[(row[1], ms(row[3]))]
            assert (row[4], row[INDICATOR_COLUMNS.index("ma200")], row[INDICATOR_COLUMNS.index("rsi")]) == (ref.close, ref.ma200, ref.rsi)
        assert sum(1 for row in metrics if row[INDICATOR_COLUMNS.index("ma200")] is not None) == len(xrp) - 100 - 199

        second = await asyncio.to_thread(tickflow, *args, env=env)
        assert second.returncode == 1, second.stderr[-3000:]
        assert pg_rows(db) == pg
        assert ch_rows(env) == ch
        again = topic_candles(topics)
        # the log gets the same records again: a re-delivery that every consumer absorbs
        assert Counter(c.key + str(c.open_time) for _, _, c in again) == Counter({c.key + str(c.open_time): 2 for c in want})
        assert {(k, p, c.open_time): c for k, p, c in again} == {(k, p, c.open_time): c for k, p, c in records}
        # ... the indicator agent too: most of those candles have left its kept history
        # (INDICATOR_HISTORY), and are re-deliveries, not late candles to dead-letter.
        rerun = await asyncio.to_thread(tickflow, "run", "--no-source", "--until-drained", "--quiet", env=env)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert pg_indicators(db) == metrics
        dlq = AvroCodec("tickflow.DeadLetter")
        letters = [DeadLetter.from_avro(dlq.decode(m.value())) for m in read_topic(topics, topics.kafka.topic_dlq)]
        assert [letter.reason for letter in letters if letter.component == "indicators"] == []
    finally:
        drop_database(db)


@pytest.mark.timeout(60)
async def test_until_is_exclusive_and_a_failing_symbol_does_not_stop_the_others(fake: Any) -> None:
    served, xrp, eth = fake
    exchange = open_exchange("binance", served.url_overrides(), SPOT)
    written: list[Candle] = []
    progress: dict[str, tuple[int, int]] = {}
    try:
        await exchange.load_markets()
        results = await backfill(
            exchange, ["BTC/USDT", "XRP/ETH"], "1d", xrp[10][0], xrp[1050][0], written.extend,
            lambda symbol, done, total: progress.__setitem__(symbol, (done, total)),
        )
    finally:
        await exchange.close()
    assert written == [as_candle("XRP/ETH", r) for r in xrp[10:1050]]
    btc, ok = results
    assert btc.candles == 0 and btc.error is not None and "BadSymbol" in btc.error  # listed, but no klines served
    assert (ok.candles, ok.first_open, ok.last_open, ok.error) == (1040, xrp[10][0], xrp[1049][0], None)
    assert progress["XRP/ETH"] == (1040, 1040)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--exchange", "binanse", "--symbols", "BTC/USDT", "--since", "2024-01-01"), 1, "did you mean binance"),
        (("--exchange", "binance", "--symbols", "BTC/USDT", "--since", "2024-13-01"), 2, "is not a date or time"),
        (("--exchange", "binance", "--symbols", "BTC/USDT", "--since", "2024-01-02", "--until", "2024-01-01"), 2, "--until must be after --since"),
        (("--exchange", "binance", "--symbols", " , ", "--since", "2024-01-01"), 2, "at least one symbol"),
        (("--exchange", "binance", "--symbols", "BTC/USDT", "--since", "2024-01-01", "--interval", "1M"), 1, "no fixed length"),
    ],
)
def test_bad_input_is_named_without_a_traceback(args: tuple[str, ...], code: int, message: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP": "127.0.0.1:1", "METRICS_PORT": "0", "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "streams", "backfill", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == code, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
