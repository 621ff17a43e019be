"""On-chain metrics (agents.onchain, agents.onchain_agent): Coin Metrics' own figures, bitcoin-etl's
blocks, revisions, reorgs, SOPR, exchange flows, bad input, snapshot/restore."""

from __future__ import annotations

import csv
import json
import math
from datetime import date
from pathlib import Path

import pytest

from agents.onchain import OnchainMetrics, block_stats, read_labels, sample_std
from agents.onchain_agent import ONCHAIN, ONCHAIN_PRICES, CandlePriceLogic, OnchainLogic
from agents.spec import AgentContext, Emit, Inbound, Reject
from schemas.codec import AvroCodec
from schemas.models import DAY_MS, Candle, OnchainBlock, OnchainBlockMetric, OnchainDay, OnchainInput, OnchainMetric, OnchainOutput, OnchainTx, day_ms
from schemas.registry import record_type
from streams.settings import Settings
from streams.sources.base import BadInput
from streams.sources.bitcoin_json import kind_of, parse_block, unwrap
from streams.sources.coinmetrics import parse_rows
from tests.conftest import data_path

CM = ("coinmetrics_onchain",)
SAMPLE = ("bitcoin_onchain_sample",)


def cm_rows(name: str) -> list[OnchainDay]:
    with open(data_path(*CM, name), encoding="utf-8", newline="") as f:
        items = list(parse_rows(iter(f), name.split(".")[0]))
    assert not [i for i in items if isinstance(i, BadInput)]
    return items  # type: ignore[return-value]


def cm_columns(name: str) -> dict[str, dict[str, float]]:
    """Coin Metrics' own values: day -> {column: value} for non-empty cells."""
    with open(data_path(*CM, name), encoding="utf-8", newline="") as f:
        return {r["time"]: {k: float(v) for k, v in r.items() if k != "time" and v} for r in csv.DictReader(f)}


def latest(rows: list[OnchainMetric]) -> dict[tuple[str, date], OnchainMetric]:
    out: dict[tuple[str, date], OnchainMetric] = {}
    for r in rows:
        key = (r.source, as_date(r.day))
        assert key not in out or out[key].revision < r.revision
        out[key] = r
    return out


def as_date(ms: int) -> date:
    return date.fromordinal(date(1970, 1, 1).toordinal() + ms // DAY_MS)


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b else abs(a - b)


@pytest.fixture(scope="module")
def btc() -> tuple[dict[tuple[str, date], OnchainMetric], dict[str, dict[str, float]]]:
    m = OnchainMetrics()
    out = [r for row in cm_rows("btc.csv") for r in m.add_day(row)]
    return latest(out), cm_columns("btc.csv")


@pytest.mark.parametrize(("ours", "theirs", "inputs"), [
    ("mvrv", "CapMVRVCur", ("CapMrktCurUSD", "CapRealUSD")),
    ("nvt_90d", "NVTAdj90", ()),
    ("volatility_30d", "VtyDayRet30d", ()),
])
def test_equals_coin_metrics_on_every_btc_day(btc, ours: str, theirs: str, inputs: tuple[str, ...]) -> None:
    rows, cm = btc
    compared = 0
    for day, cols in cm.items():
        value = getattr(rows[("coinmetrics", date.fromisoformat(day))], ours)
        if theirs in cols and all(c in cols and cols[c] for c in inputs):
            assert value is not None, (day, ours)
            assert rel(value, cols[theirs]) <= 1e-6, (day, ours, value, cols[theirs])
            compared += 1
        elif not inputs:
            # Windowed metrics: null exactly where Coin Metrics has none (a window with a gap).
            assert value is None, (day, ours, value)
    assert compared > 3500


def test_nupl_realized_price_nvt_and_active_address_means(btc) -> None:
    rows, cm = btc
    day = "2020-07-27"
    r, c = rows[("coinmetrics", date.fromisoformat(day))], cm[day]
    assert r.nupl == pytest.approx((c["CapMrktCurUSD"] - c["CapRealUSD"]) / c["CapMrktCurUSD"], rel=1e-12)
    assert r.realized_price_usd == pytest.approx(c["CapRealUSD"] / c["SplyCur"], rel=1e-12)
    assert rel(r.nvt, c["NVTAdj"]) <= 1e-6
    days = sorted(cm)[-30:]
    assert r.active_addresses_30d == pytest.approx(sum(cm[d]["AdrActCnt"] for d in days) / 30, rel=1e-12)
    assert r.active_addresses_7d == pytest.approx(sum(cm[d]["AdrActCnt"] for d in days[-7:]) / 7, rel=1e-12)
    assert r.tx_count == round(c["TxCnt"]) and r.revision == 0


def test_eth_without_realized_cap_gives_nulls_never_invented() -> None:
    m = OnchainMetrics()
    rows = latest([r for row in cm_rows("eth.csv") for r in m.add_day(row)])
    assert all(r.realized_cap_usd is None and r.mvrv is None and r.nupl is None and r.realized_price_usd is None for r in rows.values())
    assert sum(r.nvt_90d is not None for r in rows.values()) > 1000
    assert {r.asset for r in rows.values()} == {"eth"}


def test_sample_std_is_n_minus_1() -> None:
    assert sample_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(5 / 3))


