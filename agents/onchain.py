"""On-chain metrics, pure: provider day rows and blocks in, one ``OnchainMetric`` per (asset, UTC day,
source) out, revised as data arrives. No I/O, no clock.

From provider data (Coin Metrics community CSV rows, ``source`` = the provider), matching Coin
Metrics' own definitions (``metrics.csv``; the tests compare every BTC day to 1e-6):

- MVRV = CapMrktCurUSD / CapRealUSD (CapMVRVCur), NUPL = (market cap - realized cap) / market cap,
  realized price = CapRealUSD / SplyCur;
- NVT = CapMrktCurUSD / TxTfrValAdjUSD (NVTAdj), NVT 90d = CapMrktCurUSD / mean of the last 90
  days' TxTfrValAdjUSD, the day included (NVTAdj90);
- volatility 30d = sample standard deviation (n - 1) of the last 30 daily log returns of PriceUSD
  (VtyDayRet30d);
- active addresses (AdrActCnt) and their 7- and 30-day means.

A windowed metric needs every day of its window: one missing input makes it null, never an estimate
from fewer days. Windows are by calendar day, not by row, so a gap in the file is a gap here.

From blocks (``source`` = ``bitcoind``), per block (:func:`block_stats`, emitted as
``OnchainBlockMetric`` rows keyed (asset, height, hash)) and per UTC day of the block time: transaction count (coinbase included, like ``getblock``'s nTx), fees = inputs - outputs of the
non-coinbase transactions, transfer volume = outputs of the non-coinbase transactions, distinct
addresses of inputs and outputs, exchange inflow/outflow per labelled entity (a transaction's net
change of the entity's balance: positive is inflow, negative outflow, so change back to the same
entity is no flow), and SOPR = spent outputs valued at the day's price / at their creation day's
price, over the outputs whose both prices are known, with ``sopr_coverage`` = that share of the
day's spent value. An input the node could not resolve (no value) makes fees, addresses, flows and
SOPR of its day null.

Prices for SOPR (:meth:`OnchainMetrics.price_of`): a day's price from a provider row of the asset
(the first provider by name that has the day), else from a price row made of a final daily candle
(source ``candles:EXCHANGE:SYMBOL``, :func:`candle_price`; the ``onchain_prices`` agent writes them
to the same input topic, keyed by asset). Prices reach the metrics as input records, in the order of
the agent's input: a block's day uses the prices received before it, and a price received later
revises the days still kept (``keep_days``), never a sealed one. So the rows are the same on every
replay of the same input, and independent of how prices and blocks interleave as long as each
day's price arrives within ``keep_days`` of its last block (live, a daily candle is final right
after its day ends).

Revisions: each (asset, day, source) row starts at revision 0 and gets revision + 1 whenever its
values change (a re-delivered provider row with other figures, the next block of the day, a price
that makes SOPR computable, a reorg). An input that changes nothing emits nothing.

Blocks of the newest ``keep_days`` UTC days are kept one by one, so a block replaced at a height
already seen (a reorg) retracts it and every later block (their block rows get the next revision
with ``retracted``; a block that comes back gets the one after) and revises their days; older days
are sealed: a reorg or a block reaching into them is refused with the reason.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas.models import DAY_MS, OnchainBlock, OnchainBlockMetric, OnchainDay, OnchainMetric


def day_number(ms: int) -> int:
    """UTC day number (days since the epoch) of a time in ms."""
    return ms // DAY_MS


def day_of(n: int) -> int:
    """The UTC midnight, in ms, of day number ``n``."""
    return n * DAY_MS

SAT = 100_000_000
NVT_DAYS = 90
VOLATILITY_RETURNS = 30
ACTIVE_MEANS = (7, 30)
BLOCK_SOURCE = "bitcoind"
CANDLE_SOURCE = "candles:"  # source prefix of price rows made of candles (lower priority than providers)
PRICE_INTERVAL = "1d"
HASHES_KEPT = 4032  # heights whose hash is remembered: re-deliveries this old are recognised
SNAPSHOT_VERSION = 2  # 2: block times and block-row revisions (1 is still read)

# Provider fields a row carries, in OnchainDay order (after asset, day, source).
PROVIDER_FIELDS = (
    "price_usd", "market_cap_usd", "realized_cap_usd", "supply_native", "transfer_value_adj_usd",
    "active_addresses", "tx_count", "fees_native", "transfer_volume_native",
)


class OnchainError(ValueError):
    """An input the metrics refuse for good (the agent dead-letters it with this message)."""


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _window(values: Mapping[int, float | None], day: int, n: int) -> list[float] | None:
    """The ``n`` values of ``day - n + 1 .. day``, or None when any is missing."""
    out = []
    for d in range(day - n + 1, day + 1):
        v = values.get(d)
        if v is None:
            return None
        out.append(v)
    return out


def _mean(xs: list[float]) -> float:
    return math.fsum(xs) / len(xs)


def sample_std(xs: list[float]) -> float:
    """Sample standard deviation (n - 1), two-pass for accuracy."""
    m = _mean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def log_returns(prices: list[float]) -> list[float] | None:
    if any(p <= 0 for p in prices):
        return None
    return [math.log(b / a) for a, b in zip(prices, prices[1:], strict=False)]


@dataclass(slots=True)
class ProviderSeries:
    """One (asset, provider)'s rows by day number, and the columns the windows read."""

    rows: dict[int, OnchainDay] = field(default_factory=dict)
    price: dict[int, float | None] = field(default_factory=dict)
    transfer: dict[int, float | None] = field(default_factory=dict)
    active: dict[int, float | None] = field(default_factory=dict)

    def put(self, n: int, row: OnchainDay) -> None:
        self.rows[n] = row
        self.price[n] = row.price_usd
        self.transfer[n] = row.transfer_value_adj_usd
        self.active[n] = row.active_addresses


