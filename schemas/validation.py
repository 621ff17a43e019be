"""What a trade record may hold, declared once, and the machine-readable dead-letter reasons.

Every entry point of trades applies these rules: the replay readers and the ccxt source (through
``trade_problem`` and the name checks), ingest before it produces, and every consumer of ``ticks``
after it decodes a record (``check_trade_batch``, the registry's ``check`` of ``trade_batch``), since
producers other than tickflow's ingest may write there.

A dead-letter reason is ``"<code>: <detail>"``: the code is one of :class:`Reason`, for machines
(the ``reason`` label of ``tickflow_dlq_records_total``, alerts, scripts reading ``dlq``); the detail
names the file, line, field or value, for people.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from enum import StrEnum
from functools import lru_cache
from typing import Any, NamedTuple

from schemas.models import SIDES, Trade, TradeBatch, TradeRow


class Reason(StrEnum):
    """Why a record went to the dead-letter topic (the code before the first colon of its reason)."""

    UNDECODABLE = "undecodable"  # not valid Avro for its topic: bad magic byte, unknown schema id, truncated, trailing bytes
    UNPARSEABLE = "unparseable"  # a source line or item that does not parse (CSV, JSON)
    UNREADABLE_FILE = "unreadable_file"  # a replay file that cannot be read on: truncated gzip, I/O error
    OVERSIZED = "oversized"  # a source line longer than MAX_LINE_BYTES
    BAD_EXCHANGE = "bad_exchange"  # exchange name outside EXCHANGE_PATTERN
    BAD_SYMBOL = "bad_symbol"  # symbol outside SYMBOL_PATTERN (empty, too long, control or other characters)
    BAD_TRADE_ID = "bad_trade_id"  # missing trade id, or outside TRADE_ID_PATTERN
    BAD_PRICE = "bad_price"  # not a number, NaN, infinite, <= 0 or above MAX_PRICE
    BAD_AMOUNT = "bad_amount"  # not a number, NaN, infinite, <= 0 or above MAX_AMOUNT
    BAD_TIMESTAMP = "bad_timestamp"  # before 2009-01-03 or more than MAX_FUTURE_US ahead of the clock
    BAD_SIDE = "bad_side"  # not buy, sell or unknown
    KEY_MISMATCH = "key_mismatch"  # a ticks record whose Kafka key is not its exchange:symbol (wrong partition)
    AGENT_ERROR = "agent_error"  # an agent's logic raised on the record
    STORE_REJECTED = "store_rejected"  # a store refused the record for good


# Exchange names: ccxt ids and Tardis names (binance, binanceusdm, binance-futures, gate.io).
EXCHANGE_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
# Symbols: ccxt unified (BTC/USDT, BTC/USDT:USDT, BTC/USD:BTC-240628-60000-C) and exchange ids
# (BTCUSDT, BTCUSD_PERP, BTC-PERPETUAL); letters of any script (exchanges list such tokens), no
# whitespace, control characters, quotes or commas; at most 64 characters.
SYMBOL_PATTERN = re.compile(r"[^\W_][\w.:/-]{0,63}")
# Trade ids: printable ASCII without spaces (integers, UUIDs, Kraken's T...-...), at most 128.
MAX_TRADE_ID = 128
TRADE_ID_PATTERN = re.compile(r"[!-~]{1,%d}" % MAX_TRADE_ID)
# 2009-01-03, the Bitcoin genesis block: no crypto trade is older.
MIN_TS_US = 1_230_940_800_000_000
MAX_FUTURE_US = 24 * 3600 * 1_000_000
# Above any real price or size in any quote unit (BTC in VND is ~3e12): sums stay finite.
MAX_PRICE = 1e15
MAX_AMOUNT = 1e15
# A source line longer than this is not a trade (real ones are under 1 kB): dead-lettered, not parsed.
MAX_LINE_BYTES = 64 * 1024
# Dead letters keep at most this much of a payload, so one fits any Kafka message limit.
MAX_PAYLOAD_BYTES = 1024 * 1024

_SIDES = frozenset(SIDES)
_ONE_BY_ONE = 8  # batches up to this many trades are checked trade by trade: cheaper than the whole-batch test
_REASON_CODE = re.compile(r"([a-z_]+): ")
_CODES = frozenset(Reason)


def reason(code: Reason, detail: str) -> str:
    """The dead-letter reason text: ``"<code>: <detail>"``."""
    return f"{code.value}: {detail}"


def reason_code(text: str) -> Reason | None:
    """The code of a reason written by :func:`reason`, None for free text."""
    m = _REASON_CODE.match(text)
    return Reason(m.group(1)) if m and m.group(1) in _CODES else None


def clip(payload: bytes) -> bytes:
    """At most ``MAX_PAYLOAD_BYTES`` of a payload for a dead letter (the reason says when clipped)."""
    return payload[:MAX_PAYLOAD_BYTES]


def _shown(value: Any) -> str:
    """A value for a reason: long ones cut, so a 100,000-character symbol makes a short reason."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(value) if isinstance(value, str | bytes) else len(text)} long)"