def _row(day: date, **kw: float) -> OnchainDay:
    return OnchainDay("btc", day_ms(day), "coinmetrics", **kw)


def test_a_revised_day_revises_itself_and_the_windows_after_it() -> None:
    m = OnchainMetrics()
    days = [date.fromordinal(date(2020, 1, 1).toordinal() + i) for i in range(100)]
    for i, d in enumerate(days):
        m.add_day(_row(d, price_usd=100.0 + i, market_cap_usd=1e9, realized_cap_usd=5e8, transfer_value_adj_usd=1e6 + i, active_addresses=10.0))
    assert m.add_day(_row(days[95], price_usd=195.0, market_cap_usd=1e9, realized_cap_usd=5e8, transfer_value_adj_usd=1e6 + 95, active_addresses=10.0)) == []
    out = m.add_day(_row(days[95], price_usd=190.0, market_cap_usd=1e9, realized_cap_usd=4e8, transfer_value_adj_usd=1e6 + 95, active_addresses=10.0))
    assert [as_date(o.day) for o in out] == days[95:]  # the row itself and the later days whose windows hold it
    assert all(o.revision == 1 for o in out)
    assert out[0].mvrv == 2.5
    # A gap: the day after a missing one has no 7-day mean, no 90-day NVT, no volatility.
    m2 = OnchainMetrics()
    for i, d in enumerate(days):
        if i != 50:
            m2.add_day(_row(d, price_usd=100.0, market_cap_usd=1e9, transfer_value_adj_usd=1e6, active_addresses=10.0))
    last = m2.add_day(_row(days[99], price_usd=101.0, market_cap_usd=1e9, transfer_value_adj_usd=1e6, active_addresses=10.0))[0]
    assert last.nvt_90d is None and last.active_addresses_7d == 10.0 and last.volatility_30d is not None
    assert m2.add_day(_row(days[50], price_usd=100.0, market_cap_usd=1e9, transfer_value_adj_usd=1e6, active_addresses=10.0))[-1].nvt_90d == 1000.0


# --- blocks ------------------------------------------------------------------------------------------


def sample_results() -> tuple[dict[str, dict], dict[str, dict]]:
    """The sample's getblock results by file name and its getrawtransaction results by txid."""
    folder = data_path(*SAMPLE)
    blocks, raw = {}, {}
    for f in sorted(folder.glob("*rpc_response*.json")):
        r = unwrap(json.loads(f.read_text()))
        if kind_of(r) == "block":
            blocks[f.name] = r
        elif kind_of(r) == "tx":
            raw[r["txid"]] = r
    return blocks, raw


def etl(name: str) -> tuple[list[dict], list[dict]]:
    folder = data_path(*SAMPLE)
    read = lambda f: [json.loads(line) for line in (folder / f).read_text().splitlines() if line.strip()]  # noqa: E731
    return read(f"{name}_expected_blocks.json"), read(f"{name}_expected_transactions.json")