def provider_metric(series: ProviderSeries, n: int) -> OnchainMetric:
    """The metrics of day ``n`` from the provider's rows (revision left at 0)."""
    row = series.rows[n]
    mcap, rcap, supply = row.market_cap_usd, row.realized_cap_usd, row.supply_native
    transfers = _window(series.transfer, n, NVT_DAYS)
    prices = _window(series.price, n, VOLATILITY_RETURNS + 1)
    returns = log_returns(prices) if prices is not None else None
    means = []
    for k in ACTIVE_MEANS:
        w = _window(series.active, n, k)
        means.append(_mean(w) if w is not None else None)
    return OnchainMetric(
        asset=row.asset,
        day=row.day,
        source=row.source,
        price_usd=row.price_usd,
        market_cap_usd=mcap,
        realized_cap_usd=rcap,
        mvrv=_ratio(mcap, rcap),
        nupl=_ratio(None if mcap is None or rcap is None else mcap - rcap, mcap),
        realized_price_usd=_ratio(rcap, supply),
        nvt=_ratio(mcap, row.transfer_value_adj_usd),
        nvt_90d=_ratio(mcap, _mean(transfers)) if transfers is not None else None,
        volatility_30d=sample_std(returns) if returns is not None else None,
        active_addresses=row.active_addresses,
        active_addresses_7d=means[0],
        active_addresses_30d=means[1],
        tx_count=None if row.tx_count is None else round(row.tx_count),
        fees_native=row.fees_native,
        transfer_volume_native=row.transfer_volume_native,
    )


def provider_problem(row: OnchainDay) -> str | None:
    """Why a provider row is unusable, or None."""
    if not row.asset or not row.source:
        return "provider row without asset or source"
    if not isinstance(row.day, int) or row.day % DAY_MS:
        return f"day {row.day!r} is not a UTC midnight in ms"
    for name in PROVIDER_FIELDS:
        v = getattr(row, name)
        if v is None:
            continue
        if not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            return f"{name} is {v!r}: not a finite non-negative number"
    return None