def exchange_problem(exchange: Any) -> str | None:
    if isinstance(exchange, str) and EXCHANGE_PATTERN.fullmatch(exchange):
        return None
    return reason(Reason.BAD_EXCHANGE, f"exchange {_shown(exchange)} is not 1-32 of a-z 0-9 _ . - starting with a letter or digit")


def symbol_problem(symbol: Any) -> str | None:
    if isinstance(symbol, str) and SYMBOL_PATTERN.fullmatch(symbol):
        return None
    return reason(Reason.BAD_SYMBOL, f"symbol {_shown(symbol)} is not 1-64 letters, digits or . : / _ - starting with a letter or digit")


def trade_problem(t: Trade | TradeRow, now: int) -> str | None:
    """Why a trade is unusable, or None when it is fine (``now`` in µs, for the future bound)."""
    trade_id, ts, price, amount, side = t
    if not isinstance(price, float | int) or not 0 < price <= MAX_PRICE:  # NaN fails every comparison
        return reason(Reason.BAD_PRICE, f"price {price!r}")
    if not isinstance(amount, float | int) or not 0 < amount <= MAX_AMOUNT:
        return reason(Reason.BAD_AMOUNT, f"amount {amount!r}")
    if not isinstance(ts, int) or not MIN_TS_US <= ts <= now + MAX_FUTURE_US:
        return reason(Reason.BAD_TIMESTAMP, f"timestamp {ts!r} µs outside 2009-01-03 .. now + 24 h")
    if not trade_id:
        return reason(Reason.BAD_TRADE_ID, "missing trade id")
    if not isinstance(trade_id, str) or not TRADE_ID_PATTERN.fullmatch(trade_id):
        return reason(Reason.BAD_TRADE_ID, f"trade id {_shown(trade_id)} is not 1-{MAX_TRADE_ID} printable ASCII characters")
    if side not in _SIDES:
        return reason(Reason.BAD_SIDE, f"side {_shown(side)} is not {', '.join(SIDES)}")
    return None


def _all_fine(trades: Sequence[TradeRow], now: int) -> bool:
    """Whole-batch test with C-speed builtins, at a fraction of the per-trade checks' cost: true
    only if ``trade_problem`` finds nothing in any trade. NaN shows as a NaN sum; a wrong type raises."""
    try:
        ids, times, prices, amounts, sides = zip(*trades, strict=True)
        joined = "".join(ids)
        return (
            math.isfinite(sum(prices)) and 0 < min(prices) and max(prices) <= MAX_PRICE
            and math.isfinite(sum(amounts)) and 0 < min(amounts) and max(amounts) <= MAX_AMOUNT
            and type(sum(times)) is int and MIN_TS_US <= min(times) and max(times) <= now + MAX_FUTURE_US
            and "" not in ids and max(map(len, ids)) <= MAX_TRADE_ID
            and joined.isascii() and joined.isprintable() and " " not in joined
            and _SIDES.issuperset(sides)
        )
    except (TypeError, ValueError):
        return False


class Checked(NamedTuple):
    """A record after its check: the usable part (None: nothing usable, the whole record is bad,
    ``problem`` says why) and each rejected part with its reason and a JSON-able description."""

    value: Any
    problem: str | None = None
    rejected: tuple[tuple[str, dict[str, Any]], ...] = ()


def trade_record(batch: TradeBatch, t: Trade | TradeRow) -> dict[str, Any]:
    """A trade with its exchange and symbol, as a dead letter's JSON payload shows it."""
    return {"exchange": batch.exchange, "symbol": batch.symbol, **dict(zip(Trade._fields, t, strict=True))}


def split_trades(batch: TradeBatch, now: int) -> Checked:
    """The batch's good trades (the same object when all are; None when none is), and each bad
    trade with its reason."""
    trades = batch.trades
    if len(trades) > _ONE_BY_ONE and _all_fine(trades, now):
        return Checked(batch)
    problems = [trade_problem(t, now) for t in trades]
    if not any(problems):
        return Checked(batch)
    good = [t for t, problem in zip(trades, problems, strict=True) if problem is None]
    bad = tuple((problem, trade_record(batch, t)) for t, problem in zip(trades, problems, strict=True) if problem is not None)
    return Checked(TradeBatch(batch.exchange, batch.symbol, batch.received_at, good) if good else None, None, bad)


@lru_cache(maxsize=16384)
def _names_problem(exchange: str, symbol: str) -> str | None:
    """Names repeat on every record of a symbol: checked once each."""
    return exchange_problem(exchange) or symbol_problem(symbol)


def check_trade_batch(batch: TradeBatch, key: str | None, now: int) -> Checked:
    """A ``ticks`` record as a consumer must take it: a bad exchange or symbol, or a key other than
    ``exchange:symbol`` (it would sit in another symbol's partition), rejects the whole record;
    otherwise bad trades are rejected one by one and the good ones go on."""
    problem = _names_problem(batch.exchange, batch.symbol)
    if problem is None and key is not None and key != batch.key:
        problem = reason(Reason.KEY_MISMATCH, f"key {_shown(key)} is not {batch.key!r}")
    if problem is not None:
        return Checked(None, problem)
    return split_trades(batch, now)