@pytest.mark.parametrize("name", ["bitcoin_block_0", "bitcoin_block_1", "bitcoin_block_without_transactions", "bitcoin_stream_50001_50002"])
def test_blocks_equal_bitcoin_etl(name: str) -> None:
    """The per-block rows the agent emits (and their address sets) equal bitcoin-etl's expected files."""
    results, raw = sample_results()
    exp_blocks, exp_txs = etl(name)
    for eb in exp_blocks:
        result = next(r for f, r in results.items() if f.startswith(name) and r["hash"] == eb["hash"])
        block = parse_block(result, raw_tx=raw.get)
        s = block_stats(block)
        txs = [t for t in exp_txs if t["block_number"] == eb["number"]]
        addresses = {a for t in txs for side in ("inputs", "outputs") for io in t[side] for a in io["addresses"]}
        assert s.addresses == addresses and s.resolved
        assert s.spent_sat == sum(t["input_value"] for t in txs)
        emitted = [o for o in OnchainLogic(labels={}, keep_days=2).on_batch(_inbound([block])) if o.record == "onchain_block_metric"]
        (row,) = [o.value for o in emitted]
        assert (row.asset, row.height, row.hash, row.block_time, row.revision, row.retracted) == ("btc", eb["number"], eb["hash"], eb["timestamp"] * 1000, 0, False)
        assert row.tx_count == eb["transaction_count"] == len(txs)
        assert round(row.fees_native * 1e8) == sum(t["fee"] for t in txs if not t["is_coinbase"])
        assert round(row.transfer_volume_native * 1e8) == sum(t["output_value"] for t in txs if not t["is_coinbase"])
        assert row.active_addresses == len(addresses)


def test_unresolved_inputs_make_fees_null_where_bitcoin_etl_goes_negative() -> None:
    results, _ = sample_results()
    exp_blocks, exp_txs = etl("bitcoin_block_with_transactions")
    result = next(r for f, r in results.items() if f.startswith("bitcoin_block_with_transactions") and r["height"] == 50001)
    s = block_stats(parse_block(result))  # no getrawtransaction results: inputs unresolved
    assert sum(t["fee"] for t in exp_txs if t["block_number"] == 50001) < 0  # etl counts them as 0
    assert s.fees_sat is None and not s.resolved
    assert s.transfer_sat == sum(t["output_value"] for t in exp_txs if t["block_number"] == 50001 and not t["is_coinbase"])
    m = OnchainMetrics()
    block_row, row = m.add_block(parse_block(result))
    assert block_row.fees_native is None and block_row.active_addresses is None and block_row.tx_count == 3
    assert row.fees_native is None and row.active_addresses is None and row.sopr is None and row.tx_count == 3


T0 = 1_600_000_000 - 1_600_000_000 % 86400  # a UTC midnight


def blk(height: int, t: int, txs: list[OnchainTx], tag: str = "") -> OnchainBlock:
    return OnchainBlock("btc", height, f"h{height}{tag}", f"h{height - 1}", t, txs)


def coinbase(n: int, addr: str = "miner") -> OnchainTx:
    return OnchainTx(f"cb{n}", True, [], [OnchainOutput(625_000_000, addr)])


def spend(txid: str, ins: list[tuple[int | None, str, int | None]], outs: list[tuple[int, str]]) -> OnchainTx:
    return OnchainTx(txid, False, [OnchainInput(v, a, c) for v, a, c in ins], [OnchainOutput(v, a) for v, a in outs])


def days_of(rows: list) -> list[OnchainMetric]:
    return [r for r in rows if isinstance(r, OnchainMetric)]


def blocks_of(rows: list) -> list[tuple]:
    """(height, hash, revision, retracted, tx_count) of the block rows."""
    return [(r.height, r.hash, r.revision, r.retracted, r.tx_count) for r in rows if isinstance(r, OnchainBlockMetric)]


