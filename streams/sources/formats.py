"""Readers for the trade file formats a replay accepts, as plain iterators (no asyncio).

Each reader streams its file line by line (gzip opened transparently, detected by magic bytes)
and yields ``(exchange, symbol, Trade)`` in file order, or ``BadInput`` with the original line
bytes for anything it cannot parse, so one broken line costs one dead letter, not the replay. The
reasons name the file and line. Exchange and symbol names are checked here, where the line is
known (``schemas.validation``); range checks of the trades (price > 0, sane time) are left to the
ingest loop. A line longer than ``MAX_LINE_BYTES`` is dead-lettered unparsed (its head), and a file
that cannot be read on (a truncated gzip) ends with one dead letter naming the line and offset.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import orjson

from schemas.models import Trade
from schemas.validation import MAX_LINE_BYTES, Reason, exchange_problem, reason, symbol_problem
from streams.sources.base import BadInput

FORMATS = ("binance-trades", "binance-aggtrades", "tardis", "ccxt-json", "binance-ws")

Item = tuple[str, str, Trade] | BadInput

_GZIP_MAGIC = b"\x1f\x8b"
# Binance public-data times are ms, but spot files since 2025 use µs: ms stay below this until year 5138.
_US_THRESHOLD = 10**14
_PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError)
_READ_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError; a truncated gzip raises EOFError
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
    first = _first_line(path)
    if not first:
        raise ValueError(f"{path}: empty file, no trade format to detect")
    if _looks_binary(first):
        raise ValueError(f"{path}: a binary file, not a trade file (first bytes {first[:32]!r}); known formats: {', '.join(FORMATS)}")
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


def _first_line(path: Path) -> bytes:
    """The first non-blank line (its first 64 kB), read as far as the file allows: a truncated
    gzip still shows its head, and is dead-lettered where it ends."""
    try:
        with open_binary(path) as f:
            while raw := f.readline(65536):
                if raw.strip():
                    return raw.strip()
    except EOFError:
        return b""
    except (OSError, zlib.error) as e:
        raise ValueError(f"{path}: cannot read ({e})") from e
    return b""


def _looks_binary(line: bytes) -> bool:
    """NUL or other control bytes, or not UTF-8: no trade format has those in its first line."""
    try:
        text = line[:4096].decode()
    except UnicodeDecodeError as e:
        return e.start < len(line[:4096]) - 3  # a character cut at 4096 bytes is not binary
    return any(c < " " and c not in "\t\r\n" for c in text)


def iter_trades(path: Path, fmt: str, *, exchange: str | None = None, symbol: str | None = None) -> Iterator[Item]:
    """Yield ``(exchange, symbol, Trade)`` or ``BadInput`` for every record of a trade file.

    ``exchange`` overrides what the file or its name says. ``symbol`` names the instrument of
    files that do not carry one (Binance public CSVs, compact ccxt lists), otherwise taken from
    the file name; ``ValueError`` when neither gives it.
    """
    path = Path(path)
    if fmt in ("binance-trades", "binance-aggtrades"):
        symbol = symbol or _binance_csv_symbol(path)
    for problem in (exchange is not None and exchange_problem(exchange), symbol is not None and symbol_problem(symbol)):
        if problem:
            raise ValueError(f"{path}: {problem}")
    if fmt in ("binance-trades", "binance-aggtrades"):
        return _binance_csv(path, fmt, exchange, symbol)
    if fmt == "tardis":
        return _tardis(path, exchange)
    if fmt == "ccxt-json":
        return _ccxt_json(path, exchange or "binance", symbol)
    if fmt == "binance-ws":
        return _binance_ws(path, exchange or _binance_ws_exchange(path))
    raise ValueError(f"unknown trade file format {fmt!r}; known formats: {', '.join(FORMATS)}")


class _Names:
    """Exchange and symbol names of a file's rows, each distinct pair checked once."""

    def __init__(self, path: Path) -> None:
        self.where = path.name
        self._ok: set[tuple[str, str]] = set()

    def problem(self, exchange: str, symbol: str, at: str) -> str | None:
        """Why the names are unusable, naming the file and ``at`` (``"line 7"``), or None."""
        if (exchange, symbol) in self._ok:
            return None
        problem = exchange_problem(exchange) or symbol_problem(symbol)
        if problem is not None:
            return f"{problem} ({self.where} {at})"
        if len(self._ok) < 100_000:
            self._ok.add((exchange, symbol))
        return None


def _unparseable(path: Path, what: str, error: Exception | str) -> str:
    return reason(Reason.UNPARSEABLE, f"{path.name} {what}: {error}")