# --- blocks ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockStats:
    """One block's contribution to its day (integers: satoshis, so retraction is exact)."""

    height: int
    hash: str
    day: int  # UTC day number of the block time
    tx_count: int
    resolved: bool  # every non-coinbase input has a known value
    fees_sat: int | None  # inputs - outputs of non-coinbase transactions; None unless resolved
    transfer_sat: int  # outputs of non-coinbase transactions
    addresses: frozenset[str]  # of inputs and outputs (the inputs' only when resolved)
    spent_sat: int  # value of the resolved inputs
    spent_by_day: dict[int, int]  # creation day -> value spent, inputs with a known creation time
    flows: dict[str, tuple[int, int]]  # entity -> (inflow, outflow); labelled entities only
    time: int | None = None  # block time, seconds; None only in stats restored from a version 1 snapshot


def block_row(asset: str, s: BlockStats, revision: int, *, retracted: bool = False, flows_known: bool = False) -> OnchainBlockMetric:
    """The block's own row; exchange flows only when labels are configured and the block resolved."""
    assert s.time is not None
    inflow = outflow = None
    if flows_known and s.resolved:
        inflow = sum(i for i, _ in s.flows.values()) / SAT
        outflow = sum(o for _, o in s.flows.values()) / SAT
    return OnchainBlockMetric(
        asset=asset,
        height=s.height,
        hash=s.hash,
        block_time=s.time * 1000,
        revision=revision,
        retracted=retracted,
        tx_count=s.tx_count,
        fees_native=None if s.fees_sat is None else s.fees_sat / SAT,
        transfer_volume_native=s.transfer_sat / SAT,
        active_addresses=len(s.addresses) if s.resolved else None,
        exchange_inflow_native=inflow,
        exchange_outflow_native=outflow,
        exchange_netflow_native=None if inflow is None or outflow is None else inflow - outflow,
    )


def block_stats(block: OnchainBlock, labels: Mapping[str, str] | None = None) -> BlockStats:
    """Per-block figures; ``labels`` maps address -> exchange entity."""
    labels = labels or {}
    tx_count = len(block.txs)
    resolved = True
    fees = transfer = spent = 0
    addresses: set[str] = set()
    spent_by_day: dict[int, int] = {}
    flows: dict[str, list[int]] = {}
    for tx in block.txs:
        out_sum = 0
        net: dict[str, int] = {}
        for value, address in tx.outputs:
            out_sum += value
            if address is not None:
                addresses.add(address)
                entity = labels.get(address)
                if entity is not None:
                    net[entity] = net.get(entity, 0) + value
        if tx.coinbase:
            continue
        transfer += out_sum
        in_sum = 0
        for value, address, created in tx.inputs:
            if value is None:
                resolved = False
                continue
            in_sum += value
            if created is not None:
                cday = created // 86400
                spent_by_day[cday] = spent_by_day.get(cday, 0) + value
            if address is not None:
                addresses.add(address)
                entity = labels.get(address)
                if entity is not None:
                    net[entity] = net.get(entity, 0) - value
        spent += in_sum
        fees += in_sum - out_sum
        for entity, change in net.items():
            f = flows.setdefault(entity, [0, 0])
            if change > 0:
                f[0] += change
            elif change < 0:
                f[1] -= change
    return BlockStats(
        height=block.height,
        hash=block.hash,
        day=block.time // 86400,
        tx_count=tx_count,
        resolved=resolved,
        fees_sat=fees if resolved else None,
        transfer_sat=transfer,
        addresses=frozenset(addresses),
        spent_sat=spent,
        spent_by_day=spent_by_day,
        flows={e: (i, o) for e, (i, o) in flows.items()},
        time=block.time,
    )