def test_day_totals_reorg_and_sealed_days() -> None:
    m = OnchainMetrics(keep_days=2)
    out = m.add_block(blk(1, T0 + 60, [coinbase(1), spend("t1", [(200, "x", None)], [(150, "y"), (40, "x")])]))
    (a,) = days_of(out)
    assert (a.tx_count, a.fees_native, a.transfer_volume_native, a.active_addresses, a.revision) == (2, 10 / 1e8, 190 / 1e8, 3.0, 0)
    row = out[0]
    assert isinstance(row, OnchainBlockMetric) and row.block_time == (T0 + 60) * 1000 and not row.retracted
    assert (row.tx_count, row.fees_native, row.transfer_volume_native, row.active_addresses, row.revision) == (2, 10 / 1e8, 190 / 1e8, 3, 0)
    (b,) = days_of(m.add_block(blk(2, T0 + 120, [coinbase(2, "miner2"), spend("t2", [(100, "y", None)], [(95, "z")])])))
    assert (b.tx_count, b.fees_native, b.active_addresses, b.block_count, b.last_height, b.revision) == (4, 15 / 1e8, 5.0, 2, 2, 1)
    assert m.add_block(blk(2, T0 + 120, [])) == []  # the same hash again: a re-delivery
    # A reorg replaces block 2: its row is retracted, the day loses its transactions and addresses
    out = m.add_block(blk(2, T0 + 130, [coinbase(2, "miner")], tag="b"))
    assert blocks_of(out) == [(2, "h2", 1, True, 2), (2, "h2b", 0, False, 1)]
    (r,) = days_of(out)
    assert (r.tx_count, r.fees_native, r.active_addresses, r.block_count, r.revision) == (3, 10 / 1e8, 3.0, 2, 2)
    # The first block back (the reorg undone): its row comes back at the next revision
    assert blocks_of(m.add_block(blk(2, T0 + 120, [coinbase(2, "miner2"), spend("t2", [(100, "y", None)], [(95, "z")])]))) == [(2, "h2b", 1, True, 1), (2, "h2", 2, False, 2)]
    # Next days: day 0 is sealed once day 2 arrives (keep_days=2); a block on it is refused
    m.add_block(blk(3, T0 + 86400 + 5, [coinbase(3)]))
    m.add_block(blk(4, T0 + 2 * 86400 + 5, [coinbase(4)]))
    with pytest.raises(ValueError, match="already final"):
        m.add_block(blk(5, T0 + 100, [coinbase(5)]))
    with pytest.raises(ValueError, match="already final"):
        m.add_block(blk(2, T0 + 200, [coinbase(2)], tag="c"))  # a reorg reaching into day 0
    (r,) = days_of(m.add_block(blk(4, T0 + 2 * 86400 + 9, [coinbase(4), coinbase(44)], tag="b")))
    assert r.tx_count == 2 and r.revision == 1
    # A replacement on another day: the old day is revised to no blocks, the new one gets the block
    gone, new = days_of(m.add_block(blk(4, T0 + 3 * 86400 + 9, [coinbase(4)], tag="c")))
    assert (gone.day, gone.block_count, gone.tx_count, gone.revision) == (r.day, 0, 0, 2)
    assert new.block_count == 1 and new.revision == 0


def test_sopr_with_coverage_and_late_prices() -> None:
    m = OnchainMetrics()
    d0, d1 = T0 // 86400, T0 // 86400 + 1
    block = blk(1, T0 + 86400 + 60, [coinbase(1), spend("t", [(300, "a", T0 + 5), (100, "b", T0 - 86400 * 10)], [(390, "c")])])
    (r,) = days_of(m.add_block(block))
    assert r.sopr is None and r.sopr_coverage == 0.0  # no prices at all yet: covered share 0, never a partial figure
    m.add_day(OnchainDay("btc", d0 * DAY_MS, "coinmetrics", price_usd=100.0))
    rows = m.add_day(OnchainDay("btc", d1 * DAY_MS, "coinmetrics", price_usd=150.0))
    (r,) = [x for x in rows if x.source == "bitcoind"]
    assert r.sopr == pytest.approx(1.5) and r.sopr_coverage == pytest.approx(0.75) and r.revision == 1


def candle_1d(day: int, close: float, *, symbol: str = "BTC/USDT", is_final: bool = True, revision: int = 0) -> Candle:
    t = day * DAY_MS
    return Candle("binance", symbol, "1d", t, t + DAY_MS - 1, close, close, close, close, 1.0, close, 1, is_final=is_final, revision=revision)


