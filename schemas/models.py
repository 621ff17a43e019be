"""Python models of the Avro records in this folder.

Times are integers: trade times in microseconds, candle times in milliseconds since the UTC
epoch, as on the wire. Keeping them integers avoids datetime conversions on the hot path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import date
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

SIDES = ("buy", "sell", "unknown")


class Trade(NamedTuple):
    trade_id: str
    ts: int  # microseconds since epoch, exchange event time
    price: float
    amount: float
    side: str = "unknown"


# A trade as a decoded batch holds it: a plain tuple in Trade's field order. A Trade is one too;
# decoding makes plain ones because a namedtuple per trade cost 0.8 µs, a quarter of the candle
# agent's time per trade on live-sized batches.
TradeRow = tuple[str, int, float, float, str]
_trade_fields = itemgetter(*Trade._fields)


@dataclass(slots=True)
class TradeBatch:
    exchange: str
    symbol: str
    received_at: int  # microseconds, wall clock at receipt
    trades: list[TradeRow] = field(default_factory=list)  # Trade tuples, or plain ones in Trade's field order once decoded

    @property
    def key(self) -> str:
        """Partition key: every trade of a symbol goes to one partition, in order."""
        return f"{self.exchange}:{self.symbol}"

    def to_avro(self) -> dict[str, Any]:
        return {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "received_at": self.received_at,
            "trades": [{"trade_id": i, "ts": ts, "price": p, "amount": a, "side": s} for i, ts, p, a, s in self.trades],  # _asdict() is 3x slower
        }

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> TradeBatch:
        return cls(
            d["exchange"],
            d["symbol"],
            d["received_at"],
            list(map(_trade_fields, d["trades"])),  # TradeRow tuples, one C call per trade
        )


@dataclass(slots=True)
class Candle:
    exchange: str
    symbol: str
    interval: str
    open_time: int  # ms
    close_time: int  # ms, last millisecond of the window
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float
    trade_count: int
    vwap: float | None = None
    taker_buy_volume: float | None = None
    first_trade_id: str | None = None
    last_trade_id: str | None = None
    is_final: bool = False
    revision: int = 0

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.symbol}:{self.interval}"

    def to_avro(self) -> dict[str, Any]:
        """Explicit fields: ``dataclasses.asdict`` deep-copies and costs 25x more on the in-progress path."""
        return {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "interval": self.interval,
            "open_time": self.open_time,
            "close_time": self.close_time,
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": self.volume,
            "quote_volume": self.quote_volume,
            "trade_count": self.trade_count,
            "vwap": self.vwap,
            "taker_buy_volume": self.taker_buy_volume,
            "first_trade_id": self.first_trade_id,
            "last_trade_id": self.last_trade_id,
            "is_final": self.is_final,
            "revision": self.revision,
        }

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> Candle:
        return cls(**{f.name: d[f.name] for f in _CANDLE_FIELDS})


_CANDLE_FIELDS = fields(Candle)


@dataclass(slots=True)
class LiveCandles:
    """A symbol's forming candles, one per interval, in one ``candles-live`` record (key exchange:symbol)."""

    candles: list[Candle]

    def to_avro(self) -> dict[str, Any]:
        return {"candles": [c.to_avro() for c in self.candles]}

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> LiveCandles:
        return cls([Candle.from_avro(c) for c in d["candles"]])