@dataclass(slots=True)
class DayBlocks:
    """The kept blocks of one UTC day and their running totals (add and retract are exact)."""

    blocks: dict[int, BlockStats] = field(default_factory=dict)  # height -> stats
    tx_count: int = 0
    unresolved: int = 0  # blocks with an unresolved input
    fees_sat: int = 0
    transfer_sat: int = 0
    spent_sat: int = 0
    address_refs: dict[str, int] = field(default_factory=dict)  # address -> blocks of the day naming it
    spent_by_day: dict[int, int] = field(default_factory=dict)
    flows: dict[str, list[int]] = field(default_factory=dict)

    def add(self, s: BlockStats, sign: int = 1) -> None:
        if sign > 0:
            self.blocks[s.height] = s
        else:
            del self.blocks[s.height]
        self.tx_count += sign * s.tx_count
        self.transfer_sat += sign * s.transfer_sat
        self.spent_sat += sign * s.spent_sat
        if s.fees_sat is None:
            self.unresolved += sign
        else:
            self.fees_sat += sign * s.fees_sat
        refs = self.address_refs
        for a in s.addresses:
            c = refs.get(a, 0) + sign
            if c:
                refs[a] = c
            else:
                del refs[a]
        for d, v in s.spent_by_day.items():
            t = self.spent_by_day.get(d, 0) + sign * v
            if t:
                self.spent_by_day[d] = t
            else:
                del self.spent_by_day[d]
        for e, (i, o) in s.flows.items():
            f = self.flows.setdefault(e, [0, 0])
            f[0] += sign * i
            f[1] += sign * o
            if f == [0, 0]:
                del self.flows[e]


def block_day_metric(
    asset: str, n: int, day: DayBlocks, price: Mapping[int, float | None], *, flows_known: bool
) -> OnchainMetric:
    """The day's row from its kept blocks; ``price`` (day -> USD) feeds SOPR."""
    resolved = day.unresolved == 0
    heights = day.blocks.keys()
    sopr = coverage = None
    if resolved and day.spent_sat > 0:
        p_now = price.get(n)
        covered = 0
        then = 0.0
        if p_now is not None and p_now > 0:
            for d, v in day.spent_by_day.items():
                p = price.get(d)
                if p is not None and p > 0:
                    covered += v
                    then += v * p
        coverage = covered / day.spent_sat
        sopr = covered * p_now / then if covered and p_now else None
    inflow = outflow = None
    flows_json = None
    if flows_known and resolved:
        inflow = sum(i for i, _ in day.flows.values()) / SAT
        outflow = sum(o for _, o in day.flows.values()) / SAT
        flows_json = orjson.dumps({e: [i / SAT, o / SAT] for e, (i, o) in sorted(day.flows.items())}).decode()
    return OnchainMetric(
        asset=asset,
        day=day_of(n),
        source=BLOCK_SOURCE,
        active_addresses=float(len(day.address_refs)) if resolved else None,
        tx_count=day.tx_count,
        fees_native=day.fees_sat / SAT if resolved else None,
        transfer_volume_native=day.transfer_sat / SAT,
        sopr=sopr,
        sopr_coverage=coverage,
        exchange_inflow_native=inflow,
        exchange_outflow_native=outflow,
        exchange_netflow_native=None if inflow is None or outflow is None else inflow - outflow,
        exchange_flows=flows_json,
        block_count=len(day.blocks),
        first_height=min(heights),
        last_height=max(heights),
    )


@dataclass(slots=True)
class ChainState:
    """One asset's kept blocks: days by number, the hash of each recent height, the sealed horizon."""

    days: dict[int, DayBlocks] = field(default_factory=dict)
    hashes: dict[int, str] = field(default_factory=dict)  # height -> hash, the newest HASHES_KEPT
    sealed_before: int | None = None  # days before this one are final
    # (height, hash) -> revision of the block's last row, for the heights a reorg can still reach
    # (retracted blocks too: one that comes back gets the next revision).
    revisions: dict[tuple[int, str], int] = field(default_factory=dict)


# --- the whole state --------------------------------------------------------------------------------


def _digest(m: OnchainMetric) -> str:
    """A stable fingerprint of a row's values (revision aside), to emit only what changed."""
    d = m.to_avro()
    d.pop("revision")
    return hashlib.blake2b(orjson.dumps(d, option=orjson.OPT_SORT_KEYS), digest_size=12).hexdigest()


