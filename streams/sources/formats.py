"""Readers for the trade file formats a replay accepts, as plain iterators (no asyncio).

Each reader streams its file line by line (gzip opened transparently, detected by magic bytes)
and yields ``(exchange, symbol, Trade)`` in file order, or ``BadInput`` with the original line
bytes for anything it cannot parse, so one broken line costs one dead letter, not the replay.
Range checks (price > 0, sane time) are left to ``trade_problem`` in the ingest loop.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import orjson

from schemas.models import Trade
from streams.sources.base import BadInput

FORMATS = ("binance-trades", "binance-aggtrades", "tardis", "ccxt-json", "binance-ws")

Item = tuple[str, str, Trade] | BadInput

_GZIP_MAGIC = b"\x1f\x8b"
# Binance public-data times are ms, but spot files since 2025 use µs: ms stay below this until year 5138.
_US_THRESHOLD = 10**14
_PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError)
# A whole-file JSON failure is dead-lettered with its head only: a DLQ record must fit a Kafka message.
_MAX_PAYLOAD = 64 * 1024
_MAKER_SIDE = {b"true": "sell", b"false": "buy"}
_BINANCE_CSV_NAME = re.compile(r"^([A-Za-z0-9_]+)-(?:agg)?trades-", re.IGNORECASE)
_CCXT_NAME = re.compile(r"^([A-Za-z0-9]+)_([A-Za-z0-9]+)(?:_([A-Za-z0-9]+))?-trades")
_WS_PREFIX = re.compile(rb"^\d+ \{")


def open_binary(path: Path) -> BinaryIO:
    """Open a file for binary reading, decompressing it when it starts with the gzip magic."""
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == _GZIP_MAGIC else open(path, "rb")


def detect_format(path: Path) -> str:
    """Name the format of a trade file by sniffing its first line."""
    try:
        with open_binary(path) as f:
            head = f.read(65536)
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read ({e})") from e
    first = next((line.strip() for line in head.splitlines() if line.strip()), b"")
    if not first:
        raise ValueError(f"{path}: empty file, no trade format to detect")
    if first[:1] == b"[":
        return "ccxt-json"
    if first[:1] == b"{" or _WS_PREFIX.match(first):
        return "binance-ws"
    cols = [c.strip().strip(b'"').lower().replace(b"_", b"").replace(b" ", b"") for c in first.split(b",")]
    if cols[:3] == [b"exchange", b"symbol", b"timestamp"]:
        return "tardis"
    if b"firsttradeid" in cols:
        return "binance-aggtrades"
    if b"quoteqty" in cols:
        return "binance-trades"
    if cols[0].isdigit():
        # Headerless Binance CSV: trades have 6 (futures) or 7 (spot) columns with the maker flag
        # 6th; aggTrades 7 (futures) or 8 (spot) with the transact time 6th.
        if len(cols) == 6 or (len(cols) == 7 and cols[5] in _MAKER_SIDE):
            return "binance-trades"
        if len(cols) == 8 or (len(cols) == 7 and cols[5].isdigit()):
            return "binance-aggtrades"
    raise ValueError(f"{path}: unknown trade file format (first line {first[:100]!r}); known formats: {', '.join(FORMATS)}")


def iter_trades(path: Path, fmt: str, *, exchange: str | None = None, symbol: str | None = None) -> Iterator[Item]:
    """Yield ``(exchange, symbol, Trade)`` or ``BadInput`` for every record of a trade file.

    ``exchange`` overrides what the file or its name says. ``symbol`` names the instrument of
    files that do not carry one (Binance public CSVs, compact ccxt lists), otherwise taken from
    the file name; ``ValueError`` when neither gives it.
    """
    path = Path(path)
    if fmt in ("binance-trades", "binance-aggtrades"):
        return _binance_csv(path, fmt, exchange, symbol or _binance_csv_symbol(path))
    if fmt == "tardis":
        return _tardis(path, exchange)
    if fmt == "ccxt-json":
        return _ccxt_json(path, exchange or "binance", symbol)
    if fmt == "binance-ws":
        return _binance_ws(path, exchange or _binance_ws_exchange(path))
    raise ValueError(f"unknown trade file format {fmt!r}; known formats: {', '.join(FORMATS)}")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines without their terminator, numbered from 1."""
    with open_binary(path) as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip(b"\r\n")
            if line.strip():
                yield n, line


def _to_us(t: int) -> int:
    return t if t > _US_THRESHOLD else t * 1000


def _maker_side(flag: bytes) -> str:
    side = _MAKER_SIDE.get(flag.strip().lower())
    if side is None:
        raise ValueError(f"is_buyer_maker {flag!r} is not true/false")
    return side


def _binance_csv_symbol(path: Path) -> str:
    m = _BINANCE_CSV_NAME.match(path.name)
    if m is None:
        raise ValueError(f"{path.name}: no symbol in the file name (expected SYMBOL-trades-... or SYMBOL-aggTrades-...); pass symbol=")
    return m.group(1).upper()


def _binance_csv_exchange(symbol: str, has_best_match: bool) -> str:
    """Spot files carry ``is_best_match``; futures files do not, and coin-margined symbols have a ``_``."""
    if has_best_match:
        return "binance"
    return "binance-delivery" if "_" in symbol else "binance-futures"