@dataclass(slots=True)
class DeadLetter:
    component: str
    reason: str
    payload: bytes
    ts: int  # ms
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    key: bytes | None = None

    def to_avro(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> DeadLetter:
        return cls(**d)


@dataclass(slots=True)
class LateTrade:
    exchange: str
    symbol: str
    trade: Trade
    reason: str
    watermark: int  # µs

    def to_avro(self) -> dict[str, Any]:
        return {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "trade": self.trade._asdict(),
            "reason": self.reason,
            "watermark": self.watermark,
        }

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> LateTrade:
        t = d["trade"]
        return cls(d["exchange"], d["symbol"], Trade(t["trade_id"], t["ts"], t["price"], t["amount"], t["side"]), d["reason"], d["watermark"])


@dataclass(slots=True)
class Indicators:
    """Indicator values of one candle; None where TA-Lib has no value yet (NaN in TA-Lib).

    Field names follow the default periods (ma50 is the first configured SMA, ema12 the first
    configured EMA, ...); configuring other periods changes the values, never the names.
    """

    exchange: str
    symbol: str
    interval: str
    open_time: int  # ms, of the candle
    close: float
    candle_revision: int = 0
    rsi: float | None = None
    ma50: float | None = None
    ma200: float | None = None
    ema12: float | None = None
    ema26: float | None = None
    ema50: float | None = None
    ema200: float | None = None
    macd: float | None = None
    macd_signal: float | None = None
    macd_histogram: float | None = None
    bb_upper: float | None = None
    bb_middle: float | None = None
    bb_lower: float | None = None
    atr: float | None = None
    stoch_k: float | None = None
    stoch_d: float | None = None
    obv: float | None = None
    wma: float | None = None
    adx: float | None = None
    plus_di: float | None = None
    minus_di: float | None = None
    cci: float | None = None
    willr: float | None = None
    mfi: float | None = None
    roc: float | None = None

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.symbol}:{self.interval}"

    def to_avro(self) -> dict[str, Any]:
        """Fields read in one C call: ``dataclasses.asdict`` deep-copies and costs 10x more per candle."""
        return dict(zip(_INDICATORS_NAMES, _indicators_values(self), strict=True))

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> Indicators:
        return cls(**{f.name: d[f.name] for f in _INDICATORS_FIELDS})


_INDICATORS_FIELDS = fields(Indicators)
_INDICATORS_NAMES = tuple(f.name for f in _INDICATORS_FIELDS)
_indicators_values = attrgetter(*_INDICATORS_NAMES)


# On-chain records. A day is the millisecond of its UTC midnight, like every time in tickflow.

DAY_MS = 86_400_000


def day_ms(d: date) -> int:
    """The UTC midnight of ``d`` in ms since the epoch."""
    return (d.toordinal() - _EPOCH_ORDINAL) * DAY_MS


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


@dataclass(slots=True)
class OnchainDay:
    """A provider's daily figures of one asset (Coin Metrics community CSV row); None = not given."""

    asset: str
    day: int  # ms, UTC midnight
    source: str
    price_usd: float | None = None
    market_cap_usd: float | None = None
    realized_cap_usd: float | None = None
    supply_native: float | None = None
    transfer_value_adj_usd: float | None = None
    active_addresses: float | None = None
    tx_count: float | None = None
    fees_native: float | None = None
    transfer_volume_native: float | None = None

    @property
    def key(self) -> str:
        return self.asset

    def to_avro(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _ONCHAIN_DAY_NAMES}

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> OnchainDay:
        return cls(**{f: d[f] for f in _ONCHAIN_DAY_NAMES})


_ONCHAIN_DAY_NAMES = tuple(f.name for f in fields(OnchainDay))


class OnchainInput(NamedTuple):
    value: int | None  # satoshis; None = unresolved
    address: str | None = None
    created_time: int | None = None  # seconds, time of the block that created the spent output


class OnchainOutput(NamedTuple):
    value: int  # satoshis
    address: str | None = None


class OnchainTx(NamedTuple):
    txid: str
    coinbase: bool
    inputs: list[OnchainInput]
    outputs: list[OnchainOutput]


@dataclass(slots=True)
class OnchainBlock:
    """One block, inputs resolved to what they spend where the node could say."""

    asset: str
    height: int
    hash: str
    prev_hash: str | None
    time: int  # seconds
    txs: list[OnchainTx] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.asset

    def to_avro(self) -> dict[str, Any]:
        return {
            "asset": self.asset,
            "height": self.height,
            "hash": self.hash,
            "prev_hash": self.prev_hash,
            "time": self.time,
            "txs": [
                {
                    "txid": t.txid,
                    "coinbase": t.coinbase,
                    "inputs": [{"value": v, "address": a, "created_time": c} for v, a, c in t.inputs],
                    "outputs": [{"value": v, "address": a} for v, a in t.outputs],
                }
                for t in self.txs
            ],
        }

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> OnchainBlock:
        txs = [
            OnchainTx(
                t["txid"],
                t["coinbase"],
                [OnchainInput(i["value"], i["address"], i["created_time"]) for i in t["inputs"]],
                [OnchainOutput(o["value"], o["address"]) for o in t["outputs"]],
            )
            for t in d["txs"]
        ]
        return cls(d["asset"], d["height"], d["hash"], d["prev_hash"], d["time"], txs)