class OnchainMetrics:
    """Every asset's provider series and kept blocks; ``add_*`` return the rows that changed."""

    def __init__(self, labels: Mapping[str, str] | None = None, keep_days: int = 2) -> None:
        if keep_days < 1:
            raise ValueError("keep_days must be at least 1")
        self.labels = dict(labels or {})
        self.keep_days = keep_days
        self.providers: dict[tuple[str, str], ProviderSeries] = {}
        self.chains: dict[str, ChainState] = {}
        self.emitted: dict[tuple[str, str, int], tuple[int, str]] = {}  # (asset, source, day) -> (revision, digest)
        self._prices: dict[str, dict[int, float | None]] = {}  # price_of's cache, dropped when a price changes

    # provider rows
    def add_day(self, row: OnchainDay) -> list[OnchainMetric]:
        problem = provider_problem(row)
        if problem:
            raise OnchainError(problem)
        key = (row.asset, row.source)
        series = self.providers.get(key)
        if series is None:
            series = self.providers[key] = ProviderSeries()
        n = day_number(row.day)
        old = series.rows.get(n)
        if old == row:
            return []
        series.put(n, row)
        out = []
        # A day is in the windows of the next NVT_DAYS - 1 days (the longest window).
        for d in range(n, n + NVT_DAYS):
            if d in series.rows:
                m = self._changed(provider_metric(series, d))
                if m is not None:
                    out.append(m)
        if (old.price_usd if old is not None else None) != row.price_usd:
            cached = self._prices.get(row.asset)
            if cached is not None:
                price = self._price_at(row.asset, n)
                if price is None:
                    cached.pop(n, None)
                else:
                    cached[n] = price
            out.extend(self._revisit_blocks(row.asset))
        return out

    def _price_series(self, asset: str) -> list[ProviderSeries]:
        """The asset's series in price priority: providers by name, then candle price rows by name."""
        keys = sorted((k for k in self.providers if k[0] == asset), key=lambda k: (k[1].startswith(CANDLE_SOURCE), k[1]))
        return [self.providers[k] for k in keys]

    def _price_at(self, asset: str, n: int) -> float | None:
        for series in self._price_series(asset):
            if series.price.get(n) is not None:
                return series.price[n]
        return None

    def price_of(self, asset: str) -> dict[int, float | None]:
        """Daily price of ``asset`` for SOPR: the first series (:meth:`_price_series`) that has the day."""
        cached = self._prices.get(asset)
        if cached is not None:
            return cached
        merged: dict[int, float | None] = {}
        for series in reversed(self._price_series(asset)):
            merged.update({d: p for d, p in series.price.items() if p is not None})
        self._prices[asset] = merged
        return merged

    # blocks
    def add_block(self, block: OnchainBlock) -> list[OnchainBlockMetric | OnchainMetric]:
        """The block's row, the rows of the blocks it retracts (a reorg), then the days' rows that changed."""
        if not block.asset:
            raise OnchainError("block without asset")
        if block.height < 0 or block.time <= 0:
            raise OnchainError(f"block {block.hash} has height {block.height} and time {block.time}")
        chain = self.chains.get(block.asset)
        if chain is None:
            chain = self.chains[block.asset] = ChainState()
        known = chain.hashes.get(block.height)
        if known == block.hash:
            return []  # a re-delivery
        if known is None and chain.hashes and block.height < min(chain.hashes):
            raise OnchainError(f"block {block.height} is older than the {HASHES_KEPT} heights the agent remembers")
        stats = block_stats(block, self.labels)
        if chain.sealed_before is not None and stats.day < chain.sealed_before:
            raise OnchainError(f"block {block.height} falls on UTC day {stats.day} (days since the epoch), a day already final (ONCHAIN_KEEP_DAYS)")
        touched: set[int] = set()
        flows_known = bool(self.labels)
        out: list[OnchainBlockMetric | OnchainMetric] = []
        if known is not None:  # a reorg: this block replaces the one at its height and every later one
            kept = {h: (d, s) for d, day in chain.days.items() for h, s in day.blocks.items() if h >= block.height}
            replaced = [h for h in chain.hashes if h >= block.height]
            if len(kept) != len(replaced):
                raise OnchainError(f"reorg at height {block.height} reaches into days already final (ONCHAIN_KEEP_DAYS)")
            for h in replaced:
                del chain.hashes[h]
            for h, (d, s) in sorted(kept.items()):
                chain.days[d].add(s, -1)
                touched.add(d)
                rev = chain.revisions.get((h, s.hash))
                if rev is not None and s.time is not None:  # None: kept from before block rows existed, never emitted
                    chain.revisions[(h, s.hash)] = rev + 1
                    out.append(block_row(block.asset, s, rev + 1, retracted=True, flows_known=flows_known))
        day = chain.days.get(stats.day)
        if day is None:
            day = chain.days[stats.day] = DayBlocks()
        day.add(stats)
        chain.hashes[block.height] = block.hash
        touched.add(stats.day)
        before = chain.revisions.get((block.height, block.hash))
        rev = 0 if before is None else before + 1
        chain.revisions[(block.height, block.hash)] = rev
        out.append(block_row(block.asset, stats, rev, flows_known=flows_known))
        if len(chain.hashes) > HASHES_KEPT:
            for h in sorted(chain.hashes)[: len(chain.hashes) - HASHES_KEPT]:
                del chain.hashes[h]
        out.extend(self._emit_days(block.asset, chain, sorted(touched)))
        self._seal(chain)
        return out

    def _emit_days(self, asset: str, chain: ChainState, days: Iterable[int]) -> list[OnchainMetric]:
        price = self.price_of(asset)
        out = []
        for d in days:
            day = chain.days.get(d)
            if day is None or not day.blocks:
                # Every block of the day was retracted (a reorg moved them to another day): the
                # row is revised to no blocks rather than left with the replaced blocks' figures.
                chain.days.pop(d, None)
                metric = OnchainMetric(asset=asset, day=day_of(d), source=BLOCK_SOURCE, tx_count=0, block_count=0)
            else:
                metric = block_day_metric(asset, d, day, price, flows_known=bool(self.labels))
            m = self._changed(metric)
            if m is not None:
                out.append(m)
        return out

    def _revisit_blocks(self, asset: str) -> list[OnchainMetric]:
        chain = self.chains.get(asset)
        return self._emit_days(asset, chain, sorted(chain.days)) if chain else []

    def _seal(self, chain: ChainState) -> None:
        if not chain.days:
            return
        horizon = max(chain.days) - self.keep_days + 1
        for d in [d for d in chain.days if d < horizon]:
            del chain.days[d]
        if chain.sealed_before is None or horizon > chain.sealed_before:
            chain.sealed_before = horizon
        # A height below every kept block is in a sealed day: no reorg can reach it any more.
        lowest = min((h for day in chain.days.values() for h in day.blocks), default=None)
        if lowest is not None:
            for key in [k for k in chain.revisions if k[0] < lowest]:
                del chain.revisions[key]

    def _changed(self, m: OnchainMetric) -> OnchainMetric | None:
        key = (m.asset, m.source, day_number(m.day))
        digest = _digest(m)
        prev = self.emitted.get(key)
        if prev is not None and prev[1] == digest:
            return None
        m.revision = 0 if prev is None else prev[0] + 1
        self.emitted[key] = (m.revision, digest)
        return m

    # state
    def snapshot(self) -> bytes:
        return orjson.dumps({
            "v": SNAPSHOT_VERSION,
            "keep_days": self.keep_days,
            "providers": [[a, s, [r.to_avro() for r in series.rows.values()]] for (a, s), series in self.providers.items()],
            "chains": [
                [asset, c.sealed_before, sorted(c.hashes.items()), [_stats_json(s) for day in c.days.values() for s in day.blocks.values()],
                 sorted([h, x, r] for (h, x), r in c.revisions.items())]
                for asset, c in self.chains.items()
            ],
            "emitted": [[a, s, d, r, g] for (a, s, d), (r, g) in self.emitted.items()],
        })

    def restore(self, data: bytes) -> None:
        doc = orjson.loads(data)
        if doc.get("v") not in (1, SNAPSHOT_VERSION):
            raise ValueError(f"on-chain snapshot version {doc.get('v')!r} is newer than this code ({SNAPSHOT_VERSION})")
        self.providers = {}
        for asset, source, rows in doc["providers"]:
            series = self.providers[(asset, source)] = ProviderSeries()
            for r in rows:
                row = OnchainDay.from_avro(r)
                series.put(day_number(row.day), row)
        self.chains = {}
        for asset, sealed, hashes, blocks, *revisions in doc["chains"]:
            chain = self.chains[asset] = ChainState(sealed_before=sealed, hashes={int(h): x for h, x in hashes})
            for b in blocks:
                s = _stats_from_json(b)
                chain.days.setdefault(s.day, DayBlocks()).add(s)
            chain.revisions = {(int(h), x): r for h, x, r in (revisions[0] if revisions else [])}
        self.emitted = {(a, s, d): (r, g) for a, s, d, r, g in doc["emitted"]}
        self._prices = {}