def test_sopr_prices_from_daily_candles_where_no_provider_has_the_day() -> None:
    """Candle closes of the configured series become price rows of the asset (the onchain_prices
    agent); SOPR uses them where the provider has no price, the provider's where it has one."""
    d0, d1 = T0 // 86400, T0 // 86400 + 1
    prices = CandlePriceLogic(AgentContext(Settings(onchain_price_candles="binance:BTC/USDT=btc"), 0))
    assert ONCHAIN_PRICES.inputs == ("candle",) and ONCHAIN_PRICES.outputs == ("onchain_day",)
    assert not ONCHAIN_PRICES.enabled(Settings(onchain_price_candles="")) and ONCHAIN_PRICES.enabled(Settings(onchain_price_candles="binance:BTC/USDT=btc"))
    candles = [candle_1d(d0, 100.0), candle_1d(d0, 999.0, symbol="ETH/USDT"), candle_1d(d1, 140.0, is_final=False), candle_1d(d1, 150.0),
               Candle("binance", "BTC/USDT", "1d", d1 * DAY_MS + 5, 0, 1, 1, 1, 1.0, 1, 1, 1, is_final=True)]
    out = list(prices.on_batch([Inbound("candle", c.key, c, i) for i, c in enumerate(candles)]))
    emitted = [o for o in out if isinstance(o, Emit)]
    assert [(o.record, o.key, o.value.day, o.value.source, o.value.price_usd) for o in emitted] == [
        ("onchain_day", "btc", d0 * DAY_MS, "candles:binance:BTC/USDT", 100.0), ("onchain_day", "btc", d1 * DAY_MS, "candles:binance:BTC/USDT", 150.0)]
    assert [(o.offset, "UTC midnight" in o.reason) for o in out if isinstance(o, Reject)] == [(4, True)]
    block = blk(1, T0 + 86400 + 60, [coinbase(1), spend("t", [(300, "a", T0 + 5), (100, "b", T0 - 86400 * 10)], [(390, "c")])])
    logic = OnchainLogic(labels={}, keep_days=2)
    rows = [o.value for o in logic.on_batch([*[Inbound("onchain_day", "btc", o.value, i) for i, o in enumerate(emitted)], Inbound("onchain_block", "btc", block, 9)])]
    (day,) = [r for r in rows if isinstance(r, OnchainMetric) and r.source == "bitcoind"]
    assert day.sopr == pytest.approx(1.5) and day.sopr_coverage == pytest.approx(0.75)  # 300 of 400 spent: created d0
    # A provider price of the creation day takes precedence over the candle's and revises the day
    rows = [o.value for o in logic.on_batch([Inbound("onchain_day", "btc", OnchainDay("btc", d0 * DAY_MS, "coinmetrics", price_usd=120.0), 10)])]
    (day,) = [r for r in rows if r.source == "bitcoind"]
    assert day.sopr == pytest.approx(1.25) and day.revision == 1
    # A revised candle changes the price of its day: the day is revised again
    (revised,) = list(prices.on_batch([Inbound("candle", "k", candle_1d(d1, 180.0, revision=1), 11)]))
    rows = [o.value for o in logic.on_batch([Inbound("onchain_day", "btc", revised.value, 12)])]
    (day,) = [r for r in rows if r.source == "bitcoind"]
    assert day.sopr == pytest.approx(1.5) and day.revision == 2
    with pytest.raises(ValueError, match="EXCHANGE:SYMBOL=ASSET"):
        Settings(onchain_price_candles="BTC/USDT")


def test_exchange_flows_net_per_transaction() -> None:
    labels = read_labels(["address,entity", "ex1,binance", "ex2,binance", "k1,kraken", ""])
    m = OnchainMetrics(labels)
    (b, r) = m.add_block(blk(1, T0 + 60, [
        coinbase(1),
        spend("dep", [(1000, "u", None)], [(900, "ex1"), (90, "u")]),  # deposit: 900 in
        spend("wd", [(500, "ex2", None)], [(300, "k1"), (195, "ex1")]),  # binance -> kraken 300, change 195
    ]))
    flows = json.loads(r.exchange_flows)
    assert flows == {"binance": [900 / 1e8, 305 / 1e8], "kraken": [300 / 1e8, 0.0]}
    assert r.exchange_inflow_native == pytest.approx(1200 / 1e8) and r.exchange_outflow_native == pytest.approx(305 / 1e8)
    assert r.exchange_netflow_native == pytest.approx(895 / 1e8)
    assert (b.exchange_inflow_native, b.exchange_outflow_native) == (r.exchange_inflow_native, r.exchange_outflow_native)
    (b2, r2) = OnchainMetrics().add_block(blk(1, T0 + 60, [coinbase(1)]))
    assert r2.exchange_inflow_native is None and b2.exchange_inflow_native is None  # no labels configured: flows unknown, not zero
    with pytest.raises(ValueError, match="line 2"):
        read_labels(["address,entity", "no-entity"])