@dataclass(slots=True)
class OnchainMetric:
    """On-chain metrics of one asset, UTC day and source; None where an input is missing."""

    asset: str
    day: int  # ms, UTC midnight
    source: str
    revision: int = 0
    price_usd: float | None = None
    market_cap_usd: float | None = None
    realized_cap_usd: float | None = None
    mvrv: float | None = None
    nupl: float | None = None
    realized_price_usd: float | None = None
    nvt: float | None = None
    nvt_90d: float | None = None
    volatility_30d: float | None = None
    active_addresses: float | None = None
    active_addresses_7d: float | None = None
    active_addresses_30d: float | None = None
    tx_count: int | None = None
    fees_native: float | None = None
    transfer_volume_native: float | None = None
    sopr: float | None = None
    sopr_coverage: float | None = None
    exchange_inflow_native: float | None = None
    exchange_outflow_native: float | None = None
    exchange_netflow_native: float | None = None
    exchange_flows: str | None = None  # JSON {entity: [inflow, outflow]}
    block_count: int | None = None
    first_height: int | None = None
    last_height: int | None = None

    @property
    def key(self) -> str:
        return self.asset

    def to_avro(self) -> dict[str, Any]:
        return dict(zip(_ONCHAIN_METRIC_NAMES, _onchain_metric_values(self), strict=True))

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> OnchainMetric:
        return cls(**{f: d[f] for f in _ONCHAIN_METRIC_NAMES})


_ONCHAIN_METRIC_NAMES = tuple(f.name for f in fields(OnchainMetric))
_onchain_metric_values = attrgetter(*_ONCHAIN_METRIC_NAMES)


@dataclass(slots=True)
class OnchainBlockMetric:
    """One block's figures (asset, height, hash); ``retracted`` once a reorg replaced the block,
    with the revision after its last one. None where an input the node could not resolve is needed."""

    asset: str
    height: int
    hash: str
    block_time: int  # ms, the block header's time
    revision: int = 0
    retracted: bool = False
    tx_count: int = 0
    fees_native: float | None = None
    transfer_volume_native: float = 0.0
    active_addresses: int | None = None
    exchange_inflow_native: float | None = None
    exchange_outflow_native: float | None = None
    exchange_netflow_native: float | None = None

    @property
    def key(self) -> str:
        return self.asset

    def to_avro(self) -> dict[str, Any]:
        return dict(zip(_ONCHAIN_BLOCK_METRIC_NAMES, _onchain_block_metric_values(self), strict=True))

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> OnchainBlockMetric:
        return cls(**{f: d[f] for f in _ONCHAIN_BLOCK_METRIC_NAMES})


_ONCHAIN_BLOCK_METRIC_NAMES = tuple(f.name for f in fields(OnchainBlockMetric))
_onchain_block_metric_values = attrgetter(*_ONCHAIN_BLOCK_METRIC_NAMES)


@dataclass(slots=True)
class Signal:
    """A strategy's decision at one closed candle (key exchange:symbol:interval, as the candle's).

    The ``*_time`` fields name the inputs used, so a reader can check that none is later than
    ``close_time``: the indicators of this candle, the previous candle's (crosses), and the
    newest on-chain and sentiment values (their own times, ms; None when none was used).
    """

    strategy: str
    strategy_version: str
    exchange: str
    symbol: str
    interval: str
    open_time: int  # ms, of the candle
    close_time: int  # ms, its last millisecond: the decision is taken at close_time + 1
    close: float
    direction: str  # long | short | flat
    confidence: float  # [0, 1]
    score: float  # net weighted vote in [-1, 1]
    reasons: str = ""  # one line per rule that fired: a flat column in both stores
    candle_revision: int = 0
    indicators_time: int | None = None
    prev_indicators_time: int | None = None
    onchain_time: int | None = None
    sentiment_time: int | None = None

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.symbol}:{self.interval}"

    def to_avro(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _SIGNAL_NAMES}

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> Signal:
        return cls(**{f: d[f] for f in _SIGNAL_NAMES})


_SIGNAL_NAMES = tuple(f.name for f in fields(Signal))