def _lines(path: Path) -> Iterator[tuple[int, bytes] | BadInput]:
    """Non-blank lines without their terminator, numbered from 1; a line longer than
    ``MAX_LINE_BYTES`` as BadInput (its head), and a read error as a last BadInput."""
    n = offset = 0
    try:
        with open_binary(path) as f:
            while raw := f.readline(MAX_LINE_BYTES + 1):
                n += 1
                start, offset = offset, offset + len(raw)
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    while (rest := f.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                        offset += len(rest)
                    offset += len(rest)
                    yield BadInput(reason(Reason.OVERSIZED, f"{path.name} line {n} (byte {start}): {offset - start} bytes, more than {MAX_LINE_BYTES}; payload is its head"), raw[:MAX_LINE_BYTES])
                    continue
                line = raw.rstrip(b"\r\n")
                if line.strip():
                    yield n, line
    except _READ_ERRORS as e:
        yield _unreadable(path, n, offset, e)


def _unreadable(path: Path, lines: int, offset: int, error: Exception) -> BadInput:
    return BadInput(
        reason(Reason.UNREADABLE_FILE, f"{path}: cannot read past line {lines} (byte {offset} of its data): {type(error).__name__}: {error}"), b""
    )


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


def _binance_csv(path: Path, fmt: str, exchange: str | None, symbol: str | None) -> Iterator[Item]:
    agg = fmt == "binance-aggtrades"
    ncols = 7 if agg else 6  # without the optional trailing is_best_match
    time_col = 5 if agg else 4
    ex = exchange
    for item in _lines(path):
        if isinstance(item, BadInput):
            yield item
            continue
        n, line = item
        if n == 1 and not line.lstrip()[:1].isdigit():
            continue  # header row
        try:
            f = line.split(b",")
            if len(f) not in (ncols, ncols + 1):
                raise ValueError(f"expected {ncols} or {ncols + 1} columns, got {len(f)}")
            trade = Trade(f[0].strip().decode(), _to_us(int(f[time_col])), float(f[1]), float(f[2]), _maker_side(f[ncols - 1]))
        except _PARSE_ERRORS as e:
            yield BadInput(_unparseable(path, f"{fmt} line {n}", e), line)
            continue
        if ex is None:
            ex = _binance_csv_exchange(symbol, len(f) > ncols)
        yield ex, symbol, trade


_TARDIS_COLUMNS = ("exchange", "symbol", "timestamp", "id", "side", "price", "amount")


def _tardis(path: Path, exchange: str | None) -> Iterator[Item]:
    lines = _lines(path)
    header = next(lines, None)
    while isinstance(header, BadInput):
        yield header
        header = next(lines, None)
    if header is None:
        return
    names = [c.strip().decode(errors="replace") for c in header[1].split(b",")]
    missing = [c for c in _TARDIS_COLUMNS if c not in names]
    if missing:
        yield BadInput(_unparseable(path, f"tardis line {header[0]}", f"header lacks {', '.join(missing)}"), header[1])
        return
    ix, isym, its, iid, iside, iprice, iamount = (names.index(c) for c in _TARDIS_COLUMNS)
    width = len(names)
    checked = _Names(path)
    for item in lines:
        if isinstance(item, BadInput):
            yield item
            continue
        n, line = item
        try:
            f = line.split(b",")
            if len(f) != width:
                raise ValueError(f"expected {width} columns, got {len(f)}")
            trade = Trade(f[iid].decode(), int(f[its]), float(f[iprice]), float(f[iamount]), f[iside].decode())
            ex, sym = exchange or f[ix].decode(), f[isym].decode()
        except _PARSE_ERRORS as e:
            yield BadInput(_unparseable(path, f"tardis line {n}", e), line)
            continue
        problem = checked.problem(ex, sym, f"line {n}")
        if problem is not None:
            yield BadInput(problem, line)
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
    try:
        with open_binary(path) as f:
            raw = f.read()
    except _READ_ERRORS as e:
        yield _unreadable(path, 0, 0, e)
        return
    try:
        rows = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        yield BadInput(_unparseable(path, "ccxt-json", f"not valid JSON ({e}); payload is the first {_MAX_PAYLOAD} bytes"), raw[:_MAX_PAYLOAD])
        return
    if not isinstance(rows, list):
        yield BadInput(_unparseable(path, "ccxt-json", f"expected a JSON array, got {type(rows).__name__}"), raw[:_MAX_PAYLOAD])
        return
    name_symbol = symbol or _ccxt_name_symbol(path)
    checked = _Names(path)
    for i, row in enumerate(rows):
        try:
            if isinstance(row, dict):
                sym, trade = _ccxt_dict(row, symbol, name_symbol)
            elif isinstance(row, list):
                sym, trade = _ccxt_list(row, name_symbol)
            else:
                raise TypeError(f"expected a trade object or list, got {type(row).__name__}")
            problem = checked.problem(exchange, sym, f"item {i}")
        except _PARSE_ERRORS as e:
            yield BadInput(_unparseable(path, f"ccxt-json item {i}", f"{type(e).__name__}: {e}"), orjson.dumps(row))
            continue
        if problem is not None:
            yield BadInput(problem, orjson.dumps(row))
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
    checked = _Names(path)
    for item in _lines(path):
        if isinstance(item, BadInput):
            yield item
            continue
        n, line = item
        try:
            event = _ws_event(line)
            problem = None if event is None else checked.problem(exchange, event[0], f"line {n}")
        except _PARSE_ERRORS as e:
            yield BadInput(_unparseable(path, f"binance-ws line {n}", f"{type(e).__name__}: {e}"), line)
            continue
        if problem is not None:
            yield BadInput(problem, line)
        elif event is not None:
            yield exchange, event[0], event[1]