def _stats_json(s: BlockStats) -> list[Any]:
    return [s.height, s.hash, s.day, s.tx_count, s.resolved, s.fees_sat, s.transfer_sat, sorted(s.addresses), s.spent_sat,
            sorted(s.spent_by_day.items()), sorted([e, i, o] for e, (i, o) in s.flows.items()), s.time]


def _stats_from_json(b: list[Any]) -> BlockStats:
    h, hsh, day, txc, resolved, fees, transfer, addrs, spent, by_day, flows, *rest = b  # version 1 has no time
    return BlockStats(h, hsh, day, txc, resolved, fees, transfer, frozenset(addrs), spent, {int(d): v for d, v in by_day},
                      {e: (i, o) for e, i, o in flows}, rest[0] if rest else None)


def read_price_candles(text: str) -> dict[tuple[str, str], str]:
    """``EXCHANGE:SYMBOL=ASSET`` items, comma-separated (``binance:BTC/USDT=btc``) -> {(exchange, symbol): asset}:
    the daily candles whose close is the asset's price."""
    out: dict[tuple[str, str], str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        series, sep, asset = item.rpartition("=")
        exchange, colon, symbol = series.partition(":")
        if not sep or not colon or not exchange.strip() or not symbol.strip() or not asset.strip():
            raise ValueError(f"price candles item {item!r} is not EXCHANGE:SYMBOL=ASSET (binance:BTC/USDT=btc)")
        out[(exchange.strip(), symbol.strip())] = asset.strip()
    return out


def candle_price(candle: Any, asset: str) -> OnchainDay:
    """A final daily candle as the asset's price row of its UTC day (its close, the day's last price);
    OnchainError when it is not one."""
    if candle.interval != PRICE_INTERVAL or not candle.is_final:
        raise OnchainError(f"candle {candle.key} at {candle.open_time} is not a final {PRICE_INTERVAL} candle")
    if candle.open_time % DAY_MS:
        raise OnchainError(f"daily candle {candle.key} opens at {candle.open_time}, not a UTC midnight")
    if not (isinstance(candle.close, int | float) and math.isfinite(candle.close) and candle.close > 0):
        raise OnchainError(f"daily candle {candle.key} at {candle.open_time} has close {candle.close!r}")
    return OnchainDay(asset, candle.open_time, f"{CANDLE_SOURCE}{candle.exchange}:{candle.symbol}", price_usd=float(candle.close))


def read_labels(lines: Iterator[str] | Iterable[str]) -> dict[str, str]:
    """``address,entity`` lines (a header line and blank lines are skipped) -> {address: entity}."""
    out: dict[str, str] = {}
    for i, line in enumerate(lines):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        address, sep, entity = text.partition(",")
        address, entity = address.strip(), entity.strip()
        if i == 0 and address.lower() == "address":
            continue
        if not sep or not address or not entity:
            raise ValueError(f"line {i + 1} of the address labels is not 'address,entity': {text!r}")
        out[address] = entity
    return out