@dataclass(slots=True)
class RiskBar:
    """A strategy series' closed candle and its signal, for the risk agent (key: the strategy, so
    one partition and one risk book hold every series of it)."""

    strategy: str
    strategy_version: str
    exchange: str
    symbol: str
    interval: str
    open_time: int  # ms
    close_time: int  # ms, last millisecond
    high: float
    low: float
    close: float
    atr: float | None
    direction: str  # long | short | flat
    confidence: float

    @property
    def key(self) -> str:
        return self.strategy

    @property
    def series(self) -> str:
        return f"{self.exchange}:{self.symbol}:{self.interval}"

    def to_avro(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> RiskBar:
        return cls(**d)


@dataclass(slots=True)
class TradeIntent:
    """An order for someone else to execute, sized by the risk manager (tickflow places none).

    ``status`` says whether it was accepted as requested, ``resized`` or ``rejected`` (quantity
    0); ``reason`` says why, with the numbers. ``action`` open/close, ``position`` long/short,
    ``trigger`` signal, stop, take_profit, daily_loss or drawdown. Prices are reference prices
    (the candle's close, the stop or take-profit level), not fills.
    """

    intent_id: str
    strategy: str
    strategy_version: str
    exchange: str
    symbol: str
    interval: str
    open_time: int  # ms, of the candle whose close decided it
    ts: int  # ms, decision time (that candle's close_time + 1)
    seq: int  # order among the intents of that candle
    action: str
    side: str  # buy | sell
    position: str
    trigger: str
    status: str
    quantity: float
    requested_quantity: float
    reference_price: float
    stop_price: float | None
    take_profit_price: float | None
    equity: float  # the risk manager's paper equity at the decision
    confidence: float
    reason: str

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.symbol}:{self.interval}"

    def to_avro(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _INTENT_NAMES}

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> TradeIntent:
        return cls(**{f: d[f] for f in _INTENT_NAMES})


_INTENT_NAMES = tuple(f.name for f in fields(TradeIntent))


@dataclass(slots=True)
class NewsScored:
    """One news headline, RSS entry or social post with its sentiment, scored at ingest.

    Scored where it enters, so the log keeps what the model said then: a replay gives the same
    aggregates even after ``tickflow sentiment train`` ships another model (``model`` names it).
    """

    source: str  # news | rss | social
    item_id: str  # url, guid or post id; a hash of the text when the source has none
    ts: int  # ms, publication time (event time)
    title: str
    label: str  # negative | neutral | positive
    score: float  # [-1, 1]
    assets: str  # tickers named, ";"-separated; "" = market-wide
    model: str
    received_at: int  # µs, wall clock at ingest (as TradeBatch: the runtime measures input delay from it)
    text: str | None = None
    url: str | None = None
    engagement: float | None = None  # retweets, likes...: weighs the item in weighted_score

    @property
    def key(self) -> str:
        """Every item goes to one partition (key ``market``): the news flow is small, and one place
        sees all of an asset's items and the day's Fear & Greed."""
        return "market"

    def to_avro(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> NewsScored:
        return cls(**d)


@dataclass(slots=True)
class FearGreed:
    """The Crypto Fear & Greed index of one UTC day (alternative.me)."""

    day: int  # ms, 00:00 UTC of the day
    value: int  # 0-100
    classification: str  # Extreme Fear | Fear | Neutral | Greed | Extreme Greed
    source: str  # file name or "api"
    received_at: int  # µs, wall clock at ingest

    @property
    def key(self) -> str:
        return "market"  # co-partitioned with news_scored

    def to_avro(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> FearGreed:
        return cls(**d)


@dataclass(slots=True)
class SentimentAggregate:
    """Sentiment of one asset (or ``MARKET``, every item) over one 1h or 1d event-time window."""

    asset: str
    interval: str  # 1h | 1d
    window_start: int  # ms
    window_end: int  # ms, last millisecond of the window
    items: int
    mean_score: float
    positive_share: float
    negative_share: float
    neutral_share: float
    engagement: float  # sum over the items that carry engagement
    weighted_score: float | None  # engagement-weighted mean score; None when no item has engagement
    fear_greed_value: int | None
    fear_greed_class: str | None
    is_final: bool
    revision: int = 0

    @property
    def key(self) -> str:
        return f"{self.asset}:{self.interval}"

    def to_avro(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> SentimentAggregate:
        return cls(**d)
