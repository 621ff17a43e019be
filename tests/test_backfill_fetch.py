"""fetch_ohlcv_history against the fake Binance serving recorded XRP/ETH 1m klines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import ccxt
import pytest
from structlog.testing import CapturingLogger

from schemas.models import Candle
from streams import backfill
from streams.backfill import fetch_ohlcv_history, open_exchange
from tests.fake_exchange import MINUTE_MS, FakeBinance, xrpeth_klines_1m

pytestmark = pytest.mark.timeout(30)


def as_candle(row: list[Any], is_final: bool = True) -> Candle:
    return Candle(
        exchange="binance", symbol="XRP/ETH", interval="1m", open_time=row[0], close_time=row[6],
        open=float(row[1]), high=float(row[2]), low=float(row[3]), close=float(row[4]), volume=float(row[5]),
        quote_volume=0.0, trade_count=0, is_final=is_final,
    )


def kline_requests(fake: FakeBinance) -> list[dict[str, str]]:
    return [q for path, q in fake.requests if path == "/api/v3/klines"]


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeBinance, Any, list[list[Any]]]]:
    rows = xrpeth_klines_1m()
    async with FakeBinance(klines={("XRPETH", "1m"): rows}) as fake:
        exchange = open_exchange("binance", fake.url_overrides(), {"fetchMarkets": {"types": ["spot"]}})
        try:
            yield fake, exchange, rows
        finally:
            await exchange.close()


async def test_pages_a_closed_range_without_gaps_or_overlap(served: Any) -> None:
    fake, exchange, rows = served
    candles = await fetch_ohlcv_history(exchange, "XRP/ETH", "1m", rows[100][0], rows[349][0], limit=100)
    assert candles == [as_candle(r) for r in rows[100:350]]
    starts = [int(q["startTime"]) for q in kline_requests(fake)]
    assert starts == [rows[100][0], rows[200][0], rows[300][0]]
    assert all(b.open_time - a.open_time == MINUTE_MS for a, b in zip(candles, candles[1:]))


async def test_pages_to_the_latest_and_retries_a_429(served: Any) -> None:
    fake, exchange, rows = served
    fake.fail_next("/api/v3/klines", 429)
    candles = await fetch_ohlcv_history(exchange, "XRP/ETH", "1m", rows[-150][0] - 30_000, limit=100, min_backoff=0.01)
    assert candles == [as_candle(r) for r in rows[-150:]]
    assert len(kline_requests(fake)) == 1 + 3  # the 429, two full pages, and the empty one that ends it


async def test_gives_up_with_the_last_error_after_logging_each_retry(served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake, exchange, rows = served
    logged = CapturingLogger()
    monkeypatch.setattr(backfill, "log", logged)
    fake.fail_next("/api/v3/klines", 429, times=3)
    with pytest.raises(ccxt.DDoSProtection):
        await fetch_ohlcv_history(exchange, "XRP/ETH", "1m", rows[0][0], retries=2, min_backoff=0.01, max_backoff=0.015)
    assert len(kline_requests(fake)) == 3
    retries = [c.kwargs for c in logged.calls if c.method_name == "warning" and c.args == ("backfill_retry",)]
    assert [(r["exchange"], r["symbol"], r["attempt"]) for r in retries] == [("binance", "XRP/ETH", 1), ("binance", "XRP/ETH", 2)]
    assert 0.005 <= retries[0]["delay_s"] <= 0.01 and 0.0075 <= retries[1]["delay_s"] <= 0.015  # doubled, capped
    assert all(r["error"].startswith("DDoSProtection(") for r in retries)


async def test_only_closed_windows_are_final() -> None:
    rows = xrpeth_klines_1m()[:5]
    if (left := MINUTE_MS - int(time.time() * 1000) % MINUTE_MS) < 3000:
        await asyncio.sleep(left / 1000)  # keep the live minute open for the whole test
    shift = (int(time.time() * 1000) // MINUTE_MS * MINUTE_MS) - rows[-1][0]
    live = [[r[0] + shift, *r[1:6], r[6] + shift, *r[7:]] for r in rows]
    async with FakeBinance(klines={("XRPETH", "1m"): live}) as fake:
        exchange = open_exchange("binance", fake.url_overrides(), {"fetchMarkets": {"types": ["spot"]}})
        try:
            candles = await fetch_ohlcv_history(exchange, "XRP/ETH", "1m", live[0][0])
        finally:
            await exchange.close()
    assert [c.is_final for c in candles] == [True, True, True, True, False]
    assert candles == [as_candle(r, is_final=i < 4) for i, r in enumerate(live)]


def test_unknown_exchange_is_named() -> None:
    with pytest.raises(ValueError, match="ccxt has no exchange 'binanse'; did you mean binance"):
        open_exchange("binanse")