def _binance_csv(path: Path, fmt: str, exchange: str | None, symbol: str) -> Iterator[Item]:
    agg = fmt == "binance-aggtrades"
    ncols = 7 if agg else 6  # without the optional trailing is_best_match
    time_col = 5 if agg else 4
    ex = exchange
    for n, line in _lines(path):
        if n == 1 and not line.lstrip()[:1].isdigit():
            continue  # header row
        try:
            f = line.split(b",")
            if len(f) not in (ncols, ncols + 1):
                raise ValueError(f"expected {ncols} or {ncols + 1} columns, got {len(f)}")
            trade = Trade(f[0].strip().decode(), _to_us(int(f[time_col])), float(f[1]), float(f[2]), _maker_side(f[ncols - 1]))
        except _PARSE_ERRORS as e:
            yield BadInput(f"{fmt} line {n}: {e}", line)
            continue
        if ex is None:
            ex = _binance_csv_exchange(symbol, len(f) > ncols)
        yield ex, symbol, trade


_TARDIS_COLUMNS = ("exchange", "symbol", "timestamp", "id", "side", "price", "amount")


def _tardis(path: Path, exchange: str | None) -> Iterator[Item]:
    lines = _lines(path)
    header = next(lines, None)
    if header is None:
        return
    names = [c.strip().decode(errors="replace") for c in header[1].split(b",")]
    missing = [c for c in _TARDIS_COLUMNS if c not in names]
    if missing:
        yield BadInput(f"tardis line {header[0]}: header lacks {', '.join(missing)}", header[1])
        return
    ix, isym, its, iid, iside, iprice, iamount = (names.index(c) for c in _TARDIS_COLUMNS)
    width = len(names)
    for n, line in lines:
        try:
            f = line.split(b",")
            if len(f) != width:
                raise ValueError(f"expected {width} columns, got {len(f)}")
            trade = Trade(f[iid].decode(), int(f[its]), float(f[iprice]), float(f[iamount]), f[iside].decode())
            ex, sym = exchange or f[ix].decode(), f[isym].decode()
        except _PARSE_ERRORS as e:
            yield BadInput(f"tardis line {n}: {e}", line)
            continue
        yield ex, sym, trade


def _ccxt_name_symbol(path: Path) -> str | None:
    """freqtrade names trade files ``BASE_QUOTE[_SETTLE]-trades...``: back to ``BASE/QUOTE[:SETTLE]``."""
    m = _CCXT_NAME.match(path.name)
    if m is None:
        return None
    base, quote, settle = m.groups()
    return f"{base}/{quote}:{settle}" if settle else f"{base}/{quote}"


def _ccxt_dict(d: dict, symbol: str | None, name_symbol: str | None) -> tuple[str, Trade]:
    sym = symbol or d.get("symbol") or name_symbol
    if not sym:
        raise ValueError("ccxt trade has no symbol and none was given or found in the file name")
    tid = d["id"]
    return sym, Trade(
        "" if tid is None else str(tid), int(d["timestamp"]) * 1000, float(d["price"]), float(d["amount"]), d["side"] or "unknown"
    )


def _ccxt_list(row: list, symbol: str | None) -> tuple[str, Trade]:
    if symbol is None:
        raise ValueError("compact ccxt trade has no symbol and none was given or found in the file name")
    ts, tid, _type, side, price, amount = row[:6]
    return symbol, Trade("" if tid is None else str(tid), int(ts) * 1000, float(price), float(amount), side or "unknown")


def _ccxt_json(path: Path, exchange: str, symbol: str | None) -> Iterator[Item]:
    with open_binary(path) as f:
        raw = f.read()
    try:
        rows = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        yield BadInput(f"ccxt-json: not valid JSON ({e}); payload is the first {_MAX_PAYLOAD} bytes", raw[:_MAX_PAYLOAD])
        return
    if not isinstance(rows, list):
        yield BadInput(f"ccxt-json: expected a JSON array, got {type(rows).__name__}", raw[:_MAX_PAYLOAD])
        return
    name_symbol = symbol or _ccxt_name_symbol(path)
    for i, row in enumerate(rows):
        try:
            if isinstance(row, dict):
                sym, trade = _ccxt_dict(row, symbol, name_symbol)
            elif isinstance(row, list):
                sym, trade = _ccxt_list(row, name_symbol)
            else:
                raise TypeError(f"expected a trade object or list, got {type(row).__name__}")
        except _PARSE_ERRORS as e:
            yield BadInput(f"ccxt-json item {i}: {type(e).__name__}: {e}", orjson.dumps(row))
            continue
        yield exchange, sym, trade


def _binance_ws_exchange(path: Path) -> str:
    name = path.name.lower()
    return "binance-futures" if "usdm" in name or "futures" in name else "binance"


def _ws_event(line: bytes) -> tuple[str, Trade] | None:
    """The trade in one websocket line, or None for the messages that carry none (book, depth, acks)."""
    body = line
    if line[:1] != b"{":
        prefix, _, body = line.partition(b" ")
        if not prefix.isdigit():
            raise ValueError("line is neither JSON nor '<local_ns> <json>'")
    msg = orjson.loads(body)
    if not isinstance(msg, dict):
        raise ValueError(f"expected a JSON object, got {type(msg).__name__}")
    data = msg.get("data", msg)
    if not isinstance(data, dict):
        return None
    kind = data.get("e")
    if kind == "trade":
        tid = data["t"]
    elif kind == "aggTrade":
        tid = data["a"]
    else:
        return None
    maker = data["m"]
    if not isinstance(maker, bool):
        raise ValueError(f"m (buyer is maker) {maker!r} is not a boolean")
    return data["s"], Trade(str(tid), int(data["T"]) * 1000, float(data["p"]), float(data["q"]), "sell" if maker else "buy")


def _binance_ws(path: Path, exchange: str) -> Iterator[Item]:
    for n, line in _lines(path):
        try:
            event = _ws_event(line)
        except _PARSE_ERRORS as e:
            yield BadInput(f"binance-ws line {n}: {type(e).__name__}: {e}", line)
            continue
        if event is not None:
            yield exchange, event[0], event[1]
