"""CcxtSource against a local fake Binance playing recorded trades: exactly-once delivery of trade ids."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from prometheus_client import REGISTRY
from structlog.testing import CapturingLogger

from schemas.models import Trade, TradeBatch
from streams.sources.base import BadInput
from streams.sources import ccxt_live
from streams.sources.ccxt_live import CcxtSource, parse_trade
from tests.fake_exchange import FakeBinance, btcusdt_agg_trades, retime, wait_for, xrpeth_agg_trades

pytestmark = pytest.mark.timeout(30)

SPOT_ONLY = {"fetchMarkets": {"types": ["spot"]}}


def expected_trade(raw: dict[str, Any]) -> Trade:
    return Trade(str(raw["a"]), raw["T"] * 1000, float(raw["p"]), float(raw["q"]), "sell" if raw["m"] else "buy")


def make_source(fake: FakeBinance, symbols: list[str], **kw: Any) -> CcxtSource:
    kw.setdefault("poll_interval", 0.1)
    return CcxtSource(
        "binance",
        symbols,
        exchange_options={**SPOT_ONLY, **kw.pop("exchange_options", {})},
        url_overrides=fake.url_overrides(),
        min_backoff=0.05,
        max_backoff=0.2,
        **kw,
    )


def reconnects() -> float:
    return REGISTRY.get_sample_value("tickflow_source_reconnects_total", {"exchange": "binance"}) or 0.0


def bad_answers() -> float:
    return REGISTRY.get_sample_value("tickflow_source_bad_answers_total", {"exchange": "binance"}) or 0.0


class Collector:
    """Consumes a source in the background, like the ingest loop would."""

    def __init__(self, source: CcxtSource) -> None:
        self.source = source
        self.items: list[TradeBatch | BadInput] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for item in self.source.stream():
            self.items.append(item)

    @property
    def batches(self) -> list[TradeBatch]:
        return [i for i in self.items if isinstance(i, TradeBatch)]

    @property
    def trades(self) -> list[Trade]:
        return [t for b in self.batches for t in b.trades]

    async def until_ids(self, ids: set[str], timeout: float = 15.0) -> None:
        def done() -> bool:
            if self.task.done():
                self.task.result()
            return ids <= {t.trade_id for t in self.trades}

        await wait_for(done, timeout)
        await asyncio.sleep(0.3)  # anything doubled would show up now

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.source.aclose()


def subscribed(fake: FakeBinance, symbol_id: str) -> bool:
    return any(f"{symbol_id.lower()}@aggTrade" in streams for streams in fake._sockets.values())


def agg_trade_requests(fake: FakeBinance) -> list[dict[str, str]]:
    return [q for path, q in fake.requests if path == "/api/v3/aggTrades"]


async def publish_slowly(fake: FakeBinance, symbol_id: str, chunk: int, pause: float = 0.01) -> None:
    while fake.pending[symbol_id]:
        await fake.publish(symbol_id, chunk)
        await asyncio.sleep(pause)


async def test_watch_streams_every_trade_once_in_order() -> None:
    recorded = retime(btcusdt_agg_trades(200))
    async with FakeBinance(pending={"BTCUSDT": list(recorded)}) as fake:
        c = Collector(make_source(fake, ["BTC/USDT"]))
        try:
            await wait_for(lambda: subscribed(fake, "BTCUSDT"))
            await publish_slowly(fake, "BTCUSDT", chunk=20)
            await c.until_ids({str(t["a"]) for t in recorded})
        finally:
            await c.close()
    assert c.trades == [expected_trade(t) for t in recorded]
    assert len(c.batches) > 1
    assert all(b.exchange == "binance" and b.symbol == "BTC/USDT" and b.key == "binance:BTC/USDT" for b in c.batches)
    assert all(b.received_at > recorded[0]["T"] * 1000 for b in c.batches)
    assert agg_trade_requests(fake) == []  # no disconnect, no REST
    assert not [i for i in c.items if isinstance(i, BadInput)]


async def test_disconnect_is_backfilled_through_rest_exactly() -> None:
    recorded = retime(xrpeth_agg_trades()[:300])
    before = reconnects()
    async with FakeBinance(pending={"XRPETH": list(recorded)}) as fake:
        c = Collector(make_source(fake, ["XRP/ETH"], page_limit=40))
        try:
            await wait_for(lambda: subscribed(fake, "XRPETH"))
            await fake.publish("XRPETH", 20)
            await wait_for(lambda: len(c.trades) == 20)
            fake.drop_sockets_after(15)
            await publish_slowly(fake, "XRPETH", chunk=10)
            await c.until_ids({str(t["a"]) for t in recorded})
        finally:
            await c.close()
    assert [t.trade_id for t in c.trades] == [str(t["a"]) for t in recorded]
    assert c.trades == [expected_trade(t) for t in recorded]
    assert fake.ws_connections >= 2
    assert fake.pushed < len(recorded)  # some trades were never pushed, only REST had them
    assert agg_trade_requests(fake)
    assert reconnects() > before


async def test_burst_beyond_ccxt_trade_cache_is_recovered() -> None:
    recorded = retime(btcusdt_agg_trades(60))
    async with FakeBinance(pending={"BTCUSDT": list(recorded)}) as fake:
        source = make_source(fake, ["BTC/USDT"], queue_size=1, exchange_options={"tradesLimit": 10})
        items = source.stream().__aiter__()
        try:
            first = asyncio.create_task(items.__anext__())
            await wait_for(lambda: subscribed(fake, "BTCUSDT"))
            await fake.publish("BTCUSDT", 1)
            got = [await first]
            # Nobody reads now: the queue fills, the watch task blocks, ccxt's cache of 10 overflows.
            for _ in range(2):
                await fake.publish("BTCUSDT", 1)
                await asyncio.sleep(0.1)
            await fake.publish("BTCUSDT", 40)
            await asyncio.sleep(0.2)
            reader = asyncio.create_task(_drain(items, got))
            await fake.publish("BTCUSDT", len(fake.pending["BTCUSDT"]))
            ids = {str(t["a"]) for t in recorded}
            await wait_for(lambda: ids <= {t.trade_id for b in got for t in b.trades})
            await asyncio.sleep(0.3)
            reader.cancel()
        finally:
            await source.aclose()
    assert [t for b in got for t in b.trades] == [expected_trade(t) for t in recorded]
    assert agg_trade_requests(fake)


async def _drain(items: Any, into: list[Any]) -> None:
    async for item in items:
        into.append(item)


async def test_rest_polling_resumes_after_cursor_and_retries_429() -> None:
    recorded = retime(xrpeth_agg_trades()[:150])
    assert recorded[0]["T"] == recorded[1]["T"]  # the cursor's millisecond holds a later trade too
    before = reconnects()
    async with FakeBinance(pending={"XRPETH": list(recorded)}) as fake:
        await fake.publish("XRPETH", 50)
        fake.fail_next("/api/v3/aggTrades", 429)
        cursor = (recorded[0]["T"] * 1000, str(recorded[0]["a"]))
        c = Collector(make_source(fake, ["XRP/ETH"], mode="rest", page_limit=20, resume_after={"XRP/ETH": cursor}))
        try:
            await wait_for(lambda: len(c.trades) >= 49)
            await publish_slowly(fake, "XRPETH", chunk=7, pause=0.03)
            await c.until_ids({str(t["a"]) for t in recorded[1:]})
        finally:
            await c.close()
    assert c.trades == [expected_trade(t) for t in recorded[1:]]
    assert fake._failures["/api/v3/aggTrades"] == []  # the 429 was served ...
    assert reconnects() > before  # ... and retried
    assert fake.ws_connections == 0
    assert all(int(q["limit"]) == 20 for q in agg_trade_requests(fake))
    assert all(int(q["endTime"]) - int(q["startTime"]) <= 3_600_000 for q in agg_trade_requests(fake))


async def test_failed_or_garbled_rest_answers_are_retried_and_nothing_is_lost() -> None:
    """HTTP 500 (Binance's JSON error), 502 and 503 (a load balancer's HTML), 429, a 200 whose body
    is not JSON and one cut off mid-way, in a row: each retried with backoff, counted and logged;
    the trades come through once each, in order."""
    recorded = retime(xrpeth_agg_trades()[:60])
    path = "/api/v3/aggTrades"
    failures: list[int | str] = [500, "json", 502, "cut", 503, 429]
    before, before_bad = reconnects(), bad_answers()
    async with FakeBinance(pending={"XRPETH": list(recorded)}) as fake:
        await fake.publish("XRPETH", 10)
        fake._failures[path].extend(failures)
        cursor = (recorded[0]["T"] * 1000, str(recorded[0]["a"]))
        c = Collector(make_source(fake, ["XRP/ETH"], mode="rest", page_limit=20, resume_after={"XRP/ETH": cursor}))
        try:
            await publish_slowly(fake, "XRPETH", chunk=5, pause=0.02)
            await c.until_ids({str(t["a"]) for t in recorded[1:]})
        finally:
            await c.close()
    assert c.trades == [expected_trade(t) for t in recorded[1:]]
    assert fake._failures[path] == []
    assert reconnects() == before + len(failures)
    assert bad_answers() == before_bad + 2
    assert not [i for i in c.items if isinstance(i, BadInput)]


@pytest.mark.parametrize("how", ["malformed", "cut"])
async def test_a_malformed_socket_message_or_a_cut_mid_message_reconnects_and_rest_fills_in(how: str) -> None:
    """ccxt stops reading a socket for good after a message it cannot parse, the socket still
    open: the source dead-letters the message and reconnects. A connection dropped in the middle
    of a frame is a plain loss. Either way REST fills in, nothing is doubled."""
    recorded = retime(xrpeth_agg_trades()[:60])
    garbage = '{"e": "aggTrade", "p": '
    async with FakeBinance(pending={"XRPETH": list(recorded)}) as fake:
        c = Collector(make_source(fake, ["XRP/ETH"]))
        try:
            await wait_for(lambda: subscribed(fake, "XRPETH"))
            await fake.publish("XRPETH", 10)
            await wait_for(lambda: len(c.trades) == 10)
            if how == "malformed":
                await fake.push_raw("XRPETH", garbage)
            else:
                await fake.cut_sockets_mid_frame()
            await publish_slowly(fake, "XRPETH", chunk=5, pause=0.02)
            await c.until_ids({str(t["a"]) for t in recorded})
        finally:
            await c.close()
    assert c.trades == [expected_trade(t) for t in recorded]
    assert fake.ws_connections >= 2
    bad = [i for i in c.items if isinstance(i, BadInput)]
    if how == "malformed":
        assert len(bad) == 1 and bad[0].payload == garbage.encode()
        assert bad[0].reason.startswith("unparseable: binance socket message from ws://127.0.0.1:")
    else:
        assert bad == []


async def test_catch_up_crosses_hours_without_trades() -> None:
    """Binance answers ``since`` with one hour at most: an empty hour is not the end of history."""
    head = xrpeth_agg_trades()[:40]
    quiet = 3 * 3_600_000
    recorded = retime(head[:20] + [{**t, "T": t["T"] + quiet} for t in head[20:]])
    async with FakeBinance(pending={"XRPETH": list(recorded)}) as fake:
        await fake.publish("XRPETH", len(recorded))
        cursor = (recorded[5]["T"] * 1000, str(recorded[5]["a"]))
        c = Collector(make_source(fake, ["XRP/ETH"], mode="rest", page_limit=8, resume_after={"XRP/ETH": cursor}))
        try:
            await c.until_ids({str(t["a"]) for t in recorded[6:]})
        finally:
            await c.close()
    assert c.trades == [expected_trade(t) for t in recorded[6:]]


async def test_malformed_trade_becomes_bad_input_and_stream_goes_on() -> None:
    recorded = retime(xrpeth_agg_trades()[:30])
    broken = {k: v for k, v in recorded[10].items() if k != "p"}
    recorded[10] = broken
    async with FakeBinance(pending={"XRPETH": list(recorded)}) as fake:
        c = Collector(make_source(fake, ["XRP/ETH"]))
        try:
            await wait_for(lambda: subscribed(fake, "XRPETH"))
            await publish_slowly(fake, "XRPETH", chunk=3)
            await c.until_ids({str(t["a"]) for i, t in enumerate(recorded) if i != 10})
        finally:
            await c.close()
    bad = [i for i in c.items if isinstance(i, BadInput)]
    assert len(bad) == 1
    assert bad[0].reason.startswith("bad_price: price None") and "XRP/ETH" in bad[0].reason
    assert json.loads(bad[0].payload) == {"e": "aggTrade", "E": broken["T"], "s": "XRPETH", **broken}
    assert c.trades == [expected_trade(t) for i, t in enumerate(recorded) if i != 10]


async def test_loading_markets_outwaits_rate_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    logged = CapturingLogger()
    monkeypatch.setattr(ccxt_live, "log", logged)
    before = reconnects()
    async with FakeBinance() as fake:
        fake.fail_next("/api/v3/exchangeInfo", 429, times=2)
        source = make_source(fake, ["XRP/ETH"], mode="rest")
        try:
            await source._start()
        finally:
            await source.aclose()
    assert [p for p, _ in fake.requests].count("/api/v3/exchangeInfo") == 3
    assert reconnects() == before + 2
    retries = [c.kwargs for c in logged.calls if c.method_name == "warning" and c.args == ("source_retry",)]
    assert [(r["exchange"], r["symbol"], r["attempt"]) for r in retries] == [("binance", None, 1), ("binance", None, 2)]
    assert 0.025 <= retries[0]["delay_s"] <= 0.05 and 0.05 <= retries[1]["delay_s"] <= 0.1  # doubling from min_backoff
    assert all(r["error"].startswith("DDoSProtection: ") for r in retries)


async def test_unknown_symbol_fails_fast_with_suggestion() -> None:
    async with FakeBinance() as fake:
        source = make_source(fake, ["BTC/USDX"])
        try:
            with pytest.raises(ValueError, match=r"binance has no market 'BTC/USDX' \(did you mean BTC/USDT"):
                await source.stream().__anext__()
        finally:
            await source.aclose()


def test_parse_trade_reasons() -> None:
    good = {"id": 7, "timestamp": 1_723_161_255_342, "price": 61837.63, "amount": 0.02, "side": "sell"}
    now = 1_723_161_300_000_000
    assert parse_trade(good, now) == Trade("7", 1_723_161_255_342_000, 61837.63, 0.02, "sell")
    assert parse_trade({**good, "side": None}, now) == Trade("7", 1_723_161_255_342_000, 61837.63, 0.02, "unknown")
    assert parse_trade({**good, "id": None}, now) == "bad_trade_id: missing trade id"
    assert parse_trade({**good, "amount": -1.0}, now) == "bad_amount: amount -1.0"
    assert parse_trade({**good, "timestamp": None}, now).startswith("bad_timestamp: timestamp None")
    assert parse_trade({**good, "id": "x" * 200}, now).startswith("bad_trade_id: trade id 'xxx")