# --- the agent --------------------------------------------------------------------------------------


def _inbound(rows: list[OnchainDay | OnchainBlock]) -> list[Inbound]:
    return [Inbound("onchain_day" if isinstance(r, OnchainDay) else "onchain_block", r.asset, r, i) for i, r in enumerate(rows)]


def _stream() -> list[OnchainDay | OnchainBlock]:
    """BTC days around 2010-04-10 interleaved with the sample blocks of that day."""
    results, raw = sample_results()
    blocks = sorted({r["hash"]: parse_block(r, raw_tx=raw.get) for r in results.values() if r["height"] >= 50000 and r["tx"]}.values(), key=lambda b: b.height)
    days = [r for r in cm_rows("btc.csv") if date(2010, 1, 1) <= as_date(r.day) <= date(2010, 6, 30)]
    cut = next(i for i, r in enumerate(days) if as_date(r.day) == date(2010, 4, 11))
    return [*days[:cut], *blocks, *days[cut:]]


def test_agent_restart_mid_stream_gives_the_clean_run_outputs() -> None:
    ctx = AgentContext(Settings(onchain_exchange_addresses=None), 0)
    records = _inbound(_stream())
    clean = list(OnchainLogic(ctx).on_batch(records))
    assert {type(o) for o in clean} == {Emit}
    for cut in (1, len(records) // 3, len(records) - 3):
        first = OnchainLogic(ctx)
        out = list(first.on_batch(records[:cut]))
        second = OnchainLogic(ctx)
        second.restore(first.snapshot())
        out += list(second.on_batch(records[cut:]))
        assert out == clean
    assert [o.value.height for o in clean if o.record == "onchain_block_metric"] == [50000, 50001, 50002]
    block_rows = [o.value for o in clean if o.record == "onchain_metric" and o.value.source == "bitcoind"]
    assert as_date(block_rows[-1].day) == date(2010, 4, 10) and block_rows[-1].tx_count == 5 and block_rows[-1].fees_native == 0.0
    # Coin Metrics has no BTC price before 2010-07-18: nothing of the day's spent value is covered
    assert block_rows[-1].sopr is None and block_rows[-1].sopr_coverage == 0.0


def test_restore_reads_a_version_1_snapshot() -> None:
    """A checkpoint from before block rows (no block times, no row revisions): the kept blocks count in
    their days, and a reorg retracts them from the day without a row for a block never emitted."""
    m = OnchainMetrics()
    m.add_block(blk(1, T0 + 60, [coinbase(1)]))
    doc = json.loads(m.snapshot())
    doc["v"] = 1
    doc["chains"] = [[asset, sealed, hashes, [b[:11] for b in blocks]] for asset, sealed, hashes, blocks, _ in doc["chains"]]
    old = OnchainMetrics()
    old.restore(json.dumps(doc).encode())
    out = old.add_block(blk(1, T0 + 90, [coinbase(1), coinbase(11)], tag="b"))
    assert blocks_of(out) == [(1, "h1b", 0, False, 2)]
    (day,) = days_of(out)
    assert day.tx_count == 2 and day.block_count == 1 and day.revision == 1


def test_agent_rejects_bad_rows_and_goes_on() -> None:
    logic = OnchainLogic(labels={}, keep_days=2)
    good = _row(date(2020, 1, 1), price_usd=1.0)
    out = list(logic.on_batch([
        Inbound("onchain_day", "btc", _row(date(2020, 1, 1), price_usd=float("nan")), 0),
        Inbound("onchain_day", "btc", _row(date(2020, 1, 1), market_cap_usd=-5.0), 1),
        Inbound("candle", "x", object(), 2),
        Inbound("onchain_block", "btc", OnchainBlock("btc", 1, "h", None, -5, []), 3),
        Inbound("onchain_day", "btc", OnchainDay("btc", day_ms(date(2020, 1, 2)) + 1, "coinmetrics"), 5),
        Inbound("onchain_day", "btc", good, 4),
    ]))
    rejects = [o for o in out if isinstance(o, Reject)]
    assert [r.offset for r in rejects] == [0, 1, 2, 3, 5] and "UTC midnight" in rejects[4].reason
    assert "price_usd" in rejects[0].reason and "market_cap_usd" in rejects[1].reason and "candle" in rejects[2].reason
    assert [o.value.day for o in out if isinstance(o, Emit)] == [day_ms(date(2020, 1, 1))]


def test_coinmetrics_bad_rows_become_bad_input_with_reasons() -> None:
    lines = [
        "time,PriceUSD,CapMrktCurUSD,AdrActCnt\n",
        "2020-01-01,7000.5,1.2e11,900000\n",
        "2020-01-02,abc,1.2e11,900000\n",
        "2020-13-01,7000,1.2e11,900000\n",
        "2020-01-03,7000,1.2e11\n",
        "2020-01-04,-1,1.2e11,5\n",
        "2020-01-05,,,\n",
    ]
    items = list(parse_rows(iter(lines), "btc"))
    assert isinstance(items[0], OnchainDay) and items[0].price_usd == 7000.5 and items[0].realized_cap_usd is None
    reasons = [i.reason for i in items if isinstance(i, BadInput)]
    assert len(reasons) == 4
    assert "PriceUSD is 'abc'" in reasons[0] and "unparsable day" in reasons[1] and "3 cells" in reasons[2] and "price_usd" in reasons[3]
    assert isinstance(items[-1], OnchainDay) and items[-1].price_usd is None
    assert isinstance(next(parse_rows(iter(["a,b\n"]), "btc")), BadInput)


def test_spec_and_registry_declare_the_record_types() -> None:
    assert ONCHAIN.name == "onchain" and ONCHAIN.outputs == ("onchain_metric", "onchain_block_metric")
    rt = record_type("onchain_metric")
    assert (rt.topic, rt.table, rt.table_key, rt.version, rt.channel) == ("onchain_metrics", "onchain_metrics", ("asset", "day", "source"), "revision", "onchain:{asset}")
    rt = record_type("onchain_block_metric")
    assert (rt.topic, rt.table, rt.table_key, rt.version, rt.time_column, rt.channel) == (
        "onchain_block_metrics", "onchain_block_metrics", ("asset", "height", "hash"), "revision", "block_time", "onchain_blocks:{asset}")
    assert [record_type(n).local_id for n in ("onchain_day", "onchain_block", "onchain_metric")] == [7, 8, 9]
    results, raw = sample_results()
    block = parse_block(next(r for r in results.values() if r["height"] == 50001), raw_tx=raw.get)
    for name, value in (("tickflow.OnchainBlock", block), ("tickflow.OnchainDay", cm_rows("btc.csv")[-1])):
        codec = AvroCodec(name)
        assert type(value).from_avro(codec.decode(codec.encode(value.to_avro()))) == value
    metric = OnchainMetrics().add_day(cm_rows("btc.csv")[-1])[0]
    codec = AvroCodec("tickflow.OnchainMetric")
    assert OnchainMetric.from_avro(codec.decode(codec.encode(metric.to_avro()))) == metric
    assert metric.day == 18470 * DAY_MS


@pytest.mark.parametrize(("model", "migration"), [(OnchainMetric, "0005_onchain_metrics.sql"), (OnchainBlockMetric, "0009_onchain_block_metrics.sql")])
def test_sql_columns_equal_the_model_fields(model: type, migration: str) -> None:
    root = Path(__file__).resolve().parents[1] / "infra" / "sql"
    names = [f for f in model.__dataclass_fields__]
    for path in (root / "clickhouse" / migration, root / "postgres" / migration, root / "postgres" / "timescale" / migration):
        text = path.read_text()
        body = text[text.index("(", text.index("CREATE TABLE")) + 1:]
        cols = [line.strip().split()[0].strip('`"') for line in body.splitlines() if line.strip() and not line.strip().startswith(("PRIMARY", ")", "--"))]
        assert cols[: len(names)] == names, path
